//! Capture of a MongoDB deployment: a base image (see [`super::image`]), then one
//! deployment-level change stream into the journal.
//!
//! # Guarantees (the [`crate::capture`] contract, as this kind meets it)
//! - **One stream for everything.** `client.watch()` with `showExpandedEvents`:
//!   drops, renames and index changes of every captured collection arrive as
//!   events, never as an invalidate. Events are kept as the raw BSON the server
//!   sent (no typed decoding that could drop a field).
//! - **Positions.** Each journaled event gets the next journal ordinal; its resume
//!   token and cluster time are stored beside it (tokens are never compared).
//! - **Durable before it counts.** Nothing is acknowledged upstream (a change
//!   stream has no acknowledgement); the resume point is the checkpoint the
//!   journal wrote with the events, so a restart resumes right after the last
//!   journaled event: no gap, no duplicate.
//! - **Whole transactions.** Events of one transaction (same `lsid` and
//!   `txnNumber`) are appended in one batch, the last one marked as the commit;
//!   a transaction is closed by the next event outside it or by the stream going
//!   idle (the server had nothing more: a committed transaction is all there).
//! - **Idle progress.** When a `getMore` comes back empty, the
//!   `postBatchResumeToken` is journaled as the checkpoint and its cluster time
//!   (where the token's encoding is known, see [`super::token`]) as coverage.
//! - **One attempt per run.** The driver retries a resumable error once by itself;
//!   anything else ends `run` with an error the supervisor classifies, and the next
//!   `run` resumes from the journaled token. Oplog history lost (error 286) is not
//!   retried: capture records a break in the journal and takes a new base image.

use std::time::Duration;

use mongodb::bson::{RawDocument, RawDocumentBuf};

use super::client::{error_code, Conn, MongoError, Selection};
use super::image::{self, ReadError};
use super::token::{self, ts_u64};
use crate::capture::{BoxFuture, CaptureContext, CaptureError, Source, SourceJournal};
use crate::config::Timeouts;
use crate::event::{ChangeEvent, MongoChange, Payload, Txn};
use crate::journal::Progress;
use crate::position::{Position, PositionKind};
use crate::time::Timestamp;

/// Events buffered before an append (outside a transaction).
const BATCH: usize = 1000;
/// How long one `getMore` may wait for changes (bounds shutdown latency too).
const AWAIT: Duration = Duration::from_millis(500);
/// Attempts at a base image while collections keep changing under it.
const IMAGE_TRIES: u32 = 5;

/// Server error: the resume point is no longer in the oplog.
pub const HISTORY_LOST: i32 = 286;

/// The capture of one MongoDB source.
pub struct MongoSource {
    name: String,
    url: String,
    sel: Selection,
    timeouts: Timeouts,
}

/// Where the stream resumes: the last journaled ordinal and its token or time.
#[derive(Debug, Clone)]
struct Resume {
    ordinal: u64,
    cluster_time: u64,
    token: Vec<u8>,
}

impl MongoSource {
    /// A capture of `url` (connects to nothing yet).
    pub fn new(name: &str, url: &str, sel: Selection, timeouts: Timeouts) -> MongoSource {
        MongoSource {
            name: name.to_string(),
            url: url.to_string(),
            sel,
            timeouts,
        }
    }

    fn fail(&self, e: MongoError) -> CaptureError {
        CaptureError::of(&self.name, e)
    }

    async fn capture(self, ctx: CaptureContext) -> Result<(), CaptureError> {
        let conn = Conn::open(&self.url, &self.timeouts)
            .await
            .map_err(|e| self.fail(e))?;
        let journaled =
            ctx.journal
                .checkpoints()?
                .into_iter()
                .rev()
                .find_map(|c| match c.position.kind {
                    Some(PositionKind::Mongo(p)) => Some(Resume {
                        ordinal: p.ordinal,
                        cluster_time: p.cluster_time,
                        token: p.token_bson,
                    }),
                    _ => None,
                });
        let mut resume = match journaled {
            Some(r) => r,
            None => self.image(&conn, &ctx.journal, 0).await?,
        };
        let mut images = 0;
        loop {
            match self.stream(&conn, &ctx, &mut resume).await {
                Ok(()) => return Ok(()),
                Err(e @ MongoError::HistoryLost { .. }) if images < 3 => {
                    images += 1;
                    tracing::error!(source = %self.name, error = %e, "oplog history lost: recording a break and taking a new base image");
                    ctx.journal
                        .record_break(
                            "the oplog no longer held the resume point (MongoDB error 286)",
                        )
                        .await?;
                    resume = self.image(&conn, &ctx.journal, resume.ordinal).await?;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Takes a base image; returns where the stream starts (its operation time).
    async fn image(
        &self,
        conn: &Conn,
        sj: &SourceJournal,
        ordinal: u64,
    ) -> Result<Resume, CaptureError> {
        for attempt in 1..=IMAGE_TRIES {
            let before = image::list(conn, &self.sel)
                .await
                .map_err(|e| self.fail(e))?;
            let t0 = conn.operation_time().await.map_err(|e| self.fail(e))?;
            let pos = Position::mongo(ordinal, ts_u64(t0), "", Vec::new());
            tracing::info!(source = %self.name, collections = before.len(), "taking a base image");
            let mut sink = sj
                .image_sink(pos.clone(), Timestamp::now(), image::FORMAT)
                .await?;
            let counts = match image::read(conn, &before, &mut sink, &self.name).await {
                Ok(c) => c,
                Err(ReadError::Mongo(e)) => return Err(self.fail(e)),
                Err(ReadError::Journal(e)) => return Err(e.into()),
            };
            let after = image::list(conn, &self.sel)
                .await
                .map_err(|e| self.fail(e))?;
            if !image::same_listing(&before, &after) {
                tracing::warn!(source = %self.name, attempt, "collections were created, dropped or renamed during the base image; taking it again");
                drop(sink);
                continue;
            }
            let t_end = conn.operation_time().await.map_err(|e| self.fail(e))?;
            // The image stands for the deployment from the end of the read on, in
            // the server's time (its clock may run ahead of ours).
            let end_us = ((i64::from(t_end.time)) + 1) * 1_000_000;
            let time = Timestamp::from_micros(Timestamp::now().as_micros().max(end_us));
            let progress = Progress {
                checkpoint: vec![pos],
                coverage: None,
            };
            let meta = sink.finish_at(progress, time).await?;
            tracing::info!(source = %self.name, image = meta.id, collections = counts.collections, documents = counts.documents, bytes = meta.bytes, "base image sealed");
            return Ok(Resume {
                ordinal,
                cluster_time: ts_u64(t0),
                token: Vec::new(),
            });
        }
        Err(self.fail(MongoError::Command {
            url: conn.url.clone(),
            what: "the base image".into(),
            detail: format!(
                "collections were created, dropped or renamed during each of {IMAGE_TRIES} attempts"
            ),
            transient: true,
        }))
    }

    /// Streams from `resume` until shutdown; `resume` follows what is journaled.
    async fn stream(
        &self,
        conn: &Conn,
        ctx: &CaptureContext,
        resume: &mut Resume,
    ) -> Result<(), MongoError> {
        let watch = conn
            .client
            .watch()
            .show_expanded_events(true)
            .max_await_time(AWAIT);
        let watch = if resume.token.is_empty() {
            watch.start_at_operation_time(token::ts_from_u64(resume.cluster_time))
        } else {
            watch.resume_after(token::token_from_bytes(&resume.token)?)
        };
        let mut cs = watch
            .await
            .map_err(|e| self.stream_error(conn, resume, e))?
            .with_type::<RawDocumentBuf>();
        ctx.capturing.now();
        let mut batch = Batch::default();
        loop {
            if ctx.shutdown.is_fired() {
                // An open transaction may go on: it is read again on restart.
                if batch.txn.is_none() {
                    self.flush(ctx, &mut batch, resume, None).await?;
                }
                return Ok(());
            }
            match cs.next_if_any().await {
                Ok(Some(raw)) => {
                    let ev = self.convert(&raw, resume.ordinal + batch.events.len() as u64 + 1)?;
                    batch.add(ev, &raw)?;
                    if batch.txn.is_none() && batch.events.len() >= BATCH {
                        self.flush(ctx, &mut batch, resume, None).await?;
                    }
                }
                Ok(None) => {
                    batch.close_txn();
                    // Idle progress at most once a second (each is a synced write).
                    if batch.events.is_empty()
                        && batch
                            .idle_at
                            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
                    {
                        continue;
                    }
                    batch.idle_at = Some(std::time::Instant::now());
                    let idle = match cs.resume_token() {
                        Some(t) => Some(token::token_bytes(&t)?),
                        None => None,
                    };
                    self.flush(ctx, &mut batch, resume, idle).await?;
                }
                Err(e) => {
                    // Keep what is whole; an open transaction is read again.
                    if batch.txn.is_none() {
                        self.flush(ctx, &mut batch, resume, None).await?;
                    }
                    return Err(self.stream_error(conn, resume, e));
                }
            }
        }
    }

    fn stream_error(&self, conn: &Conn, resume: &Resume, e: mongodb::error::Error) -> MongoError {
        if error_code(&e) == Some(HISTORY_LOST) {
            return MongoError::HistoryLost {
                url: conn.url.clone(),
                position: Position::mongo(resume.ordinal, resume.cluster_time, "", Vec::new())
                    .to_string(),
                detail: e.to_string(),
            };
        }
        conn.err("the change stream", e)
    }

    /// Appends the batch's events (and the idle token, if any) as one durable
    /// write and moves `resume` past them.
    async fn flush(
        &self,
        ctx: &CaptureContext,
        batch: &mut Batch,
        resume: &mut Resume,
        idle: Option<(Vec<u8>, String)>,
    ) -> Result<(), MongoError> {
        let events = std::mem::take(&mut batch.events);
        let mut next = resume.clone();
        let mut coverage = batch.last_time.map(Timestamp::from_micros);
        if let Some(ev) = events.last() {
            if let Some(PositionKind::Mongo(p)) = ev.position.as_ref().and_then(|p| p.kind.clone())
            {
                next = Resume {
                    ordinal: p.ordinal,
                    cluster_time: p.cluster_time,
                    token: p.token_bson,
                };
            }
        }
        let mut data = String::new();
        if let Some((bytes, d)) = idle {
            if let Some(t) = token::cluster_time_of(&d) {
                next.cluster_time = next.cluster_time.max(ts_u64(t));
                let idle_us = i64::from(t.time) * 1_000_000;
                coverage = Some(Timestamp::from_micros(
                    coverage.map_or(idle_us, |c| c.as_micros().max(idle_us)),
                ));
            }
            if bytes == next.token && events.is_empty() && coverage.is_none() {
                return Ok(());
            }
            next.token = bytes;
            data = d;
        } else if events.is_empty() {
            return Ok(());
        }
        if data.is_empty() {
            if let Ok(doc) = RawDocument::from_bytes(&next.token) {
                data = doc.get_str("_data").unwrap_or_default().to_string();
            }
        }
        let checkpoint =
            Position::mongo(next.ordinal, next.cluster_time, &data, next.token.clone());
        ctx.journal
            .append(
                events,
                Progress {
                    checkpoint: vec![checkpoint],
                    coverage,
                },
            )
            .await
            .map_err(|e| MongoError::Data(format!("journal append failed: {e}")))?;
        *resume = next;
        Ok(())
    }

    /// The journal's event for one change-stream event, given its ordinal.
    fn convert(&self, raw: &RawDocument, ordinal: u64) -> Result<Option<ChangeEvent>, MongoError> {
        let bad = |what: &str| MongoError::Data(format!("a change event without {what}: {raw:?}"));
        let op = raw
            .get_str("operationType")
            .map_err(|_| bad("operationType"))?;
        if op == "invalidate" {
            return Err(MongoError::Data(
                "the deployment-level change stream was invalidated; this server's change streams are not supported".into(),
            ));
        }
        let (db, coll) = match raw.get_document("ns") {
            Ok(ns) => (
                ns.get_str("db").unwrap_or_default().to_string(),
                ns.get_str("coll").unwrap_or_default().to_string(),
            ),
            Err(_) => (String::new(), String::new()),
        };
        let to = raw
            .get_document("to")
            .or_else(|_| {
                raw.get_document("operationDescription")
                    .and_then(|d| d.get_document("to"))
            })
            .ok()
            .map(|t| {
                (
                    t.get_str("db").unwrap_or_default().to_string(),
                    t.get_str("coll").unwrap_or_default().to_string(),
                )
            });
        let selected = !db.is_empty() && self.sel.has(&db, &coll);
        if !selected {
            if let Some((tdb, tcoll)) = &to {
                if self.sel.has(tdb, tcoll) {
                    return Err(MongoError::Data(format!(
                        "collection {db}.{coll}, which this source does not capture, was renamed to {tdb}.{tcoll}, which it does: its documents were never captured; add {db}.{coll} (or {db}) to the source's `collections`/`databases`, then `tidemark resync` the source"
                    )));
                }
            }
            return Ok(None);
        }
        let id = raw
            .get_document("_id")
            .map_err(|_| bad("_id"))
            .and_then(|d| {
                mongodb::bson::Document::try_from(d).map_err(|e| MongoError::Data(e.to_string()))
            })
            .map_err(|e| MongoError::Data(format!("resume token: {e}")))?;
        let (token_bson, data) = token::token_doc_bytes(&id)?;
        let cluster = raw
            .get_timestamp("clusterTime")
            .map_err(|_| bad("clusterTime"))?;
        let commit_us = match raw.get_datetime("wallTime") {
            Ok(t) => t.timestamp_millis() * 1000,
            Err(_) => i64::from(cluster.time) * 1_000_000,
        };
        let txn = match (raw.get_document("lsid"), txn_number(raw)) {
            (Ok(lsid), Some(n)) => {
                let id = lsid
                    .get_binary("id")
                    .map(|b| crate::digest::hex(b.bytes))
                    .unwrap_or_else(|_| format!("{lsid:?}"));
                Some(Txn {
                    id: format!("{id}:{n}"),
                    commit: false,
                })
            }
            _ => None,
        };
        Ok(Some(ChangeEvent {
            source: String::new(),
            position: Some(Position::mongo(ordinal, ts_u64(cluster), &data, token_bson)),
            commit_time_us: Some(commit_us),
            capture_time_us: Timestamp::now().as_micros(),
            txn,
            payload: Some(Payload::Mongo(MongoChange {
                operation_type: op.to_string(),
                db,
                collection: coll,
                event_bson: raw.as_bytes().to_vec(),
            })),
        }))
    }
}

fn txn_number(raw: &RawDocument) -> Option<i64> {
    raw.get_i64("txnNumber")
        .ok()
        .or_else(|| raw.get_i32("txnNumber").ok().map(i64::from))
}

/// Events read but not yet journaled, and the transaction still open at its end.
#[derive(Default)]
struct Batch {
    events: Vec<ChangeEvent>,
    /// Id of the transaction the last event belongs to, while it may continue.
    txn: Option<String>,
    /// Time of the last event not inside an open transaction.
    last_time: Option<i64>,
    /// When idle progress was last journaled.
    idle_at: Option<std::time::Instant>,
}

impl Batch {
    /// Adds an event (`None`: filtered out, but it still closes a transaction).
    fn add(&mut self, ev: Option<ChangeEvent>, _raw: &RawDocument) -> Result<(), MongoError> {
        let id = ev
            .as_ref()
            .and_then(|e| e.txn.as_ref())
            .map(|t| t.id.clone());
        if self.txn.is_some() && self.txn != id {
            self.close_txn();
        }
        if let Some(ev) = ev {
            if id.is_none() {
                self.last_time = Some(ev.time_us());
            }
            self.events.push(ev);
            self.txn = id;
        }
        Ok(())
    }

    /// Marks the open transaction's last event as its commit.
    fn close_txn(&mut self) {
        if self.txn.take().is_some() {
            if let Some(last) = self.events.last_mut() {
                if let Some(t) = last.txn.as_mut() {
                    t.commit = true;
                }
                self.last_time = Some(last.time_us());
            }
        }
    }
}

impl Source for MongoSource {
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        Box::pin(async move {
            let conn = Conn::open(&self.url, &self.timeouts)
                .await
                .map_err(|e| self.fail(e))?;
            conn.operation_time().await.map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>> {
        Box::pin(self.capture(ctx))
    }
}
