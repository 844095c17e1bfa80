//! Restoring a Redis source: the base image's logical values written with native
//! commands (no `RESTORE` payloads, so any Redis/Valkey version takes them), then
//! the journaled command stream up to the moment, all pipelined.
//!
//! TTLs are absolute (`PEXPIREAT`), so a key restored later expires when it did
//! on the source. A replay that ends inside `MULTI` sends `DISCARD`: a
//! transaction is applied whole or not at all.

mod client;
mod commands;
mod expiry;

use std::time::Instant;

use crate::connectors::redis::image::decode_chunk;
use crate::connectors::redis::resp::{Conn, RedisUrl};
use crate::connectors::redis::RedisError;
use crate::journal::Journal;
use crate::position::Position;

use crate::config::Timeouts;
use crate::digest::Digest;
use crate::restore::{Applied, ProgressSink, Rerun, RestoreError, RestorePlan, Target};

impl From<RedisError> for RestoreError {
    fn from(e: RedisError) -> Self {
        match e {
            RedisError::Journal(j) => RestoreError::Journal(j),
            other => RestoreError::Target(other.to_string()),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Keys written from the base image.
    pub keys: u64,
    /// Commands replayed from the journal.
    pub commands: u64,
    /// Position of the last replayed command (or the image's).
    pub final_position: Option<Position>,
    /// Wall time.
    pub seconds: f64,
}

/// Restores `plan` into the Redis at `url`; `force`: empty it first (FLUSHALL, and
/// FUNCTION FLUSH on Redis 7+).
pub fn restore(
    journal: &Journal,
    plan: &RestorePlan,
    url: &RedisUrl,
    timeouts: &Timeouts,
    force: bool,
    sink: &mut dyn ProgressSink,
) -> Result<Summary, RestoreError> {
    let started = Instant::now();
    let mut conn = Conn::connect(url, timeouts.connect)?;
    let version = server_major(&mut conn)?;
    let keys = crate::connectors::redis::digest::keyspace(&mut conn)?;
    let existing: u64 = keys.iter().map(|(_, n)| n).sum();
    if existing > 0 {
        if !force {
            return Err(RestoreError::Occupied {
                target: url.to_string(),
                holds: format!("{existing} keys"),
                effect: FORCE_EFFECT,
            });
        }
        conn.call(&["FLUSHALL"])?;
    }
    if force && version >= 7 {
        let _ = conn.request(&["FUNCTION", "FLUSH"])?;
    }
    conn.stream()
        .set_read_timeout(None)
        .map_err(|e| RedisError::io(conn.addr(), e))?;
    let mut p = client::Pipeline::new(conn)?;
    let mut progress = Progress { sink };
    let mut summary = Summary {
        keys: 0,
        commands: 0,
        final_position: None,
        seconds: 0.0,
    };
    if let Some(image) = &plan.image {
        if image.format != crate::connectors::redis::image::FORMAT {
            return Err(RestoreError::Apply(format!(
                "base image #{} has format `{}`, which this version cannot restore",
                image.id, image.format
            )));
        }
        summary.final_position = image.position.clone();
        for chunk in journal.image_chunks(image) {
            let chunk = decode_chunk(&chunk?).map_err(|e| {
                RestoreError::Apply(format!("base image #{}: bad chunk: {e}", image.id))
            })?;
            for rec in chunk.records {
                if !rec.key.is_empty() {
                    summary.keys += 1;
                }
                commands::write_record(&mut p, rec, version)?;
            }
            progress.show(summary.keys, summary.commands);
        }
    }
    commands::replay_events(journal, plan, &mut p, &mut summary, &mut progress)?;
    p.finish()?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Major version of the server (`redis_version`; Valkey reports its Redis
/// compatibility version there).
fn server_major(conn: &mut Conn) -> Result<u32, RedisError> {
    let info = conn.call(&["INFO", "server"])?.text().unwrap_or_default();
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
        .unwrap_or(6))
}

/// What `--force` does to a Redis target.
const FORCE_EFFECT: &str = "empty it first (FLUSHALL, and FUNCTION FLUSH on Redis 7 and later)";

/// Progress through the driver's sink.
pub(super) struct Progress<'a> {
    sink: &'a mut dyn ProgressSink,
}

impl Progress<'_> {
    pub(super) fn show(&mut self, keys: u64, commands: u64) {
        if commands == 0 {
            self.sink.update("keys from the base image", keys, None);
        } else {
            self.sink.update("commands replayed", commands, None);
        }
    }
}

/// A Redis (or Valkey) server as a restore target. Re-running a failed restore
/// with `--force` empties it (FLUSHALL) and starts over.
pub struct RedisTarget {
    url: RedisUrl,
    timeouts: Timeouts,
}

impl RedisTarget {
    /// A target for `url` (connects to nothing yet).
    pub fn new(url: &str, timeouts: &Timeouts) -> Result<RedisTarget, RestoreError> {
        Ok(RedisTarget {
            url: RedisUrl::parse(url)?,
            timeouts: *timeouts,
        })
    }
}

impl Target for RedisTarget {
    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn occupied(&mut self, _: &Journal, _: &RestorePlan) -> Result<Option<String>, RestoreError> {
        let mut conn = Conn::connect(&self.url, self.timeouts.connect)?;
        let keys: u64 = crate::connectors::redis::digest::keyspace(&mut conn)?
            .iter()
            .map(|(_, n)| n)
            .sum();
        Ok((keys > 0).then(|| format!("{keys} keys")))
    }

    fn force_effect(&self) -> &'static str {
        FORCE_EFFECT
    }

    fn rerun(&self) -> Rerun {
        Rerun::StartOverWithForce
    }

    fn apply(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        force: bool,
        progress: &mut dyn ProgressSink,
    ) -> Result<Applied, RestoreError> {
        let s = restore(journal, plan, &self.url, &self.timeouts, force, progress)?;
        Ok(Applied {
            counts: vec![
                ("keys from the base image".into(), s.keys),
                ("commands replayed".into(), s.commands),
            ],
            final_position: s.final_position.map(|p| p.to_string()),
            notes: Vec::new(),
        })
    }

    fn digest(&mut self) -> Result<Digest, RestoreError> {
        Ok(super::digest::digest_at(&self.url, &self.timeouts)?.to_digest())
    }
}
