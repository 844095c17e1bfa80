//! The Redis base-image chunk format, `redis-kv-v1`.
//!
//! Each chunk is one protobuf [`KvChunk`]: a run of logical records (a key with
//! its database, value and absolute expiry, or a function library) in RDB order.
//! Values are logical (the RDB's encodings are gone), so a restore writes them
//! with native commands into any Redis/Valkey version. A chunk holds records
//! until it passes [`CHUNK_TARGET_BYTES`]; a single larger key makes one larger
//! chunk. Tags are on-disk contract: never renumber.

use prost::Message;

use super::rdb::{Entry, Item, Value};

/// Image format name recorded in `BaseImageMeta::format`.
pub const FORMAT: &str = "redis-kv-v1";

/// A chunk is closed once its records pass this size.
pub const CHUNK_TARGET_BYTES: usize = 1 << 20;

/// One chunk of a `redis-kv-v1` image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KvChunk {
    /// Records in RDB order.
    #[prost(message, repeated, tag = "1")]
    pub records: Vec<KvRecord>,
}

/// One key (or one function library).
#[derive(Clone, PartialEq, prost::Message)]
pub struct KvRecord {
    /// Database number.
    #[prost(uint32, tag = "1")]
    pub db: u32,
    /// Key bytes (empty for a function library).
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// Absolute expiry, Unix ms.
    #[prost(int64, optional, tag = "3")]
    pub expire_at_ms: Option<i64>,
    /// The value.
    #[prost(oneof = "KvValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<KvValue>,
}

/// A logical value.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum KvValue {
    /// String.
    #[prost(bytes = "vec", tag = "10")]
    String(Vec<u8>),
    /// List, head first.
    #[prost(message, tag = "11")]
    List(Items),
    /// Set members.
    #[prost(message, tag = "12")]
    Set(Items),
    /// Sorted set.
    #[prost(message, tag = "13")]
    SortedSet(Zset),
    /// Hash.
    #[prost(message, tag = "14")]
    Hash(HashVal),
    /// Stream.
    #[prost(message, tag = "15")]
    Stream(StreamVal),
    /// A function library's source code (`FUNCTION LOAD`).
    #[prost(bytes = "vec", tag = "16")]
    FunctionLibrary(Vec<u8>),
}

/// Elements of a list or set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Items {
    /// The elements.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub items: Vec<Vec<u8>>,
}

/// A sorted set: `members[i]` has `scores[i]`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Zset {
    /// Members.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub members: Vec<Vec<u8>>,
    /// Scores.
    #[prost(double, repeated, tag = "2")]
    pub scores: Vec<f64>,
}

/// A hash: `fields[i]` has `values[i]` and expiry `field_expire_ms[i]` (0: none).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HashVal {
    /// Fields.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub fields: Vec<Vec<u8>>,
    /// Values.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub values: Vec<Vec<u8>>,
    /// Per-field absolute expiry in Unix ms, 0 for none (Redis 7.4 field TTLs).
    #[prost(int64, repeated, tag = "3")]
    pub field_expire_ms: Vec<i64>,
}

/// A stream entry ID.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sid {
    /// Milliseconds part.
    #[prost(uint64, tag = "1")]
    pub ms: u64,
    /// Sequence part.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

impl Sid {
    /// `ms-seq`.
    pub fn render(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }
}

/// A stream entry: `fields` alternates field, value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamEntryVal {
    /// Entry ID.
    #[prost(message, optional, tag = "1")]
    pub id: Option<Sid>,
    /// field, value, field, value...
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub fields: Vec<Vec<u8>>,
}

/// A pending entry of a consumer group: delivered to `consumer`, not acknowledged.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PendingVal {
    /// Entry ID.
    #[prost(message, optional, tag = "1")]
    pub id: Option<Sid>,
    /// Last delivery, Unix ms.
    #[prost(int64, tag = "2")]
    pub delivery_time_ms: i64,
    /// Deliveries so far.
    #[prost(uint64, tag = "3")]
    pub delivery_count: u64,
    /// The consumer that owns it.
    #[prost(bytes = "vec", tag = "4")]
    pub consumer: Vec<u8>,
}

/// A consumer group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupVal {
    /// Group name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// Last delivered ID.
    #[prost(message, optional, tag = "2")]
    pub last_id: Option<Sid>,
    /// `entries-read`, when known.
    #[prost(uint64, optional, tag = "3")]
    pub entries_read: Option<u64>,
    /// Pending entries, ascending by ID.
    #[prost(message, repeated, tag = "4")]
    pub pending: Vec<PendingVal>,
    /// Consumer names, in stored order (including those with nothing pending).
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub consumers: Vec<Vec<u8>>,
}

/// A stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamVal {
    /// Live entries, ascending.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<StreamEntryVal>,
    /// Last generated ID.
    #[prost(message, optional, tag = "2")]
    pub last_id: Option<Sid>,
    /// Greatest deleted ID.
    #[prost(message, optional, tag = "3")]
    pub max_deleted_id: Option<Sid>,
    /// Entries ever added.
    #[prost(uint64, tag = "4")]
    pub entries_added: u64,
    /// Consumer groups.
    #[prost(message, repeated, tag = "5")]
    pub groups: Vec<GroupVal>,
}

fn sid(s: super::rdb::StreamId) -> Option<Sid> {
    Some(Sid {
        ms: s.ms,
        seq: s.seq,
    })
}

/// The record for an RDB item, or `None` for items an image does not keep
/// (AUX fields, SELECTDB and RESIZEDB hints).
pub fn record_of(item: Item) -> Option<KvRecord> {
    match item {
        Item::Entry(e) => Some(entry_record(e)),
        Item::FunctionLibrary(code) => Some(KvRecord {
            db: 0,
            key: Vec::new(),
            expire_at_ms: None,
            value: Some(KvValue::FunctionLibrary(code)),
        }),
        Item::Aux { .. } | Item::SelectDb(_) | Item::ResizeDb { .. } => None,
    }
}

fn entry_record(e: Entry) -> KvRecord {
    let value = match e.value {
        Value::String(s) => KvValue::String(s),
        Value::List(items) => KvValue::List(Items { items }),
        Value::Set(items) => KvValue::Set(Items { items }),
        Value::SortedSet(pairs) => {
            let (members, scores) = pairs.into_iter().unzip();
            KvValue::SortedSet(Zset { members, scores })
        }
        Value::Hash(triples) => {
            let mut h = HashVal::default();
            for (f, v, ttl) in triples {
                h.fields.push(f);
                h.values.push(v);
                h.field_expire_ms.push(ttl.unwrap_or(0));
            }
            if h.field_expire_ms.iter().all(|&t| t == 0) {
                h.field_expire_ms.clear();
            }
            KvValue::Hash(h)
        }
        Value::Stream(s) => KvValue::Stream(StreamVal {
            entries: s
                .entries
                .into_iter()
                .map(|en| StreamEntryVal {
                    id: sid(en.id),
                    fields: en.fields.into_iter().flat_map(|(f, v)| [f, v]).collect(),
                })
                .collect(),
            last_id: sid(s.last_id),
            max_deleted_id: sid(s.max_deleted_id),
            entries_added: s.entries_added,
            groups: s
                .groups
                .into_iter()
                .map(|g| {
                    let owner: std::collections::HashMap<_, _> = g
                        .consumers
                        .iter()
                        .flat_map(|c| c.pel.iter().map(move |id| (*id, c.name.clone())))
                        .collect();
                    GroupVal {
                        pending: g
                            .pel
                            .iter()
                            .map(|p| PendingVal {
                                id: sid(p.id),
                                delivery_time_ms: p.delivery_time_ms,
                                delivery_count: p.delivery_count,
                                consumer: owner.get(&p.id).cloned().unwrap_or_default(),
                            })
                            .collect(),
                        consumers: g.consumers.into_iter().map(|c| c.name).collect(),
                        name: g.name,
                        last_id: sid(g.last_id),
                        entries_read: g.entries_read,
                    }
                })
                .collect(),
        }),
    };
    KvRecord {
        db: u32::try_from(e.db).unwrap_or(u32::MAX),
        key: e.key,
        expire_at_ms: e.expire_at_ms,
        value: Some(value),
    }
}

/// Collects records into chunks of about [`CHUNK_TARGET_BYTES`].
#[derive(Default)]
pub struct ChunkBuilder {
    chunk: KvChunk,
    bytes: usize,
    /// Keys added so far.
    pub keys: u64,
}

impl ChunkBuilder {
    /// Adds a record; returns an encoded chunk when one is full.
    pub fn push(&mut self, rec: KvRecord) -> Option<Vec<u8>> {
        if !rec.key.is_empty() {
            self.keys += 1;
        }
        self.bytes += rec.encoded_len();
        self.chunk.records.push(rec);
        (self.bytes >= CHUNK_TARGET_BYTES).then(|| self.take())
    }

    /// The last, partial chunk, if any records are left.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.chunk.records.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> Vec<u8> {
        self.bytes = 0;
        std::mem::take(&mut self.chunk).encode_to_vec()
    }
}

/// Decodes one chunk.
pub fn decode_chunk(bytes: &[u8]) -> Result<KvChunk, prost::DecodeError> {
    KvChunk::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::redis::rdb::{Stream, StreamEntry, StreamId};

    #[test]
    fn records_round_trip_and_chunk() {
        let mut b = ChunkBuilder::default();
        let e = Entry {
            db: 3,
            key: b"h".to_vec(),
            expire_at_ms: Some(1_800_000_000_000),
            value: Value::Hash(vec![(b"f".to_vec(), b"v".to_vec(), None)]),
            rdb_type: 16,
        };
        assert!(b.push(record_of(Item::Entry(e)).unwrap()).is_none());
        let s = Stream {
            entries: vec![StreamEntry {
                id: StreamId::new(5, 1),
                fields: vec![(b"a".to_vec(), b"1".to_vec())],
            }],
            length: 1,
            last_id: StreamId::new(9, 0),
            ..Default::default()
        };
        let e = Entry {
            db: 0,
            key: b"s".to_vec(),
            expire_at_ms: None,
            value: Value::Stream(Box::new(s)),
            rdb_type: 21,
        };
        assert!(b.push(record_of(Item::Entry(e)).unwrap()).is_none());
        assert!(record_of(Item::SelectDb(1)).is_none());
        let chunk = decode_chunk(&b.finish().unwrap()).unwrap();
        assert_eq!(chunk.records.len(), 2);
        assert_eq!(chunk.records[0].db, 3);
        assert!(chunk.records[0].expire_at_ms.is_some());
        match &chunk.records[1].value {
            Some(KvValue::Stream(s)) => {
                assert_eq!(s.entries[0].fields, vec![b"a".to_vec(), b"1".to_vec()]);
                assert_eq!(s.last_id.unwrap().render(), "9-0");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.keys, 2);
        let big = KvRecord {
            key: b"big".to_vec(),
            value: Some(KvValue::String(vec![0; CHUNK_TARGET_BYTES])),
            ..Default::default()
        };
        assert!(b.push(big).is_some());
    }
}
