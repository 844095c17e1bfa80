//! What can go wrong with a PostgreSQL source or target. Every message names the
//! server (password masked) and says what to do; [`PgError::is_transient`] tells
//! the supervisor whether trying again can help.

use std::time::Duration;

use super::repl;
use crate::capture::Fault;
use crate::journal::JournalError;

/// A PostgreSQL failure.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL cannot be used.
    #[error("`{url}` is not a valid postgres:// URL ({detail}); use postgres://user:password@host:port/database, with special characters in the password percent-encoded")]
    BadUrl {
        /// The URL, password masked.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// Login refused.
    #[error("cannot log in to {target}: {detail}; check the user and password in the url")]
    Auth {
        /// The server, password masked.
        target: String,
        /// The server's message.
        detail: String,
    },
    /// No connection could be made (server down, wrong port, network).
    #[error("cannot connect to {target}: {detail}; check that the server is running and the url's host and port")]
    Connect {
        /// The server, password masked.
        target: String,
        /// The reason.
        detail: String,
    },
    /// TLS to the server failed, or the URL's TLS parameters are unusable.
    #[error("{target}: {error}")]
    Tls {
        /// The server, password masked.
        target: String,
        /// What failed and what to do.
        error: super::tls::TlsError,
    },
    /// The server did not answer in time.
    #[error("{target} did not answer {what} within {}s; check that the server is up and reachable (timeouts are set in [timeouts])", .after.as_secs())]
    Timeout {
        /// The server, password masked.
        target: String,
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// A statement failed.
    #[error("{target}: {detail}")]
    Query {
        /// The server, password masked.
        target: String,
        /// The server's message (with its hint).
        detail: String,
        /// SQLSTATE, when the server sent one.
        code: Option<String>,
    },
    /// The server is not set up the way capture needs; the message says how to fix it.
    #[error("{target}: {detail}")]
    Unsuitable {
        /// The server, password masked.
        target: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The replication protocol failed.
    #[error(transparent)]
    Replication(#[from] repl::Error),
    /// A replication stream went silent.
    #[error("{target}: no data and no keepalive on the replication stream for {}s (the connection is half-open or the walsender is gone); reconnecting", .after.as_secs())]
    Stalled {
        /// The server, password masked.
        target: String,
        /// How long it was silent.
        after: Duration,
    },
    /// Journal history and the server's slot disagree: continuing would lose data.
    #[error("{0}")]
    History(String),
    /// `resync = "auto"`: the history ended and a new one starts on the next attempt.
    #[error("{0}; resync = \"auto\": starting a new history (new slot and base image)")]
    Resyncing(String),
    /// A change capture cannot represent.
    #[error("cannot capture the change at {position}{location}: {detail}")]
    Undecodable {
        /// Source position.
        position: String,
        /// ` (table t, column c)` where known.
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// `pg_dump` or `psql` failed or is missing.
    #[error("{0}")]
    Tool(String),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl PgError {
    /// A failed statement against `target`.
    pub fn query(target: &str, e: &tokio_postgres::Error) -> PgError {
        if e.as_db_error().is_none() && (e.is_closed() || e.to_string().contains("connection")) {
            return PgError::Connect {
                target: target.to_string(),
                detail: e.to_string(),
            };
        }
        PgError::Query {
            target: target.to_string(),
            detail: super::conn::db_error(e),
            code: e.code().map(|c| c.code().to_string()),
        }
    }

    /// Whether trying again can help: the network and a server restarting, yes; a
    /// configuration, a permission or a history problem, no. An undecodable change
    /// is retried too (a damaged frame would decode the next time): the supervisor
    /// stops the source once the same failure repeats at the same position.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Connect { .. }
            | PgError::Timeout { .. }
            | PgError::Stalled { .. }
            | PgError::Resyncing(_)
            | PgError::Undecodable { .. } => true,
            PgError::Query { code, .. } => code.as_deref().is_none_or(transient_sqlstate),
            PgError::Replication(e) => replication_transient(e),
            PgError::Tls { error, .. } => error.is_transient(),
            _ => false,
        }
    }
}

/// Connection exceptions (08), operator intervention (57: shutdown, crash
/// recovery), insufficient resources (53), serialization and deadlock (40).
fn transient_sqlstate(code: &str) -> bool {
    ["08", "57", "53", "40"].iter().any(|c| code.starts_with(c))
}

fn replication_transient(e: &repl::Error) -> bool {
    use repl::Error as E;
    match e {
        E::Unreachable { .. } | E::ConnectTimeout { .. } => true,
        E::WrongPassword { .. } | E::LoginRejected { .. } => false,
        E::Tls { error, .. } => error.is_transient(),
        other => match other.server_error() {
            // 55006: the slot is still held by the walsender of a dropped link.
            Some(server) => transient_sqlstate(&server.code) || server.code == "55006",
            // I/O and protocol breaks: the link, not the configuration.
            None => true,
        },
    }
}

impl Fault for PgError {
    fn is_transient(&self) -> bool {
        PgError::is_transient(self)
    }
}

/// A message from the server, or a record from the journal, that does not have the
/// shape it must have; the text says what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl From<String> for Malformed {
    fn from(s: String) -> Self {
        Malformed(s)
    }
}

impl From<&str> for Malformed {
    fn from(s: &str) -> Self {
        Malformed(s.to_string())
    }
}
