//! Logical, encoding-independent values and the items yielded by the parser.

/// One item of an RDB stream, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An `AUX` field (e.g. `redis-ver`, `repl-id`, `ctime`). Both parts are
    /// byte strings; integer-encoded values are rendered as decimal ASCII.
    Aux {
        /// Field name.
        key: Vec<u8>,
        /// Field value.
        value: Vec<u8>,
    },
    /// `SELECTDB`: the following entries belong to this database number.
    SelectDb(u64),
    /// `RESIZEDB`: size hints for the current database.
    ResizeDb {
        /// Number of keys announced for the database.
        db_size: u64,
        /// Number of keys with an expiry announced for the database.
        expires_size: u64,
    },
    /// `FUNCTION2`: the source code of one function library, exactly as given
    /// to `FUNCTION LOAD` (it starts with a `#!<engine> name=<lib>` shebang).
    FunctionLibrary(Vec<u8>),
    /// A key and its value.
    Entry(Entry),
}

/// A key, its value and its expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Database number, from the latest `SELECTDB` (0 before any).
    pub db: u64,
    /// The key bytes.
    pub key: Vec<u8>,
    /// Absolute expiry time in Unix milliseconds, if the key has one. Keys
    /// that were already expired when the RDB was written are still yielded.
    /// A seconds-resolution expiry (`EXPIRETIME`) is converted to milliseconds.
    pub expire_at_ms: Option<i64>,
    /// The value, independent of how it was encoded.
    pub value: Value,
    /// The RDB type byte the value was stored with (e.g. 16 for a listpack
    /// hash). Informational only: `value` does not depend on it.
    pub rdb_type: u8,
}

/// A logical Redis value. Elements that Redis stores as integers (intset,
/// listpack/ziplist integer encodings, int-encoded strings) are rendered as
/// decimal ASCII, which is their value as seen by Redis commands.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    String(Vec<u8>),
    /// A list, head first.
    List(Vec<Vec<u8>>),
    /// A set, in stored order (unspecified for hash tables).
    Set(Vec<Vec<u8>>),
    /// A sorted set as `(member, score)` in stored order: ascending for
    /// compact encodings, descending for skiplists (`ZSET_2` is saved from the
    /// tail).
    SortedSet(Vec<(Vec<u8>, f64)>),
    /// A hash as `(field, value, field_expire_at_ms)` in stored order. The
    /// third element is the absolute expiry of the field in Unix milliseconds
    /// (Redis 7.4 hash-field expiration), `None` when the field has none.
    Hash(Vec<(Vec<u8>, Vec<u8>, Option<i64>)>),
    /// A stream (boxed: it is much larger than the other variants).
    Stream(Box<Stream>),
}

/// A stream entry ID (`<ms>-<seq>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// Builds an ID from its two parts.
    pub fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }

    /// Decodes the 16-byte big-endian form used in RDB for PEL entries and
    /// listpack node keys.
    pub fn from_be_bytes(raw: [u8; 16]) -> Self {
        let mut ms = [0u8; 8];
        let mut seq = [0u8; 8];
        ms.copy_from_slice(&raw[..8]);
        seq.copy_from_slice(&raw[8..]);
        StreamId {
            ms: u64::from_be_bytes(ms),
            seq: u64::from_be_bytes(seq),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A stream value with its metadata and consumer groups.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stream {
    /// Live (not deleted) entries in ascending ID order.
    pub entries: Vec<StreamEntry>,
    /// Number of live entries as recorded by Redis (`XLEN`).
    pub length: u64,
    /// Last ID ever generated (`last-generated-id`).
    pub last_id: StreamId,
    /// First live entry ID. Stored since `STREAM_LISTPACKS_2`; for older
    /// encodings it is derived from the first entry (0-0 when empty), as Redis
    /// does on load.
    pub first_id: StreamId,
    /// Greatest deleted entry ID (0-0 for encodings older than
    /// `STREAM_LISTPACKS_2`, which did not record it).
    pub max_deleted_id: StreamId,
    /// Count of entries ever added (`entries-added`); equals `length` for
    /// encodings older than `STREAM_LISTPACKS_2`, as Redis assumes on load.
    pub entries_added: u64,
    /// Consumer groups in stored order.
    pub groups: Vec<ConsumerGroup>,
}

/// One stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// Entry ID.
    pub id: StreamId,
    /// Field/value pairs in insertion order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroup {
    /// Group name.
    pub name: Vec<u8>,
    /// Last delivered ID.
    pub last_id: StreamId,
    /// Logical read counter (`entries-read`), `None` when the encoding does
    /// not store it (`STREAM_LISTPACKS` v1) or Redis stored it as invalid.
    pub entries_read: Option<u64>,
    /// Group pending entries list, ascending by ID.
    pub pel: Vec<PendingEntry>,
    /// Consumers in stored order.
    pub consumers: Vec<Consumer>,
}

/// An entry of a group's pending entries list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEntry {
    /// Entry ID.
    pub id: StreamId,
    /// Last delivery time, Unix milliseconds.
    pub delivery_time_ms: i64,
    /// Number of deliveries.
    pub delivery_count: u64,
}

/// A consumer of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Consumer name.
    pub name: Vec<u8>,
    /// Last time the consumer was seen, Unix milliseconds.
    pub seen_time_ms: i64,
    /// Last successful activity time, Unix milliseconds; only stored since
    /// `STREAM_LISTPACKS_3` (`None` before).
    pub active_time_ms: Option<i64>,
    /// IDs of the pending entries owned by this consumer (each also appears
    /// in the group's [`ConsumerGroup::pel`]).
    pub pel: Vec<StreamId>,
}
