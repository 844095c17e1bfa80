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

mod changes;
pub mod conn;
pub mod ddl;
pub mod image;
pub mod repl;
pub mod setup;

use std::time::{Duration, Instant};

use serde_json::json;

use self::changes::{unix_us, ChangeBuilder, Step};
use self::conn::ConnInfo;
use self::repl::{
    Lsn, ReplicationConnection, ReplicationMessage, ReplicationOptions, ReplicationStream,
    SnapshotAction, StandbyStatusUpdate,
};
use super::{BoxFuture, CaptureContext, CaptureError, Source, SourceJournal};
use crate::config::SourceConfig;
use crate::event::ChangeEvent;
use crate::journal::Progress;
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

/// Captures one PostgreSQL database.
pub struct PostgresSource {
    name: String,
    conn: ConnInfo,
    slot: String,
    publication: String,
    tables: Vec<String>,
}

impl PostgresSource {
    /// Builds from a `kind = "postgres"` source (no connection yet).
    pub fn from_config(cfg: &SourceConfig) -> Result<Self, CaptureError> {
        let SourceConfig::Postgres {
            name,
            url,
            slot,
            publication,
            tables,
        } = cfg
        else {
            return Err(CaptureError::Source {
                name: cfg.name().into(),
                message: "not a postgres source".into(),
            });
        };
        let conn = ConnInfo::parse(url).map_err(|message| CaptureError::Source {
            name: name.clone(),
            message,
        })?;
        let default_slot = format!(
            "tidemark_{}",
            name.to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        );
        Ok(PostgresSource {
            name: name.clone(),
            conn,
            slot: slot.clone().unwrap_or(default_slot),
            publication: publication.clone().unwrap_or_else(|| "tidemark".into()),
            tables: tables.clone(),
        })
    }

    fn fail(&self, message: impl Into<String>) -> CaptureError {
        CaptureError::Source {
            name: self.name.clone(),
            message: message.into(),
        }
    }

    /// Prepares the source and returns a stream positioned where the journal ends.
    async fn open(&self, journal: &SourceJournal) -> Result<Opened, CaptureError> {
        let client = self.conn.connect().await.map_err(|m| self.fail(m))?;
        setup::prepare(&client, &self.publication, &self.tables)
            .await
            .map_err(|m| self.fail(m))?;
        let mut repl = ReplicationConnection::connect(&self.conn.replication())
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        let checkpoint = journal
            .checkpoints()?
            .into_iter()
            .find_map(|c| match c.position.kind {
                Some(PositionKind::Postgres(p)) => Some(p.lsn),
                _ => None,
            });
        let slot = setup::slot_plugin(&client, &self.slot)
            .await
            .map_err(|m| self.fail(m))?;
        let start = match (checkpoint, slot) {
            (Some(lsn), Some(_)) => {
                tracing::info!(source = %self.name, slot = %self.slot, position = %Lsn(lsn), "resuming from the journal's checkpoint");
                Lsn(lsn)
            }
            (Some(lsn), None) => {
                return Err(self.fail(format!(
                    "replication slot `{}` no longer exists, but the journal holds this source up to {}: changes after that may be lost and cannot be recovered from the server; to start a new history, capture the database under a new source name",
                    self.slot,
                    Lsn(lsn)
                )))
            }
            (None, existing) => {
                if existing.is_some() {
                    tracing::warn!(source = %self.name, slot = %self.slot, "slot exists but the journal has no history for it: recreating it to take a consistent base image");
                    repl.drop_replication_slot(&self.slot, false).await.map_err(|e| self.fail(e.to_string()))?;
                }
                let created = repl.create_replication_slot(&self.slot, false, SnapshotAction::Export).await.map_err(|e| self.fail(e.to_string()))?;
                tracing::info!(source = %self.name, slot = %self.slot, position = %created.consistent_point, "created replication slot; taking the base image");
                let snapshot = created.snapshot_name.ok_or_else(|| self.fail("the server exported no snapshot"))?;
                image::take(&self.conn, journal, &self.publication, &snapshot, created.consistent_point).await?;
                created.consistent_point
            }
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
            .map_err(|e| self.fail(e.to_string()))?;
        Ok((stream, start, partial, client))
    }

    /// Captures until shutdown. A failure to start (bad password, `wal_level`, a
    /// lost slot) ends capture with its error; a connection lost later is retried
    /// with backoff, resuming from the journal.
    async fn capture(self, mut ctx: CaptureContext) -> Result<(), CaptureError> {
        let mut opened = self.open(&ctx.journal).await?;
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.stream(&mut ctx, opened).await {
                Ok(()) => return Ok(()),
                Err(CaptureError::Journal(e)) => return Err(CaptureError::Journal(e)),
                Err(error) => {
                    tracing::warn!(source = %self.name, %error, "replication interrupted; reconnecting")
                }
            }
            loop {
                tokio::select! {
                    _ = ctx.shutdown.wait() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                match self.open(&ctx.journal).await {
                    Ok(o) => {
                        tracing::info!(source = %self.name, "replication resumed");
                        opened = o;
                        backoff = Duration::from_millis(500);
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(source = %self.name, %error, "reconnect failed; retrying")
                    }
                }
            }
        }
    }

    /// Streams until shutdown (`Ok`) or until the connection fails.
    async fn stream(&self, ctx: &mut CaptureContext, opened: Opened) -> Result<(), CaptureError> {
        let (mut stream, start, partial, client) = opened;
        let mut st = StreamState {
            builder: ChangeBuilder::resuming(partial),
            pending: Vec::new(),
            held: None,
            durable: start.as_u64(),
            committed_end: start.as_u64(),
            committed_time: None,
            received: start.as_u64(),
            oldest_pending: None,
        };
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
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
                    stream.stop().await.map_err(|e| self.fail(e.to_string()))?;
                    tracing::info!(source = %self.name, position = %Lsn(st.durable), "capture stopped; everything received is journaled and acknowledged");
                    return Ok(());
                }
                frame = stream.next() => match frame.map_err(|e| self.fail(e.to_string()))? {
                    None => return Err(self.fail("the server ended the replication stream")),
                    Some(ReplicationMessage::XLogData(x)) => {
                        st.received = st.received.max(x.wal_end.as_u64());
                        let msg = repl::pgoutput::decode(&x.data).map_err(|e| self.fail(format!("cannot decode pgoutput: {e}")))?;
                        match st.builder.apply(msg, Timestamp::now().as_micros()).map_err(|m| self.fail(m))? {
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
                        st.received = st.received.max(k.wal_end.as_u64());
                        if !st.builder.in_transaction() && st.held.is_none() && last_heartbeat.elapsed() >= HEARTBEAT_MIN_GAP {
                            // Everything the server sent before this keepalive is in hand:
                            // the journal is complete up to the keepalive's time.
                            st.committed_end = st.committed_end.max(k.wal_end.as_u64());
                            st.committed_time = Some(st.committed_time.unwrap_or(i64::MIN).max(unix_us(k.server_time)));
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
                    if st.oldest_pending.is_some_and(|t| t.elapsed() >= BATCH_DELAY) {
                        self.flush(&ctx.journal, &mut st, &mut stream).await?;
                    }
                    if last_status.elapsed() >= STATUS_EVERY {
                        self.send_status(&mut stream, &st).await?;
                        last_status = Instant::now();
                    }
                    if last_health.elapsed() >= HEALTH_EVERY {
                        self.report_health(&client, &ctx.journal).await;
                        last_health = Instant::now();
                    }
                }
            }
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
            .map_err(|e| self.fail(e.to_string()))
    }

    async fn report_health(&self, client: &tokio_postgres::Client, journal: &SourceJournal) {
        let report = match setup::slot_lag(client, &self.slot).await {
            Ok(Some((lag, retained))) => {
                let warning = (retained > RETAINED_WAL_WARNING).then(|| {
                    format!("slot {} retains {} MB of WAL on the source (warning above {} MB): capture is behind or stopped; the source's disk is at risk", self.slot, retained >> 20, RETAINED_WAL_WARNING >> 20)
                });
                if let Some(w) = &warning {
                    tracing::warn!(source = %self.name, "{w}");
                }
                json!({ "slot": self.slot, "slot_lag_bytes": lag, "retained_wal_bytes": retained, "warning": warning, "at": Timestamp::now().to_rfc3339() })
            }
            Ok(None) => json!({ "slot": self.slot, "warning": "replication slot missing" }),
            Err(e) => json!({ "slot": self.slot, "error": e }),
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
    /// Commit time of that transaction (or the keepalive's time), µs.
    committed_time: Option<i64>,
    /// Highest WAL end seen.
    received: u64,
    /// When the oldest unappended item arrived.
    oldest_pending: Option<Instant>,
}

impl Source for PostgresSource {
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        Box::pin(async move {
            let client = self.conn.connect().await.map_err(|m| self.fail(m))?;
            setup::check_wal_level(&client)
                .await
                .map_err(|m| self.fail(m))?;
            let repl = ReplicationConnection::connect(&self.conn.replication())
                .await
                .map_err(|e| self.fail(e.to_string()))?;
            repl.close().await;
            Ok(())
        })
    }

    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>> {
        Box::pin(self.capture(ctx))
    }
}
