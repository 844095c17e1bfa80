//! The replication connection's byte stream: plain TCP, or TLS over it after an
//! `SSLRequest` the server accepted.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use crate::connectors::postgres::repl::connection::Config;
use crate::connectors::postgres::repl::error::Error;
use crate::connectors::postgres::tls::{SslMode, TlsError};

/// Plain TCP or TLS. Both are cancel-safe for reads in the sense [`super::wire`]
/// needs: a dropped read loses no bytes (OpenSSL keeps partial records inside).
pub(crate) enum PgStream {
    /// `sslmode=disable`, or `prefer` against a server without TLS.
    Plain(TcpStream),
    /// After a completed handshake.
    Tls(Box<SslStream<TcpStream>>),
}

impl PgStream {
    /// Whether the stream is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, PgStream::Tls(_))
    }
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Negotiates TLS on a fresh connection as `config.tls` asks: nothing under
/// `disable`; else `SSLRequest`, then on `S` the handshake (verifying what the mode
/// says), on `N` plain under `prefer` and [`TlsError::Refused`] otherwise.
///
/// Exactly one byte is read before the handshake, so nothing the server sent
/// unencrypted can be taken for part of the TLS session.
pub(crate) async fn negotiate(mut tcp: TcpStream, config: &Config) -> Result<PgStream, Error> {
    let tls = &config.tls;
    if tls.mode() == SslMode::Disable {
        return Ok(PgStream::Plain(tcp));
    }
    let fail = |error: TlsError| Error::Tls {
        server: config
            .server
            .clone()
            .unwrap_or_else(|| format!("{}:{}", config.host, config.port)),
        error,
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    if let Err(e) = tcp.read_exact(&mut answer).await {
        return Err(match e.kind() {
            io::ErrorKind::UnexpectedEof => Error::Closed,
            _ => Error::Io(e),
        });
    }
    match answer[0] {
        b'S' => {}
        b'N' if !tls.mode().requires_tls() => return Ok(PgStream::Plain(tcp)),
        b'N' => return Err(fail(TlsError::Refused { mode: tls.mode() })),
        other => {
            return Err(Error::Protocol(format!(
                "unexpected answer '{}' to SSLRequest",
                other.escape_ascii()
            )))
        }
    }
    let (ssl, probe) = tls.ssl(&config.host).map_err(fail)?;
    let mut stream = SslStream::new(ssl, tcp).map_err(|e| fail(TlsError::Setup(e.to_string())))?;
    if let Err(e) = Pin::new(&mut stream).connect().await {
        return Err(fail(tls.handshake_error(&e, &probe)));
    }
    Ok(PgStream::Tls(Box::new(stream)))
}
