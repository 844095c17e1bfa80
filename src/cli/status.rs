//! `tidemark status`: per-source state, position, coverage and counts, plus what
//! each kind's probe adds (lag behind the server).

use anyhow::Result;
use serde_json::json;

use super::fmt_time;
use crate::config::Config;

pub fn status(cfg: &Config, as_json: bool) -> Result<()> {
    let journal = super::open_read_only(cfg)?;
    let size = journal.disk_size();
    let mut rows = Vec::new();
    let mut texts = Vec::new();
    for s in journal.sources() {
        let positions: Vec<String> = journal
            .checkpoints(s.id)?
            .iter()
            .filter(|c| !c.position.is_kafka_state())
            .map(|c| c.position.to_string())
            .collect();
        let configured = cfg.source(&s.name);
        let parse = |v: Option<String>| -> serde_json::Value {
            v.and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        let health = parse(journal.health(s.id)?);
        let supervision = parse(journal.supervision(s.id)?);
        let breaks: Vec<serde_json::Value> = journal
            .breaks(s.id)?
            .iter()
            .map(|b| {
                json!({
                    "covered_until": fmt_time(Some(b.covered_until_us)),
                    "new_history_from": fmt_time(Some(b.new_history_from_us)),
                    "reason": b.reason,
                })
            })
            .collect();
        let resync_pending = journal
            .note(s.id, crate::journal::RESYNC_NOTE)?
            .is_some_and(|n| !n.is_empty());
        let images = journal.images(s.id)?;
        let newest_image = images.last().map(|m| {
            json!({ "id": m.id, "time": fmt_time(Some(m.time_us)), "sealed": if m.sealed_us > 0 { fmt_time(Some(m.sealed_us)) } else { "-".into() }, "bytes": m.bytes })
        });
        // The oldest moment a restore can reach: the oldest image for kinds that
        // start from one, else the oldest event kept.
        let oldest = if crate::restore::kind_uses_images(s.kind) {
            images.iter().map(|m| m.time_us).min()
        } else {
            journal
                .events(s.id, 0, u64::MAX)
                .next()
                .transpose()?
                .map(|e| e.event.time_us())
        }
        .map(|t| t.max(s.stats.floor_us.unwrap_or(i64::MIN)));
        let mut row = json!({
            "name": s.name,
            "kind": s.kind.as_str(),
            "state": supervision.get("state").cloned().unwrap_or(json!(null)),
            "supervision": supervision,
            "position": if positions.is_empty() { serde_json::Value::Null } else { json!(positions.join(",")) },
            "positions": positions,
            "last_event_time": s.stats.last_event_time_us.map(|_| fmt_time(s.stats.last_event_time_us)),
            "coverage": s.stats.coverage_us.map(|_| fmt_time(s.stats.coverage_us)),
            "events": s.stats.event_count,
            "base_images": s.stats.images,
            "retained_from": s.stats.floor_us.map(|_| fmt_time(s.stats.floor_us)),
            "bytes_held": journal.source_bytes(s.id)?,
            "oldest_restorable": oldest.map(|t| fmt_time(Some(t))),
            "newest_image": newest_image,
            "configured": configured.is_some(),
            "health": health,
            "breaks": breaks,
            "resync_pending": resync_pending,
        });
        let probe = configured.and_then(|c| c.settings.probe(&journal, s.id, &cfg.timeouts));
        if let (Some(p), Some(obj)) = (&probe, row.as_object_mut()) {
            obj.extend(p.fields.clone());
        }
        texts.push(probe.map(|p| (p.suffix, p.lines)).unwrap_or_default());
        rows.push(row);
    }
    let apps = applications(cfg);
    if as_json {
        let doc = json!({ "journal": { "path": journal.path(), "id": journal.id(), "size_bytes": size, "next_seq": journal.next_seq() }, "sources": rows, "applications": apps });
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
    for (r, (suffix, lines)) in rows.iter().zip(texts) {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        println!(
            "{:<20} {:<10} {:<10} position {:<24} last event {:<27} coverage {:<27} events {}{suffix}{}",
            s("name"),
            s("kind"),
            s("state"),
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
        println!(
            "    holds {} bytes; restorable from {}; newest base image {}",
            r["bytes_held"],
            s("oldest_restorable"),
            match &r["newest_image"] {
                serde_json::Value::Null => "none".to_string(),
                m => format!(
                    "#{} at {} (sealed {})",
                    m["id"],
                    m["time"].as_str().unwrap_or("-"),
                    m["sealed"].as_str().unwrap_or("-")
                ),
            }
        );
        let sup = &r["supervision"];
        if let Some(e) = sup["error"].as_str() {
            println!("    stopped: {e}");
        }
        if let Some(e) = sup["last_error"].as_str() {
            println!(
                "    retrying (attempt {}, next at {}): {e}",
                sup["attempt"],
                sup["next_try"].as_str().unwrap_or("-")
            );
        }
        if let Some(w) = r["health"]["warning"].as_str() {
            println!("    warning: {w}");
        }
        for b in r["breaks"].as_array().into_iter().flatten() {
            println!(
                "    break in the history: captured up to {}, new history from {} ({})",
                b["covered_until"].as_str().unwrap_or("?"),
                b["new_history_from"].as_str().unwrap_or("?"),
                b["reason"].as_str().unwrap_or("?")
            );
        }
        if r["resync_pending"] == true {
            println!(
                "    resync pending: the next start records a break and takes a new base image"
            );
        }
        for n in r["health"]["not_captured"].as_array().into_iter().flatten() {
            println!("    not captured: {}", n.as_str().unwrap_or("?"));
        }
        for l in lines {
            println!("{l}");
        }
    }
    for a in &apps {
        let last = &a["last_successful_rehearsal"];
        println!(
            "application {:<12} {} recovery points (newest {}); last successful rehearsal {}",
            a["name"].as_str().unwrap_or("?"),
            a["points"],
            a["newest_point"].as_str().unwrap_or("none"),
            if last.is_null() {
                "never".to_string()
            } else {
                format!(
                    "{} (profile {}, RTO {:.1}s)",
                    last["started"].as_str().unwrap_or("?"),
                    last["profile"].as_str().unwrap_or("?"),
                    last["rto_seconds"].as_f64().unwrap_or(0.0)
                )
            }
        );
    }
    Ok(())
}

/// Per application: its points and its last successful rehearsal.
fn applications(cfg: &Config) -> Vec<serde_json::Value> {
    cfg.applications
        .iter()
        .map(|a| {
            let points = crate::app::point::list(&cfg.journal.path, &a.name).unwrap_or_default();
            let rehearsals = crate::app::rehearse::list(&cfg.journal.path, &a.name).unwrap_or_default();
            let last_ok = rehearsals.iter().rev().find(|r| r.ok);
            json!({
                "name": a.name,
                "points": points.len(),
                "newest_point": points.last().map(|p| p.id.clone()),
                "last_rehearsal": rehearsals.last().map(|r| json!({"id": r.id, "ok": r.ok, "started": r.started})),
                "last_successful_rehearsal": last_ok.map(|r| json!({"id": r.id, "started": r.started, "profile": r.profile, "at": r.at, "rto_seconds": r.rto_seconds})),
            })
        })
        .collect()
}
