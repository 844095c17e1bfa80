//! Message types produced by the pgoutput decoder.

use bytes::Bytes;

use crate::connectors::postgres::repl::lsn::{Lsn, PgTimestamp};

/// Start of a transaction ('B').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: u32,
}

/// End of a transaction ('C').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently always 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction: the position to acknowledge as flushed
    /// once the whole transaction is durable downstream.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
}

/// Replication origin of the following transaction ('O').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// Origin name.
    pub name: String,
}

/// Replica identity setting of a relation (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': primary key columns.
    Default,
    /// 'n': nothing.
    Nothing,
    /// 'f': all columns.
    Full,
    /// 'i': columns of a chosen unique index.
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Raw flags; bit 1 means "part of the replica identity key".
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Data type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`), -1 if none.
    pub type_modifier: i32,
}

impl Column {
    /// Whether the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Relation (table) description ('R'); sent before the first change to a
/// table in a session and again after its definition changes. Consumers must
/// cache it by `oid` to interpret tuples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Xid, only inside a streamed transaction (protocol 2+).
    pub xid: Option<u32>,
    /// Relation OID.
    pub oid: u32,
    /// Schema name (empty string for `pg_catalog`).
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Published columns, in tuple order.
    pub columns: Vec<Column>,
}

/// Data type description ('Y'), sent for non-builtin types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// Xid, only inside a streamed transaction.
    pub xid: Option<u32>,
    /// Type OID.
    pub oid: u32,
    /// Schema name (empty string for `pg_catalog`).
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// 'n': SQL NULL.
    Null,
    /// 'u': unchanged TOASTed value; the actual value was not sent.
    UnchangedToast,
    /// 't': text representation, as bytes in the connection's client encoding
    /// (UTF-8, or the stored bytes of a `SQL_ASCII` database). Never assumed valid:
    /// a C function can store a truncated multibyte character in any database.
    Text(Bytes),
    /// 'b': binary (send/recv) representation.
    Binary(Bytes),
}

impl ColumnValue {
    /// The text value's bytes, if this is a [`ColumnValue::Text`].
    pub fn as_text(&self) -> Option<&[u8]> {
        match self {
            ColumnValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// The old row image carried by an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': only the replica identity key columns (others are NULL).
    Key(Vec<ColumnValue>),
    /// 'O': the full old row (REPLICA IDENTITY FULL).
    Full(Vec<ColumnValue>),
}

impl OldTuple {
    /// The column values, whichever kind this is.
    pub fn values(&self) -> &[ColumnValue] {
        match self {
            OldTuple::Key(v) | OldTuple::Full(v) => v,
        }
    }
}

/// Insert ('I').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Xid, only inside a streamed transaction.
    pub xid: Option<u32>,
    /// OID of the relation (see [`Relation`]).
    pub relation_oid: u32,
    /// The new row.
    pub new: Vec<ColumnValue>,
}

/// Update ('U').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Xid, only inside a streamed transaction.
    pub xid: Option<u32>,
    /// OID of the relation.
    pub relation_oid: u32,
    /// Old key or row; absent when the key did not change and identity is
    /// not FULL.
    pub old: Option<OldTuple>,
    /// The new row (unchanged TOAST columns appear as
    /// [`ColumnValue::UnchangedToast`]).
    pub new: Vec<ColumnValue>,
}

/// Delete ('D').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Xid, only inside a streamed transaction.
    pub xid: Option<u32>,
    /// OID of the relation.
    pub relation_oid: u32,
    /// Old key or row.
    pub old: OldTuple,
}

/// Truncate ('T').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Xid, only inside a streamed transaction.
    pub xid: Option<u32>,
    /// Option bits: 1 = CASCADE, 2 = RESTART IDENTITY.
    pub options: u8,
    /// Truncated relations.
    pub relation_oids: Vec<u32>,
}

impl Truncate {
    /// `TRUNCATE ... CASCADE` was used.
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }
    /// `TRUNCATE ... RESTART IDENTITY` was used.
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// A `pg_logical_emit_message` message ('M'); needs the `messages` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Xid, only inside a streamed transaction.
    pub xid: Option<u32>,
    /// Raw flags; bit 1 = transactional.
    pub flags: u8,
    /// LSN of the message.
    pub lsn: Lsn,
    /// Prefix given by the emitter.
    pub prefix: String,
    /// Content bytes.
    pub content: Bytes,
}

impl LogicalMessage {
    /// Transactional messages arrive inside Begin/Commit and only if the
    /// transaction commits; others arrive immediately, outside transactions.
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Commit of a streamed transaction ('c', protocol 2+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// Top-level transaction id.
    pub xid: u32,
    /// Flags (currently 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
}

/// Abort of a streamed (sub)transaction ('A', protocol 2+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: u32,
    /// Aborted subtransaction id (equal to `xid` for the top level).
    pub subxid: u32,
    /// Abort LSN and time (protocol 4 with parallel streaming only).
    pub abort: Option<(Lsn, PgTimestamp)>,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// 'B'
    Begin(Begin),
    /// 'C'
    Commit(Commit),
    /// 'O'
    Origin(Origin),
    /// 'R'
    Relation(Relation),
    /// 'Y'
    Type(TypeInfo),
    /// 'I'
    Insert(Insert),
    /// 'U'
    Update(Update),
    /// 'D'
    Delete(Delete),
    /// 'T'
    Truncate(Truncate),
    /// 'M'
    LogicalMessage(LogicalMessage),
    /// 'S': start of a block of a streamed transaction.
    StreamStart {
        /// Transaction id.
        xid: u32,
        /// First block of this transaction.
        first_segment: bool,
    },
    /// 'E': end of a streamed block.
    StreamStop,
    /// 'c'
    StreamCommit(StreamCommit),
    /// 'A'
    StreamAbort(StreamAbort),
}
