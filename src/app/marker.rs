//! Writing one round of recovery-point markers and finding them in the journal.
//!
//! Each kind writes its marker into the source's own log (see each connector's
//! `marker.rs`):
//! - PostgreSQL: a transactional logical message with prefix [`PG_PREFIX`];
//! - Redis: `PUBLISH` on [`REDIS_CHANNEL`] (propagated to replicas);
//! - Kafka: a record keyed by the point on the topic [`KAFKA_TOPIC`].
//!
//! Every source of the application is marked at once (one thread each): each
//! connects its writer first, then all write together, each write timed on
//! tidemark's clock: its commit on the source lies inside
//! `[written_from, written_until]`. Then the journal is read until capture has
//! journaled every marker (capture must be running).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{Config, SourceConfig};
use crate::journal::Journal;
use crate::time::Timestamp;

/// PostgreSQL: the logical-message prefix of a marker.
pub const PG_PREFIX: &str = "tidemark.point";
/// Redis: the channel a marker is published on.
pub const REDIS_CHANNEL: &str = "tidemark:points";
/// Kafka: the topic marker records go to.
pub const KAFKA_TOPIC: &str = "tidemark.points";

/// One source's marker, written and found in the journal.
#[derive(Debug, Clone)]
pub struct Placed {
    /// When the write was sent, tidemark's clock.
    pub written_from: Timestamp,
    /// When the source acknowledged it, tidemark's clock.
    pub written_until: Timestamp,
    /// The marker event's sequence in the source's journal.
    pub seq: u64,
    /// The marker event's journal time (the source's commit time where it reports
    /// one, else when capture received it).
    pub time: Timestamp,
}

/// One marker write's round trip on tidemark's clock, or why it failed.
type Written = Result<(Timestamp, Timestamp), String>;

/// Why a round of markers failed; the message names the source and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MarkError(pub String);

/// Marks every source of `sources` with `id` and waits (up to `wait`) until the
/// journal at `journal` holds each marker.
pub fn mark_all(
    cfg: &Config,
    sources: &[&SourceConfig],
    id: &str,
    journal: &Path,
    wait: Duration,
) -> Result<BTreeMap<String, Placed>, MarkError> {
    for s in sources {
        if let Some(p) = s.settings.marker_problem() {
            return Err(MarkError(format!("source `{}`: {p}", s.name)));
        }
    }
    // Where each source's journal stands before its marker is written: the marker
    // can only come after.
    let mut scanned: BTreeMap<String, u64> = BTreeMap::new();
    {
        let j = open(journal)?;
        for s in sources {
            let info = j.source(&s.name).map_err(|_| {
                MarkError(format!("source `{}` is not in the journal yet: start `tidemark run` and let it capture before taking a point", s.name))
            })?;
            scanned.insert(s.name.clone(), info.stats.last_seq);
        }
    }
    let timeouts = cfg.timeouts;
    // Every writer connects first; then all write at once, each write timed alone.
    let barrier = std::sync::Barrier::new(sources.len());
    let barrier = &barrier;
    let written: Vec<(String, Written)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|s| {
                let name = s.name.clone();
                let settings = &s.settings;
                let h = scope.spawn(move || {
                    let writer = settings.marker(&timeouts);
                    barrier.wait();
                    let mut writer = writer.map_err(|e| e.0)?;
                    let from = Timestamp::now();
                    let r = writer.write(id);
                    let until = Timestamp::now();
                    r.map(|()| (from, until)).map_err(|e| e.0)
                });
                (name, h)
            })
            .collect();
        handles
            .into_iter()
            .map(|(n, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err("marker thread panicked".into()));
                (n, r)
            })
            .collect()
    });
    let mut times = BTreeMap::new();
    for (name, r) in written {
        match r {
            Ok(t) => {
                times.insert(name, t);
            }
            Err(e) => {
                return Err(MarkError(format!(
                    "source `{name}`: cannot write the recovery-point marker: {e}"
                )))
            }
        }
    }
    let deadline = Instant::now() + wait;
    let mut placed = BTreeMap::new();
    loop {
        let j = open(journal)?;
        for s in sources {
            if placed.contains_key(&s.name) {
                continue;
            }
            let info = j.source(&s.name).map_err(|e| MarkError(e.to_string()))?;
            let from = scanned[&s.name] + 1;
            for entry in j.events(info.id, from, info.stats.last_seq) {
                let entry = entry.map_err(|e| MarkError(e.to_string()))?;
                scanned.insert(s.name.clone(), entry.seq);
                if s.settings.is_marker(&entry.event, id) {
                    let (written_from, written_until) = times[&s.name];
                    placed.insert(
                        s.name.clone(),
                        Placed {
                            written_from,
                            written_until,
                            seq: entry.seq,
                            time: Timestamp::from_micros(entry.event.time_us()),
                        },
                    );
                    break;
                }
            }
        }
        if placed.len() == sources.len() {
            return Ok(placed);
        }
        if Instant::now() >= deadline {
            let missing: Vec<&str> = sources
                .iter()
                .map(|s| s.name.as_str())
                .filter(|n| !placed.contains_key(*n))
                .collect();
            return Err(MarkError(format!(
                "the markers were written, but after {}s the journal does not hold the marker of {}: is `tidemark run` capturing them? (the point was not recorded)",
                wait.as_secs(),
                missing.join(", ")
            )));
        }
        drop(j);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn open(path: &Path) -> Result<Journal, MarkError> {
    Journal::open_read_only(path).map_err(|e| MarkError(format!("journal: {e}")))
}
