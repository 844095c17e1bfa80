//! The client side of PostgreSQL's streaming logical replication protocol and a
//! `pgoutput` decoder.
//!
//! Upstream `tokio-postgres` has no replication protocol (no `replication=database`
//! start-up, no CopyBoth), so this speaks it directly, using `postgres-protocol` for
//! message building and authentication (trust, cleartext, MD5, SCRAM-SHA-256 without
//! channel binding), over plain TCP or TLS (`tokio-openssl`, see [`super::tls`]).
//!
//! - [`lsn`]: WAL positions (`X/Y`) and PostgreSQL timestamps;
//! - [`connection`]: connect, simple queries, replication commands;
//! - [`stream`]: the CopyBoth phase: XLogData and keepalives in, status updates out;
//! - [`pgoutput`]: decoding of the plugin's messages;
//! - [`error`]: errors with operator-facing messages (wrong password, `wal_level`).
//!
//! The acknowledgment contract: a status update's `flush` LSN tells the server it may
//! recycle WAL before it and never resend transactions committed before it. Callers
//! send it only after everything before it is durable in the journal.

mod auth;
pub mod connection;
pub mod error;
pub mod lsn;
pub mod pgoutput;
pub mod stream;
mod transport;
mod wire;

pub use connection::{
    Config, CreatedSlot, QueryResult, ReplicationConnection, SnapshotAction, SystemIdentity,
};
pub use error::{Error, ServerError};
pub use lsn::{Lsn, ParseLsnError, PgTimestamp};
pub use stream::{
    PrimaryKeepalive, ReplicationMessage, ReplicationOptions, ReplicationStream,
    StandbyStatusUpdate, XLogData,
};
