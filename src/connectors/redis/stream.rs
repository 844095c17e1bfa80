//! The command stream after `PSYNC`: parse commands with their exact byte
//! sizes, journal them in batches, acknowledge only what is durable.
//!
//! Two threads overlap reading and appending: this one reads and parses, an
//! appender thread appends batches (each a synced write) and publishes the
//! offset it made durable. `REPLCONF ACK` always carries that durable offset,
//! never the parsed one. A bounded channel between them is the back-pressure:
//! when appends fall behind, reading pauses and the primary buffers (its
//! replication backlog is what `status` compares the lag with).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::images::Scheduler;
use super::replica::{send_ack, Cursor};
use super::resp::{self, Conn};
use super::RedisError;
use crate::capture::CaptureContext;
use crate::event::{ChangeEvent, Payload, RedisCommand};
use crate::journal::{JournalError, Progress};
use crate::position::Position;
use crate::time::Timestamp;

/// How long a read waits before the loop looks at shutdown and pending ACKs.
const POLL: Duration = Duration::from_millis(20);
/// Commands per append at most.
const MAX_BATCH: usize = 1000;
/// Batches parsed but not yet appended, at most.
const IN_FLIGHT: usize = 4;
/// How often the durable offset is acknowledged.
const ACK_EVERY: Duration = Duration::from_secs(1);

/// A batch for the appender: events, the offset after them, their read time.
type Batch = (Vec<ChangeEvent>, u64, i64);

/// Streams until shutdown (`Ok`) or a link/journal failure. On return every
/// parsed command is appended and `cur` is the durable position.
pub(super) fn stream(
    conn: Conn,
    ctx: &mut CaptureContext,
    cur: &mut Cursor,
    stall: Duration,
    images: Option<Scheduler>,
) -> Result<(), RedisError> {
    let durable = Arc::new(AtomicU64::new(cur.offset));
    let (tx, rx) = sync_channel::<Batch>(IN_FLIGHT);
    let journal = ctx.journal.clone();
    std::thread::scope(|s| {
        let published = Arc::clone(&durable);
        let appender = s.spawn(move || -> Result<(), JournalError> {
            for (events, offset, time_us) in rx {
                journal.append_blocking(
                    &events,
                    &Progress {
                        checkpoint: Vec::new(),
                        coverage: Some(Timestamp::from_micros(time_us)),
                    },
                )?;
                published.store(offset, Ordering::Release);
            }
            Ok(())
        });
        let read = read_loop(conn, ctx, cur, tx, &durable, stall, images);
        let appended = appender
            .join()
            .unwrap_or_else(|_| Err(JournalError::Storage("the append thread panicked".into())));
        appended?;
        read
    })
}

fn read_loop(
    conn: Conn,
    ctx: &mut CaptureContext,
    cur: &mut Cursor,
    tx: SyncSender<Batch>,
    durable: &AtomicU64,
    stall: Duration,
    mut images: Option<Scheduler>,
) -> Result<(), RedisError> {
    let mut last_data = Instant::now();
    let addr = conn.addr().to_string();
    let mut buf: Vec<u8> = conn.reader.buffer().to_vec();
    let mut sock = conn.reader.into_inner();
    sock.set_read_timeout(Some(POLL))
        .map_err(|e| RedisError::io(&addr, e))?;
    let mut pos = 0usize;
    let mut batch: Vec<ChangeEvent> = Vec::with_capacity(MAX_BATCH);
    let mut last_ack: Option<Instant> = None;
    let mut getack_at: Option<u64> = None;
    let mut read_buf = vec![0u8; 256 << 10];
    let mut now_us = Timestamp::now().as_micros();
    // The appender stopped: its error is what the caller reports.
    let closed = || RedisError::Stopped;
    loop {
        loop {
            while batch.len() < MAX_BATCH {
                let parsed =
                    resp::parse_command(&buf[pos..]).map_err(|detail| RedisError::Protocol {
                        addr: addr.clone(),
                        detail,
                    })?;
                let Some((args, used)) = parsed else { break };
                pos += used;
                cur.offset += used as u64;
                let name = args
                    .first()
                    .map(|a| a.to_ascii_lowercase())
                    .unwrap_or_default();
                if name == b"select" {
                    cur.db = args
                        .get(1)
                        .and_then(|a| std::str::from_utf8(a).ok())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(cur.db);
                } else if name == b"replconf"
                    && args
                        .get(1)
                        .is_some_and(|a| a.eq_ignore_ascii_case(b"getack"))
                {
                    getack_at = Some(cur.offset);
                }
                batch.push(ChangeEvent {
                    source: String::new(),
                    position: Some(Position::redis(cur.replid.clone(), cur.offset)),
                    commit_time_us: None,
                    capture_time_us: now_us,
                    txn: None,
                    payload: Some(Payload::Redis(RedisCommand { db: cur.db, args })),
                });
            }
            if batch.is_empty() {
                break;
            }
            let full = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            tx.send((full, cur.offset, now_us)).map_err(|_| closed())?;
        }
        if pos > 0 {
            buf.drain(..pos);
            pos = 0;
        }
        if ctx.shutdown.is_fired() {
            drop(tx);
            // Wait for the appender to finish what is queued, then ACK it.
            let until = Instant::now() + Duration::from_secs(60);
            while durable.load(Ordering::Acquire) < cur.offset && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            send_ack(&mut sock, durable.load(Ordering::Acquire), &addr)?;
            tracing::info!(source = %ctx.journal.name(), offset = cur.offset, "stopped; everything received is journaled and acknowledged");
            return Ok(());
        }
        if let Some(s) = images.as_mut() {
            s.poll();
        }
        let done = durable.load(Ordering::Acquire);
        let answer_getack = getack_at.is_some_and(|g| done >= g);
        if answer_getack || last_ack.is_none_or(|t| t.elapsed() >= ACK_EVERY) {
            send_ack(&mut sock, done, &addr)?;
            last_ack = Some(Instant::now());
            if answer_getack {
                getack_at = None;
            }
        }
        match sock.read(&mut read_buf) {
            Ok(0) => {
                return Err(RedisError::io(
                    &addr,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the primary closed the connection",
                    ),
                ))
            }
            Ok(n) => {
                buf.extend_from_slice(&read_buf[..n]);
                now_us = Timestamp::now().as_micros();
                last_data = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if last_data.elapsed() >= stall {
                    return Err(RedisError::Stalled { addr, after: stall });
                }
            }
            Err(e) => return Err(RedisError::io(&addr, e)),
        }
    }
}
