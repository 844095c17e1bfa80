//! TLS for `rediss://` (and `rediss+sentinel://`): the system OpenSSL through the
//! `openssl` crate, the same library PostgreSQL's and Kafka's TLS use.
//!
//! The URL's query carries the settings:
//!
//! | parameter | meaning |
//! |---|---|
//! | `ca` | PEM file of the CA certificates to trust: then the only ones trusted. Without it, OpenSSL's default trust store |
//! | `cert`, `key` | client certificate (PEM, may hold its chain) and its unencrypted private key, for servers with `tls-auth-clients yes` |
//! | `verify` | `full` (default): the chain, and the URL's host must be a DNS or IP subjectAltName of the certificate. `ca`: the chain only (for addresses the certificate does not name, such as those Sentinel announces). `none`: nothing is checked, a warning is logged: encrypted, not authenticated |
//!
//! Files are read at every connection, so rotated certificates are picked up on
//! the next reconnect; `config validate` reads them once to check them. No error
//! or `Debug` output holds key material.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{ErrorCode, SslConnector, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContextRef, X509};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// The chain up to a trusted CA, and the host name or IP address.
    #[default]
    Full,
    /// The chain only.
    Ca,
    /// Nothing (encrypted but not authenticated).
    None,
}

impl Verify {
    fn as_str(self) -> &'static str {
        match self {
            Verify::Full => "full",
            Verify::Ca => "ca",
            Verify::None => "none",
        }
    }
}

/// The TLS settings of a `rediss://` URL. Guarantees: `cert` and `key` come
/// together; parsing reads no file. `Debug` shows paths, never contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `ca`: the CA certificates to trust.
    pub ca: Option<PathBuf>,
    /// `cert`: the client certificate.
    pub cert: Option<PathBuf>,
    /// `key`: the client certificate's private key.
    pub key: Option<PathBuf>,
    /// `verify`.
    pub verify: Verify,
}

/// The query parameters [`TlsOptions`] owns.
pub const PARAMS: &[&str] = &["ca", "cert", "key", "verify"];

impl TlsOptions {
    /// Takes one query parameter (`name` one of [`PARAMS`], `value` decoded).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        if value.is_empty() {
            return Err(format!("{name} is empty; give a value or remove it"));
        }
        match name {
            "ca" => self.ca = Some(PathBuf::from(value)),
            "cert" => self.cert = Some(PathBuf::from(value)),
            "key" => self.key = Some(PathBuf::from(value)),
            "verify" => {
                self.verify = match value {
                    "full" => Verify::Full,
                    "ca" => Verify::Ca,
                    "none" => Verify::None,
                    other => {
                        return Err(format!(
                            "verify `{other}` is not one of full (the default), ca, none"
                        ))
                    }
                }
            }
            other => return Err(format!("`{other}` is not a TLS parameter")),
        }
        Ok(())
    }

    /// Checks the combination (no file is read).
    pub fn check(&self) -> Result<(), String> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                Err("cert needs key=<file of the client certificate's private key>".into())
            }
            (None, Some(_)) => Err("key needs cert=<file of the client certificate>".into()),
            _ => Ok(()),
        }
    }

    /// Builds the OpenSSL connector: reads the CA file and the client certificate
    /// and key. Errors name the parameter and the file. Also what `config
    /// validate` runs.
    pub fn connector(&self) -> Result<SslConnector, TlsError> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
        // Take whatever the socket holds in one read, not a record header and
        // then its body: half the system calls on the replication stream.
        b.set_read_ahead(true);
        if let Some(path) = &self.ca {
            let pem = read("ca", path)?;
            let certs = X509::stack_from_pem(&pem).map_err(|e| bad_file("ca", path, e))?;
            if certs.is_empty() {
                return Err(file_error("ca", path, "holds no PEM certificate"));
            }
            let mut store = X509StoreBuilder::new().map_err(setup)?;
            for c in certs {
                store.add_cert(c).map_err(setup)?;
            }
            b.set_cert_store(store.build());
        }
        if let (Some(cert_path), Some(key_path)) = (&self.cert, &self.key) {
            let pem = read("cert", cert_path)?;
            let mut chain = X509::stack_from_pem(&pem)
                .map_err(|e| bad_file("cert", cert_path, e))?
                .into_iter();
            let leaf = chain
                .next()
                .ok_or_else(|| file_error("cert", cert_path, "holds no PEM certificate"))?;
            b.set_certificate(&leaf).map_err(setup)?;
            for c in chain {
                b.add_extra_chain_cert(c).map_err(setup)?;
            }
            let pem = read("key", key_path)?;
            let mut encrypted = false;
            let key = PKey::private_key_from_pem_callback(&pem, |_| {
                encrypted = true;
                Ok(0)
            })
            .map_err(|e| {
                if encrypted {
                    file_error("key", key_path, "is encrypted, and tidemark takes no passphrase; decrypt it (`openssl pkey -in KEY -out PLAIN`) and keep it readable by tidemark only")
                } else {
                    bad_file("key", key_path, e)
                }
            })?;
            b.set_private_key(&key).map_err(setup)?;
            b.check_private_key().map_err(|_| {
                file_error(
                    "key",
                    key_path,
                    "is not the private key of the certificate in cert",
                )
            })?;
        }
        Ok(b.build())
    }

    /// The TLS handshake on `tcp` for a server reached as `host` (its read
    /// timeout bounds the handshake).
    pub fn connect(&self, tcp: TcpStream, host: &str) -> Result<SslStream<TcpStream>, TlsError> {
        let connector = self.connector()?;
        let mut c = connector.configure().map_err(setup)?;
        let probe = VerifyProbe::default();
        match self.verify {
            Verify::None => {
                warn_unverified();
                c.set_verify(SslVerifyMode::NONE);
                c.set_verify_hostname(false);
            }
            Verify::Ca | Verify::Full => {
                c.set_verify_hostname(self.verify == Verify::Full);
                let seen = probe.clone();
                c.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
                    if !ok {
                        seen.record(ctx);
                    }
                    ok
                });
            }
        }
        let ssl = c.into_ssl(host).map_err(setup)?;
        let mut stream = SslStream::new(ssl, tcp).map_err(setup)?;
        match stream.connect() {
            Ok(()) => Ok(stream),
            Err(e) => Err(self.failure(&e, &probe)),
        }
    }

    fn failure(&self, e: &openssl::ssl::Error, probe: &VerifyProbe) -> TlsError {
        if let Some(reason) = probe.failure() {
            return TlsError::Untrusted {
                verify: self.verify.as_str(),
                reason,
                ca: self
                    .ca
                    .as_deref()
                    .map(|p| format!("ca={}", p.display()))
                    .unwrap_or_else(|| "the system's trust store (no ca= given)".into()),
            };
        }
        if let Some(io) = e.io_error() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) || e.code() == ErrorCode::WANT_READ
            {
                return TlsError::Timeout;
            }
        }
        TlsError::Handshake {
            reason: describe_ssl_error(e),
            io: e.io_error().is_some(),
        }
    }
}

/// Logs, once per process, that a `verify=none` connection is not authenticated.
fn warn_unverified() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("a rediss:// url has verify=none: the server's certificate is not checked, so the connection is encrypted but anyone on the path can impersonate the server; give ca= (and keep verify=full) instead");
    }
}

/// What a failed certificate check was about, recorded by the verify callback
/// (OpenSSL's handshake error only says "certificate verify failed").
#[derive(Clone, Default)]
struct VerifyProbe(Arc<Mutex<Option<String>>>);

impl VerifyProbe {
    fn record(&self, ctx: &X509StoreContextRef) {
        let subject = ctx
            .current_cert()
            .and_then(|c| {
                c.subject_name()
                    .entries_by_nid(Nid::COMMONNAME)
                    .next()
                    .and_then(|e| e.data().to_string().ok())
                    .map(|s| format!(" (certificate CN={s}, depth {})", ctx.error_depth()))
            })
            .unwrap_or_default();
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert_with(|| format!("{}{subject}", ctx.error()));
        }
    }

    fn failure(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// OpenSSL's reasons, without error codes and source locations.
fn describe_ssl_error(e: &openssl::ssl::Error) -> String {
    if let Some(stack) = e.ssl_error() {
        let reasons: Vec<&str> = stack.errors().iter().filter_map(|x| x.reason()).collect();
        if !reasons.is_empty() {
            return reasons.join("; ");
        }
    }
    match e.io_error() {
        Some(io) => io.to_string(),
        None if e.code() == ErrorCode::SYSCALL => {
            "the server closed the connection during the handshake (is the port a TLS port?)".into()
        }
        None => e.to_string(),
    }
}

/// The TLS reason inside an I/O error of an established session (an alert the
/// server sent after the handshake, such as "certificate required"), if any.
pub fn session_failure(e: &std::io::Error) -> Option<String> {
    let ssl = e.get_ref()?.downcast_ref::<openssl::ssl::Error>()?;
    Some(describe_ssl_error(ssl))
}

/// A TLS failure. Guarantees: no message holds key material or a password; each
/// says what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file named in the URL cannot be used.
    #[error("{param}={path} {problem}")]
    File {
        /// `ca`, `cert` or `key`.
        param: &'static str,
        /// The path as given.
        path: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The server's certificate failed verification.
    #[error("the server's certificate failed verification (verify={verify}): {reason}; check that {ca} holds the CA that signed the server's certificate and, for verify=full, that the certificate names the url's host (as a DNS or IP subjectAltName); verify=ca checks the chain only")]
    Untrusted {
        /// The `verify` setting.
        verify: &'static str,
        /// OpenSSL's verification error.
        reason: String,
        /// Where trust came from.
        ca: String,
    },
    /// The handshake, or the first exchange after it, failed otherwise.
    #[error("the TLS handshake failed: {reason}; check that the port is the server's tls-port and, if the server requires client certificates (tls-auth-clients), give cert= and key=")]
    Handshake {
        /// OpenSSL's reasons.
        reason: String,
        /// Whether the network failed (worth a retry) rather than the handshake.
        io: bool,
    },
    /// The server did not complete the handshake within the read timeout.
    #[error("the TLS handshake did not complete in time (see [timeouts]); check that the port is the server's tls-port")]
    Timeout,
    /// OpenSSL could not be set up.
    #[error("cannot set up OpenSSL: {0}")]
    Setup(String),
}

impl TlsError {
    /// Whether trying again can help: a network failure or a timeout.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TlsError::Handshake { io: true, .. } | TlsError::Timeout
        )
    }
}

fn setup(e: ErrorStack) -> TlsError {
    TlsError::Setup(e.to_string())
}

fn file_error(param: &'static str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::File {
        param,
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

fn bad_file(param: &'static str, path: &Path, e: ErrorStack) -> TlsError {
    let reasons: Vec<&str> = e.errors().iter().filter_map(|x| x.reason()).collect();
    file_error(
        param,
        path,
        format!(
            "is not a usable PEM file ({}); give a PEM file",
            if reasons.is_empty() {
                "OpenSSL cannot parse it".to_string()
            } else {
                reasons.join("; ")
            }
        ),
    )
}

fn read(param: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(param, path, format!("cannot be read: {e}")))
}

/// A connection's byte stream: plain TCP, or TLS over TCP. One `match` per read
/// or write (both buffered by the callers), so the plain path costs nothing
/// measurable.
pub enum Stream {
    /// `redis://`.
    Plain(TcpStream),
    /// `rediss://`.
    Tls(Box<SslStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (timeouts, addresses).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }

    /// Sets the socket's read timeout; a TLS read that times out returns
    /// `WouldBlock` and the session stays usable.
    pub fn set_read_timeout(&self, d: Option<std::time::Duration>) -> std::io::Result<()> {
        self.tcp().set_read_timeout(d)
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp().local_addr()
    }

    /// Whether this is a TLS session.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters() {
        let mut t = TlsOptions::default();
        t.set("ca", "/etc/ca.pem").unwrap();
        t.set("verify", "ca").unwrap();
        assert_eq!(t.verify, Verify::Ca);
        assert!(t.check().is_ok());
        assert!(t.set("verify", "maybe").unwrap_err().contains("full"));
        assert!(t.set("ca", "").is_err());
        t.set("cert", "c.pem").unwrap();
        assert!(t.check().unwrap_err().contains("key"));
        t.set("key", "k.pem").unwrap();
        assert!(t.check().is_ok());
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = TlsOptions {
            ca: Some(dir.path().join("nope.pem")),
            ..TlsOptions::default()
        };
        let e = t.connector().unwrap_err().to_string();
        assert!(e.starts_with("ca=") && e.contains("nope.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "secret-junk").unwrap();
        let t = TlsOptions {
            ca: Some(junk.clone()),
            ..TlsOptions::default()
        };
        let e = t.connector().unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        let t = TlsOptions {
            cert: Some(junk.clone()),
            key: Some(junk),
            ..TlsOptions::default()
        };
        let e = t.connector().unwrap_err().to_string();
        assert!(e.starts_with("cert=") && !e.contains("secret-junk"), "{e}");
    }
}
