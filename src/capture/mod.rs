//! Capture: tailing sources into the journal.
//!
//! # The source contract
//! A [`Source`] tails one configured source into the journal through its
//! [`SourceJournal`]. Every implementation guarantees:
//! - **Order.** Events are appended in the source's own order (commit order, offset
//!   order) within each stream.
//! - **Acknowledge after durable.** The source's server is told a position is
//!   consumed (PostgreSQL flush LSN, Kafka commit, Mongo resume token, Redis ACK
//!   offset) only after `append` returned for every event up to that position.
//! - **Resume exactly.** On start it reads [`SourceJournal::checkpoints`] and resumes
//!   right after them: no gap, no duplicate. With no checkpoint it first takes a base
//!   image (where the kind has one) consistent with the position the stream starts at.
//!   A server that says it holds less than the journal's checkpoint, or more than
//!   the journal was ever acknowledged for, is a gap: the source stops with an error.
//! - **Coverage.** It advances coverage with events and with the source's heartbeats
//!   (keepalives, PINGs, high-water marks), so "journal complete up to T" is known
//!   even while nothing changes.
//! - **One attempt per `run`.** `run` captures until shutdown (`Ok`) or its first
//!   error, and never retries by itself: the [`supervisor`] decides, from
//!   [`CaptureError::is_transient`], whether to start it again (with the shared
//!   [`backoff`]) or to stop that source alone. Calling `run` again resumes from the
//!   journal as after a restart.
//! - **Blocking work off the runtime.** Appends, image chunks and any other fsync
//!   run on the blocking pool ([`SourceJournal`] does it), never on an async worker.
//! - **Shutdown.** When [`Shutdown`] fires it stops reading, appends what it has,
//!   acknowledges it, and returns `Ok(())`.

pub mod backoff;
pub mod images;
pub mod supervisor;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::SourceConfig;
use crate::event::{BaseImageMeta, ChangeEvent};
use crate::journal::{
    Appended, Checkpoint, ImageWriter, Journal, JournalError, Progress, SourceId,
};
use crate::position::Position;
use crate::time::Timestamp;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connector's typed error, as capture sees it.
pub trait Fault: std::error::Error + Send + Sync + 'static {
    /// True when trying again can help (the network, a restarting server); false
    /// for configuration, permission and history problems, which retrying cannot fix.
    fn is_transient(&self) -> bool;
}

/// Why capture of a source stopped (or paused).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The source's server or data failed; the connector's error says how.
    #[error("source `{name}`: {error}")]
    Source {
        /// Source name.
        name: String,
        /// The connector's error (in the message, not a `source`: it would print twice).
        error: Box<dyn Fault>,
    },
    /// The source's settings cannot work (found when building or starting it).
    #[error("source `{name}`: {message}")]
    Config {
        /// Source name.
        name: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The same failure at the same source position, again and again.
    #[error("source `{name}`: stopped after {tries} attempts failed the same way at position {position}: {error}; capture cannot get past this change, so the source is stopped rather than retried forever (the journal holds everything before it)")]
    Poisoned {
        /// Source name.
        name: String,
        /// Attempts made.
        tries: u32,
        /// The journal's position for the source when it failed.
        position: String,
        /// The repeated error.
        error: String,
    },
}

impl CaptureError {
    /// Wraps a connector error of source `name`.
    pub fn of(name: &str, error: impl Fault) -> CaptureError {
        CaptureError::Source {
            name: name.to_string(),
            error: Box::new(error),
        }
    }

    /// A settings problem of source `name`.
    pub fn config(name: &str, message: impl Into<String>) -> CaptureError {
        CaptureError::Config {
            name: name.to_string(),
            message: message.into(),
        }
    }

    /// Whether the supervisor should try again.
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Source { error, .. } => error.is_transient(),
            _ => false,
        }
    }
}

/// One running capture. See the module docs for the guarantees.
pub trait Source: Send {
    /// Checks that capture can start (reachable, credentials, server settings)
    /// without changing anything anywhere. `run` calls it for every source before it
    /// opens the journal: a permanent failure stops start-up with nothing written; a
    /// transient one (server unreachable) starts the source in `retrying`.
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        Box::pin(async { Ok(()) })
    }

    /// Captures until `ctx.shutdown` fires (`Ok`) or the first error.
    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>>;
}

/// What a running source gets.
pub struct CaptureContext {
    /// The source's view of the journal.
    pub journal: SourceJournal,
    /// Fires when capture should stop.
    pub shutdown: Shutdown,
    /// Tells the supervisor the source is capturing (connected, streaming).
    pub capturing: Capturing,
}

/// The source's "I am capturing now" signal to its supervisor.
#[derive(Clone)]
pub struct Capturing(Arc<dyn Fn() + Send + Sync>);

impl Capturing {
    /// A signal that calls `f`.
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Capturing {
        Capturing(Arc::new(f))
    }

    /// Called by the source once connected and streaming (again).
    pub fn now(&self) {
        (self.0)()
    }
}

/// How captures are built: the same for every source of one `run`.
#[derive(Debug, Clone, Default)]
pub struct CaptureOptions {
    /// Connection timeouts.
    pub timeouts: crate::config::Timeouts,
    /// Take over server-side resources (replication slots) this journal did not
    /// create (`run --take-over-slots`).
    pub take_over_slots: bool,
    /// When the source takes its next base image (its `[[source]]` settings).
    pub images: images::ImagePolicy,
}

/// Builds the capture for `cfg` without connecting to anything.
pub fn build(cfg: &SourceConfig, opts: &CaptureOptions) -> Result<Box<dyn Source>, CaptureError> {
    cfg.settings.capture(cfg.name(), &cfg.capture_options(opts))
}

/// Registers `cfg`'s source in `journal` and returns its stop trigger and the
/// future that captures it under a [`supervisor`] (retrying transient failures, as
/// `run` does; it ends with `Ok` on shutdown or with the permanent failure). For one
/// source outside `tidemark run`: the demo, tests and benchmarks.
pub fn start(
    journal: &Arc<Journal>,
    cfg: &SourceConfig,
) -> Result<
    (
        ShutdownTrigger,
        BoxFuture<'static, Result<(), CaptureError>>,
    ),
    CaptureError,
> {
    // Settings problems surface here, before anything is registered.
    drop(build(cfg, &CaptureOptions::default())?);
    let id = journal.register_source(cfg.name(), cfg.kind())?;
    let (trigger, shutdown) = shutdown_pair();
    let sj = SourceJournal::new(Arc::clone(journal), id, cfg.name().to_string());
    let (settings, name) = (Arc::clone(&cfg.settings), cfg.name().to_string());
    let opts = cfg.capture_options(&CaptureOptions::default());
    let factory: supervisor::Factory = Box::new(move || settings.capture(&name, &opts));
    Ok((
        trigger,
        Box::pin(supervisor::supervise(factory, sj, shutdown, None)),
    ))
}

/// A [`Source::preflight`] for a check that blocks: runs it on the blocking pool and
/// names the source in its error.
pub fn preflight_blocking<E: Fault>(
    name: &str,
    check: impl FnOnce() -> Result<(), E> + Send + 'static,
) -> BoxFuture<'static, Result<(), CaptureError>> {
    let name = name.to_string();
    Box::pin(async move {
        match tokio::task::spawn_blocking(check).await {
            Ok(checked) => checked.map_err(|e| CaptureError::of(&name, e)),
            Err(e) => Err(CaptureError::config(
                &name,
                format!("preflight failed: {e}"),
            )),
        }
    })
}

/// A source's handle on the journal. Appends run on the blocking pool so a synced
/// write never stalls the async runtime.
///
/// A handle may be narrowed to one **part** of the source ([`SourceJournal::part`]):
/// a Redis Cluster source captures each shard as a part with its own link,
/// streams, checkpoints and base images, all in the one source. See [`PartScope`].
#[derive(Clone)]
pub struct SourceJournal {
    journal: Arc<Journal>,
    id: SourceId,
    name: String,
    /// Set when the handle is one part's view.
    scope: Option<Arc<PartScope>>,
}

/// One part's view of its source (a Redis Cluster shard), as narrowed by
/// [`SourceJournal::part`]. Guarantees:
/// - **Own resume point.** [`SourceJournal::checkpoints`] returns only the
///   checkpoints of the streams this part has journaled under, and
///   [`SourceJournal::latest_image`] only this part's images; a full resync of one
///   part starts a new history for that part alone.
/// - **Streams recorded before their events.** The first time a part appends under
///   a stream (a Redis replication id), the stream is added to the part's note
///   `part.<name>.streams` with a synced write before the append: after a crash,
///   every checkpoint of the part is still recognised as the part's.
/// - **Images tagged.** Images begun through the view carry the part's name
///   ([`crate::event::BaseImageMeta::part`]).
/// - **Coverage is the minimum.** The coverage an append of the part records is
///   the lowest over every part registered in the shared [`PartCoverage`] (none
///   until every part has reported one): the source is covered up to T only when
///   every part is.
pub struct PartScope {
    part: String,
    /// Resume from nothing (a full sync), whatever the part journaled before.
    fresh: bool,
    streams: std::sync::Mutex<std::collections::BTreeSet<Vec<u8>>>,
    coverage: Arc<PartCoverage>,
}

/// The coverage of each part of one source; shared by the parts' views.
#[derive(Default)]
pub struct PartCoverage {
    parts: std::sync::Mutex<std::collections::BTreeMap<String, Option<i64>>>,
}

impl PartCoverage {
    /// Counts `part` in the minimum from now on (with no coverage until it reports).
    pub fn register(&self, part: &str) {
        self.lock().entry(part.to_string()).or_insert(None);
    }

    /// Stops counting `part` (its link ended for good: no longer a primary).
    pub fn deregister(&self, part: &str) {
        self.lock().remove(part);
    }

    /// Records `part`'s own coverage and returns the source's: the minimum over the
    /// registered parts, `None` while one has none.
    fn fold(&self, part: &str, own: Option<Timestamp>) -> Option<Timestamp> {
        let mut parts = self.lock();
        let slot = parts.entry(part.to_string()).or_insert(None);
        if let Some(t) = own {
            *slot = Some(slot.map_or(t.as_micros(), |old| old.max(t.as_micros())));
        }
        let mut min: Option<i64> = None;
        for v in parts.values() {
            let v = (*v)?;
            min = Some(min.map_or(v, |m| m.min(v)));
        }
        min.map(Timestamp::from_micros)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Option<i64>>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The note listing a part's streams (JSON array of hex strings).
fn part_streams_note(part: &str) -> String {
    format!("part.{part}.streams")
}

/// The streams a part has journaled under, from its note (see [`PartScope`]).
pub fn part_streams(
    journal: &Journal,
    id: SourceId,
    part: &str,
) -> Result<std::collections::BTreeSet<Vec<u8>>, JournalError> {
    let Some(text) = journal.note(id, &part_streams_note(part))? else {
        return Ok(Default::default());
    };
    let list: Vec<String> = serde_json::from_str(&text).map_err(|e| JournalError::Corrupt {
        record: format!("note {}", part_streams_note(part)),
        detail: e.to_string(),
    })?;
    Ok(list.iter().filter_map(|h| unhex(h)).collect())
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

impl SourceJournal {
    /// Binds a registered source.
    pub fn new(journal: Arc<Journal>, id: SourceId, name: String) -> Self {
        SourceJournal {
            journal,
            id,
            name,
            scope: None,
        }
    }

    /// The view of part `part` of this source (see [`PartScope`]), whose coverage
    /// counts in `coverage` (the part is registered there).
    pub fn part(
        &self,
        part: &str,
        coverage: &Arc<PartCoverage>,
    ) -> Result<SourceJournal, JournalError> {
        let streams = part_streams(&self.journal, self.id, part)?;
        coverage.register(part);
        Ok(SourceJournal {
            journal: Arc::clone(&self.journal),
            id: self.id,
            name: self.name.clone(),
            scope: Some(Arc::new(PartScope {
                part: part.to_string(),
                fresh: false,
                streams: std::sync::Mutex::new(streams),
                coverage: Arc::clone(coverage),
            })),
        })
    }

    /// This part's view, but with no checkpoints: capture through it starts over
    /// with a new base image (the part's history so far stays in the journal).
    pub fn without_checkpoints(self) -> SourceJournal {
        let scope = self.scope.as_ref().map(|s| {
            Arc::new(PartScope {
                part: s.part.clone(),
                fresh: true,
                streams: std::sync::Mutex::new(
                    s.streams.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                ),
                coverage: Arc::clone(&s.coverage),
            })
        });
        SourceJournal { scope, ..self }
    }

    /// [`SourceJournal::set_note`] for callers on a blocking thread.
    pub fn set_note_blocking(&self, name: &str, value: &str) -> Result<(), JournalError> {
        self.journal.set_note(self.id, name, value)
    }

    /// The journal itself (for readers that need more than this view).
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Whether this is one part's view (see [`PartScope`]).
    pub fn is_part(&self) -> bool {
        self.scope.is_some()
    }

    /// The source's id in the journal.
    pub fn id(&self) -> SourceId {
        self.id
    }

    /// In a part's view: records every stream of `positions` the part has not
    /// journaled under before (synced, before the caller appends), and turns the
    /// part's coverage into the source's.
    fn scoped<'a>(
        &self,
        positions: impl Iterator<Item = &'a Position>,
        progress: &Progress,
    ) -> Result<Option<Progress>, JournalError> {
        let Some(scope) = &self.scope else {
            return Ok(None);
        };
        let mut streams = scope.streams.lock().unwrap_or_else(|p| p.into_inner());
        let mut added = false;
        for p in positions {
            if let Some((stream, _)) = p.index_key() {
                added |= streams.insert(stream);
            }
        }
        if added {
            let list: Vec<String> = streams.iter().map(|s| crate::digest::hex(s)).collect();
            let text = serde_json::to_string(&list).unwrap_or_default();
            self.journal
                .set_note(self.id, &part_streams_note(&scope.part), &text)?;
        }
        drop(streams);
        let mut progress = progress.clone();
        progress.coverage = scope.coverage.fold(&scope.part, progress.coverage);
        Ok(Some(progress))
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends `events` and `progress` atomically; durable when it returns.
    pub async fn append(
        &self,
        events: Vec<ChangeEvent>,
        progress: Progress,
    ) -> Result<Appended, JournalError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_blocking(&events, &progress))
            .await
            .map_err(|e| JournalError::Storage(format!("append task failed: {e}")))?
    }

    /// [`SourceJournal::append`] for callers already on a blocking thread.
    pub fn append_blocking(
        &self,
        events: &[ChangeEvent],
        progress: &Progress,
    ) -> Result<Appended, JournalError> {
        let positions = events
            .iter()
            .filter_map(|e| e.position.as_ref())
            .chain(progress.checkpoint.iter());
        match self.scoped(positions, progress)? {
            Some(p) => self.journal.append(self.id, events, &p),
            None => self.journal.append(self.id, events, progress),
        }
    }

    /// The source's event with sequence number `seq`, if it has one.
    pub fn event_at(&self, seq: u64) -> Result<Option<ChangeEvent>, JournalError> {
        Ok(self
            .journal
            .events(self.id, seq, seq)
            .next()
            .transpose()?
            .map(|e| e.event))
    }

    /// Where capture resumes: one checkpoint per stream, empty on first start (in a
    /// part's view: the part's streams only).
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, JournalError> {
        let all = self.journal.checkpoints(self.id)?;
        let Some(scope) = &self.scope else {
            return Ok(all);
        };
        if scope.fresh {
            return Ok(Vec::new());
        }
        let streams = scope.streams.lock().unwrap_or_else(|p| p.into_inner());
        Ok(all
            .into_iter()
            .filter(|c| {
                c.position
                    .index_key()
                    .is_some_and(|(s, _)| streams.contains(&s))
            })
            .collect())
    }

    /// Starts a base image consistent with `position`, written from async code: the
    /// chunks go to a blocking thread that owns the writer, so no fsync runs on an
    /// async worker.
    pub async fn image_sink(
        &self,
        position: Position,
        time: Timestamp,
        format: &str,
    ) -> Result<ImageSink, JournalError> {
        let (journal, id, format) = (Arc::clone(&self.journal), self.id, format.to_string());
        let part = self.scope.as_ref().map(|s| s.part.clone());
        let writer = tokio::task::spawn_blocking(move || {
            let mut w = journal.begin_image(id, position, time, &format)?;
            if let Some(part) = part {
                w.set_part(&part);
            }
            Ok::<_, JournalError>(w)
        })
        .await
        .map_err(|e| JournalError::Storage(format!("image task failed: {e}")))??;
        Ok(ImageSink::start(writer))
    }

    /// Starts a base image consistent with `position` (for blocking callers). In a
    /// part's view the image is the part's, and its seal records the source's
    /// coverage (see [`PartScope`]).
    pub fn begin_image(
        &self,
        position: Position,
        time: Timestamp,
        format: &str,
    ) -> Result<SourceImageWriter, JournalError> {
        // The image's stream becomes the part's before its seal writes a checkpoint.
        let _ = self.scoped(std::iter::once(&position), &Progress::default())?;
        let mut writer = self.journal.begin_image(self.id, position, time, format)?;
        if let Some(scope) = &self.scope {
            writer.set_part(&scope.part);
        }
        Ok(SourceImageWriter {
            writer,
            view: self.clone(),
        })
    }

    /// The source's newest journaled event, if any.
    pub fn last_event(&self) -> Result<Option<ChangeEvent>, JournalError> {
        Ok(self.journal.last_event(self.id)?.map(|e| e.event))
    }

    /// The source's checkpoints as text (`pg 0/16B3748`), for messages.
    pub fn position_text(&self) -> String {
        match self.checkpoints() {
            Ok(c) if c.is_empty() => "(start: nothing journaled yet)".to_string(),
            Ok(c) => c
                .iter()
                .filter(|c| !c.position.is_kafka_state())
                .map(|c| c.position.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("(unknown: {e})"),
        }
    }

    /// Checkpoints and coverage together: unchanged means the source gained nothing.
    pub fn progress_key(&self) -> String {
        let coverage = self
            .journal
            .source(&self.name)
            .ok()
            .and_then(|s| s.stats.coverage_us);
        format!("{}|{coverage:?}", self.position_text())
    }

    /// Publishes the supervision state (JSON) for `status`.
    pub fn set_supervision(&self, state: &serde_json::Value) -> Result<(), JournalError> {
        self.journal.set_supervision(self.id, &state.to_string())
    }

    /// Durably records a note about the source (see [`Journal::set_note`]).
    pub async fn set_note(&self, name: &str, value: &str) -> Result<(), JournalError> {
        let (journal, id, name, value) = (
            Arc::clone(&self.journal),
            self.id,
            name.to_string(),
            value.to_string(),
        );
        tokio::task::spawn_blocking(move || journal.set_note(id, &name, &value))
            .await
            .map_err(|e| JournalError::Storage(format!("note task failed: {e}")))?
    }

    /// Durably records a break in the source's history (see
    /// [`crate::journal::Break`]): the old history ends at the coverage it has now,
    /// the new one begins now.
    pub async fn record_break(&self, reason: &str) -> Result<(), JournalError> {
        let (journal, id, name, reason) = (
            Arc::clone(&self.journal),
            self.id,
            self.name.clone(),
            reason.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            let covered = journal.source(&name)?.stats.coverage_us.unwrap_or(0);
            journal.add_break(
                id,
                crate::journal::Break {
                    covered_until_us: covered,
                    new_history_from_us: crate::time::Timestamp::now().as_micros(),
                    reason,
                },
            )
        })
        .await
        .map_err(|e| JournalError::Storage(format!("break task failed: {e}")))?
    }

    /// A note recorded with [`SourceJournal::set_note`].
    pub fn note(&self, name: &str) -> Result<Option<String>, JournalError> {
        self.journal.note(self.id, name)
    }

    /// Publishes a health report (JSON) for `status`.
    pub fn set_health(&self, report: &serde_json::Value) -> Result<(), JournalError> {
        self.journal.set_health(self.id, &report.to_string())
    }

    /// The newest base image, if any (in a part's view: the part's).
    pub fn latest_image(&self) -> Result<Option<BaseImageMeta>, JournalError> {
        match &self.scope {
            None => self
                .journal
                .image_at_or_before(self.id, crate::journal::ImageBound::Seq(u64::MAX)),
            Some(scope) => Ok(self
                .journal
                .images(self.id)?
                .into_iter()
                .rfind(|m| m.part == scope.part)),
        }
    }
}

/// A base image being written by a blocking caller ([`SourceJournal::begin_image`]).
/// Dropping it without [`finish`](SourceImageWriter::finish) discards the chunks.
pub struct SourceImageWriter {
    writer: ImageWriter,
    view: SourceJournal,
}

impl SourceImageWriter {
    /// Adds the next chunk (unsynced; the seal makes every chunk durable).
    pub fn put_chunk(&mut self, data: &[u8]) -> Result<(), JournalError> {
        self.writer.put_chunk(data)
    }

    /// Chunks written so far.
    pub fn chunks(&self) -> u64 {
        self.writer.chunks()
    }

    /// Seals an image taken while capture went on, after the source's events up to
    /// `after_seq`; see [`ImageWriter::finish_placed`].
    pub fn finish_placed(self, after_seq: u64) -> Result<BaseImageMeta, JournalError> {
        self.writer.finish_placed(after_seq)
    }

    /// Seals the image with `progress` in one synced write (coverage turned into
    /// the source's in a part's view).
    pub fn finish(self, progress: &Progress) -> Result<BaseImageMeta, JournalError> {
        match self.view.scoped(progress.checkpoint.iter(), progress)? {
            Some(p) => self.writer.finish(&p),
            None => self.writer.finish(progress),
        }
    }
}

/// A base image being written by a blocking thread; see [`SourceJournal::image_sink`].
pub struct ImageSink {
    tx: tokio::sync::mpsc::Sender<ImageMsg>,
    done: tokio::task::JoinHandle<Result<Option<BaseImageMeta>, JournalError>>,
}

enum ImageMsg {
    Chunk(Vec<u8>),
    Finish(Progress, Option<Timestamp>),
    FinishPlaced(u64),
}

impl ImageSink {
    fn start(mut writer: ImageWriter) -> ImageSink {
        // A few chunks in flight: the reader keeps going while one is written.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ImageMsg>(4);
        let done = tokio::task::spawn_blocking(move || {
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    ImageMsg::Chunk(data) => writer.put_chunk(&data)?,
                    ImageMsg::Finish(progress, time) => {
                        if let Some(t) = time {
                            writer.set_time(t);
                        }
                        return writer.finish(&progress).map(Some);
                    }
                    ImageMsg::FinishPlaced(after) => return writer.finish_placed(after).map(Some),
                }
            }
            // Dropped unfinished: the writer's chunks are removed at the next open.
            Ok(None)
        });
        ImageSink { tx, done }
    }

    /// Adds a chunk. An error is the writer's (the journal failed).
    pub async fn put(&mut self, chunk: Vec<u8>) -> Result<(), JournalError> {
        if self.tx.send(ImageMsg::Chunk(chunk)).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Seals the image with `progress` in one atomic write.
    pub async fn finish(self, progress: Progress) -> Result<BaseImageMeta, JournalError> {
        self.seal(ImageMsg::Finish(progress, None)).await
    }

    /// As [`ImageSink::finish`], the image representing the source at `time` rather
    /// than at the time given when it began (see [`ImageWriter::set_time`]).
    pub async fn finish_at(
        self,
        progress: Progress,
        time: Timestamp,
    ) -> Result<BaseImageMeta, JournalError> {
        self.seal(ImageMsg::Finish(progress, Some(time))).await
    }

    /// Seals an image taken while capture went on, after the source's events up to
    /// `after_seq`; see [`ImageWriter::finish_placed`].
    pub async fn finish_placed(self, after_seq: u64) -> Result<BaseImageMeta, JournalError> {
        self.seal(ImageMsg::FinishPlaced(after_seq)).await
    }

    async fn seal(self, msg: ImageMsg) -> Result<BaseImageMeta, JournalError> {
        let ImageSink { tx, done } = self;
        let _ = tx.send(msg).await;
        drop(tx);
        match done.await {
            Ok(Ok(Some(meta))) => Ok(meta),
            Ok(Ok(None)) => Err(JournalError::Storage(
                "base image writer stopped before sealing".into(),
            )),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(JournalError::Storage(format!("image task failed: {e}"))),
        }
    }

    async fn failure(&mut self) -> JournalError {
        match (&mut self.done).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => JournalError::Storage("base image writer stopped early".into()),
            Err(e) => JournalError::Storage(format!("image task failed: {e}")),
        }
    }
}

/// A cloneable stop signal: fires once, seen by every clone.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side of [`Shutdown`].
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A new stop signal and its trigger.
pub fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Fires the signal.
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// True once fired.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when fired (or when the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }
}

#[cfg(test)]
mod parts_tests;
