//! `history`: every version of one thing (a row by primary key, a Redis key, a
//! record key, a document `_id`, a Kubernetes `namespace/name`), with its commit
//! time and transaction, from the journal alone.
//!
//! The key index ([`crate::journal::CF_KEYS`]) gives the candidate events up to
//! the source's indexed-through sequence; each candidate's event is read and its
//! touches checked (a hash collision or an entry of a pruned event shows nothing).
//! The events after indexed-through (what the background indexer of `tidemark
//! run` has not reached yet) are scanned. [`Search`] says which was done.

use serde::Serialize;

use crate::journal::{Journal, JournalError, LogEntry};
use crate::time::Timestamp;

/// One version.
#[derive(Debug, Clone, Serialize, PartialEq)]
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

/// How the versions were found.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Search {
    /// The key index covered the source through this sequence (0: not used, or
    /// nothing indexed yet).
    pub indexed_through: u64,
    /// Candidate events the index gave (each re-checked).
    pub index_candidates: u64,
    /// The scan started at this sequence (0: no scan).
    pub scanned_from: u64,
    /// Events scanned.
    pub events_scanned: u64,
}

/// Every event of `source` with `from_seq <= seq <= to_seq` that touched `key`
/// (in a group containing `group`, if given), by the key index and a scan of what
/// it does not cover yet.
pub fn history(
    journal: &Journal,
    source: &str,
    key: &str,
    group: Option<&str>,
    from_seq: u64,
    to_seq: u64,
) -> Result<Vec<Version>, JournalError> {
    Ok(search(journal, source, key, group, from_seq, to_seq, true)?.0)
}

/// [`history`], with or without the key index (`use_index = false` scans the whole
/// range: the check of the index), and how it was done.
pub fn search(
    journal: &Journal,
    source: &str,
    key: &str,
    group: Option<&str>,
    from_seq: u64,
    to_seq: u64,
    use_index: bool,
) -> Result<(Vec<Version>, Search), JournalError> {
    let info = journal.source(source)?;
    let mut found = Search::default();
    let mut out = Vec::new();
    let through = if use_index {
        journal.keys_indexed_through(info.id)?
    } else {
        0
    };
    found.indexed_through = through;
    if through >= from_seq {
        for seq in journal.key_candidates(info.id, key, from_seq, through.min(to_seq))? {
            found.index_candidates += 1;
            // Gone (pruned since it was indexed): nothing to show.
            if let Some(entry) = journal.events(info.id, seq, seq).next() {
                out.extend(version_of(&entry?, key, group));
            }
        }
    }
    let tail = from_seq.max(through.saturating_add(1));
    if tail <= to_seq {
        found.scanned_from = tail;
        for entry in journal.events(info.id, tail, to_seq) {
            found.events_scanned += 1;
            out.extend(version_of(&entry?, key, group));
        }
    }
    Ok((out, found))
}

/// The version `entry` is of `key`, if it touched it (in a group containing
/// `group`).
fn version_of(entry: &LogEntry, key: &str, group: Option<&str>) -> Option<Version> {
    let e = &entry.event;
    let t = e
        .touches()
        .into_iter()
        .find(|t| t.key.as_deref() == Some(key) && group.is_none_or(|g| t.group.contains(g)))?;
    Some(Version {
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
    })
}
