//! Reaching a MongoDB deployment: connecting with the configured timeouts, the
//! connector's error type, and which namespaces a source captures.

use std::future::Future;
use std::time::Duration;

use mongodb::bson::{doc, Document, RawDocumentBuf, Timestamp};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::capture::Fault;
use crate::config::Timeouts;
use crate::redact::redact_url;

/// Databases never captured, restored or digested: the server's own.
pub const SYSTEM_DBS: &[&str] = &["admin", "config", "local"];

/// What went wrong talking to MongoDB, phrased for the operator (URLs masked).
#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    /// The URL does not parse or names options the driver refuses.
    #[error("MongoDB URL {url} is not usable: {detail}; fix the `url` (mongodb://host:port/?replicaSet=NAME or mongodb+srv://host)")]
    Url {
        /// The URL, password masked.
        url: String,
        /// The driver's complaint.
        detail: String,
    },
    /// A command or the stream failed.
    #[error("MongoDB at {url}: {what} failed: {detail}")]
    Command {
        /// The URL, password masked.
        url: String,
        /// What was being done.
        what: String,
        /// The driver's or server's message (server code included).
        detail: String,
        /// Whether trying again can help (network, election, shutdown).
        transient: bool,
    },
    /// The oplog no longer holds the journal's resume point (server error 286).
    #[error("MongoDB at {url}: the change stream cannot resume from the journal's position {position}: the oplog no longer holds it (server error 286: {detail}); the changes between are lost upstream, so capture records a break and takes a new base image")]
    HistoryLost {
        /// The URL, password masked.
        url: String,
        /// The journal's position.
        position: String,
        /// The server's message.
        detail: String,
    },
    /// The server sent or the journal holds something this version cannot use.
    #[error("MongoDB: {0}")]
    Data(String),
}

impl Fault for MongoError {
    fn is_transient(&self) -> bool {
        match self {
            MongoError::Command { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Server error codes after which a change stream (or a command) may be tried
/// again: the resumable set of MongoDB's change-stream specification, plus the
/// network and election codes.
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 43, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436,
];

/// The server error code of `e`, if it is a server error.
pub fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// Whether trying again can help after `e`.
pub fn is_transient(e: &mongodb::error::Error) -> bool {
    if e.contains_label("ResumableChangeStreamError")
        || e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
    {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => true,
        _ => error_code(e).is_some_and(|c| TRANSIENT_CODES.contains(&c)),
    }
}

/// A connection to one deployment, with its masked URL for messages.
#[derive(Clone)]
pub struct Conn {
    /// The driver's client.
    pub client: Client,
    /// The URL, password masked.
    pub url: String,
}

impl Conn {
    /// Connects (lazily: the driver dials on the first command) with `timeouts`.
    pub async fn open(url: &str, timeouts: &Timeouts) -> Result<Conn, MongoError> {
        let masked = redact_url(url);
        let mut opts = ClientOptions::parse(url)
            .await
            .map_err(|e| MongoError::Url {
                url: masked.clone(),
                detail: e.to_string(),
            })?;
        opts.connect_timeout = Some(timeouts.connect);
        opts.server_selection_timeout = Some(timeouts.connect.max(Duration::from_secs(1)));
        opts.app_name = Some("tidemark".into());
        let client = Client::with_options(opts).map_err(|e| MongoError::Url {
            url: masked.clone(),
            detail: e.to_string(),
        })?;
        Ok(Conn {
            client,
            url: masked,
        })
    }

    /// Wraps a driver error of `what`.
    pub fn err(&self, what: &str, e: mongodb::error::Error) -> MongoError {
        let code = error_code(&e).map_or(String::new(), |c| format!(" (server error {c})"));
        MongoError::Command {
            url: self.url.clone(),
            what: what.to_string(),
            detail: format!("{e}{code}"),
            transient: is_transient(&e),
        }
    }

    /// Runs `cmd` on database `db`.
    pub async fn command(
        &self,
        db: &str,
        cmd: Document,
        what: &str,
    ) -> Result<Document, MongoError> {
        self.client
            .database(db)
            .run_command(cmd)
            .await
            .map_err(|e| self.err(what, e))
    }

    /// The deployment's current operation time (every write acknowledged before the
    /// call is at or before it).
    pub async fn operation_time(&self) -> Result<Timestamp, MongoError> {
        let reply = self.command("admin", doc! {"hello": 1}, "hello").await?;
        if let Ok(t) = reply.get_timestamp("operationTime") {
            return Ok(t);
        }
        reply
            .get_document("lastWrite")
            .and_then(|w| w.get_document("opTime"))
            .and_then(|o| o.get_timestamp("ts"))
            .map_err(|_| {
                MongoError::Data(format!(
                    "{} reports no operation time in `hello`: it is not a replica set member; change streams need a replica set (start mongod with --replSet, even a one-node one)",
                    self.url
                ))
            })
    }

    /// Names of the user databases (not admin, config, local).
    pub async fn databases(&self) -> Result<Vec<String>, MongoError> {
        let names = self
            .client
            .list_database_names()
            .await
            .map_err(|e| self.err("listDatabases", e))?;
        Ok(names
            .into_iter()
            .filter(|n| !SYSTEM_DBS.contains(&n.as_str()))
            .collect())
    }

    /// `listCollections` of `db`, raw (name, type, options, info.uuid), sorted by
    /// name; `system.*` collections left out.
    pub async fn collections(&self, db: &str) -> Result<Vec<RawDocumentBuf>, MongoError> {
        let mut out = Vec::new();
        let mut cursor = self
            .client
            .database(db)
            .run_cursor_command(doc! {"listCollections": 1})
            .await
            .map_err(|e| self.err("listCollections", e))?;
        while cursor
            .advance()
            .await
            .map_err(|e| self.err("listCollections", e))?
        {
            let entry = cursor.current().to_raw_document_buf();
            let name = entry.get_str("name").unwrap_or_default();
            if !name.starts_with("system.") {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| a.get_str("name").ok().cmp(&b.get_str("name").ok()));
        Ok(out)
    }

    /// `listIndexes` of `db.coll`, raw, sorted by name.
    pub async fn indexes(&self, db: &str, coll: &str) -> Result<Vec<RawDocumentBuf>, MongoError> {
        let mut out = Vec::new();
        let mut cursor = self
            .client
            .database(db)
            .run_cursor_command(doc! {"listIndexes": coll})
            .await
            .map_err(|e| self.err("listIndexes", e))?;
        while cursor
            .advance()
            .await
            .map_err(|e| self.err("listIndexes", e))?
        {
            out.push(cursor.current().to_raw_document_buf());
        }
        out.sort_by(|a, b| a.get_str("name").ok().cmp(&b.get_str("name").ok()));
        Ok(out)
    }
}

/// Which namespaces a source captures: `databases` and `collections` (`db.coll`)
/// from its section; both empty: every user database.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Whole databases.
    pub databases: Vec<String>,
    /// Single collections, `db.coll`.
    pub collections: Vec<String>,
}

impl Selection {
    /// Whether database `db` is (at least partly) captured.
    pub fn has_db(&self, db: &str) -> bool {
        if SYSTEM_DBS.contains(&db) {
            return false;
        }
        (self.databases.is_empty() && self.collections.is_empty())
            || self.databases.iter().any(|d| d == db)
            || self
                .collections
                .iter()
                .any(|c| c.split_once('.').is_some_and(|(d, _)| d == db))
    }

    /// Whether collection `db.coll` is captured (`coll` empty: a database-wide
    /// event, captured when the database is).
    pub fn has(&self, db: &str, coll: &str) -> bool {
        if !self.has_db(db) || coll.starts_with("system.") {
            return false;
        }
        if coll.is_empty()
            || (self.databases.is_empty() && self.collections.is_empty())
            || self.databases.iter().any(|d| d == db)
        {
            return true;
        }
        self.collections
            .iter()
            .any(|c| *c == format!("{db}.{coll}"))
    }
}

/// Runs `fut` to completion from blocking code: on a fresh current-thread runtime,
/// or on a helper thread when the caller is itself inside a runtime.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(fut))
    };
    let result = if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join())
    } else {
        Ok(run())
    };
    match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot start an async runtime: {e}"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_defaults_to_every_user_database() {
        let all = Selection::default();
        assert!(all.has("app", "people"));
        assert!(!all.has("admin", "x"));
        assert!(!all.has("app", "system.views"));
        let some = Selection {
            databases: vec!["a".into()],
            collections: vec!["b.keep".into()],
        };
        assert!(some.has("a", "anything") && some.has("b", "keep"));
        assert!(!some.has("b", "other") && !some.has("c", "x"));
        assert!(some.has("b", "") && !some.has("c", ""));
    }
}
