//! Base images on a schedule, from a second replica link: while the main link
//! streams, another connection asks the primary for a full sync (`PSYNC ? -1`).
//! Its `+FULLRESYNC <replid> <offset>` places the RDB exactly: it is the data set
//! after every command up to `offset` of that replication history, which the main
//! link journals with the same replication id and offsets. The image is sealed
//! once the main link has journaled past `offset`, after the newest command at or
//! before it. A second link that lands in another history (a failover in between)
//! gives up; the next schedule tries again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::image;
use super::locate::Locator;
use super::replica::{announce_replica, read_rdb};
use super::resp;
use super::RedisError;
use crate::capture::images::ImageSchedule;
use crate::capture::SourceJournal;
use crate::config::Timeouts;
use crate::event::BaseImageMeta;
use crate::position::{Position, PositionKind};
use crate::time::Timestamp;

/// How long the seal waits for the main link to reach the image's offset.
const PLACE_WITHIN: Duration = Duration::from_secs(120);

/// A scheduled image being taken on its own thread; dropping it stops it.
pub struct Imaging {
    stop: Arc<AtomicBool>,
    done: Option<std::thread::JoinHandle<Result<BaseImageMeta, RedisError>>>,
}

impl Drop for Imaging {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// What the main link's loop needs to take scheduled images.
pub struct Scheduler {
    schedule: ImageSchedule,
    locator: Locator,
    timeouts: Timeouts,
    journal: SourceJournal,
    running: Option<Imaging>,
}

impl Scheduler {
    /// The schedule of the source behind `journal`, imaging through `locator`.
    pub fn new(
        schedule: ImageSchedule,
        locator: Locator,
        timeouts: Timeouts,
        journal: SourceJournal,
    ) -> Scheduler {
        Scheduler {
            schedule,
            locator,
            timeouts,
            journal,
            running: None,
        }
    }

    /// Called from the main link's loop: collects a finished image, starts a due one.
    pub fn poll(&mut self) {
        if let Some(run) = self.running.as_mut() {
            if !run.done.as_ref().is_some_and(|h| h.is_finished()) {
                return;
            }
            let name = self.journal.name().to_string();
            match run.done.take().map(|h| h.join()) {
                Some(Ok(Ok(meta))) => {
                    tracing::info!(source = %name, image = meta.id, after_seq = meta.after_seq, "scheduled base image taken from a second replica link");
                    self.schedule.taken();
                }
                Some(Ok(Err(error))) => {
                    tracing::error!(source = %name, %error, "scheduled base image failed; capture goes on, the next try is in a minute");
                    self.schedule.failed();
                }
                _ => self.schedule.failed(),
            }
            self.running = None;
            return;
        }
        if let Some(reason) = self.schedule.due() {
            tracing::info!(source = %self.journal.name(), %reason, "taking a scheduled base image");
            let stop = Arc::new(AtomicBool::new(false));
            let (locator, timeouts, journal, flag) = (
                self.locator.clone(),
                self.timeouts,
                self.journal.clone(),
                Arc::clone(&stop),
            );
            let done = std::thread::Builder::new()
                .name("redis-image".into())
                .spawn(move || take_placed(&locator, &timeouts, &journal, &flag))
                .ok();
            self.running = Some(Imaging { stop, done });
        }
    }
}

/// Takes one image on a second link and seals it among the main link's events.
fn take_placed(
    locator: &Locator,
    timeouts: &Timeouts,
    journal: &SourceJournal,
    stop: &AtomicBool,
) -> Result<BaseImageMeta, RedisError> {
    let found = locator.primary(timeouts, None)?;
    let mut conn = found.conn;
    let addr = conn.addr().to_string();
    announce_replica(&mut conn)?;
    let mut b = Vec::new();
    resp::encode_command(&["PSYNC", "?", "-1"], &mut b);
    conn.send_raw(&b)?;
    let reply = loop {
        let line = conn.read_line()?;
        if !line.is_empty() {
            break String::from_utf8_lossy(&line).into_owned();
        }
    };
    let words: Vec<&str> = reply.split_whitespace().collect();
    let (replid, offset) = match words.as_slice() {
        ["+FULLRESYNC", replid, offset] => (
            replid.to_string(),
            offset.parse::<u64>().map_err(|_| RedisError::Protocol {
                addr: addr.clone(),
                detail: format!("bad offset in `{reply}`"),
            })?,
        ),
        _ => {
            return Err(RedisError::Server {
                addr,
                command: "PSYNC ? -1 (scheduled image)".into(),
                detail: reply,
            })
        }
    };
    let mut writer = journal.begin_image(
        Position::redis(replid.clone(), offset),
        Timestamp::now(),
        image::FORMAT,
    )?;
    read_rdb(&mut conn, &mut writer, &|| stop.load(Ordering::Acquire))?;
    // The second link is done: the primary drops the replica when it goes.
    drop(conn);
    let deadline = std::time::Instant::now() + PLACE_WITHIN;
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(RedisError::Stopped);
        }
        let reached = journal.checkpoints()?.iter().any(|cp| {
            matches!(&cp.position.kind, Some(PositionKind::Redis(p)) if p.replid == replid && p.offset >= offset)
        });
        if reached {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(RedisError::Protocol {
                addr,
                detail: format!(
                    "the scheduled image is at {replid}:{offset}, but the main link did not journal that history up to there within {PLACE_WITHIN:?} (a failover in between?); the image is dropped"
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = Position::redis(replid, offset);
    let found = journal.journal().seq_at_position(journal.id(), &at)?;
    let previous = journal.latest_image()?.map_or(0, |m| m.after_seq);
    Ok(writer.finish_placed(found.unwrap_or(0).max(previous))?)
}
