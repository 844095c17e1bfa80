//! `diff`: what changed in each source between two cuts, from the journal alone.
//!
//! Each source is cut at both moments exactly as a restore would cut it (offsets
//! from the application's points), and the events between the cuts are summed up
//! per thing they touched ([`crate::event::Touch`]): per table the rows inserted,
//! updated and deleted; per Redis database and type the keys written and
//! deleted; per partition the records; per consumer group where its offset moved;
//! per collection the documents; per kind the Kubernetes objects created, changed
//! and deleted. Counts are of changes (a row updated twice counts two updates);
//! `keys` counts the distinct keys touched. A Kubernetes source also gets its
//! objects created, changed (with the fields) and deleted, and its Helm revisions
//! ([`super::diff_kube`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::point::Cut;
use crate::config::SourceKind;
use crate::crypto::SealKey;
use crate::journal::{Journal, JournalError};

/// One thing's changes between the cuts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GroupDiff {
    /// Changes per action (`insert`: 12).
    pub actions: BTreeMap<String, u64>,
    /// Distinct keys touched.
    pub keys: u64,
    /// For a consumer group: its offset at the first and last observation
    /// between the cuts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved: Option<(String, String)>,
}

/// One source's changes between two cuts.
#[derive(Debug, Clone, Serialize)]
pub struct SourceDiff {
    /// The source.
    pub source: String,
    /// Its kind.
    pub kind: String,
    /// Cut at the first moment.
    pub from: Cut,
    /// Cut at the second.
    pub to: Cut,
    /// Events between them.
    pub events: u64,
    /// Per thing touched (`table public.orders`).
    pub changes: BTreeMap<String, GroupDiff>,
    /// A Kubernetes source's objects and Helm revisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<super::diff_kube::KubeDiff>,
}

/// The last sequence of `source` inside `cut`.
pub fn seq_of(journal: &Journal, source: &str, cut: &Cut) -> Result<u64, JournalError> {
    match cut.through_seq {
        Some(s) => Ok(s),
        None => {
            let info = journal.source(source)?;
            Ok(journal.seq_at_time(info.id, cut.at)?.unwrap_or(0))
        }
    }
}

/// What changed in `source` between cuts `from` and `to`. `key` opens a
/// Kubernetes source's sealed Secrets to compare them (never to show them).
pub fn diff_source(
    journal: &Journal,
    from: Cut,
    to: Cut,
    key: Option<&SealKey>,
) -> Result<SourceDiff, JournalError> {
    let info = journal.source(&from.source)?;
    let (a, b) = (
        seq_of(journal, &from.source, &from)?,
        seq_of(journal, &to.source, &to)?,
    );
    let mut changes: BTreeMap<String, GroupDiff> = BTreeMap::new();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut events = 0;
    if b > a {
        for entry in journal.events(info.id, a + 1, b) {
            let entry = entry?;
            events += 1;
            for t in entry.event.touches() {
                let g = changes.entry(t.group.clone()).or_default();
                if let Some(d) = t.detail {
                    match &mut g.moved {
                        Some((_, last)) => *last = d,
                        None => g.moved = Some((d.clone(), d)),
                    }
                    continue;
                }
                *g.actions.entry(t.action.to_string()).or_default() += 1;
                if let Some(k) = t.key {
                    keys.entry(t.group).or_default().insert(k);
                }
            }
        }
    }
    for (g, k) in keys {
        if let Some(d) = changes.get_mut(&g) {
            d.keys = k.len() as u64;
        }
    }
    // A group whose offset did not move between the cuts changed nothing.
    changes.retain(|_, d| !d.actions.is_empty() || d.moved.as_ref().is_some_and(|(x, y)| x != y));
    let kubernetes = match info.kind {
        SourceKind::Kubernetes => Some(super::diff_kube::diff(journal, info.id, a, b, key)?),
        _ => None,
    };
    Ok(SourceDiff {
        source: from.source.clone(),
        kind: info.kind.to_string(),
        from,
        to,
        events,
        changes,
        kubernetes,
    })
}
