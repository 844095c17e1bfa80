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
            "{:<20} {:<10} position {:<24} last event {:<27} coverage {:<27} events {}{}",
            s("name"),
            s("kind"),
            s("position"),
            s("last_event_time"),
            s("coverage"),
            r["events"],
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
