//! PostgreSQL capture by logical replication (`pgoutput`).
//!
//! On first start: check `wal_level`, create the publication (all tables unless the
//! config lists some), give keyless tables `REPLICA IDENTITY FULL`, install the DDL
//! event trigger, create the slot with an exported snapshot and take the base image
//! in that snapshot ([`image`]). Then stream from the slot's consistent point.
//!
//! Streaming: changes are journaled in commit order, in batches (up to 1,000 events
//! or 10 ms). The flush LSN sent to the server is the end LSN of the last
//! transaction whose every change `append` has made durable; a transaction larger
//! than a batch is journaled in parts with the checkpoint left at the previous
//! commit, and after a restart its resent changes that the journal already holds are
//! skipped (see [`changes`]). Keepalives received while no transaction is open
//! advance the coverage time and the acknowledged LSN.

use std::time::{Duration, Instant};

use serde_json::json;

use super::changes::{ChangeBuilder, Step};
use super::config::{self, PostgresSettings};
use super::conn::ConnInfo;
use super::repl::{
    Lsn, ReplicationConnection, ReplicationMessage, ReplicationOptions, ReplicationStream,
    SnapshotAction, StandbyStatusUpdate,
};
use super::setup::SlotInfo;
use super::{image, repl, sequences, setup, PgError};
use crate::capture::images::ImageSchedule;
use crate::capture::{
    BoxFuture, CaptureContext, CaptureError, CaptureOptions, Source, SourceJournal,
};
use crate::event::ChangeEvent;
use crate::journal::{Progress, RESYNC_NOTE};
use crate::position::{Position, PositionKind};
use crate::time::Timestamp;

const BATCH_EVENTS: usize = 1000;
const BATCH_DELAY: Duration = Duration::from_millis(10);
/// Status updates ask for a keepalive in reply: while the source is idle, that
/// keepalive advances coverage about once a second.
const STATUS_EVERY: Duration = Duration::from_secs(1);
const HEALTH_EVERY: Duration = Duration::from_secs(10);
const HEARTBEAT_MIN_GAP: Duration = Duration::from_millis(200);
/// Warn when the slot retains more WAL than this (bytes).
const RETAINED_WAL_WARNING: i64 = 4 << 30;
/// The journal note naming the slot this journal created for the source.
const SLOT_NOTE: &str = "postgres.slot_created";

/// A scheduled image being taken; dropped with the stream (an error, a shutdown),
/// it is abandoned and its chunks removed.
struct Imaging(tokio::task::JoinHandle<Result<crate::event::BaseImageMeta, PgError>>);

impl Drop for Imaging {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Captures one PostgreSQL database.
pub struct PostgresSource {
    name: String,
    conn: ConnInfo,
    slot: String,
    publication: String,
    tables: Vec<String>,
    /// `resync = "auto"`: a lost history starts a new one instead of stopping.
    resync_auto: bool,
    opts: CaptureOptions,
}

impl PostgresSource {
    /// Builds from a source's settings (no connection yet).
    pub fn new(
        name: &str,
        settings: &PostgresSettings,
        opts: &CaptureOptions,
    ) -> Result<Self, CaptureError> {
        let conn = ConnInfo::parse(settings.url.expose())
            .map_err(|e| CaptureError::of(name, e))?
            .with_timeouts(&opts.timeouts);
        Ok(PostgresSource {
            name: name.to_string(),
            conn,
            slot: settings.slot_name(name),
            publication: settings.publication_name(),
            tables: settings.tables.clone(),
            resync_auto: settings.resync == Some(config::Resync::Auto),
            opts: opts.clone(),
        })
    }

    fn fail(&self, e: impl Into<PgError>) -> CaptureError {
        CaptureError::of(&self.name, e.into())
    }

    fn history(&self, message: String) -> CaptureError {
        self.fail(PgError::History(message))
    }

    /// Prepares the source and returns a stream positioned where the journal ends.
    async fn open(&self, journal: &SourceJournal) -> Result<Opened, CaptureError> {
        let read = self.opts.timeouts.read;
        let client = self.conn.connect().await.map_err(|e| self.fail(e))?;
        let target = self.conn.display.clone();
        self.conn
            .bounded(
                "while preparing the source",
                read,
                setup::prepare(&client, &target, &self.publication, &self.tables),
            )
            .await
            .map_err(|e| self.fail(e))?;
        let mut repl = ReplicationConnection::connect(&self.conn.replication())
            .await
            .map_err(|e| self.fail(e))?;
        let checkpoint = journal
            .checkpoints()?
            .into_iter()
            .find_map(|c| match c.position.kind {
                Some(PositionKind::Postgres(p)) => Some(p.lsn),
                _ => None,
            });
        let slot = self
            .conn
            .bounded(
                "to a slot query",
                read,
                setup::slot_info(&client, &target, &self.slot),
            )
            .await
            .map_err(|e| self.fail(e))?;
        let resync = journal.note(RESYNC_NOTE)?.filter(|r| !r.is_empty());
        let start = match (checkpoint, slot) {
            (Some(_), existing) if resync.is_some() => {
                let reason = resync.unwrap_or_default();
                self.new_history(&mut repl, journal, existing, &reason)
                    .await?
            }
            (Some(lsn), Some(info)) => {
                if let Some(confirmed) = info.confirmed_flush.filter(|c| *c > lsn) {
                    let reason = format!(
                        "replication slot `{}` on {target} says changes up to {} were confirmed, but this journal holds the source only up to {}: something else consumed that WAL from the slot (another journal, a take-over, pg_replication_slot_advance), and the changes in between are not in this journal",
                        self.slot, Lsn(confirmed), Lsn(lsn)
                    );
                    if self.resync_auto {
                        self.new_history(&mut repl, journal, Some(info), &reason)
                            .await?
                    } else {
                        return Err(self.history(format!(
                            "{reason}; capture stops rather than resume with a gap. Restores up to {} remain exact; to go on, run `tidemark resync {}` (a new slot and base image, with a break recorded in the history)",
                            Lsn(lsn), self.name
                        )));
                    }
                } else {
                    tracing::info!(source = %self.name, slot = %self.slot, position = %Lsn(lsn), "resuming from the journal's checkpoint");
                    Lsn(lsn)
                }
            }
            (Some(lsn), None) => {
                let reason = format!(
                    "replication slot `{}` no longer exists on {target}, but the journal holds this source up to {}: changes after that cannot be recovered from the server",
                    self.slot,
                    Lsn(lsn)
                );
                if !self.resync_auto {
                    return Err(self.history(format!(
                        "{reason}; restores up to that point remain exact. To go on, run `tidemark resync {}` (a new slot and base image, with a break recorded in the history)",
                        self.name
                    )));
                }
                self.new_history(&mut repl, journal, None, &reason).await?
            }
            (None, existing) => self.first_history(&mut repl, journal, existing).await?,
        };
        // A transaction the journal holds only in part is resent whole: skip what is there.
        let partial =
            journal
                .last_event()?
                .and_then(|e| match (e.txn, e.position.and_then(|p| p.kind)) {
                    (Some(t), Some(PositionKind::Postgres(p))) if !t.commit => {
                        Some((p.lsn, p.index + 1))
                    }
                    _ => None,
                });
        let options = ReplicationOptions::new([self.publication.clone()]);
        let stream = repl
            .start_replication(&self.slot, start, &options)
            .await
            .map_err(|e| self.fail(e))?;
        Ok((stream, start, partial, client))
    }

    /// Creates the slot (dropping `existing` if this journal may) and takes the base
    /// image the history starts from; returns the slot's consistent point.
    async fn first_history(
        &self,
        repl: &mut ReplicationConnection,
        journal: &SourceJournal,
        existing: Option<SlotInfo>,
    ) -> Result<Lsn, CaptureError> {
        if let Some(info) = existing {
            self.may_drop(journal, &info)?;
            tracing::warn!(source = %self.name, slot = %self.slot, "dropping the slot this journal created before its base image was sealed, to take a consistent one");
            repl.drop_replication_slot(&self.slot, false)
                .await
                .map_err(|e| self.fail(e))?;
        }
        // Recorded (durably) before the slot exists: a crash between the two
        // leaves a note without a slot, never a slot without its note.
        journal.set_note(SLOT_NOTE, &self.slot_note()).await?;
        let created = repl
            .create_replication_slot(&self.slot, false, SnapshotAction::Export)
            .await
            .map_err(|e| self.fail(e))?;
        tracing::info!(source = %self.name, slot = %self.slot, position = %created.consistent_point, "created replication slot; taking the base image");
        let snapshot = created
            .snapshot_name
            .ok_or_else(|| self.history("the server exported no snapshot".into()))?;
        image::take(
            &self.conn,
            journal,
            &self.publication,
            &snapshot,
            created.consistent_point,
        )
        .await
        .map_err(|e| self.fail(e))?;
        Ok(created.consistent_point)
    }

    /// Ends the journal's history of this source with a break and starts a new one
    /// (new slot, new base image); the break is recorded before anything else.
    async fn new_history(
        &self,
        repl: &mut ReplicationConnection,
        journal: &SourceJournal,
        existing: Option<SlotInfo>,
        reason: &str,
    ) -> Result<Lsn, CaptureError> {
        tracing::warn!(source = %self.name, %reason, "resync: recording a break in the history and starting a new one");
        journal.record_break(reason).await?;
        let start = self.first_history(repl, journal, existing).await?;
        journal.set_note(RESYNC_NOTE, "").await?;
        Ok(start)
    }

    /// What the journal notes when it creates the slot: its identity and the slot.
    fn slot_note(&self) -> String {
        format!("{} on {}:{}", self.slot, self.conn.host, self.conn.port)
    }

    /// A slot exists but the journal has no history: drop it only if this journal
    /// created it (its base image was never sealed) or take-over was asked for.
    fn may_drop(&self, journal: &SourceJournal, info: &SlotInfo) -> Result<(), CaptureError> {
        if journal.note(SLOT_NOTE)?.as_deref() == Some(self.slot_note().as_str()) {
            return Ok(());
        }
        if self.opts.take_over_slots {
            tracing::warn!(source = %self.name, slot = %self.slot, holder = %info.describe(), "--take-over-slots: dropping a slot this journal did not create");
            return Ok(());
        }
        Err(self.history(format!(
            "replication slot `{}` already exists on {} ({}) and this journal did not create it: it may belong to another tidemark journal or another tool, and dropping it would silently cut that history; nothing was changed. Set another `slot` for this source, or, if the slot's owner is gone for good, run `tidemark run --take-over-slots` once",
            self.slot, self.conn.display, info.describe()
        )))
    }

    /// One attempt: open, then stream until shutdown or the first error (the
    /// supervisor decides whether to try again).
    async fn capture(self, mut ctx: CaptureContext) -> Result<(), CaptureError> {
        let opened = tokio::select! {
            opened = self.open(&ctx.journal) => opened?,
            _ = ctx.shutdown.wait() => return Ok(()),
        };
        ctx.capturing.now();
        self.stream(&mut ctx, opened).await
    }

    /// Streams until shutdown (`Ok`) or until the connection fails.
    async fn stream(&self, ctx: &mut CaptureContext, opened: Opened) -> Result<(), CaptureError> {
        let (mut stream, start, partial, client) = opened;
        let client = std::sync::Arc::new(client);
        let mut sampler = Sampler::default();
        let stall = self.opts.timeouts.stall;
        let mut last_rx = Instant::now();
        let mut st = StreamState {
            builder: ChangeBuilder::resuming(partial),
            pending: Vec::new(),
            held: None,
            durable: start.as_u64(),
            committed_end: start.as_u64(),
            committed_time: None,
            flush_samples: std::collections::VecDeque::new(),
            received: start.as_u64(),
            oldest_pending: None,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut schedule = ImageSchedule::new(self.opts.images, ctx.journal.clone());
        let mut imaging: Option<Imaging> = None;
        let (mut last_status, mut last_health, mut last_heartbeat) = (
            Instant::now(),
            Instant::now() - HEALTH_EVERY,
            Instant::now(),
        );
        loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown.wait() => {
                    self.flush(&ctx.journal, &mut st, &mut stream).await?;
                    stream.stop().await.map_err(|e| self.fail(e))?;
                    tracing::info!(source = %self.name, position = %Lsn(st.durable), "capture stopped; everything received is journaled and acknowledged");
                    return Ok(());
                }
                frame = stream.next() => match self.checked(&ctx.journal, frame).await? {
                    None => return Err(self.fail(PgError::Connect { target: self.conn.display.clone(), detail: "the server ended the replication stream".into() })),
                    Some(ReplicationMessage::XLogData(x)) => {
                        last_rx = Instant::now();
                        st.received = st.received.max(x.wal_end.as_u64());
                        let msg = repl::pgoutput::decode(&x.data).map_err(|e| self.undecodable(&st, &x.data, x.wal_start, e))?;
                        let step = st.builder.apply(msg, Timestamp::now().as_micros()).map_err(|detail| self.fail(PgError::Undecodable { position: Lsn(x.wal_start.as_u64()).to_string(), location: String::new(), detail: detail.to_string() }))?;
                        match step {
                            Step::Event(e) => {
                                if let Some(prev) = st.held.replace(*e) {
                                    st.pending.push(prev);
                                }
                                st.oldest_pending.get_or_insert_with(Instant::now);
                            }
                            Step::Commit { end_lsn, time_us } => {
                                if let Some(mut last) = st.held.take() {
                                    if let Some(t) = last.txn.as_mut() {
                                        t.commit = true;
                                    }
                                    st.pending.push(last);
                                }
                                st.committed_end = end_lsn;
                                st.committed_time = Some(time_us);
                                st.oldest_pending.get_or_insert_with(Instant::now);
                            }
                            Step::Nothing => {}
                        }
                        if st.pending.len() >= BATCH_EVENTS {
                            self.flush(&ctx.journal, &mut st, &mut stream).await?;
                        }
                    }
                    Some(ReplicationMessage::Keepalive(k)) => {
                        last_rx = Instant::now();
                        st.received = st.received.max(k.wal_end.as_u64());
                        if !st.builder.in_transaction() && st.held.is_none() && last_heartbeat.elapsed() >= HEARTBEAT_MIN_GAP {
                            // Everything the server sent before this keepalive is in hand:
                            // the journal is complete up to the keepalive's time.
                            st.committed_end = st.committed_end.max(k.wal_end.as_u64());
                            // The keepalive proves every commit before its WAL position was
                            // sent; it covers the newest moment whose flushed WAL end it
                            // has reached (not its own send time: during catch-up the
                            // server has committed more than it has sent).
                            if let Some(t) = st.covered_by(k.wal_end.as_u64()) {
                                st.committed_time = Some(st.committed_time.unwrap_or(i64::MIN).max(t));
                            }
                            self.flush_inner(&ctx.journal, &mut st, true).await?;
                            last_heartbeat = Instant::now();
                        }
                        if k.reply_requested {
                            self.send_status(&mut stream, &st).await?;
                            last_status = Instant::now();
                        }
                    }
                },
                _ = tick.tick() => {
                    if last_rx.elapsed() >= stall {
                        return Err(self.fail(PgError::Stalled { target: self.conn.display.clone(), after: stall }));
                    }
                    if st.oldest_pending.is_some_and(|t| t.elapsed() >= BATCH_DELAY) {
                        self.flush(&ctx.journal, &mut st, &mut stream).await?;
                    }
                    if last_status.elapsed() >= STATUS_EVERY {
                        self.sample_flush(&client, &mut sampler, &mut st).await?;
                        self.send_status(&mut stream, &st).await?;
                        last_status = Instant::now();
                    }
                    if last_health.elapsed() >= HEALTH_EVERY {
                        self.report_health(&client, &ctx.journal).await;
                        last_health = Instant::now();
                    }
                    self.schedule_image(&ctx.journal, &mut schedule, &mut imaging).await;
                }
            }
        }
    }

    /// Starts a scheduled base image when one is due, and collects the one running
    /// when it ends; it runs beside the stream, never pausing it.
    async fn schedule_image(
        &self,
        journal: &SourceJournal,
        schedule: &mut ImageSchedule,
        imaging: &mut Option<Imaging>,
    ) {
        if let Some(running) = imaging.as_mut() {
            if !running.0.is_finished() {
                return;
            }
            match (&mut running.0).await {
                Ok(Ok(meta)) => {
                    tracing::info!(source = %self.name, image = meta.id, "scheduled base image taken");
                    schedule.taken();
                }
                Ok(Err(error)) => {
                    tracing::error!(source = %self.name, %error, "scheduled base image failed; capture goes on, the next try is in a minute");
                    schedule.failed();
                }
                Err(error) => {
                    tracing::error!(source = %self.name, %error, "scheduled base image task failed");
                    schedule.failed();
                }
            }
            *imaging = None;
            return;
        }
        if let Some(reason) = schedule.due() {
            tracing::info!(source = %self.name, %reason, "taking a scheduled base image");
            let (conn, journal, publication, slot) = (
                self.conn.clone(),
                journal.clone(),
                self.publication.clone(),
                self.slot.clone(),
            );
            *imaging = Some(Imaging(tokio::spawn(async move {
                image::take_placed(&conn, &journal, &publication, &slot).await
            })));
        }
    }

    /// Appends what is pending, then acknowledges it.
    async fn flush(
        &self,
        journal: &SourceJournal,
        st: &mut StreamState,
        stream: &mut ReplicationStream,
    ) -> Result<(), CaptureError> {
        if self.flush_inner(journal, st, false).await? {
            self.send_status(stream, st).await?;
        }
        Ok(())
    }

    /// Appends pending events with the last commit as checkpoint; returns whether
    /// the durable LSN moved.
    async fn flush_inner(
        &self,
        journal: &SourceJournal,
        st: &mut StreamState,
        heartbeat: bool,
    ) -> Result<bool, CaptureError> {
        st.oldest_pending = None;
        if st.pending.is_empty() && st.committed_end == st.durable && !heartbeat {
            return Ok(false);
        }
        let events = std::mem::take(&mut st.pending);
        let progress = Progress {
            checkpoint: vec![Position::postgres(st.committed_end)],
            coverage: st.committed_time.map(Timestamp::from_micros),
        };
        journal.append(events, progress).await?;
        let moved = st.committed_end != st.durable;
        st.durable = st.committed_end;
        Ok(moved)
    }

    async fn send_status(
        &self,
        stream: &mut ReplicationStream,
        st: &StreamState,
    ) -> Result<(), CaptureError> {
        let durable = Lsn(st.durable);
        let mut update = StandbyStatusUpdate::new(Lsn(st.received), durable, durable);
        update.reply_requested = true;
        stream
            .send_status_update(update)
            .await
            .map_err(|e| self.stream_error(e))
    }

    /// Samples the server's flushed WAL end and its clock: once a keepalive reaches
    /// that WAL position, the journal is complete up to that moment. The query runs
    /// on its own task, so a slow SQL connection never holds up the stream; one that
    /// does not answer within the read timeout fails the attempt.
    async fn sample_flush(
        &self,
        client: &std::sync::Arc<tokio_postgres::Client>,
        sampler: &mut Sampler,
        st: &mut StreamState,
    ) -> Result<(), CaptureError> {
        if let Some((task, started)) = sampler.pending.take() {
            if !task.is_finished() {
                if started.elapsed() >= self.opts.timeouts.read {
                    task.abort();
                    return Err(self.fail(PgError::Timeout {
                        target: self.conn.display.clone(),
                        what: "to a WAL position query".into(),
                        after: self.opts.timeouts.read,
                    }));
                }
                sampler.pending = Some((task, started));
                return Ok(());
            }
            let sample = task.await.map_err(|e| {
                self.fail(PgError::Connect {
                    target: self.conn.display.clone(),
                    detail: format!("WAL position query task failed: {e}"),
                })
            })?;
            let (lsn, t, sequences) = sample.map_err(|e| self.fail(e))?;
            sampler.sequences = sequences;
            st.flush_samples.push_back((lsn, t));
            // Keepalives pass samples in order; a long catch-up keeps a bounded tail.
            while st.flush_samples.len() > 600 {
                st.flush_samples.pop_front();
            }
        }
        let (client, target) = (std::sync::Arc::clone(client), self.conn.display.clone());
        let (previous, source) = (sampler.sequences.clone(), self.name.clone());
        let task = tokio::spawn(async move {
            let row = client
                .query_one("SELECT pg_current_wal_flush_lsn()::text, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint", &[])
                .await
                .map_err(|e| PgError::query(&target, &e))?;
            let (lsn, t): (String, i64) = (row.get(0), row.get(1));
            let lsn = lsn.parse::<Lsn>().map_err(|_| PgError::Query {
                target: target.clone(),
                detail: format!("unexpected WAL position `{lsn}`"),
                code: None,
            })?;
            let sequences = sequences::sample(&client, &target, &source, previous).await?;
            Ok((lsn.as_u64(), t, sequences))
        });
        sampler.pending = Some((task, Instant::now()));
        Ok(())
    }

    /// A frame, or the stream's error; with `resync = "auto"`, a history that cannot
    /// go on (slot or publication dropped) is noted for a new history on the next
    /// attempt.
    async fn checked<T>(
        &self,
        journal: &SourceJournal,
        frame: Result<T, repl::Error>,
    ) -> Result<T, CaptureError> {
        let e = match frame {
            Ok(f) => return Ok(f),
            Err(e) => e,
        };
        let lost = e.server_error().is_some_and(|s| {
            s.code == "42704" && (s.message.contains("publication") || s.message.contains("slot"))
        });
        let error = self.stream_error(e);
        if !(lost && self.resync_auto) {
            return Err(error);
        }
        let reason = error.to_string();
        journal.set_note(RESYNC_NOTE, &reason).await?;
        Err(self.fail(PgError::Resyncing(reason)))
    }

    /// A replication stream error, with what to do where PostgreSQL's own message
    /// does not say it.
    fn stream_error(&self, e: repl::Error) -> CaptureError {
        let server = e
            .server_error()
            .map(|s| (s.code.clone(), s.message.clone()));
        match server {
            Some((code, message)) if code == "42704" && message.contains("publication") => self.history(format!(
                "{}: {message}: publication `{}` was dropped (or never covered this point) while the slot still holds WAL decoded with it; PostgreSQL keeps refusing this WAL even if the publication is created again. This history cannot continue: run `tidemark resync {}` to start a new one (new slot, publication and base image; restores before this point stay exact)",
                self.conn.display, self.publication, self.name
            )),
            Some((code, message)) if code == "42704" && message.contains("slot") => self.history(format!(
                "{}: {message}: replication slot `{}` was dropped while capturing; changes after the journal's checkpoint cannot be recovered from the server. Run `tidemark resync {}` to start a new history (restores before this point stay exact)",
                self.conn.display, self.slot, self.name
            )),
            // Data exceptions (22xxx: a value the server cannot convert to the
            // connection's encoding): the same change fails every time; the
            // supervisor stops the source after a bounded number of tries.
            Some((code, message)) if code.starts_with("22") => self.fail(PgError::Undecodable {
                position: "the first position after the journal's checkpoint".into(),
                location: String::new(),
                detail: format!("the server cannot send it in the connection's encoding: {message} (SQLSTATE {code})"),
            }),
            _ => self.fail(e),
        }
    }

    /// A change the decoder refused, named by position, table and column.
    fn undecodable(
        &self,
        st: &StreamState,
        data: &[u8],
        at: Lsn,
        e: repl::pgoutput::DecodeError,
    ) -> CaptureError {
        let location = match data.first() {
            Some(b'I' | b'U' | b'D') if data.len() >= 5 => {
                let oid = u32::from_be_bytes([data[1], data[2], data[3], data[4]]);
                match st.builder.table_name(oid) {
                    Some(table) => format!(" (table {table})"),
                    None => format!(" (relation {oid})"),
                }
            }
            _ => String::new(),
        };
        self.fail(PgError::Undecodable {
            position: at.to_string(),
            location,
            detail: e.to_string(),
        })
    }

    async fn report_health(&self, client: &tokio_postgres::Client, journal: &SourceJournal) {
        let lag = self
            .conn
            .bounded(
                "to a slot query",
                self.opts.timeouts.read,
                setup::slot_lag(client, &self.conn.display, &self.slot),
            )
            .await;
        let not_captured = self
            .conn
            .bounded(
                "to a catalog query",
                self.opts.timeouts.read,
                setup::not_captured(client, &self.conn.display),
            )
            .await
            .unwrap_or_default();
        let report = match lag {
            Ok(Some((lag, retained))) => {
                let warning = (retained > RETAINED_WAL_WARNING).then(|| {
                    format!("slot {} retains {} MB of WAL on the source (warning above {} MB): capture is behind or stopped; the source's disk is at risk", self.slot, retained >> 20, RETAINED_WAL_WARNING >> 20)
                });
                if let Some(w) = &warning {
                    tracing::warn!(source = %self.name, "{w}");
                }
                json!({ "slot": self.slot, "slot_lag_bytes": lag, "retained_wal_bytes": retained, "warning": warning, "not_captured": not_captured, "at": Timestamp::now().to_rfc3339() })
            }
            Ok(None) => json!({ "slot": self.slot, "warning": "replication slot missing" }),
            Err(e) => json!({ "slot": self.slot, "error": e.to_string() }),
        };
        if let Err(error) = journal.set_health(&report) {
            tracing::warn!(source = %self.name, %error, "cannot record health");
        }
    }
}

/// A stream positioned where the journal ends, its start, the partial transaction
/// to skip, and an SQL connection for health queries.
type Opened = (
    ReplicationStream,
    Lsn,
    Option<(u64, u32)>,
    tokio_postgres::Client,
);

/// The capture loop's bookkeeping.
struct StreamState {
    builder: ChangeBuilder,
    /// Events received, not yet appended.
    pending: Vec<ChangeEvent>,
    /// The newest event: kept back until the next message says whether it ends its
    /// transaction (then it is marked `commit`).
    held: Option<ChangeEvent>,
    /// End LSN acknowledged to the server: everything before it is durable.
    durable: u64,
    /// End LSN of the last transaction received whole (or a keepalive's WAL end).
    committed_end: u64,
    /// Commit time of that transaction (or a moment a keepalive proved complete), µs.
    committed_time: Option<i64>,
    /// `(flushed WAL end, server clock µs)`, sampled about once a second.
    flush_samples: std::collections::VecDeque<(u64, i64)>,
    /// Highest WAL end seen.
    received: u64,
    /// When the oldest unappended item arrived.
    oldest_pending: Option<Instant>,
}

/// A WAL position query: `(flushed WAL end, server clock µs, sequences written)`.
type SampleTask = tokio::task::JoinHandle<Result<(u64, i64, sequences::State), PgError>>;

/// The WAL position query in flight, if any, and when it started; what was last
/// written of the sequences.
#[derive(Default)]
struct Sampler {
    pending: Option<(SampleTask, Instant)>,
    sequences: sequences::State,
}

impl StreamState {
    /// The newest sampled moment whose flushed WAL end is at or before `wal_end`;
    /// older samples are dropped.
    fn covered_by(&mut self, wal_end: u64) -> Option<i64> {
        let mut covered = None;
        while let Some(&(lsn, t)) = self.flush_samples.front() {
            if lsn > wal_end {
                break;
            }
            covered = Some(t);
            self.flush_samples.pop_front();
        }
        covered
    }
}

impl Source for PostgresSource {
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        Box::pin(async move {
            let client = self.conn.connect().await.map_err(|e| self.fail(e))?;
            let target = self.conn.display.clone();
            let read = self.opts.timeouts.read;
            self.conn
                .bounded(
                    "to a settings query",
                    read,
                    setup::check_source(&client, &target, &self.tables),
                )
                .await
                .map_err(|e| self.fail(e))?;
            let repl = ReplicationConnection::connect(&self.conn.replication())
                .await
                .map_err(|e| self.fail(e))?;
            repl.close().await;
            Ok(())
        })
    }

    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>> {
        Box::pin(self.capture(ctx))
    }
}
