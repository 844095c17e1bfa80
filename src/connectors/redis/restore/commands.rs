//! What a restore writes, as commands: the base image's logical records (native
//! write commands, so any Redis/Valkey version takes them) and the journaled
//! command stream. Both ways of applying (as the target's primary, or as a
//! client) send these through a [`CommandSink`].

use std::collections::BTreeSet;

use super::expiry;
use super::{Progress, RestoreError, Summary};
use crate::connectors::redis::image::{decode_chunk, KvChunk, KvRecord, KvValue};
use crate::connectors::redis::resp::{Conn, Reply};
use crate::connectors::redis::RedisError;
use crate::event::BaseImageMeta;
use crate::event::Payload;
use crate::journal::Journal;
use crate::restore::RestorePlan;

/// Elements per command when a collection is written in pieces.
const PIECE: usize = 512;

/// Where commands go, in order. A sink selects the database itself when it
/// changes (`SELECT`), so callers name the database of every keyed command.
pub(crate) trait CommandSink {
    /// Sends `args` to run in database `db`.
    fn send<A: AsRef<[u8]>>(&mut self, db: u32, args: &[A]) -> Result<(), RedisError>;

    /// Sends `args`, which do not depend on the selected database.
    fn send_global<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<(), RedisError>;

    /// `args` with the empty second argument replaced by `key`.
    fn send_strs(&mut self, db: u32, args: &[&str], key: &[u8]) -> Result<(), RedisError> {
        let v: Vec<&[u8]> = args
            .iter()
            .enumerate()
            .map(|(i, a)| if i == 1 { key } else { a.as_bytes() })
            .collect();
        self.send(db, &v)
    }
}

/// Calls `f` with each chunk of `image`, decoded. A second thread reads and
/// decodes ahead (up to 8 chunks) while `f` writes, so the journal's reads overlap
/// the target's; the first error (of either) ends both.
pub(super) fn each_chunk(
    journal: &Journal,
    image: &BaseImageMeta,
    mut f: impl FnMut(KvChunk) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<KvChunk, RestoreError>>(8);
        scope.spawn(move || {
            for chunk in journal.image_chunks(image) {
                let decoded = chunk.map_err(RestoreError::from).and_then(|c| {
                    decode_chunk(&c).map_err(|e| {
                        RestoreError::Apply(format!("base image #{}: bad chunk: {e}", image.id))
                    })
                });
                let failed = decoded.is_err();
                if tx.send(decoded).is_err() || failed {
                    return;
                }
            }
        });
        for chunk in rx {
            f(chunk?)?;
        }
        Ok(())
    })
}

/// The commands of the plan's history that the target behind `conn` does not
/// know (`COMMAND INFO` answers nil), by name.
pub(super) fn unknown_to(
    conn: &mut Conn,
    journal: &Journal,
    plan: &RestorePlan,
) -> Result<Vec<String>, RestoreError> {
    let mut names = BTreeSet::new();
    let mut lower = Vec::new();
    for entry in journal.events(plan.source.id, plan.first_seq, plan.last_seq) {
        if let Some(Payload::Redis(cmd)) = entry?.event.payload {
            if let Some(name) = cmd.args.first() {
                lower.clear();
                lower.extend(name.iter().map(u8::to_ascii_lowercase));
                if !names.contains(&lower) {
                    names.insert(lower.clone());
                }
            }
        }
    }
    let names: Vec<Vec<u8>> = names.into_iter().collect();
    Ok(unknown_names(conn, &names)?)
}

/// Which of `names` (lower case) the server behind `conn` does not know, upper
/// case.
pub(super) fn unknown_names(conn: &mut Conn, names: &[Vec<u8>]) -> Result<Vec<String>, RedisError> {
    let mut unknown = Vec::new();
    for part in names.chunks(100) {
        let mut args = vec![b"COMMAND".to_vec(), b"INFO".to_vec()];
        args.extend(part.iter().cloned());
        let reply = conn.call(&args)?.into_array();
        for (name, info) in part.iter().zip(reply) {
            if matches!(info, Reply::Array(None) | Reply::Bulk(None)) {
                unknown.push(String::from_utf8_lossy(name).to_uppercase());
            }
        }
    }
    Ok(unknown)
}

/// What the plan's base image holds that a server cannot: function libraries
/// (unless it has `functions`), hash fields with their own TTL (unless
/// `field_ttls`). Reads the whole image.
pub(super) fn image_needs(
    journal: &Journal,
    plan: &RestorePlan,
    functions: bool,
    field_ttls: bool,
) -> Result<Option<String>, RestoreError> {
    let Some(image) = &plan.image else {
        return Ok(None);
    };
    for chunk in journal.image_chunks(image) {
        let chunk = decode_chunk(&chunk?).map_err(|e| {
            RestoreError::Apply(format!("base image #{}: bad chunk: {e}", image.id))
        })?;
        for rec in chunk.records {
            match &rec.value {
                Some(KvValue::FunctionLibrary(_)) if !functions => {
                    return Ok(Some("function libraries (Redis 7.0 and later)".into()))
                }
                Some(KvValue::Hash(h))
                    if !field_ttls && h.field_expire_ms.iter().any(|t| *t > 0) =>
                {
                    return Ok(Some(format!(
                        "hash fields with a TTL of their own (Redis 7.4 and later), e.g. key {:?} in db {}",
                        String::from_utf8_lossy(&rec.key),
                        rec.db
                    )))
                }
                _ => {}
            }
        }
    }
    Ok(None)
}

/// Replays the plan's journaled commands into `sink`: relative expiries made
/// absolute (see [`expiry`]), `PING`/`REPLCONF`/`SELECT` left to the sink, and a
/// range that ends inside `MULTI` closed with `DISCARD`.
pub(super) fn replay_events<S: CommandSink>(
    journal: &Journal,
    plan: &RestorePlan,
    sink: &mut S,
    summary: &mut Summary,
    progress: &mut Progress<'_>,
) -> Result<(), RestoreError> {
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
            Some(args) => sink.send(cmd.db, &args)?,
            None => sink.send(cmd.db, &cmd.args)?,
        }
        summary.commands += 1;
        if summary.commands.is_multiple_of(4096) {
            progress.show(summary.keys, summary.commands)?;
        }
    }
    if in_multi {
        sink.send_global(&["DISCARD"])?;
    }
    Ok(())
}

pub(crate) fn write_record<S: CommandSink>(
    p: &mut S,
    rec: KvRecord,
    version: u32,
) -> Result<(), RestoreError> {
    let key = rec.key;
    let db = rec.db;
    let Some(value) = rec.value else {
        return Ok(());
    };
    let k = || key.clone();
    let pieces = |p: &mut S, cmd: &str, items: Vec<Vec<u8>>| -> Result<(), RestoreError> {
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
            p.send_global(&[
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
