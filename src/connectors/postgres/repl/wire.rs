//! Low-level framing of the PostgreSQL frontend/backend protocol (v3).
//!
//! Frontend messages are encoded with `postgres_protocol::message::frontend`;
//! backend messages are split into `(tag, body)` frames here so that
//! replication-specific messages (`CopyBothResponse`, 'W') that the generic
//! parser does not know can be handled.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connectors::postgres::repl::error::{Error, ServerError};
use crate::connectors::postgres::repl::transport::PgStream;

/// Largest backend message accepted (1 GiB + slack, PostgreSQL's own limit
/// for a single datum). Anything larger is treated as a protocol violation
/// instead of being allocated.
const MAX_MESSAGE_LEN: usize = (1 << 30) + (1 << 20);

/// One backend message: its type byte and its body (without the length).
#[derive(Debug, Clone)]
pub(crate) struct BackendMessage {
    pub tag: u8,
    pub body: Bytes,
}

/// A connection (plain or TLS) with read and write buffers.
pub(crate) struct Framed {
    stream: PgStream,
    read_buf: BytesMut,
    pub write_buf: BytesMut,
}

impl Framed {
    pub fn new(stream: PgStream) -> Self {
        Framed {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(4 * 1024),
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Reads the next complete backend message.
    ///
    /// Cancel-safe: partially received bytes stay in the read buffer, so a
    /// dropped future loses nothing and the next call resumes.
    pub async fn read_message(&mut self) -> Result<BackendMessage, Error> {
        loop {
            if let Some(msg) = self.try_parse()? {
                return Ok(msg);
            }
            let n = self.stream.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
        }
    }

    fn try_parse(&mut self) -> Result<Option<BackendMessage>, Error> {
        if self.read_buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.read_buf[0];
        let len = u32::from_be_bytes([
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
            self.read_buf[4],
        ]) as usize;
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(Error::Protocol(format!(
                "backend message '{}' has invalid length {len}",
                tag as char
            )));
        }
        if self.read_buf.len() < len + 1 {
            self.read_buf.reserve(len + 1 - self.read_buf.len());
            return Ok(None);
        }
        let mut frame = self.read_buf.split_to(len + 1);
        frame.advance(5);
        Ok(Some(BackendMessage {
            tag,
            body: frame.freeze(),
        }))
    }

    /// Writes out everything in the write buffer.
    ///
    /// Not cancel-safe: if the future is dropped mid-write the connection's
    /// framing is corrupt and it must be discarded.
    pub async fn flush(&mut self) -> Result<(), Error> {
        let buf = self.write_buf.split();
        self.stream.write_all(&buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends `Terminate` and shuts the socket down, ignoring errors.
    pub async fn terminate(&mut self) {
        self.write_buf.clear();
        postgres_protocol::message::frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Parses the body of an `ErrorResponse` / `NoticeResponse`.
pub(crate) fn parse_error_fields(body: &[u8]) -> ServerError {
    let mut err = ServerError::default();
    let mut severity_nonlocalized = None;
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        rest = tail.get(end + 1..).unwrap_or(&[]);
        match field {
            b'S' => err.severity = value,
            b'V' => severity_nonlocalized = Some(value),
            b'C' => err.code = value,
            b'M' => err.message = value,
            b'D' => err.detail = Some(value),
            b'H' => err.hint = Some(value),
            _ => {}
        }
    }
    if let Some(v) = severity_nonlocalized {
        err.severity = v;
    }
    err
}

/// A forward-only reader over a message body used by the connection code.
pub(crate) struct BodyReader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> BodyReader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        BodyReader { buf, what }
    }

    fn short(&self) -> Error {
        Error::Protocol(format!("truncated {} message", self.what))
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn i16(&mut self) -> Result<i16, Error> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, Error> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i64(&mut self) -> Result<i64, Error> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub fn cstr(&mut self) -> Result<String, Error> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.short())?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields() {
        let body =
            b"SERROR\0VERROR\0C55000\0Mlogical decoding requires wal_level >= logical\0Fx.c\0\0";
        let e = parse_error_fields(body);
        assert_eq!(e.code, "55000");
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.message, "logical decoding requires wal_level >= logical");
        // Truncated input never panics.
        for i in 0..body.len() {
            let _ = parse_error_fields(&body[..i]);
        }
    }

    #[test]
    fn body_reader_truncation() {
        let mut r = BodyReader::new(&[0, 1, 0, 0], "test");
        assert_eq!(r.i16().unwrap(), 1);
        assert!(r.i32().is_err());
        let mut r = BodyReader::new(b"abc", "test");
        assert!(r.cstr().is_err());
    }
}
