//! The event model: what every source writes into the journal.
//!
//! These are protobuf messages, derived by hand with `prost` (no `.proto` file and so
//! no `protoc` at build time; see ARCHITECTURE.md). Field tags are part of the on-disk
//! format: never reuse or renumber one; add new fields with new tags.
//!
//! One envelope, [`ChangeEvent`], carries every change from every kind of source: the
//! source's own position, its commit time where it has one, the capture time,
//! transaction boundaries, and a per-kind [`Payload`]. A source's full state at one
//! position is a base image ([`BaseImageMeta`] plus opaque chunks); a named point on the
//! application's timeline is a [`Marker`].

mod touched;
mod view;

pub use touched::Touch;

use crate::position::Position;

/// One change captured from one source.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChangeEvent {
    /// Name of the configured source. Not stored per record (the journal key names the
    /// source); filled in when the event is read back.
    #[prost(string, tag = "1")]
    pub source: String,
    /// The source-native position of this change (required).
    #[prost(message, optional, tag = "2")]
    pub position: Option<Position>,
    /// Commit time reported by the source, in µs since the epoch, where the source has
    /// one (PostgreSQL commit timestamp, Kafka log-append time, Mongo cluster time...).
    #[prost(int64, optional, tag = "3")]
    pub commit_time_us: Option<i64>,
    /// When tidemark received the change, µs since the epoch.
    #[prost(int64, tag = "4")]
    pub capture_time_us: i64,
    /// The transaction this change belongs to, if the source has transactions.
    #[prost(message, optional, tag = "5")]
    pub txn: Option<Txn>,
    /// What changed.
    #[prost(oneof = "Payload", tags = "10, 11, 12, 13, 14, 15, 16, 17")]
    pub payload: Option<Payload>,
}

impl ChangeEvent {
    /// The event's time on the journal's timeline: the source's commit time if it
    /// reported one, else the capture time.
    pub fn time_us(&self) -> i64 {
        self.commit_time_us.unwrap_or(self.capture_time_us)
    }
}

/// Transaction membership of an event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Txn {
    /// Source-native transaction id (PostgreSQL xid, Mongo lsid+txnNumber, ...).
    #[prost(string, tag = "1")]
    pub id: String,
    /// True on the last event of the transaction: a restore replays whole
    /// transactions only, so it stops after the last event with `commit` set.
    #[prost(bool, tag = "2")]
    pub commit: bool,
}

/// The per-kind content of a [`ChangeEvent`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Payload {
    /// A PostgreSQL row change, truncate or DDL statement.
    #[prost(message, tag = "10")]
    Postgres(PgChange),
    /// A Redis command from the replication stream.
    #[prost(message, tag = "11")]
    Redis(RedisCommand),
    /// A Kafka record (topic, partition and offset are in the position).
    #[prost(message, tag = "12")]
    Kafka(KafkaRecord),
    /// A MongoDB change-stream event.
    #[prost(message, tag = "13")]
    Mongo(MongoChange),
    /// A Kubernetes watch event.
    #[prost(message, tag = "14")]
    Kubernetes(KubeEvent),
    /// A named point on the timeline.
    #[prost(message, tag = "15")]
    Marker(Marker),
    /// Kafka topic metadata, high-water marks and consumer-group offsets, observed
    /// together (position: the reserved state stream, see `Position::kafka_state`).
    #[prost(message, tag = "16")]
    KafkaState(KafkaState),
    /// A Redis Cluster source's slot map as observed (position: the reserved
    /// stream `Position::redis_cluster_map`; see `connectors/redis/cluster`).
    #[prost(message, tag = "17")]
    RedisSlotMap(RedisSlotMap),
}

/// What a PostgreSQL change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PgOp {
    /// Not set (invalid on disk).
    Unspecified = 0,
    /// Row inserted: `new_tuple`.
    Insert = 1,
    /// Row updated: `new_tuple`, and `old_tuple` when the replica identity sends it.
    Update = 2,
    /// Row deleted: `old_tuple` holds the key or the full old row.
    Delete = 3,
    /// Tables truncated: `truncated` lists them.
    Truncate = 4,
    /// A DDL statement, in `ddl`, in transaction order.
    Ddl = 5,
    /// Sequences' values as sampled on the source (sequence advances are not
    /// transactional and logical decoding does not send them): `ddl` holds the
    /// `setval` calls that set them.
    Sequence = 6,
}

impl PgOp {
    /// The operation's name, as printed by `tidemark log`.
    pub fn as_str_name(self) -> &'static str {
        match self {
            PgOp::Unspecified => "UNSPECIFIED",
            PgOp::Insert => "INSERT",
            PgOp::Update => "UPDATE",
            PgOp::Delete => "DELETE",
            PgOp::Truncate => "TRUNCATE",
            PgOp::Ddl => "DDL",
            PgOp::Sequence => "SEQUENCE",
        }
    }
}

/// A PostgreSQL change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PgChange {
    /// The operation.
    #[prost(enumeration = "PgOp", tag = "1")]
    pub op: i32,
    /// Schema of the table.
    #[prost(string, tag = "2")]
    pub schema: String,
    /// Table name.
    #[prost(string, tag = "3")]
    pub table: String,
    /// Column names, in tuple order.
    #[prost(string, repeated, tag = "4")]
    pub columns: Vec<String>,
    /// New row values (insert, update).
    #[prost(message, repeated, tag = "5")]
    pub new_tuple: Vec<PgValue>,
    /// Old key or old row (update, delete), as the replica identity provides.
    #[prost(message, repeated, tag = "6")]
    pub old_tuple: Vec<PgValue>,
    /// Qualified names of truncated tables.
    #[prost(string, repeated, tag = "7")]
    pub truncated: Vec<String>,
    /// DDL text.
    #[prost(string, tag = "8")]
    pub ddl: String,
    /// Indexes into `columns` of the replica identity key.
    #[prost(uint32, repeated, tag = "9")]
    pub key: Vec<u32>,
    /// True when `old_tuple` is the full old row (REPLICA IDENTITY FULL), false when
    /// it holds only the key columns.
    #[prost(bool, tag = "10")]
    pub old_is_full: bool,
    /// DDL that ran inside a `DO` block or a function: `ddl` is the whole top-level
    /// statement; replay runs it once and refuses it if it changes rows (they are
    /// journaled as row changes of their own).
    #[prost(bool, tag = "11")]
    pub nested: bool,
}

/// How a PostgreSQL column value was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PgValueKind {
    /// SQL NULL.
    Null = 0,
    /// Unchanged TOASTed value: keep what the row had.
    UnchangedToast = 1,
    /// Text representation.
    Text = 2,
    /// Binary representation.
    Binary = 3,
}

/// One PostgreSQL column value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PgValue {
    /// How `data` is to be read.
    #[prost(enumeration = "PgValueKind", tag = "1")]
    pub kind: i32,
    /// The value's bytes (empty for NULL and unchanged TOAST).
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// A Redis command as the primary propagated it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RedisCommand {
    /// The database the command ran in.
    #[prost(uint32, tag = "1")]
    pub db: u32,
    /// Command name and arguments.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub args: Vec<Vec<u8>>,
}

/// A Redis Cluster's slot map: which primary serves which slots, as tidemark
/// observed it (journaled when capture starts and whenever it changes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RedisSlotMap {
    /// One entry per primary, by node id.
    #[prost(message, repeated, tag = "1")]
    pub shards: Vec<RedisShardSlots>,
}

/// One primary of a Redis Cluster and its slots.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RedisShardSlots {
    /// The node id (40 hex characters): the shard's name in the journal (its base
    /// images carry it as their `part`).
    #[prost(string, tag = "1")]
    pub node_id: String,
    /// `host:port` the node announced.
    #[prost(string, tag = "2")]
    pub addr: String,
    /// Slot ranges, inclusive, as `[start, end, start, end, ...]`.
    #[prost(uint32, repeated, tag = "3")]
    pub ranges: Vec<u32>,
    /// Slots this primary was migrating away or importing when observed (keys of
    /// them were moving between shards).
    #[prost(uint32, repeated, tag = "4")]
    pub moving: Vec<u32>,
}

/// Kafka record timestamp type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum KafkaTimestampType {
    /// No timestamp.
    NotAvailable = 0,
    /// Set by the producer.
    CreateTime = 1,
    /// Set by the broker on append.
    LogAppendTime = 2,
}

/// A Kafka record header.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaHeader {
    /// Header key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Header value (absent is distinct from empty).
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
}

/// A Kafka record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaRecord {
    /// Record key (absent is distinct from empty).
    #[prost(bytes = "vec", optional, tag = "1")]
    pub key: Option<Vec<u8>>,
    /// Record value (absent is a tombstone).
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
    /// Headers, in order.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<KafkaHeader>,
    /// Record timestamp, ms since the epoch.
    #[prost(int64, tag = "4")]
    pub timestamp_ms: i64,
    /// What the timestamp means.
    #[prost(enumeration = "KafkaTimestampType", tag = "5")]
    pub timestamp_type: i32,
}

/// What a Kafka source looked like when observed: the topics captured, each
/// partition's offsets, and the committed offsets of the configured groups.
///
/// Journaled on change and at least every few seconds on the source's reserved state
/// stream. The event's capture time is `observed_before_us`: the marks were read
/// within `[observed_before_us, observed_after_us]` (milliseconds), and a restore
/// cut counts them at the start of that window.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaState {
    /// Taken just before the brokers were asked (µs): no partition held more than its
    /// `high_watermark` then. Coverage uses this bound.
    #[prost(int64, tag = "1")]
    pub observed_before_us: i64,
    /// Taken after every answer arrived (µs): each partition held at least the offsets
    /// below its `high_watermark` then.
    #[prost(int64, tag = "2")]
    pub observed_after_us: i64,
    /// Captured topics.
    #[prost(message, repeated, tag = "3")]
    pub topics: Vec<KafkaTopicMeta>,
    /// Per-partition offsets.
    #[prost(message, repeated, tag = "4")]
    pub partitions: Vec<KafkaPartitionState>,
    /// Committed offsets of the configured consumer groups on captured partitions.
    #[prost(message, repeated, tag = "5")]
    pub group_offsets: Vec<KafkaGroupOffset>,
}

/// A topic's shape and configuration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaTopicMeta {
    /// Topic name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Number of partitions.
    #[prost(int32, tag = "2")]
    pub partitions: i32,
    /// Topic configs the broker reports (`cleanup.policy`, `retention.ms`, ...).
    #[prost(message, repeated, tag = "3")]
    pub configs: Vec<KafkaConfigEntry>,
}

/// One topic config entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaConfigEntry {
    /// Config name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Config value.
    #[prost(string, tag = "2")]
    pub value: String,
    /// True when the broker reports it as set on the topic (not a default).
    #[prost(bool, tag = "3")]
    pub explicit: bool,
}

/// A partition's offsets as observed, and how far the journal had it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaPartitionState {
    /// Topic.
    #[prost(string, tag = "1")]
    pub topic: String,
    /// Partition.
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// Oldest offset the broker still holds.
    #[prost(int64, tag = "3")]
    pub low_watermark: i64,
    /// Offset after the last readable record (the high-water mark).
    #[prost(int64, tag = "4")]
    pub high_watermark: i64,
    /// Next offset capture will journal.
    #[prost(int64, tag = "5")]
    pub journaled_next: i64,
    /// The journal held everything of the partition up to this time (µs); absent
    /// until it first caught up.
    #[prost(int64, optional, tag = "6")]
    pub caught_up_us: Option<i64>,
}

/// A consumer group's committed offset on one partition.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaGroupOffset {
    /// Group id.
    #[prost(string, tag = "1")]
    pub group: String,
    /// Topic.
    #[prost(string, tag = "2")]
    pub topic: String,
    /// Partition.
    #[prost(int32, tag = "3")]
    pub partition: i32,
    /// Committed offset (the next record the group will read).
    #[prost(int64, tag = "4")]
    pub offset: i64,
    /// Commit metadata string.
    #[prost(string, tag = "5")]
    pub metadata: String,
}

/// A MongoDB change-stream event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MongoChange {
    /// `operationType` (insert, update, replace, delete, drop, ...).
    #[prost(string, tag = "1")]
    pub operation_type: String,
    /// Database name.
    #[prost(string, tag = "2")]
    pub db: String,
    /// Collection name.
    #[prost(string, tag = "3")]
    pub collection: String,
    /// The whole change event as the server sent it, BSON.
    #[prost(bytes = "vec", tag = "4")]
    pub event_bson: Vec<u8>,
}

/// A Kubernetes watch event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KubeEvent {
    /// ADDED, MODIFIED or DELETED.
    #[prost(string, tag = "1")]
    pub event_type: String,
    /// apiVersion of the object.
    #[prost(string, tag = "2")]
    pub api_version: String,
    /// kind of the object.
    #[prost(string, tag = "3")]
    pub kind: String,
    /// Namespace (empty for cluster-scoped objects).
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// Object name.
    #[prost(string, tag = "5")]
    pub name: String,
    /// Object uid.
    #[prost(string, tag = "6")]
    pub uid: String,
    /// The object as JSON, without `metadata.managedFields`. For a Secret, without
    /// its `data`, `stringData` and `kubectl.kubernetes.io/last-applied-configuration`
    /// annotation: those are in `sealed`.
    #[prost(bytes = "vec", tag = "7")]
    pub object_json: Vec<u8>,
    /// A Secret's confidential fields as a JSON object (`data`, `stringData`,
    /// `annotations`), sealed with AES-256-GCM ([`crate::crypto`]), bound to the
    /// object's namespace and name. Empty for every other kind.
    #[prost(bytes = "vec", tag = "8")]
    pub sealed: Vec<u8>,
    /// The object's resourceVersion.
    #[prost(string, tag = "9")]
    pub resource_version: String,
    /// A deletion (or replacement) found by comparing a relist with the journal
    /// after the watch could not resume (`410 Gone`): it happened while capture was
    /// not watching, and is journaled when it was noticed.
    #[prost(bool, tag = "10")]
    pub observed_late: bool,
    /// The resource, `group/version/plural` (`v1/configmaps` for the core group).
    #[prost(string, tag = "11")]
    pub resource: String,
}

/// A named point on the application's timeline ("before-migration").
#[derive(Clone, PartialEq, prost::Message)]
pub struct Marker {
    /// The marker's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Free text.
    #[prost(string, tag = "2")]
    pub note: String,
}

/// Describes a base image: a source's full state at one position, stored as ordered
/// opaque chunks whose encoding `format` names (e.g. `pg-copy-v1`, `redis-rdb-v1`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BaseImageMeta {
    /// Journal-wide image id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The source's position the image is consistent with.
    #[prost(message, optional, tag = "2")]
    pub position: Option<Position>,
    /// The source time the image represents, µs since the epoch.
    #[prost(int64, tag = "3")]
    pub time_us: i64,
    /// Every event of the source with a sequence number above this follows the image.
    #[prost(uint64, tag = "4")]
    pub after_seq: u64,
    /// Number of chunks.
    #[prost(uint64, tag = "5")]
    pub chunks: u64,
    /// Total bytes across chunks.
    #[prost(uint64, tag = "6")]
    pub bytes: u64,
    /// Encoding of the chunks.
    #[prost(string, tag = "7")]
    pub format: String,
    /// The part of the source the image is of, for sources captured in independent
    /// parts with an image each (a Redis Cluster shard: its primary's node id).
    /// Empty: the whole source. A restore starts each part from its own newest image.
    #[prost(string, tag = "8")]
    pub part: String,
    /// When the image was sealed, by tidemark's clock (µs); 0 in images sealed
    /// before it was recorded. Schedules count from it (`time_us` is the source's).
    #[prost(int64, tag = "9")]
    pub sealed_us: i64,
    /// The source's event bytes journaled up to the seal
    /// ([`crate::journal::SourceStats::bytes`]): `image_after_bytes` counts from it.
    #[prost(uint64, tag = "10")]
    pub source_bytes: u64,
}
