//! `tidemark status`: per-source position, coverage and counts.

use anyhow::Result;
use serde_json::json;

use super::fmt_time;
use crate::config::{Config, SourceKind};
use crate::time::Timestamp;

pub fn status(cfg: &Config, as_json: bool) -> Result<()> {
    let journal = super::open_read_only(cfg)?;
    let size = journal.disk_size();
    let mut rows = Vec::new();
    for s in journal.sources() {
        let positions: Vec<String> = journal
            .checkpoints(s.id)?
            .iter()
            .filter(|c| !c.position.is_kafka_state())
            .map(|c| c.position.to_string())
            .collect();
        let configured = cfg.source(&s.name).is_some();
        let health: serde_json::Value = journal
            .health(s.id)?
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or(serde_json::Value::Null);
        let redis = match cfg.source(&s.name) {
            Some(crate::config::SourceConfig::Redis { url, .. }) => {
                let journal_offset = journal
                    .checkpoints(s.id)?
                    .iter()
                    .filter_map(|c| match &c.position.kind {
                        Some(crate::position::PositionKind::Redis(p)) => Some((c.seq, p.offset)),
                        _ => None,
                    })
                    .max()
                    .map(|(_, o)| o);
                redis_lag(url, journal_offset)
            }
            _ => serde_json::Value::Null,
        };
        rows.push(json!({
            "name": s.name,
            "kind": s.kind.as_str(),
            "position": if positions.is_empty() { serde_json::Value::Null } else { json!(positions.join(",")) },
            "positions": positions,
            "last_event_time": s.stats.last_event_time_us.map(|_| fmt_time(s.stats.last_event_time_us)),
            "coverage": s.stats.coverage_us.map(|_| fmt_time(s.stats.coverage_us)),
            "events": s.stats.event_count,
            "base_images": s.stats.images,
            "retained_from": s.stats.floor_us.map(|_| fmt_time(s.stats.floor_us)),
            "configured": configured,
            "health": health,
            "partitions": if s.kind == SourceKind::Kafka {
                json!(crate::kafka::status::partition_rows(&journal, s.id, Timestamp::now())?)
            } else {
                serde_json::Value::Null
            },
        }));
        if !redis.is_null() {
            if let Some(row) = rows.last_mut() {
                row["redis"] = redis;
            }
        }
    }
    if as_json {
        let doc = json!({ "journal": { "path": journal.path(), "size_bytes": size, "next_seq": journal.next_seq() }, "sources": rows });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "journal {} ({} bytes, next sequence {})",
        journal.path().display(),
        size,
        journal.next_seq()
    );
    if rows.is_empty() {
        println!("no sources captured yet");
    }
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<20} {:<10} position {:<24} last event {:<27} coverage {:<27} events {}{}{}",
            s("name"),
            s("kind"),
            s("position"),
            s("last_event_time"),
            s("coverage"),
            r["events"],
            match r.get("redis") {
                Some(x) if x["lag_bytes"].is_u64() => format!(
                    "  trails primary by {} bytes ({:.1}% of repl-backlog-size)",
                    x["lag_bytes"],
                    x["lag_backlog_ratio"].as_f64().unwrap_or(0.0) * 100.0
                ),
                Some(x) if x["error"].is_string() =>
                    format!("  primary: {}", x["error"].as_str().unwrap_or("")),
                _ => String::new(),
            },
            if r["configured"] == json!(false) {
                "  (no longer configured)"
            } else {
                ""
            }
        );
        for p in r["partitions"].as_array().into_iter().flatten() {
            let risk = match p["seconds_until_loss"].as_i64() {
                Some(s) => format!("  retention may delete uncaptured records in {s}s"),
                None => String::new(),
            };
            println!(
                "    {}/{} high-water mark {} journaled up to {} lag {} (observed {}){risk}",
                p["topic"].as_str().unwrap_or("?"),
                p["partition"],
                p["high_watermark"],
                p["journaled_next"],
                p["lag"],
                p["observed_at"].as_str().unwrap_or("-"),
            );
        }
    }
    Ok(())
}

/// How far the journal trails a Redis primary, and how close that is to its
/// replication backlog (past it, a reconnect needs a full resync).
fn redis_lag(url: &str, journal_offset: Option<u64>) -> serde_json::Value {
    use crate::capture::redis::resp::{Conn, RedisUrl};
    let probe = || -> Result<(u64, u64), crate::capture::redis::RedisError> {
        let url = RedisUrl::parse(url)?;
        let mut c = Conn::connect(&url, std::time::Duration::from_secs(2))?;
        let info = c.call(&["INFO", "replication"])?.text().unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("master_repl_offset:"), field("repl_backlog_size:")))
    };
    match probe() {
        Ok((primary, backlog)) => {
            let lag = journal_offset.map(|j| primary.saturating_sub(j));
            json!({
                "primary_offset": primary,
                "journal_offset": journal_offset,
                "lag_bytes": lag,
                "repl_backlog_size": backlog,
                "lag_backlog_ratio": lag.map(|l| if backlog == 0 { 0.0 } else { l as f64 / backlog as f64 }),
            })
        }
        Err(e) => json!({ "error": e.to_string(), "journal_offset": journal_offset }),
    }
}
