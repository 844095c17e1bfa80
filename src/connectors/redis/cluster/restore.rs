//! Restoring into a Redis Cluster of any shape: every key is written to the target
//! primary that owns its slot.
//!
//! A cluster source was captured in parts, one per source shard. Each part starts
//! from its own newest base image at or before the moment and replays its own
//! commands after that image, in journal order. Parts are interleaved in journal
//! order too: a part's image is loaded when the replay reaches the point where it
//! was sealed. Commands of one part touch the slots that shard served, and a
//! command of a cluster touches one slot, so commands of different parts commute,
//! except for keys moving between shards in a resharding, which the plan refuses
//! (see [`cut`]). A single-server source can be restored into a cluster
//! too, if all its keys are in database 0.
//!
//! This is client replay (a cluster node cannot be made the replica of tidemark:
//! `REPLICAOF` is refused in cluster mode), with the client replay's known limits:
//! a key whose absolute expiry lies between the moment and now expires during the
//! replay.

use std::collections::HashMap;
use std::time::Instant;

use super::route::Router;
use super::topology::{self, ClusterUrl, SlotMap};
use crate::capture::part_streams;
use crate::config::Timeouts;
use crate::connectors::redis::image::{decode_chunk, FORMAT};
use crate::connectors::redis::resp::{Conn, Reply};
use crate::connectors::redis::restore::{commands, expiry};
use crate::connectors::redis::RedisError;
use crate::event::{BaseImageMeta, Payload};
use crate::journal::Journal;
use crate::position::{Position, PositionKind};
use crate::restore::{Applied, ProgressSink, RestoreError, RestorePlan};

/// What a cluster restore did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Keys written from base images.
    pub keys: u64,
    /// Commands replayed.
    pub commands: u64,
    /// Parts (source shards) restored.
    pub parts: u64,
    /// The source's slot map at the moment (for the per-shard digest).
    pub source_map: Option<SlotMap>,
}

/// One part of the plan: its image and the streams its events are on.
struct Part {
    image: BaseImageMeta,
    streams: Vec<Vec<u8>>,
    loaded: bool,
    /// The part's last event at or before the moment (0: none); see [`cut`].
    until: u64,
    /// The cut found the part's first event past the moment.
    done: bool,
    /// Commands of an open `MULTI`, held until its `EXEC`.
    multi: Option<Vec<Vec<Vec<u8>>>>,
}

/// The parts of `plan`: each part image with its streams; a source in one part
/// (a single server) is one part with every stream.
fn parts(journal: &Journal, plan: &RestorePlan) -> Result<Vec<Part>, RestoreError> {
    let images: Vec<BaseImageMeta> = if plan.parts.is_empty() {
        plan.image.clone().into_iter().collect()
    } else {
        plan.parts.clone()
    };
    let mut out = Vec::new();
    for image in images {
        if image.format != FORMAT {
            return Err(RestoreError::Apply(format!(
                "base image #{} has format `{}`, which this version cannot restore",
                image.id, image.format
            )));
        }
        let streams = if image.part.is_empty() {
            Vec::new() // every stream
        } else {
            part_streams(journal, plan.source.id, &image.part)?
                .into_iter()
                .collect()
        };
        out.push(Part {
            image,
            streams,
            loaded: false,
            until: 0,
            done: false,
            multi: None,
        });
    }
    out.sort_by_key(|p| p.image.after_seq);
    Ok(out)
}

fn stream_of(p: &Position) -> Vec<u8> {
    p.index_key().map(|(s, _)| s).unwrap_or_default()
}

fn part_of(parts: &[Part], stream: &[u8]) -> Option<usize> {
    parts
        .iter()
        .position(|p| p.image.part.is_empty() || p.streams.iter().any(|s| s == stream))
}

/// The newest slot map journaled at or before sequence `seq` (`None`: none yet).
pub fn map_at(
    journal: &Journal,
    plan: &RestorePlan,
    seq: u64,
) -> Result<Option<(u64, SlotMap)>, RestoreError> {
    let src = plan.source.id;
    let newest = journal
        .checkpoints(src)?
        .into_iter()
        .find(|c| c.position.is_redis_cluster_map())
        .and_then(|c| match c.position.kind {
            Some(PositionKind::Redis(r)) => Some(r.offset),
            _ => None,
        });
    let Some(mut hi) = newest else {
        return Ok(None);
    };
    let mut lo = 1u64;
    let mut best = None;
    // Maps are numbered 1, 2, ... in journal order: binary search on the number.
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        match journal.seq_at_position(src, &Position::redis_cluster_map(mid))? {
            Some(s) if s <= seq => {
                best = Some(s);
                lo = mid + 1;
            }
            _ => {
                if mid == 0 {
                    break;
                }
                hi = mid - 1;
            }
        }
    }
    let Some(s) = best else { return Ok(None) };
    let ev = journal.events(src, s, s).next().transpose()?;
    Ok(match ev.and_then(|e| e.event.payload) {
        Some(Payload::RedisSlotMap(m)) => Some((s, SlotMap::from_event(&m))),
        _ => None,
    })
}

/// What the journal holds of the source at the moment, per part.
struct Cut {
    /// Replay events with sequence numbers up to this (the highest `until`).
    last_seq: u64,
    /// The source's slot map at the moment.
    map: Option<SlotMap>,
}

/// Finds each part's events up to the moment, and refuses a plan whose replay
/// would cross keys moving between shards. Reads the journal only.
///
/// A part's events at or before the moment are a prefix of its events after its
/// image: those before its first event whose time is past the moment (each link
/// appends in its own order). The source's time index cannot give this cut: it is
/// the running maximum over every part, so a shard that trails another would lose
/// the events it appended after the other's later ones.
///
/// Refused: a part whose slots changed, or that had slots migrating, after its
/// image and up to the moment (the journaled maps), or a `RESTORE-ASKING` (what
/// `MIGRATE` sends) among its commands.
fn cut(journal: &Journal, plan: &RestorePlan, parts: &mut [Part]) -> Result<Cut, RestoreError> {
    let at = plan.at.as_micros();
    let Some(first) = parts.first().map(|p| p.image.after_seq + 1) else {
        return Ok(Cut {
            last_seq: 0,
            map: None,
        });
    };
    let mut prev = map_at(journal, plan, first.saturating_sub(1))?.map(|(_, m)| m.to_event());
    let mut map_done = false;
    let refuse = |what: String| {
        RestoreError::Apply(format!(
            "source `{}`: {what}, between that shard's base image and {}: keys were moving between shards, which a restore cannot replay exactly; choose a moment before the resharding, or one after every shard whose slots changed has a new base image (capture takes one after each resharding)",
            plan.source.name, plan.at
        ))
    };
    for entry in journal.events(plan.source.id, first, u64::MAX) {
        if parts.iter().all(|p| p.done) {
            break;
        }
        let entry = entry?;
        let late = entry.event.time_us() > at;
        let Some(pos) = entry.event.position.as_ref() else {
            continue;
        };
        match entry.event.payload {
            Some(Payload::RedisSlotMap(m)) => {
                map_done |= late;
                if map_done {
                    continue;
                }
                for s in &m.shards {
                    let Some(p) = parts.iter().find(|p| p.image.part == s.node_id) else {
                        continue;
                    };
                    if entry.seq <= p.image.after_seq {
                        continue;
                    }
                    let before = prev
                        .as_ref()
                        .and_then(|pm| pm.shards.iter().find(|x| x.node_id == s.node_id));
                    if !s.moving.is_empty() || before.is_some_and(|b| b.ranges != s.ranges) {
                        return Err(refuse(format!(
                            "shard {} ({}) had its slots moved at sequence {}",
                            s.node_id, s.addr, entry.seq
                        )));
                    }
                }
                prev = Some(m);
            }
            Some(Payload::Redis(cmd)) => {
                let Some(i) = part_of(parts, &stream_of(pos)) else {
                    continue;
                };
                let p = &mut parts[i];
                if entry.seq <= p.image.after_seq || p.done {
                    continue;
                }
                if late {
                    p.done = true;
                    continue;
                }
                p.until = entry.seq;
                if cmd
                    .args
                    .first()
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"restore-asking"))
                {
                    return Err(refuse(format!(
                        "a key migrated into shard {} at sequence {}",
                        p.image.part, entry.seq
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(Cut {
        last_seq: parts.iter().map(|p| p.until).max().unwrap_or(0),
        map: prev.map(|m| SlotMap::from_event(&m)),
    })
}

/// Restores `plan` into the cluster at `url`.
pub fn restore(
    journal: &Journal,
    plan: &RestorePlan,
    url: &ClusterUrl,
    timeouts: &Timeouts,
    force: bool,
    sink: &mut dyn ProgressSink,
) -> Result<Summary, RestoreError> {
    let mut parts = parts(journal, plan)?;
    let cut = cut(journal, plan, &mut parts)?;
    let target = topology::discover(url, &[], timeouts)?;
    let mut router = Router::connect(url, &target, timeouts)?;
    let mut version = 7;
    for i in 0..router.node_count() {
        let keys = dbsize(&mut router, i)?;
        if keys > 0 && !force {
            return Err(RestoreError::Occupied {
                target: url.to_string(),
                holds: format!("{keys} keys on {}", router.addr(i)),
                effect: FORCE_EFFECT,
            });
        }
        version = version.min(major(&mut router, i)?);
        if force {
            expect_ok(&mut router, i, &["FLUSHALL"])?;
            if version >= 7 {
                let _ = router.request(i, &["FUNCTION", "FLUSH"])?;
            }
        }
    }
    let started = Instant::now();
    let mut summary = Summary {
        parts: parts.len() as u64,
        source_map: cut.map.clone(),
        ..Default::default()
    };
    let mut map = map_at(
        journal,
        plan,
        plan.image.as_ref().map_or(0, |m| m.after_seq),
    )?
    .map(|(_, m)| m);
    let first = parts.first().map_or(1, |p| p.image.after_seq + 1);
    let mut last_shown = Instant::now();
    let load = |router: &mut Router,
                parts: &mut [Part],
                upto: u64,
                summary: &mut Summary|
     -> Result<(), RestoreError> {
        for p in parts
            .iter_mut()
            .filter(|p| !p.loaded && p.image.after_seq < upto)
        {
            p.loaded = true;
            for chunk in journal.image_chunks(&p.image) {
                let chunk = decode_chunk(&chunk?).map_err(|e| {
                    RestoreError::Apply(format!("base image #{}: bad chunk: {e}", p.image.id))
                })?;
                for rec in chunk.records {
                    if !rec.key.is_empty() {
                        summary.keys += 1;
                    }
                    commands::write_record(router, rec, version)?;
                }
            }
        }
        Ok(())
    };
    for entry in journal.events(plan.source.id, first, cut.last_seq) {
        let entry = entry?;
        load(&mut router, &mut parts, entry.seq, &mut summary)?;
        let Some(pos) = entry.event.position.as_ref() else {
            continue;
        };
        let late = entry.event.time_us() > plan.at.as_micros();
        let cmd = match entry.event.payload {
            Some(Payload::RedisSlotMap(m)) => {
                if !late {
                    map = Some(SlotMap::from_event(&m));
                }
                continue;
            }
            Some(Payload::Redis(cmd)) => cmd,
            _ => continue,
        };
        let Some(i) = part_of(&parts, &stream_of(pos)) else {
            tracing::warn!(position = %pos, "an event of no shard in the plan (a shard that had no base image by the moment) is left out");
            continue;
        };
        if entry.seq <= parts[i].image.after_seq || entry.seq > parts[i].until {
            continue; // in the part's image already, or after the moment
        }
        let name = cmd
            .args
            .first()
            .map(|a| a.to_ascii_lowercase())
            .unwrap_or_default();
        match name.as_slice() {
            b"ping" | b"replconf" | b"select" => continue,
            b"multi" => {
                parts[i].multi = Some(Vec::new());
                continue;
            }
            b"exec" => {
                let queued = parts[i].multi.take().unwrap_or_default();
                summary.commands += queued.len() as u64;
                transaction(&mut router, queued)?;
                continue;
            }
            _ => {}
        }
        if cmd.db != 0 {
            return Err(RestoreError::Apply(format!(
                "the journal holds a command in database {} (at {pos}); a cluster has database 0 only: restore into a single server instead",
                cmd.db
            )));
        }
        let capture_ms = entry.event.capture_time_us.div_euclid(1000);
        let args = expiry::absolutize(&cmd.args, capture_ms).unwrap_or(cmd.args);
        if let Some(q) = parts[i].multi.as_mut() {
            q.push(args);
            continue;
        }
        summary.commands += 1;
        if matches!(name.as_slice(), b"flushall" | b"flushdb") {
            let image_part = parts[i].image.part.clone();
            flush_part(&mut router, &image_part, map.as_ref())?;
        } else {
            commands::CommandSink::send(&mut router, 0, &args)?;
        }
        if last_shown.elapsed().as_millis() >= 250 {
            last_shown = Instant::now();
            sink.update("commands replayed", summary.commands, None)?;
        }
    }
    // Parts sealed after the last event replayed (or with no events since).
    load(&mut router, &mut parts, u64::MAX, &mut summary)?;
    router.finish()?;
    tracing::info!(
        keys = summary.keys,
        commands = summary.commands,
        seconds = started.elapsed().as_secs_f64(),
        "cluster restore applied"
    );
    Ok(summary)
}

/// A `MULTI` block of one part, applied whole on each node its commands go to (a
/// block's commands share a slot in a cluster; the expiries a primary propagates
/// in one block may not, and then each node gets its share as one transaction).
fn transaction(router: &mut Router, queued: Vec<Vec<Vec<u8>>>) -> Result<(), RedisError> {
    let mut per_node: Vec<(usize, Vec<Vec<Vec<u8>>>)> = Vec::new();
    for args in queued {
        let keys = router.keys.of(&args)?;
        let nodes: Vec<usize> = match router.node_of(&keys, &args)? {
            Some(i) => vec![i],
            None => (0..router.node_count()).collect(),
        };
        for i in nodes {
            match per_node.iter_mut().find(|(n, _)| *n == i) {
                Some((_, v)) => v.push(args.clone()),
                None => per_node.push((i, vec![args.clone()])),
            }
        }
    }
    for (i, cmds) in per_node {
        router.send_to(i, &["MULTI"])?;
        for c in &cmds {
            router.send_to(i, c)?;
        }
        router.send_to(i, &["EXEC"])?;
    }
    Ok(())
}

/// `FLUSHALL`/`FLUSHDB` of one source shard: deletes, on the target, the keys of
/// the slots that shard served (per the journaled map); a single-server source's
/// flush empties every target primary.
fn flush_part(router: &mut Router, part: &str, map: Option<&SlotMap>) -> Result<(), RedisError> {
    let shard = map.and_then(|m| m.shards.iter().find(|s| s.node_id == part));
    let Some(shard) = shard.filter(|_| !part.is_empty()) else {
        if !part.is_empty() {
            tracing::warn!(shard = %part, "FLUSHALL of a shard missing from the journaled slot map: emptying the whole target");
        }
        return router.broadcast(&["FLUSHALL"]);
    };
    for &(a, b) in &shard.ranges {
        for slot in a..=b {
            let node = router.owner(slot);
            loop {
                let keys = router
                    .request(
                        node,
                        &["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "1000"],
                    )?
                    .into_array();
                if keys.is_empty() {
                    break;
                }
                let mut del: Vec<Vec<u8>> = vec![b"UNLINK".to_vec()];
                del.extend(keys.into_iter().filter_map(Reply::into_bytes));
                router.request(node, &del)?;
            }
        }
    }
    Ok(())
}

fn dbsize(router: &mut Router, i: usize) -> Result<u64, RedisError> {
    match router.request(i, &["DBSIZE"])? {
        Reply::Int(n) => Ok(n.max(0) as u64),
        other => Err(RedisError::Protocol {
            addr: router.addr(i).to_string(),
            detail: format!("DBSIZE answered {other:?}"),
        }),
    }
}

fn major(router: &mut Router, i: usize) -> Result<u32, RedisError> {
    let info = router
        .request(i, &["INFO", "server"])?
        .text()
        .unwrap_or_default();
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
        .unwrap_or(6))
}

fn expect_ok(router: &mut Router, i: usize, args: &[&str]) -> Result<(), RedisError> {
    match router.request(i, args)? {
        Reply::Error(e) => Err(RedisError::Server {
            addr: router.addr(i).to_string(),
            command: args.join(" "),
            detail: e,
        }),
        _ => Ok(()),
    }
}

/// What `--force` does to a cluster target.
pub const FORCE_EFFECT: &str =
    "empty every primary first (FLUSHALL, and FUNCTION FLUSH on Redis 7 and later)";

/// Keys held by the cluster at `url` (sum of `DBSIZE` over its primaries).
pub fn keys_held(url: &ClusterUrl, timeouts: &Timeouts) -> Result<u64, RedisError> {
    let map = topology::discover(url, &[], timeouts)?;
    let mut n = 0;
    for s in &map.shards {
        let mut c = Conn::connect(&url.node(&s.host, s.port), timeouts.connect)?;
        if let Reply::Int(k) = c.call(&["DBSIZE"])? {
            n += k.max(0) as u64;
        }
    }
    Ok(n)
}

/// The lines `restore --dry-run` adds: per part, its image and events.
pub fn preview(journal: &Journal, plan: &RestorePlan) -> Result<Vec<String>, RestoreError> {
    let mut parts = parts(journal, plan)?;
    let mut lines = vec![format!("{} source shard(s), each from its own base image and its own events up to the moment; keys routed by slot to the target's primaries", parts.len())];
    let cut = match cut(journal, plan, &mut parts) {
        Ok(c) => Some(c),
        Err(e) => {
            lines.push(format!("would be refused: {e}"));
            None
        }
    };
    let mut counts: HashMap<usize, u64> = HashMap::new();
    let first = parts.first().map_or(1, |p| p.image.after_seq + 1);
    let last = cut.as_ref().map_or(0, |c| c.last_seq);
    for entry in journal.events(plan.source.id, first, last) {
        let entry = entry?;
        let Some(pos) = entry.event.position.as_ref() else {
            continue;
        };
        if let Some(i) = part_of(&parts, &stream_of(pos)) {
            let p = &parts[i];
            if entry.seq > p.image.after_seq
                && entry.seq <= p.until
                && matches!(entry.event.payload, Some(Payload::Redis(_)))
            {
                *counts.entry(i).or_default() += 1;
            }
        }
    }
    for (i, p) in parts.iter().enumerate() {
        lines.push(format!(
            "shard {}: base image #{} ({} bytes), then {} journaled commands",
            if p.image.part.is_empty() {
                "(single server)"
            } else {
                &p.image.part
            },
            p.image.id,
            p.image.bytes,
            counts.get(&i).copied().unwrap_or(0)
        ));
    }
    Ok(lines)
}

/// The counts a cluster restore reports.
pub fn applied(s: &Summary, plan: &RestorePlan) -> Applied {
    Applied {
        counts: vec![
            ("source shards".into(), s.parts),
            ("keys from the base images".into(), s.keys),
            ("commands replayed".into(), s.commands),
        ],
        final_position: None,
        notes: vec![format!("restored at {}", plan.at)],
    }
}
