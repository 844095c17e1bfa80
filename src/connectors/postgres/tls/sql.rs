//! TLS for `tokio-postgres`: `postgres-openssl`'s connector set up from
//! [`TlsSettings`], with its handshake failures turned into [`TlsError`]s that
//! [`from_connect_error`] finds again in the `tokio_postgres::Error`.

use std::error::Error as StdError;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use openssl::error::ErrorStack;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use super::{TlsError, TlsSettings, VerifyProbe};

/// A `MakeTlsConnect` for one [`ConnInfo::connect`](super::super::conn::ConnInfo::connect)
/// call: every host it tries gets the settings' verification, and a failed
/// handshake becomes a [`TlsError`].
#[derive(Clone)]
pub(crate) struct MakeTls {
    inner: postgres_openssl::MakeTlsConnector,
    settings: TlsSettings,
    probe: VerifyProbe,
}

impl MakeTls {
    /// Reads the settings' files and builds the connector.
    pub(crate) fn new(settings: &TlsSettings) -> Result<MakeTls, TlsError> {
        let mut inner = postgres_openssl::MakeTlsConnector::new(settings.connector()?);
        let probe = VerifyProbe::default();
        let (s, p) = (settings.clone(), probe.clone());
        inner.set_callback(move |c, _host| {
            s.configure(c, &p);
            Ok(())
        });
        Ok(MakeTls {
            inner,
            settings: settings.clone(),
            probe,
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Debug + 'static + Sync + Send,
{
    type Stream = postgres_openssl::TlsStream<S>;
    type TlsConnect = Connect;
    type Error = ErrorStack;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, ErrorStack> {
        let inner = <postgres_openssl::MakeTlsConnector as MakeTlsConnect<S>>::make_tls_connect(
            &mut self.inner,
            domain,
        )?;
        Ok(Connect {
            inner,
            settings: self.settings.clone(),
            probe: self.probe.clone(),
        })
    }
}

/// One handshake.
pub(crate) struct Connect {
    inner: postgres_openssl::TlsConnector,
    settings: TlsSettings,
    probe: VerifyProbe,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = postgres_openssl::TlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Connect {
            inner,
            settings,
            probe,
        } = self;
        Box::pin(async move {
            inner.connect(stream).await.map_err(|e| {
                match e
                    .source()
                    .and_then(|s| s.downcast_ref::<openssl::ssl::Error>())
                {
                    Some(ssl) => settings.handshake_error(ssl, &probe),
                    None => settings.failure(e.to_string(), false, &probe),
                }
            })
        })
    }
}

/// The TLS failure inside a connect error, if it is one: ours from a handshake, or
/// `tokio-postgres`'s own for a server that answered `N` under a mode requiring TLS.
pub(crate) fn from_connect_error(
    e: &tokio_postgres::Error,
    settings: &TlsSettings,
) -> Option<TlsError> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<TlsError>() {
            return Some(t.clone());
        }
        // tokio-postgres's words for an `N` answer to SSLRequest (connect_tls.rs).
        if s.to_string() == "server does not support TLS" {
            return Some(TlsError::Refused {
                mode: settings.mode(),
            });
        }
        source = s.source();
    }
    None
}
