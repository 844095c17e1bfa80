//! Error types for the replication connection.

use std::fmt;
use std::io;

/// An `ErrorResponse` (or `NoticeResponse`) sent by the server.
///
/// Guarantees: fields are copied verbatim from the server's message
/// (lossily decoded as UTF-8); absent fields are empty strings / `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// Severity, e.g. `ERROR` or `FATAL` (non-localized when the server sends it).
    pub severity: String,
    /// The five-character SQLSTATE code, e.g. `28P01`.
    pub code: String,
    /// The primary human-readable message.
    pub message: String,
    /// Optional detail text.
    pub detail: Option<String>,
    /// Optional hint text.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong talking to the server.
///
/// Guarantees: no variant and no `Display` output ever contains the
/// configured password. Variants that describe a server misconfiguration say
/// which setting to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection could not be established (host down, wrong port,
    /// firewall, DNS failure).
    #[error("cannot reach PostgreSQL at {host}:{port}: {source} (check that the server is running, listen_addresses/port are correct and no firewall blocks the connection)")]
    Unreachable {
        /// Configured host.
        host: String,
        /// Configured port.
        port: u16,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// TLS was required and refused, or the handshake or the certificate check
    /// failed.
    #[error("{server}: {error}")]
    Tls {
        /// The server (URL, password masked, or `host:port`).
        server: String,
        /// What failed and what to do.
        error: crate::connectors::postgres::tls::TlsError,
    },
    /// Connecting or authenticating took longer than the configured timeout.
    #[error("timed out after {seconds}s connecting to PostgreSQL at {host}:{port}")]
    ConnectTimeout {
        /// Configured host.
        host: String,
        /// Configured port.
        port: u16,
        /// The timeout that elapsed, in seconds.
        seconds: u64,
    },
    /// The server rejected the password (SQLSTATE 28P01).
    #[error("password authentication failed for user \"{user}\": the configured password is wrong or the role has no password set (the password is not shown)")]
    WrongPassword {
        /// The user that tried to log in.
        user: String,
        /// The server's error.
        server: Box<ServerError>,
    },
    /// The server rejected the login before or regardless of the password
    /// (SQLSTATE class 28, e.g. no matching `pg_hba.conf` line).
    #[error("PostgreSQL refused the login for user \"{user}\": {server} (check pg_hba.conf: a logical replication connection needs a line matching the database, e.g. `host <database> {user} <client-address> scram-sha-256`)")]
    LoginRejected {
        /// The user that tried to log in.
        user: String,
        /// The server's error.
        server: Box<ServerError>,
    },
    /// The server asked for a password but none was configured.
    #[error("PostgreSQL requires a password for user \"{user}\" but none is configured")]
    PasswordRequired {
        /// The user that tried to log in.
        user: String,
    },
    /// The server asked for an authentication method this crate does not
    /// implement (Kerberos, GSSAPI, SSPI, SCRAM with channel binding only).
    #[error("PostgreSQL asked for unsupported authentication method {method}; configure pg_hba.conf to use scram-sha-256, md5, password or trust for this client")]
    UnsupportedAuth {
        /// Name of the requested method.
        method: String,
    },
    /// The role lacks the `REPLICATION` attribute.
    #[error("role \"{user}\" is not allowed to use replication: run `ALTER ROLE \"{user}\" REPLICATION;` as a superuser ({server})")]
    ReplicationNotPermitted {
        /// The user that tried to log in.
        user: String,
        /// The server's error.
        server: Box<ServerError>,
    },
    /// The server runs with `wal_level` below `logical`.
    #[error("PostgreSQL is not configured for logical decoding: set `wal_level = logical` in postgresql.conf (or `ALTER SYSTEM SET wal_level = logical`) and restart the server, a reload is not enough ({server})")]
    WalLevelNotLogical {
        /// The server's error.
        server: Box<ServerError>,
    },
    /// All walsender slots are in use or `max_wal_senders` is 0.
    #[error("PostgreSQL has no free WAL sender: raise `max_wal_senders` in postgresql.conf (restart needed) or close other replication connections ({server})")]
    NoWalSenders {
        /// The server's error.
        server: Box<ServerError>,
    },
    /// Any other error reported by the server.
    #[error("PostgreSQL error: {0}")]
    Server(Box<ServerError>),
    /// The connection failed after it was established.
    #[error("I/O error on the PostgreSQL connection: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection unexpectedly.
    #[error("PostgreSQL closed the connection unexpectedly")]
    Closed,
    /// The server sent something this client did not expect.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The caller passed an invalid argument (e.g. a bad slot name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Returns the server error behind this error, if the server sent one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::WrongPassword { server, .. }
            | Error::LoginRejected { server, .. }
            | Error::ReplicationNotPermitted { server, .. }
            | Error::WalLevelNotLogical { server }
            | Error::NoWalSenders { server }
            | Error::Server(server) => Some(server.as_ref()),
            _ => None,
        }
    }

    /// Classifies a server error into the most specific variant.
    pub(crate) fn from_server(server: ServerError, user: &str) -> Error {
        let server = Box::new(server);
        let msg = server.message.as_str();
        if msg.contains("wal_level") && msg.contains("logical") {
            return Error::WalLevelNotLogical { server };
        }
        match server.code.as_str() {
            "28P01" => Error::WrongPassword {
                user: user.to_string(),
                server,
            },
            "42501" if msg.contains("replication") || msg.contains("walsender") => {
                Error::ReplicationNotPermitted {
                    user: user.to_string(),
                    server,
                }
            }
            "53300" if msg.contains("max_wal_senders") || msg.contains("standby") => {
                Error::NoWalSenders { server }
            }
            c if c.starts_with("28") => Error::LoginRejected {
                user: user.to_string(),
                server,
            },
            _ => Error::Server(server),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn se(code: &str, msg: &str) -> ServerError {
        ServerError {
            severity: "ERROR".into(),
            code: code.into(),
            message: msg.into(),
            ..Default::default()
        }
    }

    #[test]
    fn classification() {
        assert!(matches!(
            Error::from_server(
                se("55000", "logical decoding requires wal_level >= logical"),
                "u"
            ),
            Error::WalLevelNotLogical { .. }
        ));
        assert!(matches!(
            Error::from_server(
                se(
                    "55000",
                    "logical decoding requires \"wal_level\" >= \"logical\""
                ),
                "u"
            ),
            Error::WalLevelNotLogical { .. }
        ));
        assert!(matches!(
            Error::from_server(se("28P01", "password authentication failed"), "u"),
            Error::WrongPassword { .. }
        ));
        assert!(matches!(
            Error::from_server(se("28000", "no pg_hba.conf entry"), "u"),
            Error::LoginRejected { .. }
        ));
        assert!(matches!(
            Error::from_server(se("42P01", "relation does not exist"), "u"),
            Error::Server(_)
        ));
        let e = Error::from_server(
            se("55000", "logical decoding requires wal_level >= logical"),
            "u",
        );
        assert!(e.to_string().contains("wal_level = logical"));
        assert!(e.to_string().contains("restart"));
    }
}
