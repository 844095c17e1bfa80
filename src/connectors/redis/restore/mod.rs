//! Restoring a Redis source: the base image's logical values written with native
//! commands (no `RESTORE` payloads, so any Redis/Valkey version takes them), then
//! the journaled command stream up to the moment, all pipelined.
//!
//! TTLs are absolute (`PEXPIREAT`), so a key restored later expires when it did
//! on the source. A replay that ends inside `MULTI` sends `DISCARD`: a
//! transaction is applied whole or not at all.

mod expiry;

use std::io::{BufReader, BufWriter, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::connectors::redis::image::{decode_chunk, KvRecord, KvValue};
use crate::connectors::redis::resp::{self, Conn, RedisUrl, Reply};
use crate::connectors::redis::RedisError;
use crate::event::Payload;
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

/// Elements per command when a collection is written in pieces.
const PIECE: usize = 512;

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
    let mut p = Pipeline::new(conn)?;
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
                write_record(&mut p, rec, version)?;
            }
            progress.show(summary.keys, summary.commands);
        }
    }
    let mut in_multi = false;
    for entry in journal.events(plan.source.id, plan.first_seq, plan.last_seq) {
        let entry = entry?;
        let Some(Payload::Redis(cmd)) = entry.event.payload else {
            continue;
        };
        summary.final_position = entry.event.position;
        let name = cmd
            .args
            .first()
            .map(|a| a.to_ascii_lowercase())
            .unwrap_or_default();
        match name.as_slice() {
            b"ping" | b"replconf" | b"select" => continue,
            b"multi" => in_multi = true,
            b"exec" => in_multi = false,
            _ => {}
        }
        let capture_ms = entry.event.capture_time_us.div_euclid(1000);
        match expiry::absolutize(&cmd.args, capture_ms) {
            Some(args) => p.send(cmd.db, &args)?,
            None => p.send(cmd.db, &cmd.args)?,
        }
        summary.commands += 1;
        if summary.commands.is_multiple_of(4096) {
            progress.show(summary.keys, summary.commands);
        }
    }
    if in_multi {
        p.send_any(&["DISCARD"])?;
    }
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

fn write_record(p: &mut Pipeline, rec: KvRecord, version: u32) -> Result<(), RestoreError> {
    let key = rec.key;
    let db = rec.db;
    let Some(value) = rec.value else {
        return Ok(());
    };
    let k = || key.clone();
    let pieces = |p: &mut Pipeline, cmd: &str, items: Vec<Vec<u8>>| -> Result<(), RestoreError> {
        for part in items.chunks(PIECE) {
            let mut args = vec![cmd.as_bytes().to_vec(), k()];
            args.extend(part.iter().cloned());
            p.send(db, &args)?;
        }
        Ok(())
    };
    match value {
        KvValue::String(v) => p.send(db, &[b"SET".to_vec(), k(), v])?,
        KvValue::List(l) => pieces(p, "RPUSH", l.items)?,
        KvValue::Set(s) => pieces(p, "SADD", s.items)?,
        KvValue::SortedSet(z) => {
            let flat = z
                .scores
                .iter()
                .zip(z.members)
                .flat_map(|(s, m)| [score(*s).into_bytes(), m])
                .collect::<Vec<_>>();
            for part in flat.chunks(PIECE * 2) {
                let mut args = vec![b"ZADD".to_vec(), k()];
                args.extend(part.iter().cloned());
                p.send(db, &args)?;
            }
        }
        KvValue::Hash(h) => {
            let flat: Vec<Vec<u8>> = h
                .fields
                .iter()
                .cloned()
                .zip(h.values)
                .flat_map(|(f, v)| [f, v])
                .collect();
            for part in flat.chunks(PIECE * 2) {
                let mut args = vec![b"HSET".to_vec(), k()];
                args.extend(part.iter().cloned());
                p.send(db, &args)?;
            }
            for (f, t) in h.fields.into_iter().zip(h.field_expire_ms) {
                if t > 0 {
                    let args = [
                        b"HPEXPIREAT".to_vec(),
                        k(),
                        t.to_string().into_bytes(),
                        b"FIELDS".to_vec(),
                        b"1".to_vec(),
                        f,
                    ];
                    p.send(db, &args)?;
                }
            }
        }
        KvValue::Stream(s) => {
            let last = s.last_id.unwrap_or_default();
            if s.entries.is_empty() {
                let id = if last.ms == 0 && last.seq == 0 {
                    "0-1".to_string()
                } else {
                    last.render()
                };
                p.send_strs(db, &["XADD", "", "MAXLEN", "0", &id, "_", "_"], &key)?;
            }
            for e in s.entries {
                let mut args = vec![
                    b"XADD".to_vec(),
                    k(),
                    e.id.unwrap_or_default().render().into_bytes(),
                ];
                args.extend(e.fields);
                p.send(db, &args)?;
            }
            if version >= 7 {
                let maxdel = s.max_deleted_id.unwrap_or_default().render();
                p.send_strs(
                    db,
                    &[
                        "XSETID",
                        "",
                        &last.render(),
                        "ENTRIESADDED",
                        &s.entries_added.to_string(),
                        "MAXDELETEDID",
                        &maxdel,
                    ],
                    &key,
                )?;
            } else {
                p.send_strs(db, &["XSETID", "", &last.render()], &key)?;
            }
            for g in s.groups {
                let id = g.last_id.unwrap_or_default().render();
                let mut args = vec![
                    b"XGROUP".to_vec(),
                    b"CREATE".to_vec(),
                    k(),
                    g.name.clone(),
                    id.into_bytes(),
                ];
                if let (Some(n), true) = (g.entries_read, version >= 7) {
                    args.push(b"ENTRIESREAD".to_vec());
                    args.push(n.to_string().into_bytes());
                }
                p.send(db, &args)?;
                for c in &g.consumers {
                    let args = [
                        b"XGROUP".to_vec(),
                        b"CREATECONSUMER".to_vec(),
                        k(),
                        g.name.clone(),
                        c.clone(),
                    ];
                    p.send(db, &args)?;
                }
                // XCLAIM .. FORCE recreates a pending entry with its owner, delivery
                // time and count (the way Redis propagates PEL changes itself).
                for pe in g.pending.iter().filter(|pe| !pe.consumer.is_empty()) {
                    let args = [
                        b"XCLAIM".to_vec(),
                        k(),
                        g.name.clone(),
                        pe.consumer.clone(),
                        b"0".to_vec(),
                        pe.id.unwrap_or_default().render().into_bytes(),
                        b"TIME".to_vec(),
                        pe.delivery_time_ms.to_string().into_bytes(),
                        b"RETRYCOUNT".to_vec(),
                        pe.delivery_count.to_string().into_bytes(),
                        b"FORCE".to_vec(),
                        b"JUSTID".to_vec(),
                    ];
                    p.send(db, &args)?;
                }
            }
        }
        KvValue::FunctionLibrary(code) => {
            p.send_any_bytes(&[
                b"FUNCTION".to_vec(),
                b"LOAD".to_vec(),
                b"REPLACE".to_vec(),
                code,
            ])?;
            return Ok(());
        }
    }
    if let Some(t) = rec.expire_at_ms {
        p.send(
            db,
            &[b"PEXPIREAT".to_vec(), k(), t.to_string().into_bytes()],
        )?;
    }
    Ok(())
}

/// A score as Redis parses it back exactly.
fn score(s: f64) -> String {
    if s == f64::INFINITY {
        "+inf".into()
    } else if s == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        format!("{s}")
    }
}

/// Commands written without waiting; a thread reads the replies and keeps the
/// first errors.
struct Pipeline {
    out: BufWriter<TcpStream>,
    addr: String,
    db: Option<u32>,
    sent: u64,
    expected: Arc<AtomicU64>,
    reader: Option<JoinHandle<Result<Vec<String>, RedisError>>>,
    enc: Vec<u8>,
}

impl Pipeline {
    fn new(conn: Conn) -> Result<Pipeline, RedisError> {
        let addr = conn.addr().to_string();
        let sock = conn.reader.into_inner();
        let rsock = sock.try_clone().map_err(|e| RedisError::io(&addr, e))?;
        let expected = Arc::new(AtomicU64::new(u64::MAX));
        let (exp, raddr) = (Arc::clone(&expected), addr.clone());
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 16, rsock);
            let (mut n, mut errors) = (0u64, Vec::new());
            while n < exp.load(Ordering::Acquire) {
                if let Reply::Error(e) = resp::read_reply(&mut r, &raddr)? {
                    if errors.len() < 5 {
                        errors.push(format!("reply {}: {e}", n + 1));
                    }
                }
                n += 1;
            }
            Ok(errors)
        });
        Ok(Pipeline {
            out: BufWriter::with_capacity(1 << 20, sock),
            addr,
            db: None,
            sent: 0,
            expected,
            reader: Some(reader),
            enc: Vec::with_capacity(1 << 16),
        })
    }

    fn send<A: AsRef<[u8]>>(&mut self, db: u32, args: &[A]) -> Result<(), RedisError> {
        if self.db != Some(db) {
            self.send_any(&["SELECT", &db.to_string()])?;
            self.db = Some(db);
        }
        self.send_any_bytes(args)
    }

    /// `args` with the empty second argument replaced by `key`.
    fn send_strs(&mut self, db: u32, args: &[&str], key: &[u8]) -> Result<(), RedisError> {
        let v: Vec<&[u8]> = args
            .iter()
            .enumerate()
            .map(|(i, a)| if i == 1 { key } else { a.as_bytes() })
            .collect();
        self.send(db, &v)
    }

    fn send_any(&mut self, args: &[&str]) -> Result<(), RedisError> {
        self.send_any_bytes(args)
    }

    fn send_any_bytes<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError> {
        self.enc.clear();
        resp::encode_command(args, &mut self.enc);
        self.out
            .write_all(&self.enc)
            .map_err(|e| RedisError::io(&self.addr, e))?;
        self.sent += 1;
        Ok(())
    }

    /// Flushes, waits for every reply, fails if any was an error.
    fn finish(&mut self) -> Result<(), RestoreError> {
        self.expected.store(self.sent + 1, Ordering::Release);
        self.send_any(&["PING"])?;
        self.out
            .flush()
            .map_err(|e| RedisError::io(&self.addr, e))?;
        let errors = match self.reader.take().map(JoinHandle::join) {
            Some(Ok(r)) => r?,
            _ => return Err(RestoreError::Apply("the reply reader failed".into())),
        };
        if !errors.is_empty() {
            return Err(RestoreError::Apply(format!(
                "the target refused commands ({}); the target is partly restored: fix the cause and restore again with --force",
                errors.join("; ")
            )));
        }
        Ok(())
    }
}

/// What `--force` does to a Redis target.
const FORCE_EFFECT: &str = "empty it first (FLUSHALL, and FUNCTION FLUSH on Redis 7 and later)";

/// Progress through the driver's sink.
struct Progress<'a> {
    sink: &'a mut dyn ProgressSink,
}

impl Progress<'_> {
    fn show(&mut self, keys: u64, commands: u64) {
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
