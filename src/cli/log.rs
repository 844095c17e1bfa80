//! `tidemark log`: print journal events, one per line (or JSON lines).

use std::io::Write;

use anyhow::Result;
use serde_json::{json, Value};

use super::fmt_time;
use crate::config::Config;
use crate::event::{ChangeEvent, Payload, PgOp, PgValue, PgValueKind};
use crate::journal::LogEntry;
use crate::time::{TimeSpec, Timestamp};

pub fn log(
    cfg: &Config,
    source: Option<&str>,
    since: Option<&str>,
    until: Option<&str>,
    limit: Option<u64>,
    as_json: bool,
) -> Result<()> {
    let journal = super::open_read_only(cfg)?;
    let bound = |flag, v: Option<&str>| -> Result<Option<Timestamp>> {
        Ok(match v.map(|v| super::parse_time(flag, v)).transpose()? {
            None => None,
            Some(TimeSpec::Latest) => Some(Timestamp::now()),
            Some(TimeSpec::At(t)) => Some(t),
        })
    };
    let (since, until) = (bound("since", since)?, bound("until", until)?);
    let entries: Box<dyn Iterator<Item = Result<LogEntry, _>>> = match source {
        Some(name) => {
            let src = journal.source(name)?.id;
            // Both ends come from the time index: a seek each, not a scan.
            let from = match since {
                Some(t) => journal
                    .seq_at_time(src, Timestamp::from_micros(t.as_micros().saturating_sub(1)))?
                    .map_or(1, |s| s + 1),
                None => 1,
            };
            let through = match until {
                Some(t) => journal.seq_at_time(src, t)?.unwrap_or(0),
                None => u64::MAX,
            };
            Box::new(journal.events(src, from, through))
        }
        None => Box::new(journal.log_from(1).filter(move |e| match e {
            Ok(e) => {
                since.is_none_or(|t| e.event.time_us() >= t.as_micros())
                    && until.is_none_or(|t| e.event.time_us() <= t.as_micros())
            }
            Err(_) => true,
        })),
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    for entry in
        entries.take(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)))
    {
        let LogEntry { seq, event } = entry?;
        let line = if as_json {
            describe(seq, &event).to_string()
        } else {
            format!(
                "{seq:>10} {} {:<16} {:<24} {}",
                Timestamp::from_micros(event.time_us()),
                event.source,
                event
                    .position
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                summary(&event)
            )
        };
        if writeln!(out, "{line}").is_err() {
            break; // stdout closed (e.g. piped into head)
        }
    }
    Ok(())
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

/// The event as JSON.
fn describe(seq: u64, e: &ChangeEvent) -> Value {
    let payload = match &e.payload {
        Some(Payload::Postgres(c)) => json!({
            "postgres": {
                "op": PgOp::try_from(c.op).map(|o| o.as_str_name()).unwrap_or("?"),
                "table": format!("{}.{}", c.schema, c.table),
                "columns": c.columns, "new": pg_values(&c.new_tuple), "old": pg_values(&c.old_tuple),
                "truncated": c.truncated, "ddl": c.ddl,
            }
        }),
        Some(Payload::Redis(c)) => {
            json!({ "redis": { "db": c.db, "args": c.args.iter().map(|a| text_or_hex(a)).collect::<Vec<_>>() } })
        }
        Some(Payload::Kafka(r)) => json!({
            "kafka": {
                "key": r.key.as_deref().map(text_or_hex), "value": r.value.as_deref().map(text_or_hex),
                "headers": r.headers.iter().map(|h| json!([h.key, h.value.as_deref().map(text_or_hex)])).collect::<Vec<_>>(),
                "timestamp_ms": r.timestamp_ms, "timestamp_type": r.timestamp_type,
            }
        }),
        Some(Payload::Mongo(m)) => {
            json!({ "mongodb": { "operation": m.operation_type, "ns": format!("{}.{}", m.db, m.collection), "event_bytes": m.event_bson.len() } })
        }
        Some(Payload::Kubernetes(k)) => json!({
            "kubernetes": { "type": k.event_type, "api_version": k.api_version, "kind": k.kind, "namespace": k.namespace, "name": k.name, "uid": k.uid,
                            "object": serde_json::from_slice::<Value>(&k.object_json).unwrap_or(Value::Null) }
        }),
        Some(Payload::Marker(m)) => json!({ "marker": { "name": m.name, "note": m.note } }),
        Some(Payload::KafkaState(s)) => json!({
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
        None => Value::Null,
    };
    json!({
        "seq": seq,
        "source": e.source,
        "position": e.position.as_ref().map(|p| p.to_string()),
        "commit_time": fmt_time(e.commit_time_us),
        "capture_time": fmt_time(Some(e.capture_time_us)),
        "txn": e.txn.as_ref().map(|t| json!({ "id": t.id, "commit": t.commit })),
        "payload": payload,
    })
}

/// One-line summary for the text form.
fn summary(e: &ChangeEvent) -> String {
    match &e.payload {
        Some(Payload::Postgres(c)) => {
            let op = PgOp::try_from(c.op).map(|o| o.as_str_name()).unwrap_or("?");
            format!("{op} {}.{}", c.schema, c.table)
        }
        Some(Payload::Redis(c)) => {
            let args: Vec<String> = c
                .args
                .iter()
                .take(4)
                .map(|a| String::from_utf8_lossy(a).chars().take(40).collect())
                .collect();
            format!("db{} {}", c.db, args.join(" "))
        }
        Some(Payload::Kafka(r)) => format!(
            "record key={} value={}B",
            r.key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default(),
            r.value.as_ref().map_or(0, Vec::len)
        ),
        Some(Payload::Mongo(m)) => format!("{} {}.{}", m.operation_type, m.db, m.collection),
        Some(Payload::Kubernetes(k)) => {
            format!("{} {} {}/{}", k.event_type, k.kind, k.namespace, k.name)
        }
        Some(Payload::Marker(m)) => format!("marker {}", m.name),
        Some(Payload::KafkaState(s)) => format!(
            "kafka state: {} topics, {} partitions, {} group offsets",
            s.topics.len(),
            s.partitions.len(),
            s.group_offsets.len()
        ),
        None => "-".into(),
    }
}
