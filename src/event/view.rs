//! How `tidemark log` shows an event's payload: JSON and a one-line summary. One
//! arm per payload kind of the on-disk tag table.

use serde_json::{json, Value};

use super::{Payload, PgOp, PgValue, PgValueKind};
use crate::time::Timestamp;

fn fmt_time(us: Option<i64>) -> String {
    us.map(|t| Timestamp::from_micros(t).to_rfc3339())
        .unwrap_or_else(|| "-".into())
}

fn text_or_hex(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!({ "hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>() }),
    }
}

fn pg_values(vals: &[PgValue]) -> Value {
    vals.iter()
        .map(|v| match PgValueKind::try_from(v.kind) {
            Ok(PgValueKind::Null) => Value::Null,
            Ok(PgValueKind::UnchangedToast) => json!({ "unchanged_toast": true }),
            _ => text_or_hex(&v.data),
        })
        .collect()
}

impl Payload {
    /// The payload as JSON, keyed by its kind.
    pub fn to_json(&self) -> Value {
        match self {
            Payload::Postgres(c) => json!({
                "postgres": {
                    "op": PgOp::try_from(c.op).map(|o| o.as_str_name()).unwrap_or("?"),
                    "table": format!("{}.{}", c.schema, c.table),
                    "columns": c.columns, "new": pg_values(&c.new_tuple), "old": pg_values(&c.old_tuple),
                    "truncated": c.truncated, "ddl": c.ddl,
                }
            }),
            Payload::Redis(c) => {
                json!({ "redis": { "db": c.db, "args": c.args.iter().map(|a| text_or_hex(a)).collect::<Vec<_>>() } })
            }
            Payload::Kafka(r) => json!({
                "kafka": {
                    "key": r.key.as_deref().map(text_or_hex), "value": r.value.as_deref().map(text_or_hex),
                    "headers": r.headers.iter().map(|h| json!([h.key, h.value.as_deref().map(text_or_hex)])).collect::<Vec<_>>(),
                    "timestamp_ms": r.timestamp_ms, "timestamp_type": r.timestamp_type,
                }
            }),
            Payload::Mongo(m) => {
                json!({ "mongodb": { "operation": m.operation_type, "ns": format!("{}.{}", m.db, m.collection), "event_bytes": m.event_bson.len() } })
            }
            Payload::Kubernetes(k) => json!({
                "kubernetes": { "type": k.event_type, "api_version": k.api_version, "kind": k.kind, "namespace": k.namespace, "name": k.name, "uid": k.uid,
                                "object": serde_json::from_slice::<Value>(&k.object_json).unwrap_or(Value::Null) }
            }),
            Payload::Marker(m) => json!({ "marker": { "name": m.name, "note": m.note } }),
            Payload::RedisSlotMap(m) => json!({
                "redis_slot_map": m.shards.iter().map(|s| json!({
                    "node_id": s.node_id, "addr": s.addr,
                    "ranges": s.ranges.chunks(2).map(|r| r.to_vec()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>()
            }),
            Payload::KafkaState(s) => json!({
                "kafka_state": {
                    "observed_before": fmt_time(Some(s.observed_before_us)),
                    "observed_after": fmt_time(Some(s.observed_after_us)),
                    "topics": s.topics.iter().map(|t| json!({
                        "name": t.name, "partitions": t.partitions,
                        "configs": t.configs.iter().map(|c| (c.name.clone(), Value::from(c.value.clone()))).collect::<serde_json::Map<_, _>>(),
                    })).collect::<Vec<_>>(),
                    "partitions": s.partitions.iter().map(|p| json!({
                        "topic": p.topic, "partition": p.partition, "low": p.low_watermark,
                        "high": p.high_watermark, "journaled_next": p.journaled_next,
                        "caught_up": p.caught_up_us.map(|t| fmt_time(Some(t))),
                    })).collect::<Vec<_>>(),
                    "group_offsets": s.group_offsets.iter().map(|g| json!({
                        "group": g.group, "topic": g.topic, "partition": g.partition, "offset": g.offset,
                    })).collect::<Vec<_>>(),
                }
            }),
        }
    }

    /// One line for the text form of `log`.
    pub fn summary(&self) -> String {
        match self {
            Payload::Postgres(c) => {
                let op = PgOp::try_from(c.op).map(|o| o.as_str_name()).unwrap_or("?");
                format!("{op} {}.{}", c.schema, c.table)
            }
            Payload::Redis(c) => {
                let args: Vec<String> = c
                    .args
                    .iter()
                    .take(4)
                    .map(|a| String::from_utf8_lossy(a).chars().take(40).collect())
                    .collect();
                format!("db{} {}", c.db, args.join(" "))
            }
            Payload::Kafka(r) => format!(
                "record key={} value={}B",
                r.key
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
                r.value.as_ref().map_or(0, Vec::len)
            ),
            Payload::Mongo(m) => format!("{} {}.{}", m.operation_type, m.db, m.collection),
            Payload::Kubernetes(k) => {
                format!("{} {} {}/{}", k.event_type, k.kind, k.namespace, k.name)
            }
            Payload::Marker(m) => format!("marker {}", m.name),
            Payload::RedisSlotMap(m) => {
                format!("redis cluster slot map: {} primaries", m.shards.len())
            }
            Payload::KafkaState(s) => format!(
                "kafka state: {} topics, {} partitions, {} group offsets",
                s.topics.len(),
                s.partitions.len(),
                s.group_offsets.len()
            ),
        }
    }
}
