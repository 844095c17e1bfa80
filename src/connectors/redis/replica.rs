//! One replica session after another: find the primary (see [`super::locate`]),
//! handshake, `PSYNC`, full sync into a base image when the primary asks for one,
//! then the command stream until the link drops (reconnect: find the primary
//! again, `PSYNC` from the journal's checkpoint) or shutdown.
//!
//! After a failover the promoted replica answers `PSYNC <old replid> <offset+1>`
//! with `+CONTINUE <new replid>` when it holds everything the journal does:
//! offsets go on, and events from then on carry the new replication id (a new
//! stream of the source's positions; the journal's sequence orders both).
//!
//! Everything here is blocking I/O on a thread of the blocking pool: the RDB
//! parser reads a `BufRead`, and a synced append is a blocking call anyway.

use std::io::{BufRead, Read, Write};
use std::time::Instant;

use super::image::{self, ChunkBuilder};
use super::images::Scheduler;
use super::locate::{Followed, Locator, Resync};
use super::rdb::RdbParser;
use super::resp::{self, Conn};
use super::RedisError;
use crate::capture::images::{ImagePolicy, ImageSchedule};
use crate::capture::{CaptureContext, SourceImageWriter, SourceJournal};
use crate::config::Timeouts;
use crate::event::Payload;
use crate::journal::Progress;
use crate::position::{Position, PositionKind};
use crate::time::Timestamp;

/// Where the replication stream stands.
#[derive(Debug, Clone)]
pub(super) struct Cursor {
    pub(super) replid: String,
    /// Replication offset of everything consumed so far.
    pub(super) offset: u64,
    /// Database selected at `offset`.
    pub(super) db: u32,
}

/// One replica session: captures until shutdown (`Ok`) or the first failure; the
/// supervisor decides whether to start another (which resumes with `PSYNC` from
/// the journal's checkpoint).
pub fn run(
    locator: &Locator,
    mut ctx: CaptureContext,
    timeouts: &Timeouts,
    followed: &Followed,
    images: Option<ImagePolicy>,
) -> Result<(), RedisError> {
    let mut cursor = resume_point(&ctx.journal)?;
    if ctx.shutdown.is_fired() {
        return Ok(());
    }
    match session(locator, &mut ctx, &mut cursor, timeouts, followed, images) {
        Ok(()) | Err(RedisError::Stopped) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The journal's resume point: the checkpoint written last (ties go to the
/// history of the newest base image), with the database its last command ran in.
fn resume_point(journal: &SourceJournal) -> Result<Option<Cursor>, RedisError> {
    let image_replid = journal
        .latest_image()?
        .and_then(|m| redis_pos(m.position.as_ref()).map(|(r, _)| r));
    let best = journal.checkpoints()?.into_iter().max_by_key(|c| {
        let same = redis_pos(Some(&c.position)).map(|(r, _)| r) == image_replid;
        (c.seq, same)
    });
    let Some(cp) = best else { return Ok(None) };
    let Some((replid, offset)) = redis_pos(Some(&cp.position)) else {
        return Ok(None);
    };
    let mut db = 0;
    if let Some(ev) = journal.event_at(cp.seq)? {
        if ev.position.as_ref() == Some(&cp.position) {
            if let Some(Payload::Redis(c)) = ev.payload {
                db = c.db;
            }
        }
    }
    Ok(Some(Cursor { replid, offset, db }))
}

fn redis_pos(p: Option<&Position>) -> Option<(String, u64)> {
    match p?.kind.as_ref()? {
        PositionKind::Redis(r) => Some((r.replid.clone(), r.offset)),
        _ => None,
    }
}

fn session(
    locator: &Locator,
    ctx: &mut CaptureContext,
    cursor: &mut Option<Cursor>,
    timeouts: &Timeouts,
    followed: &Followed,
    images: Option<ImagePolicy>,
) -> Result<(), RedisError> {
    // Reads during the handshake and a full sync: the primary sends a newline every
    // second while it prepares the RDB, so `read` bounds a silent primary.
    let found = locator.primary(
        timeouts,
        cursor.as_ref().map(|c| (c.replid.as_str(), c.offset)),
    )?;
    let mut conn = found.conn;
    announce_replica(&mut conn)?;
    let (id, off) = match cursor {
        Some(c) => (c.replid.clone(), (c.offset + 1).to_string()),
        None => ("?".to_string(), "-1".to_string()),
    };
    conn.send_raw(&{
        let mut b = Vec::new();
        resp::encode_command(&["PSYNC", id.as_str(), off.as_str()], &mut b);
        b
    })?;
    let reply = loop {
        let line = conn.read_line()?;
        if !line.is_empty() {
            break String::from_utf8_lossy(&line).into_owned();
        }
    };
    let name = ctx.journal.name().to_string();
    let addr = conn.addr().to_string();
    let words: Vec<&str> = reply.split_whitespace().collect();
    match words.as_slice() {
        ["+FULLRESYNC", replid, offset] => {
            let offset = offset.parse::<u64>().map_err(|_| RedisError::Protocol {
                addr: addr.clone(),
                detail: format!("bad offset in `{reply}`"),
            })?;
            if let Some(old) = cursor.as_ref() {
                tracing::warn!(source = %name, primary = %addr, old = %format!("{}:{}", old.replid, old.offset), new = %format!("{replid}:{offset}"),
                    "the primary cannot continue from the journal's position (restart, failover to a server that lacks part of the journal's history, or backlog exceeded); taking a new base image");
            }
            ctx.capturing.now();
            full_sync(&mut conn, ctx, replid, offset)?;
            let resync = if cursor.is_some() {
                Resync::Full
            } else {
                Resync::First
            };
            let changed = cursor.as_ref().is_some_and(|c| c.replid != *replid);
            *cursor = Some(Cursor {
                replid: replid.to_string(),
                offset,
                db: 0,
            });
            if let Some(previous) =
                followed.arrived(&ctx.journal, &addr, &found.via, replid, resync, changed)
            {
                tracing::warn!(source = %name, previous = %previous, primary = %addr, via = %found.via,
                    "following a new primary; it could not continue the journal's history, so a new base image was taken");
            }
        }
        ["+CONTINUE", rest @ ..] => {
            ctx.capturing.now();
            let Some(c) = cursor.as_mut() else {
                return Err(RedisError::Protocol {
                    addr,
                    detail: "+CONTINUE to a full-sync request".into(),
                });
            };
            let mut changed = false;
            if let Some(new_id) = rest.first() {
                if *new_id != c.replid {
                    tracing::info!(source = %name, primary = %addr, old = %c.replid, new = %new_id, offset = c.offset,
                        "the primary's replication id changed (a failover: it continues the old history); offsets continue, no new base image");
                    c.replid = new_id.to_string();
                    changed = true;
                }
            }
            let moved = followed.arrived(
                &ctx.journal,
                &addr,
                &found.via,
                &c.replid,
                Resync::Continue,
                changed,
            );
            if let Some(previous) = moved {
                tracing::info!(source = %name, previous = %previous, primary = %addr, via = %found.via,
                    "following a new primary; it continued the journal's history");
            }
            tracing::info!(source = %name, primary = %addr, replid = %c.replid, offset = c.offset, "resumed replication (PSYNC continue)");
        }
        _ => {
            return Err(RedisError::Server {
                addr,
                command: "PSYNC".into(),
                detail: reply,
            })
        }
    }
    let c = cursor.as_mut().ok_or(RedisError::Stopped)?;
    // Scheduled images on a second link, for a source in one part (a cluster
    // shard's history is its own; its images come with its full syncs).
    let scheduler = images.filter(|_| !ctx.journal.is_part()).map(|policy| {
        Scheduler::new(
            ImageSchedule::new(policy, ctx.journal.clone()),
            locator.clone(),
            *timeouts,
            ctx.journal.clone(),
        )
    });
    super::stream::stream(conn, ctx, c, timeouts.stall, scheduler)
}

/// Introduces a connection as a replica (its port, and that it takes diskless
/// RDBs and PSYNC2), before its `PSYNC`.
pub(super) fn announce_replica(conn: &mut Conn) -> Result<(), RedisError> {
    let port = conn
        .stream()
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_default();
    conn.call(&["REPLCONF", "listening-port", &port.to_string()])?;
    conn.call(&["REPLCONF", "capa", "eof", "capa", "psync2"])?;
    Ok(())
}

/// Connects, authenticates and checks that the URL's server (or, for an address
/// list or Sentinel, some server) is a primary, changing nothing: what `run`
/// checks before it opens the journal.
pub fn preflight(locator: &Locator, timeouts: &Timeouts) -> Result<(), RedisError> {
    locator.primary(timeouts, None).map(drop)
}

/// Reads the RDB that follows `+FULLRESYNC` into a new base image.
fn full_sync(
    conn: &mut Conn,
    ctx: &mut CaptureContext,
    replid: &str,
    offset: u64,
) -> Result<(), RedisError> {
    let started = Instant::now();
    let time = Timestamp::now();
    let addr = conn.addr().to_string();
    let mut writer =
        ctx.journal
            .begin_image(Position::redis(replid, offset), time, image::FORMAT)?;
    let shutdown = ctx.shutdown.clone();
    let keys = read_rdb(conn, &mut writer, &|| shutdown.is_fired())?;
    let meta = writer.finish(&Progress {
        checkpoint: Vec::new(),
        coverage: Some(time),
    })?;
    tracing::info!(source = %ctx.journal.name(), image = meta.id, keys, bytes = meta.bytes,
        seconds = started.elapsed().as_secs_f64(), "base image taken from a full sync");
    // Valkey starts the stream only once it hears an ACK after the transfer.
    send_ack(conn.reader.get_mut(), offset, &addr)?;
    Ok(())
}

/// Reads the RDB payload after `+FULLRESYNC` (length-prefixed or diskless with an
/// EOF mark) into `writer`'s chunks; returns the number of keys. `stopped` is
/// polled every few thousand keys.
pub(super) fn read_rdb(
    conn: &mut Conn,
    writer: &mut SourceImageWriter,
    stopped: &dyn Fn() -> bool,
) -> Result<u64, RedisError> {
    let addr = conn.addr().to_string();
    let proto = |detail: String| RedisError::Protocol {
        addr: addr.clone(),
        detail,
    };
    let header = loop {
        let line = conn.read_line()?;
        if !line.is_empty() {
            break line; // empty lines are keepalives while the primary forks
        }
    };
    let mark = if let Some(m) = header.strip_prefix(b"$EOF:") {
        if m.len() != 40 {
            return Err(proto("diskless EOF mark is not 40 bytes".into()));
        }
        Some(m.to_vec())
    } else {
        None
    };
    let mut chunks = ChunkBuilder::default();
    let mut put = |reader: &mut dyn BufRead| -> Result<(), RedisError> {
        let mut parser = RdbParser::new(reader);
        let mut n = 0u64;
        while let Some(item) = parser.next_item().map_err(|source| match source {
            super::rdb::RdbError::BadMagic { found } => RedisError::UnsupportedRdbFormat {
                addr: addr.clone(),
                header: String::from_utf8_lossy(&found).into_owned(),
            },
            super::rdb::RdbError::UnsupportedType {
                type_id,
                type_name,
                key,
                ..
            } => RedisError::UnsupportedValue {
                addr: addr.clone(),
                key,
                type_id,
                type_name,
            },
            source => RedisError::Rdb {
                addr: addr.clone(),
                source,
            },
        })? {
            n += 1;
            if n.is_multiple_of(4096) && stopped() {
                return Err(RedisError::Stopped);
            }
            if let Some(bytes) = image::record_of(item).and_then(|r| chunks.push(r)) {
                writer.put_chunk(&bytes)?;
            }
        }
        Ok(())
    };
    match &mark {
        Some(mark) => {
            put(&mut conn.reader)?;
            let mut tail = [0u8; 40];
            conn.reader
                .read_exact(&mut tail)
                .map_err(|e| RedisError::io(&addr, e))?;
            if tail.as_slice() != mark.as_slice() {
                return Err(proto(
                    "the diskless RDB does not end with its EOF mark".into(),
                ));
            }
        }
        None => {
            let len = std::str::from_utf8(header.strip_prefix(b"$").unwrap_or(b"x"))
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    proto(format!(
                        "expected the RDB length, got `{}`",
                        String::from_utf8_lossy(&header)
                    ))
                })?;
            let mut limited = (&mut conn.reader).take(len);
            put(&mut limited)?;
            if limited.limit() != 0 {
                return Err(proto(format!(
                    "{} bytes follow the RDB checksum in the payload",
                    limited.limit()
                )));
            }
        }
    }
    if let Some(bytes) = chunks.finish() {
        writer.put_chunk(&bytes)?;
    }
    Ok(chunks.keys)
}

pub(super) fn send_ack<W: Write>(sock: &mut W, offset: u64, addr: &str) -> Result<(), RedisError> {
    let mut b = Vec::with_capacity(64);
    resp::encode_command(&["REPLCONF", "ACK", &offset.to_string()], &mut b);
    sock.write_all(&b).map_err(|e| RedisError::io(addr, e))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::SourceKind;
    use crate::event::{ChangeEvent, Payload, RedisCommand};
    use crate::journal::{Journal, JournalOptions};

    fn command(replid: &str, offset: u64, db: u32) -> ChangeEvent {
        ChangeEvent {
            position: Some(Position::redis(replid, offset)),
            capture_time_us: offset as i64,
            payload: Some(Payload::Redis(RedisCommand {
                db,
                args: vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()],
            })),
            ..Default::default()
        }
    }

    #[test]
    fn resumes_after_the_newest_history() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::open(&dir.path().join("j"), JournalOptions::default()).unwrap());
        let id = j.register_source("c", SourceKind::Redis).unwrap();
        let sj = SourceJournal::new(Arc::clone(&j), id, "c".into());
        assert!(resume_point(&sj).unwrap().is_none());

        let w = sj
            .begin_image(
                Position::redis("A", 100),
                Timestamp::from_micros(1),
                image::FORMAT,
            )
            .unwrap();
        w.finish(&Progress::default()).unwrap();
        let c = resume_point(&sj).unwrap().unwrap();
        assert_eq!((c.replid.as_str(), c.offset, c.db), ("A", 100, 0));

        sj.append_blocking(
            &[command("A", 120, 0), command("A", 150, 3)],
            &Progress::default(),
        )
        .unwrap();
        let c = resume_point(&sj).unwrap().unwrap();
        assert_eq!((c.replid.as_str(), c.offset, c.db), ("A", 150, 3));

        // A full resync to history B with no command yet: B wins the tie on seq.
        let w = sj
            .begin_image(
                Position::redis("B", 7),
                Timestamp::from_micros(2),
                image::FORMAT,
            )
            .unwrap();
        w.finish(&Progress::default()).unwrap();
        let c = resume_point(&sj).unwrap().unwrap();
        assert_eq!((c.replid.as_str(), c.offset, c.db), ("B", 7, 0));
    }
}
