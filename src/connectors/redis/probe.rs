//! What `status` shows for a Redis source: how far the journal trails the primary,
//! and how close that is to the primary's replication backlog (past it, a
//! reconnect needs a full resync).

use serde_json::json;

use super::locate::Locator;
use super::RedisError;
use crate::config::Timeouts;
use crate::journal::{Journal, SourceId};
use crate::position::PositionKind;

/// The journal's offset against the primary's, as a JSON document.
pub fn lag(url: &str, journal: &Journal, id: SourceId, timeouts: &Timeouts) -> serde_json::Value {
    let journal_offset = journal.checkpoints(id).ok().and_then(|cps| {
        cps.iter()
            .filter_map(|c| match &c.position.kind {
                Some(PositionKind::Redis(p)) => Some((c.seq, p.offset)),
                _ => None,
            })
            .max()
            .map(|(_, o)| o)
    });
    let probe = || -> Result<(u64, u64), RedisError> {
        // An address list or Sentinel: the primary now.
        let mut c = Locator::parse(url)?.connect(timeouts)?;
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
