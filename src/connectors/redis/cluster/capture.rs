//! Capturing a Redis Cluster: one replica link per primary (the single-server
//! replica session of `replica.rs`, unchanged, on a part's view of the journal),
//! and a watcher that re-reads the slot map.
//!
//! Each primary is a *part* of the source, named by its node id
//! ([`crate::capture::PartScope`]): its replication ids are its streams, its base
//! images carry its node id, and it resumes from its own checkpoints with `PSYNC`,
//! whatever the other shards do. `REPLCONF ACK` is sent by each link exactly as for
//! a single server: only offsets the journal has made durable.
//!
//! # Topology
//! The slot map (`CLUSTER SLOTS`, and each primary's migrating/importing slots from
//! `CLUSTER NODES`) is read at start and every [`WATCH_EVERY`], and journaled on the
//! reserved stream [`Position::redis_cluster_map`] when it differs from the last one
//! journaled. Followed: a new primary gets a link (first a full sync: its base
//! image); a node that no longer serves slots loses its link; every primary whose
//! slots changed is re-imaged (its link restarts with a full sync), so moments
//! after a resharding are restorable from images taken after it. The failure of
//! any link stops the whole source (the supervisor restarts it, and every shard
//! resumes from its own checkpoint).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::topology::{self, ClusterUrl, SlotMap};
use crate::capture::{shutdown_pair, CaptureContext, PartCoverage, ShutdownTrigger, SourceJournal};
use crate::config::Timeouts;
use crate::connectors::redis::resp::Conn;
use crate::connectors::redis::RedisError;
use crate::event::{ChangeEvent, Payload};
use crate::journal::Progress;
use crate::position::Position;
use crate::time::Timestamp;

/// How often the slot map is read again.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The note asking for a part to be re-imaged: the id of the part's newest image
/// when it was asked (emptied once the part has a newer one; ids only rise).
fn reimage_note(node: &str) -> String {
    format!("cluster.reimage.{node}")
}

struct Link {
    stop: ShutdownTrigger,
    done: JoinHandle<Result<(), RedisError>>,
}

/// Captures until shutdown (`Ok`) or the first failure of any link or of the
/// journal. On return every link has stopped, appended what it had and
/// acknowledged it.
pub fn run(url: &ClusterUrl, ctx: CaptureContext, timeouts: &Timeouts) -> Result<(), RedisError> {
    let journal = ctx.journal.clone();
    if let Some(m) = journal.latest_image()? {
        if m.part.is_empty() {
            return Err(RedisError::ClusterMismatch {
                detail: format!(
                    "source `{}` was journaled from a single Redis server (base image #{}); a cluster needs a source of its own: give it a new name",
                    journal.name(),
                    m.id
                ),
            });
        }
    }
    let mut map = observe(url, None, timeouts)?;
    let (mut last, mut n) = last_map(&journal)?;
    record(&journal, &map, &mut last, &mut n)?;
    let coverage = Arc::new(PartCoverage::default());
    let mut links: BTreeMap<String, Link> = BTreeMap::new();
    let result = (|| {
        for s in &map.shards {
            let link = start(url, &ctx, &coverage, s, timeouts)?;
            links.insert(s.node_id.clone(), link);
        }
        let mut watched = Instant::now();
        loop {
            if ctx.shutdown.is_fired() {
                return Ok(());
            }
            if let Some(id) = links
                .iter()
                .find(|(_, l)| l.done.is_finished())
                .map(|(id, _)| id.clone())
            {
                let link = links.remove(&id).ok_or(RedisError::Stopped)?;
                return match link.done.join() {
                    Ok(Ok(())) if ctx.shutdown.is_fired() => Ok(()),
                    Ok(Ok(())) => Err(RedisError::Protocol {
                        addr: id,
                        detail: "a shard's link ended by itself".into(),
                    }),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(RedisError::Journal(crate::journal::JournalError::Storage(
                        "a shard's capture thread panicked".into(),
                    ))),
                };
            }
            clear_reimage_notes(&journal, &links)?;
            if watched.elapsed() >= WATCH_EVERY {
                watched = Instant::now();
                let known: Vec<_> = map
                    .shards
                    .iter()
                    .map(|s| url.node(&s.host, s.port))
                    .collect();
                match observe(url, Some(known.as_slice()), timeouts) {
                    Ok(new) if new != map => {
                        // Journaled before the links change: a re-image sealed
                        // fast must still follow the map that asked for it.
                        record(&journal, &new, &mut last, &mut n)?;
                        follow(url, &ctx, &coverage, &mut links, &map, &new, timeouts)?;
                        map = new;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(source = %journal.name(), %error, "cannot read the cluster's slot map; the shard links go on")
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })();
    // Stop every link; each appends what it has and acknowledges it.
    for l in links.values() {
        l.stop.fire();
    }
    let mut first_err = result.err();
    for (_, l) in links {
        match l.done.join() {
            Ok(Ok(())) | Ok(Err(RedisError::Stopped)) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(RedisError::Stopped);
            }
        }
    }
    match first_err {
        None | Some(RedisError::Stopped) => Ok(()),
        Some(e) => Err(e),
    }
}

/// The slot map with each primary's moving slots.
fn observe(
    url: &ClusterUrl,
    known: Option<&[crate::connectors::redis::resp::RedisUrl]>,
    timeouts: &Timeouts,
) -> Result<ObservedMap, RedisError> {
    let map = topology::discover(url, known.unwrap_or(&[]), timeouts)?;
    let mut moving = BTreeMap::new();
    for s in &map.shards {
        let mut c = Conn::connect(&url.node(&s.host, s.port), timeouts.connect)?;
        let m = topology::moving_slots(&mut c)?;
        if !m.is_empty() {
            moving.insert(s.node_id.clone(), m);
        }
    }
    Ok(ObservedMap { map, moving })
}

/// A slot map as observed, with slots in migration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObservedMap {
    map: SlotMap,
    moving: BTreeMap<String, Vec<u16>>,
}

impl std::ops::Deref for ObservedMap {
    type Target = SlotMap;
    fn deref(&self) -> &SlotMap {
        &self.map
    }
}

/// The last journaled map and its number.
fn last_map(
    journal: &SourceJournal,
) -> Result<(Option<crate::event::RedisSlotMap>, u64), RedisError> {
    let cp = journal
        .checkpoints()?
        .into_iter()
        .find(|c| c.position.is_redis_cluster_map());
    let Some(cp) = cp else { return Ok((None, 0)) };
    let n = match cp.position.kind {
        Some(crate::position::PositionKind::Redis(ref r)) => r.offset,
        _ => 0,
    };
    let ev = journal.event_at(cp.seq)?;
    let map = match ev.and_then(|e| e.payload) {
        Some(Payload::RedisSlotMap(m)) => Some(m),
        _ => None,
    };
    Ok((map, n))
}

/// Journals `map` when it differs from the last one journaled.
fn record(
    journal: &SourceJournal,
    map: &ObservedMap,
    last: &mut Option<crate::event::RedisSlotMap>,
    n: &mut u64,
) -> Result<(), RedisError> {
    let mut event = map.to_event();
    for s in &mut event.shards {
        if let Some(m) = map.moving.get(&s.node_id) {
            s.moving = m.iter().map(|&x| u32::from(x)).collect();
        }
    }
    if last.as_ref() == Some(&event) {
        return Ok(());
    }
    let unserved = map.unserved();
    if unserved > 0 {
        tracing::warn!(source = %journal.name(), unserved, "the cluster serves only part of its slots");
    }
    tracing::info!(source = %journal.name(), primaries = map.shards.len(), moving = map.moving.len(), "cluster slot map journaled");
    *n += 1;
    journal.append_blocking(
        &[ChangeEvent {
            position: Some(Position::redis_cluster_map(*n)),
            capture_time_us: Timestamp::now().as_micros(),
            payload: Some(Payload::RedisSlotMap(event.clone())),
            ..Default::default()
        }],
        &Progress::default(),
    )?;
    *last = Some(event);
    Ok(())
}

/// Starts the link of primary `s` on its part's view.
fn start(
    url: &ClusterUrl,
    ctx: &CaptureContext,
    coverage: &Arc<PartCoverage>,
    s: &topology::Shard,
    timeouts: &Timeouts,
) -> Result<Link, RedisError> {
    let mut view = ctx.journal.part(&s.node_id, coverage)?;
    let asked = ctx.journal.note(&reimage_note(&s.node_id))?;
    if asked.is_some_and(|v| v.parse::<u64>().is_ok()) {
        // Resharding changed its slots: start over with a full sync (a new image).
        view = view.without_checkpoints();
    }
    let (stop, shutdown) = shutdown_pair();
    let link_ctx = CaptureContext {
        journal: view,
        shutdown,
        capturing: ctx.capturing.clone(),
    };
    let node = url.node(&s.host, s.port);
    let timeouts = *timeouts;
    let name = format!("tm-shard-{}", &s.node_id[..s.node_id.len().min(8)]);
    tracing::info!(source = %ctx.journal.name(), node = %s.node_id, addr = %s.addr(), slots = %s.ranges_text(), "capturing shard");
    let done = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            // One server per shard link; the shard's own primary is not followed
            // through failovers here (a failover is a new shard with a new image).
            let locator = crate::connectors::redis::locate::Locator::One(node);
            let followed = crate::connectors::redis::locate::Followed::default();
            crate::connectors::redis::replica::run(&locator, link_ctx, &timeouts, &followed, None)
        })
        .map_err(|e| RedisError::Io {
            addr: s.addr(),
            detail: format!("cannot start the shard's capture thread: {e}"),
        })?;
    Ok(Link { stop, done })
}

/// Follows a topology change: links for new primaries, none for nodes that no
/// longer serve slots, a new image for primaries whose slots changed.
fn follow(
    url: &ClusterUrl,
    ctx: &CaptureContext,
    coverage: &Arc<PartCoverage>,
    links: &mut BTreeMap<String, Link>,
    old: &ObservedMap,
    new: &ObservedMap,
    timeouts: &Timeouts,
) -> Result<(), RedisError> {
    let before: BTreeMap<&str, &topology::Shard> =
        old.shards.iter().map(|s| (s.node_id.as_str(), s)).collect();
    let after: BTreeMap<&str, &topology::Shard> =
        new.shards.iter().map(|s| (s.node_id.as_str(), s)).collect();
    for (id, s) in &before {
        if !after.contains_key(id) {
            tracing::info!(source = %ctx.journal.name(), node = %id, addr = %s.addr(), "primary no longer serves slots; its link stops");
            if let Some(l) = links.remove(*id) {
                stop(l)?;
            }
            coverage.deregister(id);
        }
    }
    // While slots are migrating, wait: re-image once the move is over.
    let settled = new.moving.is_empty();
    for (id, s) in &after {
        let changed = before.get(id).is_some_and(|b| b.ranges != s.ranges);
        if changed && settled {
            // Its slots moved: re-image it, so restores after the move start
            // from a state taken after it.
            let newest = newest_image_id(&ctx.journal, id)?;
            ctx.journal
                .set_note_blocking(&reimage_note(id), &newest.to_string())?;
            if let Some(l) = links.remove(*id) {
                stop(l)?;
            }
            tracing::info!(source = %ctx.journal.name(), node = %id, slots = %s.ranges_text(), "primary's slots changed; taking a new base image of it");
        }
        if !links.contains_key(*id) {
            links.insert(id.to_string(), start(url, ctx, coverage, s, timeouts)?);
        }
    }
    Ok(())
}

fn stop(l: Link) -> Result<(), RedisError> {
    l.stop.fire();
    match l.done.join() {
        Ok(Ok(())) | Ok(Err(RedisError::Stopped)) => Ok(()),
        Ok(Err(e)) if e.is_transient() => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RedisError::Stopped),
    }
}

/// The id of the newest base image of part `node` (0: none).
fn newest_image_id(journal: &SourceJournal, node: &str) -> Result<u64, RedisError> {
    Ok(journal
        .journal()
        .images(journal.id())?
        .iter()
        .filter(|m| m.part == node)
        .map(|m| m.id)
        .max()
        .unwrap_or(0))
}

/// Clears re-image notes whose part has a newer base image than at the request.
fn clear_reimage_notes(
    journal: &SourceJournal,
    links: &BTreeMap<String, Link>,
) -> Result<(), RedisError> {
    for id in links.keys() {
        let Some(asked) = journal
            .note(&reimage_note(id))?
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        if newest_image_id(journal, id)? > asked {
            // Notes cannot be deleted: an empty one is no request.
            journal.set_note_blocking(&reimage_note(id), "")?;
        }
    }
    Ok(())
}
