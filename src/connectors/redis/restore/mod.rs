//! Restoring a Redis source: the base image, then the journaled command stream up
//! to the moment.
//!
//! - `primary`: the default. tidemark serves the target the replication protocol
//!   (an RDB written from the image, then the commands), so history applies with
//!   replica semantics: no expiry during the replay, primary-only command forms
//!   accepted.
//! - `client`: the fallback for targets that cannot follow tidemark, every command
//!   pipelined as an ordinary client.
//! - `commands`: what both send as commands (image records the RDB does not hold,
//!   the journal's commands) through one [`commands::CommandSink`].
//!
//! Before either, [`check_target`] refuses what the target cannot hold, by name,
//! with nothing changed. TTLs are absolute (`PEXPIREAT`), so a key restored later
//! expires when it did on the source. A replay that ends inside `MULTI` sends
//! `DISCARD`: a transaction is applied whole or not at all.

mod client;
pub(crate) mod commands; // cluster: the cluster restore writes through CommandSink
pub(crate) mod expiry; // cluster: and absolutizes expiries the same way
mod primary;

use std::time::Instant;

use crate::connectors::redis::digest::{keyspace, DatasetDigest};
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

/// How history reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyAs {
    /// As its primary where the target can follow tidemark, else as a client,
    /// with a warning.
    Auto,
    /// As its primary, or not at all.
    Primary,
    /// As an ordinary client.
    Client,
}

impl ApplyAs {
    /// Parses `--apply-as` (`primary`, `client`; absent: [`ApplyAs::Auto`]).
    pub fn parse(value: Option<&str>) -> Result<ApplyAs, RestoreError> {
        match value {
            None => Ok(ApplyAs::Auto),
            Some("primary") => Ok(ApplyAs::Primary),
            Some("client") => Ok(ApplyAs::Client),
            Some(other) => Err(RestoreError::Target(format!(
                "--apply-as {other}: use `primary` (tidemark serves the target the replication protocol) or `client` (replays as an ordinary client)"
            ))),
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
    /// Wall time of applying (the digest read during the restore not included).
    pub seconds: f64,
    /// How it was applied, and what the operator should know about it.
    pub notes: Vec<String>,
    /// The digest, when it had to be read before the restore ended (applied as
    /// the primary: read while the target still followed tidemark).
    pub digest: Option<DatasetDigest>,
}

/// How a restore applies, besides what and where.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions<'a> {
    /// The target may hold data, which is replaced (see [`FORCE_EFFECT`]).
    pub force: bool,
    /// As the target's primary or as a client.
    pub mode: ApplyAs,
    /// Where the target's replication link is served (`host[:port]`), when
    /// applied as its primary.
    pub listen: Option<&'a str>,
}

/// Restores `plan` into the Redis at `url`, as `opts` say.
pub fn restore(
    journal: &Journal,
    plan: &RestorePlan,
    url: &RedisUrl,
    timeouts: &Timeouts,
    opts: ApplyOptions<'_>,
    sink: &mut dyn ProgressSink,
) -> Result<Summary, RestoreError> {
    let ApplyOptions {
        force,
        mode,
        listen,
    } = opts;
    let started = Instant::now();
    let mut conn = Conn::connect(url, timeouts.connect)?;
    conn.stream()
        .set_read_timeout(Some(timeouts.read))
        .map_err(|e| RedisError::io(conn.addr(), e))?;
    let version = check_target(&mut conn, journal, plan)?;
    let existing: u64 = keyspace(&mut conn)?.iter().map(|(_, n)| n).sum();
    if existing > 0 && !force {
        return Err(RestoreError::Occupied {
            target: url.to_string(),
            holds: format!("{existing} keys"),
            effect: FORCE_EFFECT,
        });
    }
    if force {
        // Both ways start from an empty target (as the primary: so it loads the
        // RDB as it arrives, see `primary`).
        if existing > 0 {
            conn.call(&["FLUSHALL"])?;
        }
        if version.0 >= 7 {
            let _ = conn.request(&["FUNCTION", "FLUSH"])?;
        }
    }
    let mut progress = Progress { sink };
    let mut summary = Summary {
        keys: 0,
        commands: 0,
        final_position: None,
        seconds: 0.0,
        notes: Vec::new(),
        digest: None,
    };
    let why_client = match mode {
        ApplyAs::Client => "as asked (--apply-as client)".to_string(),
        ApplyAs::Auto | ApplyAs::Primary => {
            let job = primary::Job {
                journal,
                plan,
                timeouts,
                listen,
            };
            match primary::apply(&job, conn, version, &mut summary, &mut progress)? {
                Ok(followed) => {
                    summary.notes.push(format!(
                        "applied as the target's primary (replication protocol): the base image as an RDB, then {} commands",
                        summary.commands
                    ));
                    if let Some(d) = followed.server_digest {
                        summary.notes.push(format!(
                            "DEBUG DIGEST of the target at the moment (read before its promotion): {d}"
                        ));
                    }
                    if followed.expired_since > 0 {
                        summary.notes.push(format!(
                            "{} keys of the moment have expired since (their TTL fell between the moment and now): the target held them until its promotion, then expired them, as the source would have; the digest below, read before the promotion, leaves them out",
                            followed.expired_since
                        ));
                    }
                    summary.digest = Some(followed.digest);
                    summary.seconds = (followed.applied_at - started).as_secs_f64();
                    return Ok(summary);
                }
                Err(primary::CannotFollow(why)) if mode == ApplyAs::Auto => {
                    tracing::warn!(target = %url, reason = %why, "the restore target cannot follow tidemark as a replica; replaying as a client");
                    format!("the target cannot follow tidemark as a replica: {why}")
                }
                Err(primary::CannotFollow(why)) => {
                    return Err(RestoreError::Refused(format!(
                        "the target cannot follow tidemark as a replica: {why}; nothing was changed. Restore with --apply-as client to replay as an ordinary client instead"
                    )))
                }
            }
        }
    };
    summary.notes.push(format!(
        "applied as a client ({why_client}): a key whose expiry falls between the moment and now can expire during the replay (later commands on it then fail), and commands a primary propagates in forms a client may not send are refused"
    ));
    let conn = Conn::connect(url, timeouts.connect)?;
    conn.stream()
        .set_read_timeout(None)
        .map_err(|e| RedisError::io(conn.addr(), e))?;
    let mut p = client::Pipeline::new(conn)?;
    if let Some(image) = &plan.image {
        summary.final_position = image.position.clone();
        commands::each_chunk(journal, image, |chunk| {
            for rec in chunk.records {
                if !rec.key.is_empty() {
                    summary.keys += 1;
                }
                commands::write_record(&mut p, rec, version.0)?;
            }
            progress.show(summary.keys, summary.commands)?;
            Ok(())
        })?;
    }
    commands::replay_events(journal, plan, &mut p, &mut summary, &mut progress)?;
    p.finish()?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Refuses, before anything is changed, a target that is a replica, an image of
/// another format, and history the target cannot hold: commands it does not know,
/// function libraries where it has no `FUNCTION` (before 7.0), hash field TTLs
/// where it has no `HPEXPIREAT` (Redis before 7.4, Valkey before 9). Returns the
/// target's (major, minor) version (Valkey: the Redis version it reports).
fn check_target(
    conn: &mut Conn,
    journal: &Journal,
    plan: &RestorePlan,
) -> Result<(u32, u32), RestoreError> {
    let info = conn.call(&["INFO", "server"])?.text().unwrap_or_default();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| {
            let mut n = v.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            (n.next().unwrap_or(6), n.next().unwrap_or(0))
        })
        .unwrap_or((6, 0));
    let repl = conn
        .call(&["INFO", "replication"])?
        .text()
        .unwrap_or_default();
    if repl.lines().any(|l| l.trim() == "role:slave") {
        let of = |k: &str| {
            repl.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("?")
                .trim()
                .to_string()
        };
        return Err(RestoreError::Refused(format!(
            "the target is a replica of {}:{}: what is restored into it would be overwritten by its primary; restore into a primary (or run REPLICAOF NO ONE on it first)",
            of("master_host:"),
            of("master_port:")
        )));
    }
    if let Some(image) = &plan.image {
        if image.format != crate::connectors::redis::image::FORMAT {
            return Err(RestoreError::Apply(format!(
                "base image #{} has format `{}`, which this version cannot restore",
                image.id, image.format
            )));
        }
    }
    let unknown = commands::unknown_to(conn, journal, plan)?;
    if !unknown.is_empty() {
        return Err(RestoreError::Refused(format!(
            "the history to restore uses commands the target (Redis {}.{}) does not know: {}; nothing was changed. Restore into a server of the source's version or newer (with the same modules)",
            version.0,
            version.1,
            unknown.join(", ")
        )));
    }
    let lacks = commands::unknown_names(conn, &[b"function".to_vec(), b"hpexpireat".to_vec()])?;
    if !lacks.is_empty() {
        let functions = !lacks.iter().any(|n| n == "FUNCTION");
        let field_ttls = !lacks.iter().any(|n| n == "HPEXPIREAT");
        if let Some(what) = commands::image_needs(journal, plan, functions, field_ttls)? {
            return Err(RestoreError::Refused(format!(
                "the base image holds {what}, which the target (Redis {}.{}) cannot hold; nothing was changed. Restore into a newer server",
                version.0, version.1
            )));
        }
    }
    Ok(version)
}

/// What `--force` does to a Redis target.
const FORCE_EFFECT: &str = "empty it first (FLUSHALL, and FUNCTION FLUSH on Redis 7 and later)";

/// Progress through the driver's sink.
pub(super) struct Progress<'a> {
    sink: &'a mut dyn ProgressSink,
}

impl Progress<'_> {
    pub(super) fn show(&mut self, keys: u64, commands: u64) -> Result<(), RestoreError> {
        if commands == 0 {
            self.sink.update("keys from the base image", keys, None)
        } else {
            self.sink.update("commands replayed", commands, None)
        }
    }
}

/// A Redis (or Valkey) server as a restore target. Re-running a failed restore
/// with `--force` empties it (FLUSHALL) and starts over.
pub struct RedisTarget {
    url: RedisUrl,
    timeouts: Timeouts,
    mode: ApplyAs,
    listen: Option<String>,
    /// The digest read during `apply` (as the primary: before the promotion).
    digest: Option<DatasetDigest>,
}

impl RedisTarget {
    /// A target for `url` (connects to nothing yet), applied as `mode`, the
    /// replication link served on `listen` (`host[:port]`).
    pub fn new(
        url: &str,
        timeouts: &Timeouts,
        mode: ApplyAs,
        listen: Option<&str>,
    ) -> Result<RedisTarget, RestoreError> {
        Ok(RedisTarget {
            url: RedisUrl::parse(url)?,
            timeouts: *timeouts,
            mode,
            listen: listen.map(str::to_string),
            digest: None,
        })
    }
}

impl Target for RedisTarget {
    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn occupied(&mut self, _: &Journal, _: &RestorePlan) -> Result<Option<String>, RestoreError> {
        let mut conn = Conn::connect(&self.url, self.timeouts.connect)?;
        let keys: u64 = keyspace(&mut conn)?.iter().map(|(_, n)| n).sum();
        Ok((keys > 0).then(|| format!("{keys} keys")))
    }

    fn force_effect(&self) -> &'static str {
        FORCE_EFFECT
    }

    fn teardown(&mut self, _: &Journal, _: &RestorePlan) -> Result<String, RestoreError> {
        let mut conn = Conn::connect(&self.url, self.timeouts.connect)?;
        let keys: u64 = keyspace(&mut conn)?.iter().map(|(_, n)| n).sum();
        conn.call(&["FLUSHALL"])?;
        // Functions came with the image (Redis 7+); older servers lack the command.
        let _ = conn.request(&["FUNCTION", "FLUSH"])?;
        Ok(format!("flushed {keys} keys from {}", self.url))
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
        let opts = ApplyOptions {
            force,
            mode: self.mode,
            listen: self.listen.as_deref(),
        };
        let s = restore(journal, plan, &self.url, &self.timeouts, opts, progress)?;
        self.digest = s.digest;
        Ok(Applied {
            counts: vec![
                ("keys from the base image".into(), s.keys),
                ("commands replayed".into(), s.commands),
            ],
            final_position: s.final_position.map(|p| p.to_string()),
            notes: s.notes,
        })
    }

    fn digest(&mut self) -> Result<Digest, RestoreError> {
        if let Some(d) = self.digest.take() {
            return Ok(d.to_digest());
        }
        Ok(super::digest::digest_at(&self.url, &self.timeouts)?.to_digest())
    }
}
