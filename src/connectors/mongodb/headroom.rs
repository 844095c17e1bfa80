//! Oplog headroom for `status`: how much of the oplog lies behind the journal's
//! resume point. The oplog is a capped collection: once its oldest entry is newer
//! than the point capture would resume from, that history is gone (MongoDB error
//! 286) and capture must start a new one from a new base image. So `status` reads
//! the oldest and newest entries of `local.oplog.rs` and shows
//!
//! - `oplog_oldest`: the oldest entry's time;
//! - `oplog_window_s`: newest minus oldest, the history the oplog holds;
//! - `oplog_headroom_s`: the journal's resume point minus the oldest entry, in
//!   seconds: how far the oplog may advance (if capture stopped now) before the
//!   resume point falls out of it;
//! - `oplog_holds_resume_point`: false once it has (compared by full timestamp);
//! - `oplog_warning` when the headroom is below the source's `oplog_warn_margin`
//!   (default 1 h).
//!
//! It needs `find` on `local.oplog.rs`; without it, `oplog_error` says so.

use std::time::Duration;

use mongodb::bson::{doc, Document, Timestamp as BsonTs};
use mongodb::options::FindOneOptions;

use super::client::Conn;
use crate::config::Timeouts;
use crate::connectors::Probe;
use crate::journal::{Journal, SourceId};
use crate::position::PositionKind;
use crate::time::Timestamp;

/// The default `oplog_warn_margin`.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(3600);

/// The journal's resume point: the cluster time of its newest checkpoint
/// (`seconds << 32 | increment`).
fn resume_point(journal: &Journal, id: SourceId) -> Option<u64> {
    journal
        .checkpoints(id)
        .ok()?
        .into_iter()
        .rev()
        .find_map(|c| match c.position.kind {
            Some(PositionKind::Mongo(p)) => Some(p.cluster_time),
            _ => None,
        })
}

/// The `ts` of the oldest (`order` 1) or newest (-1) oplog entry.
async fn edge(conn: &Conn, order: i32) -> Result<BsonTs, String> {
    let opts = FindOneOptions::builder()
        .sort(doc! {"$natural": order})
        .projection(doc! {"ts": 1})
        .build();
    let entry = conn
        .client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .with_options(opts)
        .await
        .map_err(|e| {
            format!(
                "cannot read local.oplog.rs on {} (the user needs `find` on it): {e}",
                conn.url
            )
        })?;
    entry
        .as_ref()
        .and_then(|d| d.get_timestamp("ts").ok())
        .ok_or_else(|| format!("local.oplog.rs on {} is empty", conn.url))
}

fn secs_to_rfc3339(s: u32) -> String {
    Timestamp::from_micros(i64::from(s) * 1_000_000).to_rfc3339()
}

/// The oplog fields and line for `status`.
pub fn probe(url: &str, journal: &Journal, id: SourceId, margin: Duration, t: &Timeouts) -> Probe {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return error(format!("cannot start an async runtime: {e}")),
    };
    let edges = rt.block_on(async {
        let conn = Conn::open(url, t).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((edge(&conn, 1).await?, edge(&conn, -1).await?))
    });
    let (oldest, newest) = match edges {
        Ok(e) => e,
        Err(e) => return error(e),
    };
    let mut fields = serde_json::Map::new();
    fields.insert("oplog_oldest".into(), secs_to_rfc3339(oldest.time).into());
    let window = i64::from(newest.time) - i64::from(oldest.time);
    fields.insert("oplog_window_s".into(), window.into());
    let mut line = format!(
        "    oplog: oldest entry {} ({window} s of history)",
        secs_to_rfc3339(oldest.time)
    );
    if let Some(resume) = resume_point(journal, id) {
        let headroom = (resume >> 32) as i64 - i64::from(oldest.time);
        let holds = resume >= (u64::from(oldest.time) << 32 | u64::from(oldest.increment));
        fields.insert("oplog_headroom_s".into(), headroom.into());
        fields.insert("oplog_holds_resume_point".into(), holds.into());
        line.push_str(&format!(
            "; the journal's resume point is {headroom} s after it"
        ));
        let warning = if !holds {
            Some("the oplog no longer holds the journal's resume point: the next capture records a break and takes a new base image".to_string())
        } else if (headroom as u64) < margin.as_secs() {
            Some(format!(
                "only {headroom} s of oplog behind the journal's resume point (oplog_warn_margin {} s): if capture stops for longer, history is lost; grow the oplog (replSetResizeOplog) or keep capture running",
                margin.as_secs()
            ))
        } else {
            None
        };
        if let Some(w) = warning {
            line.push_str(&format!("\n    WARNING: {w}"));
            fields.insert("oplog_warning".into(), w.into());
        }
    }
    Probe {
        fields,
        suffix: String::new(),
        lines: vec![line],
    }
}

fn error(e: String) -> Probe {
    let mut fields = serde_json::Map::new();
    fields.insert("oplog_error".into(), e.clone().into());
    Probe {
        fields,
        suffix: String::new(),
        lines: vec![format!("    oplog: {e}")],
    }
}
