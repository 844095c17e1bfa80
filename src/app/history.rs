//! `history`: every version of one thing (a row by primary key, a Redis key, a
//! record key, a document `_id`, a Kubernetes `namespace/name`), with its commit
//! time and transaction, from the journal alone.
//!
//! It scans the source's events between the two moments (the whole journal by
//! default): no index of keys is kept, so its time grows with the range scanned
//! (see the README for a measured figure).

use serde::Serialize;

use crate::journal::{Journal, JournalError};
use crate::time::Timestamp;

/// One version.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    /// The event's sequence in the source's journal.
    pub seq: u64,
    /// Its time (the source's commit time where it has one).
    pub time: Timestamp,
    /// Its transaction, where the source has them.
    pub txn: Option<String>,
    /// Where (`table public.orders`).
    pub group: String,
    /// What (`update`).
    pub action: String,
    /// The source's position.
    pub position: String,
    /// The event's payload, as `log --json` shows it (the row's values).
    pub payload: serde_json::Value,
}

/// Every event of `source` with `from_seq <= seq <= to_seq` that touched `key`
/// (in a group containing `group`, if given).
pub fn history(
    journal: &Journal,
    source: &str,
    key: &str,
    group: Option<&str>,
    from_seq: u64,
    to_seq: u64,
) -> Result<Vec<Version>, JournalError> {
    let info = journal.source(source)?;
    let mut out = Vec::new();
    for entry in journal.events(info.id, from_seq, to_seq) {
        let entry = entry?;
        let e = &entry.event;
        for t in e.touches() {
            if t.key.as_deref() != Some(key) || group.is_some_and(|g| !t.group.contains(g)) {
                continue;
            }
            out.push(Version {
                seq: entry.seq,
                time: Timestamp::from_micros(e.time_us()),
                txn: e.txn.as_ref().map(|t| t.id.clone()),
                group: t.group,
                action: t.action.to_string(),
                position: e
                    .position
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                payload: e.payload.as_ref().map(|p| p.to_json()).unwrap_or_default(),
            });
            break;
        }
    }
    Ok(out)
}
