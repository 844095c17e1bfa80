//! TLS to PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`, read
//! from a `postgres://` URL's query and applied the same way on all three paths: SQL
//! connections (`tokio-postgres` with `postgres-openssl`), the replication
//! connection (our own client, with `tokio-openssl`) and `pg_dump` (through
//! `PGSSLMODE` and friends). All of it is the system OpenSSL that librdkafka already
//! links.
//!
//! What each mode guarantees, as in libpq:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | no |
//! | `prefer` (default) | when the server offers TLS; plain when it answers `N` | only if `sslrootcert` is given: the chain, as `verify-ca` |
//! | `require` | always, or the connection fails | only if `sslrootcert` is given: the chain, as `verify-ca` |
//! | `verify-ca` | always | chain up to a CA in `sslrootcert` |
//! | `verify-full` | always | chain, and the URL's host is a DNS or IP subjectAltName |
//!
//! Unlike libpq, nothing is read from `~/.postgresql/`: name the files in the URL.
//! Files are read at every connection attempt, so rotated certificates are picked up
//! on the next reconnect. Key contents never reach an error or `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{ConnectConfiguration, Ssl, SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContextRef, X509};

pub(crate) mod sql;

/// libpq's `sslmode` (without `allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain when it does not.
    #[default]
    Prefer,
    /// TLS or fail; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS with the server's chain checked against `sslrootcert`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

/// The `sslmode` values accepted, for error messages.
const MODES: &str = "disable, prefer, require, verify-ca, verify-full";

impl SslMode {
    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Result<SslMode, TlsError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(TlsError::Setting(format!(
                    "sslmode `{other}` is not one of {MODES}"
                )))
            }
        })
    }

    /// Whether a server without TLS must be refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndHost,
}

/// The TLS settings of one server, parsed from its URL.
///
/// Guarantees: the combination is one libpq accepts (a `verify-*` mode names its CA
/// file, `sslcert` and `sslkey` come together); parsing reads no file. `Debug`
/// shows the mode and the file paths, never a file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    mode: SslMode,
    root_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The query parameters this module owns; others stay in the URL.
const PARAMS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl TlsSettings {
    /// Plain connections only (`sslmode=disable`).
    pub fn disabled() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Disable,
            ..TlsSettings::default()
        }
    }

    /// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a
    /// `postgres://` URL's query (percent-decoded) and returns them with the URL
    /// without them. A string that is not a URL is returned unchanged, with the
    /// default settings (the caller applies its own `sslmode`).
    pub fn from_url(url: &str) -> Result<(TlsSettings, String), TlsError> {
        let Some(scheme_end) = url.find("://") else {
            return Ok((TlsSettings::default(), url.to_string()));
        };
        let authority_start = scheme_end + 3;
        let after_userinfo = url[authority_start..]
            .rfind('@')
            .map_or(authority_start, |at| authority_start + at + 1);
        let Some(q) = url[after_userinfo..].find('?').map(|q| after_userinfo + q) else {
            return Ok((TlsSettings::default(), url.to_string()));
        };
        let (mut mode, mut root_cert, mut cert, mut key) = (None, None, None, None);
        let mut kept = Vec::new();
        for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(k);
            if !PARAMS.contains(&name.as_str()) {
                kept.push(pair);
                continue;
            }
            let value = percent_decode(v);
            if value.is_empty() {
                return Err(TlsError::Setting(format!(
                    "{name} is empty; give a value or remove it"
                )));
            }
            match name.as_str() {
                "sslmode" => mode = Some(SslMode::parse(&value)?),
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                "sslcert" => cert = Some(PathBuf::from(value)),
                _ => key = Some(PathBuf::from(value)),
            }
        }
        let settings = TlsSettings::new(mode.unwrap_or_default(), root_cert, cert, key)?;
        let mut rest = url[..q].to_string();
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        Ok((settings, rest))
    }

    /// Checks the combination as libpq does.
    pub fn new(
        mode: SslMode,
        root_cert: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<TlsSettings, TlsError> {
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(TlsError::Setting(format!(
                "sslmode={mode} needs sslrootcert=<file of the CA certificates that sign the server's certificate>, or a weaker sslmode (require encrypts without checking the certificate)"
            )));
        }
        match (&cert, &key) {
            (Some(_), None) => {
                return Err(TlsError::Setting(
                    "sslcert needs sslkey=<file of the client certificate's private key>".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(TlsError::Setting(
                    "sslkey needs sslcert=<file of the client certificate>".into(),
                ))
            }
            _ => {}
        }
        Ok(TlsSettings {
            mode,
            root_cert,
            cert,
            key,
        })
    }

    /// The mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    fn verify(&self) -> Verify {
        match self.mode {
            SslMode::VerifyFull => Verify::ChainAndHost,
            SslMode::VerifyCa => Verify::Chain,
            _ if self.root_cert.is_some() => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// `PGSSLMODE` and the file variables for `pg_dump`/`psql` children, so that
    /// libpq applies the same settings (and not a `PGSSLMODE` of our environment).
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.mode.as_str().to_string())];
        let files = [
            ("PGSSLROOTCERT", &self.root_cert),
            ("PGSSLCERT", &self.cert),
            ("PGSSLKEY", &self.key),
        ];
        for (var, path) in files {
            if let Some(p) = path {
                env.push((var, p.display().to_string()));
            }
        }
        env
    }

    /// Builds the OpenSSL connector: reads the CA file (which then is the only trust
    /// anchor) and the client certificate and key. Errors name the file and what is
    /// wrong with it. Also the check that `config validate` runs.
    pub fn connector(&self) -> Result<SslConnector, TlsError> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
        if let Some(path) = &self.root_cert {
            let pem = read("sslrootcert", path)?;
            let certs = X509::stack_from_pem(&pem).map_err(|e| bad_file("sslrootcert", path, e))?;
            if certs.is_empty() {
                return Err(file_error("sslrootcert", path, "holds no PEM certificate"));
            }
            let mut store = X509StoreBuilder::new().map_err(setup)?;
            for c in certs {
                store.add_cert(c).map_err(setup)?;
            }
            b.set_cert_store(store.build());
        }
        if let (Some(cert_path), Some(key_path)) = (&self.cert, &self.key) {
            let pem = read("sslcert", cert_path)?;
            let mut chain = X509::stack_from_pem(&pem)
                .map_err(|e| bad_file("sslcert", cert_path, e))?
                .into_iter();
            let leaf = chain
                .next()
                .ok_or_else(|| file_error("sslcert", cert_path, "holds no PEM certificate"))?;
            b.set_certificate(&leaf).map_err(setup)?;
            for c in chain {
                b.add_extra_chain_cert(c).map_err(setup)?;
            }
            check_key_permissions(key_path)?;
            let pem = read("sslkey", key_path)?;
            let mut encrypted = false;
            let key = PKey::private_key_from_pem_callback(&pem, |_| {
                encrypted = true;
                Ok(0)
            })
            .map_err(|e| {
                if encrypted {
                    file_error("sslkey", key_path, "is encrypted and sslpassword is not supported; decrypt it (`openssl pkey -in KEY -out PLAIN`) and keep it mode 0600")
                } else {
                    bad_file("sslkey", key_path, e)
                }
            })?;
            b.set_private_key(&key).map_err(setup)?;
            b.check_private_key().map_err(|_| {
                file_error(
                    "sslkey",
                    key_path,
                    "is not the private key of the certificate in sslcert",
                )
            })?;
        }
        Ok(b.build())
    }

    /// Sets up one connection: what is verified; `probe` records why verification
    /// failed.
    pub(crate) fn configure(&self, c: &mut ConnectConfiguration, probe: &VerifyProbe) {
        match self.verify() {
            Verify::Nothing => {
                c.set_verify(SslVerifyMode::NONE);
                c.set_verify_hostname(false);
            }
            Verify::Chain | Verify::ChainAndHost => {
                c.set_verify_hostname(self.verify() == Verify::ChainAndHost);
                let seen = probe.clone();
                c.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
                    if !ok {
                        seen.record(ctx);
                    }
                    ok
                });
            }
        }
    }

    /// A ready `Ssl` for one connection to `host` (reads the files).
    pub(crate) fn ssl(&self, host: &str) -> Result<(Ssl, VerifyProbe), TlsError> {
        let mut c = self.connector()?.configure().map_err(setup)?;
        let probe = VerifyProbe::default();
        self.configure(&mut c, &probe);
        let ssl = c.into_ssl(host).map_err(setup)?;
        Ok((ssl, probe))
    }

    /// The error for a failed handshake: a verification failure if the probe saw
    /// one, else what OpenSSL reported.
    pub(crate) fn handshake_error(
        &self,
        error: &openssl::ssl::Error,
        probe: &VerifyProbe,
    ) -> TlsError {
        self.failure(describe_ssl_error(error), error.io_error().is_some(), probe)
    }

    /// As [`TlsSettings::handshake_error`] from OpenSSL's `reason` (`io`: the
    /// network failed).
    pub(crate) fn failure(&self, reason: String, io: bool, probe: &VerifyProbe) -> TlsError {
        match probe.failure() {
            Some(reason) => TlsError::Untrusted {
                mode: self.mode,
                reason,
                root_cert: self
                    .root_cert
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            },
            None => TlsError::Handshake {
                mode: self.mode,
                reason,
                io,
            },
        }
    }
}

/// What a failed certificate check was about, recorded by the verify callback
/// (OpenSSL's own handshake error only says "certificate verify failed").
#[derive(Clone, Default)]
pub(crate) struct VerifyProbe(Arc<Mutex<Option<String>>>);

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

    /// The first verification failure, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// OpenSSL's reasons, without the error codes and source locations.
fn describe_ssl_error(e: &openssl::ssl::Error) -> String {
    if let Some(stack) = e.ssl_error() {
        let reasons: Vec<String> = stack
            .errors()
            .iter()
            .map(|x| x.reason().unwrap_or("unknown OpenSSL error").to_string())
            .collect();
        if !reasons.is_empty() {
            return reasons.join("; ");
        }
    }
    match e.io_error() {
        Some(io) => io.to_string(),
        None if e.code() == openssl::ssl::ErrorCode::SYSCALL => {
            "the server closed the connection during the handshake".into()
        }
        None => e.to_string(),
    }
}

/// A TLS failure. Guarantees: no message holds key material or a password; each
/// says what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The URL's TLS parameters are not a valid combination.
    #[error("{0}")]
    Setting(String),
    /// A file named in the URL cannot be used.
    #[error("{param}={path} {problem}")]
    File {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        param: &'static str,
        /// The path as given.
        path: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The server answered `N` to SSLRequest under a mode that requires TLS.
    #[error("the server does not accept TLS connections (it answered SSLRequest with `N`), but sslmode={mode} requires TLS; set `ssl = on` (with ssl_cert_file and ssl_key_file) on the server, or use sslmode=prefer or disable if an unencrypted connection is acceptable")]
    Refused {
        /// The mode in force.
        mode: SslMode,
    },
    /// The server's certificate failed verification.
    #[error("the server's certificate failed verification under sslmode={mode}: {reason}; check that sslrootcert={root_cert} holds the CA that signed the server's certificate and, for verify-full, that the certificate names the URL's host (as a DNS or IP subjectAltName)")]
    Untrusted {
        /// The mode in force.
        mode: SslMode,
        /// OpenSSL's verification error.
        reason: String,
        /// The CA file.
        root_cert: String,
    },
    /// The handshake failed otherwise.
    #[error("the TLS handshake failed under sslmode={mode}: {reason}; check the server's ssl settings and, if it asks for a client certificate, sslcert and sslkey")]
    Handshake {
        /// The mode in force.
        mode: SslMode,
        /// OpenSSL's reasons.
        reason: String,
        /// Whether the network failed (worth a retry) rather than the handshake.
        io: bool,
    },
    /// OpenSSL could not be set up.
    #[error("cannot set up OpenSSL: {0}")]
    Setup(String),
}

impl TlsError {
    /// Whether trying again can help: only a network failure mid-handshake.
    pub fn is_transient(&self) -> bool {
        matches!(self, TlsError::Handshake { io: true, .. })
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

/// libpq (and so `pg_dump`) refuses a key others can read; refuse it up front with
/// the same rule, rather than fail in the middle of a base image.
fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| file_error("sslkey", path, format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(file_error("sslkey", path, "is not a regular file"));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mode = meta.mode();
    let loose = if meta.uid() == euid {
        mode & 0o077 != 0
    } else {
        meta.uid() == 0 && mode & 0o037 != 0
    };
    if loose {
        return Err(file_error(
            "sslkey",
            path,
            format!("has group or world access (mode {:04o}); libpq refuses such a key: chmod 600 it (or 640 if owned by root)", mode & 0o7777),
        ));
    }
    Ok(())
}

/// Decodes `%XX` escapes (and `+` is kept as is, as libpq does).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_leave_the_url() {
        let (t, rest) = TlsSettings::from_url(
            "postgres://u:p%40w@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=/a%20b/ca.pem&sslcert=c.pem&sslkey=k.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%40w@h:5/db?application_name=x");
        assert_eq!(t.mode(), SslMode::VerifyFull);
        assert_eq!(t.root_cert.as_deref(), Some(Path::new("/a b/ca.pem")));
        assert_eq!(t.verify(), Verify::ChainAndHost);
        let env = t.child_env();
        assert!(env.contains(&("PGSSLMODE", "verify-full".into())));
        assert!(env.contains(&("PGSSLROOTCERT", "/a b/ca.pem".into())));
        assert!(env.contains(&("PGSSLKEY", "k.pem".into())));

        let (t, rest) = TlsSettings::from_url("postgres://u@h/db").unwrap();
        assert_eq!(
            (t.mode(), rest.as_str()),
            (SslMode::Prefer, "postgres://u@h/db")
        );
        assert_eq!(t.verify(), Verify::Nothing);
        // A `?` in a password (before the last `@`) is not the query.
        let (_, rest) = TlsSettings::from_url("postgres://u:a?b@h/db?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
    }

    #[test]
    fn libpq_rules() {
        let (t, _) =
            TlsSettings::from_url("postgres://h/db?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(
            t.verify(),
            Verify::Chain,
            "require with a CA checks the chain"
        );
        let e = TlsSettings::from_url("postgres://h/db?sslmode=allow").unwrap_err();
        assert!(e.to_string().contains(MODES), "{e}");
        let e = TlsSettings::from_url("postgres://h/db?sslmode=verify-ca").unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let e = TlsSettings::from_url("postgres://h/db?sslcert=c.pem").unwrap_err();
        assert!(e.to_string().contains("sslkey"), "{e}");
        assert!(TlsSettings::from_url("postgres://h/db?sslmode=").is_err());
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let t = TlsSettings::new(SslMode::VerifyCa, Some(missing.clone()), None, None).unwrap();
        let e = t.connector().unwrap_err().to_string();
        assert!(e.contains("sslrootcert") && e.contains("nope.pem"), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let t = TlsSettings::new(SslMode::VerifyCa, Some(junk), None, None).unwrap();
        let e = t.connector().unwrap_err().to_string();
        assert!(e.contains("no PEM certificate") || e.contains("PEM"), "{e}");
    }

    #[test]
    fn loose_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, "secret-key-material").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_key_permissions(&key).unwrap_err().to_string();
        assert!(
            e.contains("chmod 600") && !e.contains("secret-key-material"),
            "{e}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_key_permissions(&key).unwrap();
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }
}
