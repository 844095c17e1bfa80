//! Source-native positions and their order-preserving index encoding.
//!
//! Every kind of source has its own notion of "where": a PostgreSQL LSN, a Redis
//! replication id and offset, a Kafka topic/partition/offset, a MongoDB resume token,
//! a Kubernetes resourceVersion. A source may have several independent *streams*
//! (Kafka partitions, Kubernetes resource types); positions are ordered only within
//! one stream. [`Position::index_key`] splits a position into its stream and an
//! ordinal whose byte order is the position order, which is what the journal indexes.

use std::fmt;

/// Topic of the reserved stream on which a Kafka source journals its observed state
/// (metadata, high-water marks, group offsets). Kafka topic names are never empty.
pub const KAFKA_STATE_TOPIC: &str = "";
/// Partition of the reserved state stream.
pub const KAFKA_STATE_PARTITION: i32 = -1;

/// Replication id of the reserved stream on which a Redis Cluster source journals its
/// slot maps. Real replication ids are 40 hex characters, so it never collides.
pub const REDIS_CLUSTER_MAP_STREAM: &str = "cluster-slot-map";

/// A position in one source, in that source's own terms.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Position {
    /// The kind-specific position.
    #[prost(oneof = "PositionKind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<PositionKind>,
}

/// The kind-specific part of a [`Position`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PositionKind {
    /// PostgreSQL WAL position.
    #[prost(message, tag = "1")]
    Postgres(PgPosition),
    /// Redis replication stream position.
    #[prost(message, tag = "2")]
    Redis(RedisPosition),
    /// Kafka partition offset.
    #[prost(message, tag = "3")]
    Kafka(KafkaPosition),
    /// MongoDB change-stream resume point.
    #[prost(message, tag = "4")]
    Mongo(MongoPosition),
    /// Kubernetes watch position.
    #[prost(message, tag = "5")]
    Kubernetes(KubePosition),
}

/// A PostgreSQL position: an LSN, and for a change the change's number within its
/// transaction.
///
/// Changes carry their transaction's commit LSN (transactions arrive in commit
/// order, so these rise through the journal) and their index inside it, which makes
/// every change's position unique and lets capture resume inside a transaction that
/// was only partly journaled. A checkpoint is the end LSN of the last transaction
/// journaled whole, with index 0.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PgPosition {
    /// The log sequence number.
    #[prost(uint64, tag = "1")]
    pub lsn: u64,
    /// Index of the change within its transaction.
    #[prost(uint32, tag = "2")]
    pub index: u32,
}

/// A Redis replication offset within one replication history.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RedisPosition {
    /// The primary's replication id (40 hex characters).
    #[prost(string, tag = "1")]
    pub replid: String,
    /// Replication offset: bytes of the command stream consumed so far.
    #[prost(uint64, tag = "2")]
    pub offset: u64,
}

/// A Kafka record's place.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KafkaPosition {
    /// Topic.
    #[prost(string, tag = "1")]
    pub topic: String,
    /// Partition.
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// Offset within the partition.
    #[prost(int64, tag = "3")]
    pub offset: i64,
}

/// A MongoDB change-stream position.
///
/// Resume tokens are opaque: mongod's are KeyString bytes that happen to sort in
/// stream order, but other servers (the SecantusDB stand-in: hex of a BSON document)
/// make no such promise, and a token's shape changes between server versions. So
/// the journal orders MongoDB events by an **ordinal it assigns itself** (one more
/// than the last journaled event's, kept across restarts through the checkpoint),
/// and keeps the token and the cluster time alongside, for resuming and for people.
/// Never compare positions by their token.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MongoPosition {
    /// The resume token's `_data` string as the server sent it (display only).
    #[prost(string, tag = "1")]
    pub resume_token: String,
    /// Journal-assigned ordinal: rises by one per journaled change event; the
    /// index orders by it. A checkpoint that carries only a newer token (an idle
    /// stream's `postBatchResumeToken`) keeps the last event's ordinal.
    #[prost(uint64, tag = "2")]
    pub ordinal: u64,
    /// The event's cluster time (the oplog timestamp, `seconds << 32 | increment`);
    /// for a checkpoint without a token, the operation time capture starts at.
    #[prost(uint64, tag = "3")]
    pub cluster_time: u64,
    /// The whole resume token document (`{_data: ...}` and any other field the
    /// server put in it, e.g. mongod's `_typeBits`), BSON; empty before the stream
    /// gave one (then capture starts at `cluster_time`).
    #[prost(bytes = "vec", tag = "4")]
    pub token_bson: Vec<u8>,
}

/// A Kubernetes watch position for one resource type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KubePosition {
    /// The resource watched, e.g. `apps/v1/deployments`.
    #[prost(string, tag = "1")]
    pub resource: String,
    /// The resourceVersion (opaque to clients; etcd revisions are numeric).
    #[prost(string, tag = "2")]
    pub resource_version: String,
}

impl Position {
    /// A PostgreSQL position.
    pub fn postgres(lsn: u64) -> Self {
        Position {
            kind: Some(PositionKind::Postgres(PgPosition { lsn, index: 0 })),
        }
    }

    /// A PostgreSQL change's position: its transaction's commit LSN and its index.
    pub fn postgres_change(lsn: u64, index: u32) -> Self {
        Position {
            kind: Some(PositionKind::Postgres(PgPosition { lsn, index })),
        }
    }

    /// A MongoDB position: the journal's ordinal, the event's cluster time and its
    /// resume token (`token_bson` empty before the stream gave one).
    pub fn mongo(ordinal: u64, cluster_time: u64, token_data: &str, token_bson: Vec<u8>) -> Self {
        Position {
            kind: Some(PositionKind::Mongo(MongoPosition {
                resume_token: token_data.to_string(),
                ordinal,
                cluster_time,
                token_bson,
            })),
        }
    }

    /// A Redis position.
    pub fn redis(replid: impl Into<String>, offset: u64) -> Self {
        Position {
            kind: Some(PositionKind::Redis(RedisPosition {
                replid: replid.into(),
                offset,
            })),
        }
    }

    /// The position of the `n`th slot map a Redis Cluster source journals: a
    /// reserved stream ([`REDIS_CLUSTER_MAP_STREAM`]) ordered by `n`.
    pub fn redis_cluster_map(n: u64) -> Self {
        Position::redis(REDIS_CLUSTER_MAP_STREAM, n)
    }

    /// True for positions on a Redis Cluster source's slot-map stream.
    pub fn is_redis_cluster_map(&self) -> bool {
        matches!(&self.kind, Some(PositionKind::Redis(p)) if p.replid == REDIS_CLUSTER_MAP_STREAM)
    }

    /// A Kafka position.
    pub fn kafka(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Position {
            kind: Some(PositionKind::Kafka(KafkaPosition {
                topic: topic.into(),
                partition,
                offset,
            })),
        }
    }

    /// The position of the `n`th state observation of a Kafka source: a reserved
    /// stream (topic names are never empty) ordered by `n`.
    pub fn kafka_state(n: i64) -> Self {
        Position::kafka(KAFKA_STATE_TOPIC, KAFKA_STATE_PARTITION, n)
    }

    /// True for positions on a Kafka source's reserved state stream.
    pub fn is_kafka_state(&self) -> bool {
        matches!(&self.kind, Some(PositionKind::Kafka(p)) if p.topic == KAFKA_STATE_TOPIC && p.partition == KAFKA_STATE_PARTITION)
    }

    /// The source kind this position belongs to, if set.
    pub fn source_kind(&self) -> Option<crate::config::SourceKind> {
        use crate::config::SourceKind as K;
        Some(match self.kind.as_ref()? {
            PositionKind::Postgres(_) => K::Postgres,
            PositionKind::Redis(_) => K::Redis,
            PositionKind::Kafka(_) => K::Kafka,
            PositionKind::Mongo(_) => K::Mongodb,
            PositionKind::Kubernetes(_) => K::Kubernetes,
        })
    }

    /// Splits the position into `(stream, ordinal)`: positions compare only within a
    /// stream, and there byte order of `ordinal` is position order.
    ///
    /// Returns `None` for an empty position (or a stream name over 64 KiB).
    pub fn index_key(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut v = Vec::with_capacity(32);
        let len = self.write_index_key(&mut v)?;
        let ordinal = v.split_off(2 + len);
        Some((v.split_off(2), ordinal))
    }

    /// Appends `stream length (u16 BE) || stream || ordinal` to `out` (the journal's
    /// position-index layout) without intermediate allocations; returns the stream
    /// length, or `None` (and leaves `out` unchanged) as [`Position::index_key`] does.
    pub fn write_index_key(&self, out: &mut Vec<u8>) -> Option<usize> {
        let start = out.len();
        out.extend_from_slice(&[0, 0]);
        match self.kind.as_ref() {
            None => {}
            Some(PositionKind::Postgres(p)) => {
                out.extend_from_slice(&p.lsn.to_be_bytes());
                out.extend_from_slice(&p.index.to_be_bytes());
            }
            Some(PositionKind::Redis(p)) => {
                out.extend_from_slice(p.replid.as_bytes());
                out.extend_from_slice(&p.offset.to_be_bytes());
            }
            Some(PositionKind::Kafka(p)) => {
                out.extend_from_slice(p.topic.as_bytes());
                out.push(0);
                out.extend_from_slice(&p.partition.to_be_bytes());
                // Offsets are never negative on disk; clamp defensively so the order holds.
                out.extend_from_slice(&(p.offset.max(0) as u64).to_be_bytes());
            }
            // The journal's own ordinal: tokens are not ordered (see MongoPosition).
            Some(PositionKind::Mongo(p)) => out.extend_from_slice(&p.ordinal.to_be_bytes()),
            Some(PositionKind::Kubernetes(p)) => {
                out.extend_from_slice(p.resource.as_bytes());
                match p.resource_version.parse::<u64>() {
                    Ok(n) => {
                        out.push(0);
                        out.extend_from_slice(&n.to_be_bytes());
                    }
                    Err(_) => {
                        out.push(1);
                        out.extend_from_slice(p.resource_version.as_bytes());
                    }
                }
            }
        }
        let stream_len = match self.kind.as_ref() {
            None => {
                out.truncate(start);
                return None;
            }
            Some(PositionKind::Postgres(_)) | Some(PositionKind::Mongo(_)) => 0,
            Some(PositionKind::Redis(p)) => p.replid.len(),
            Some(PositionKind::Kafka(p)) => p.topic.len() + 5,
            Some(PositionKind::Kubernetes(p)) => p.resource.len(),
        };
        let Ok(len) = u16::try_from(stream_len) else {
            out.truncate(start);
            return None;
        };
        out[start..start + 2].copy_from_slice(&len.to_be_bytes());
        Some(stream_len)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            None => f.write_str("-"),
            Some(PositionKind::Postgres(p)) => {
                write!(f, "{:X}/{:X}", p.lsn >> 32, p.lsn & 0xffff_ffff)
            }
            Some(PositionKind::Redis(p)) => write!(f, "{}:{}", p.replid, p.offset),
            Some(PositionKind::Kafka(p)) if self.is_kafka_state() => {
                write!(f, "state#{}", p.offset)
            }
            Some(PositionKind::Kafka(p)) => write!(f, "{}/{}@{}", p.topic, p.partition, p.offset),
            Some(PositionKind::Mongo(p)) => write!(
                f,
                "#{} ts {}:{}",
                p.ordinal,
                p.cluster_time >> 32,
                p.cluster_time & 0xffff_ffff
            ),
            Some(PositionKind::Kubernetes(p)) => write!(f, "{}@{}", p.resource, p.resource_version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_sort_like_positions() {
        let a = Position::postgres(0x1_0000_00FF).index_key().unwrap();
        let b = Position::postgres(0x2_0000_0000).index_key().unwrap();
        assert!(a.1 < b.1);
        let k1 = Position::kafka("t", 1, 9).index_key().unwrap();
        let k2 = Position::kafka("t", 1, 10).index_key().unwrap();
        let k3 = Position::kafka("t", 2, 0).index_key().unwrap();
        assert_eq!(k1.0, k2.0);
        assert_ne!(k1.0, k3.0);
        assert!(k1.1 < k2.1);
    }

    #[test]
    fn displays_native_forms() {
        assert_eq!(
            Position::postgres(0x16_B374_D848).to_string(),
            "16/B374D848"
        );
        assert_eq!(Position::kafka("orders", 3, 42).to_string(), "orders/3@42");
    }

    #[test]
    fn mongo_positions_order_by_ordinal_never_by_token() {
        // Token bytes in the opposite order of the stream (the stand-in's tokens
        // are not byte-ordered): the ordinal alone decides.
        let a = Position::mongo(9, 5 << 32, "ff00", vec![1])
            .index_key()
            .unwrap();
        let b = Position::mongo(10, 4 << 32, "0001", vec![2])
            .index_key()
            .unwrap();
        assert_eq!(a.0, b.0);
        assert!(a.1 < b.1);
        let c = Position::mongo(256, 0, "", vec![]).index_key().unwrap();
        assert!(b.1 < c.1);
    }
}
