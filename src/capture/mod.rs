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
//! - **Coverage.** It advances coverage with events and with the source's heartbeats
//!   (keepalives, PINGs, high-water marks), so "journal complete up to T" is known
//!   even while nothing changes.
//! - **Shutdown.** When [`Shutdown`] fires it stops reading, appends what it has,
//!   acknowledges it, and returns `Ok(())`.

pub mod kafka;
pub mod postgres;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{SourceConfig, SourceKind};
use crate::event::{BaseImageMeta, ChangeEvent};
use crate::journal::{
    Appended, Checkpoint, ImageWriter, Journal, JournalError, Progress, SourceId,
};
use crate::position::Position;
use crate::time::Timestamp;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why capture of a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// This build has no capture for the kind.
    #[error("source `{name}`: capture of {kind} sources is not available in this version of tidemark (see README, \"Status\"); remove the source or upgrade")]
    NotAvailable {
        /// Source name.
        name: String,
        /// Its kind.
        kind: SourceKind,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The source failed; the message names the source and the fix.
    #[error("source `{name}`: {message}")]
    Source {
        /// Source name.
        name: String,
        /// What went wrong and what to do.
        message: String,
    },
}

/// One running capture. See the module docs for the guarantees.
pub trait Source: Send {
    /// Checks that capture can start (reachable, credentials, server settings)
    /// without changing anything anywhere. `run` calls it for every source before it
    /// opens the journal, so a misconfigured source stops start-up with nothing
    /// written.
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        Box::pin(async { Ok(()) })
    }

    /// Captures until `ctx.shutdown` fires or an unrecoverable error occurs.
    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>>;
}

/// What a running source gets.
pub struct CaptureContext {
    /// The source's view of the journal.
    pub journal: SourceJournal,
    /// Fires when capture should stop.
    pub shutdown: Shutdown,
}

/// Builds the capture for `cfg` without connecting to anything.
pub fn build(cfg: &SourceConfig) -> Result<Box<dyn Source>, CaptureError> {
    match cfg {
        SourceConfig::Postgres { .. } => Ok(Box::new(postgres::PostgresSource::from_config(cfg)?)),
        SourceConfig::Kafka {
            name,
            brokers,
            topics,
            groups,
            sasl,
            tls,
        } => {
            let conn = crate::kafka::Connection::new(brokers, sasl.clone(), *tls);
            Ok(Box::new(kafka::KafkaSource::new(
                name, conn, topics, groups,
            )?))
        }
        SourceConfig::Redis { name, url } => Ok(Box::new(redis::RedisSource::new(name, url)?)),
        // Each kind's capture arrives with its own issue; until then say so plainly.
        _ => Err(CaptureError::NotAvailable {
            name: cfg.name().to_string(),
            kind: cfg.kind(),
        }),
    }
}

/// Builds the capture for `cfg`, registers the source in `journal`, and returns its
/// stop trigger and the future that runs it (spawn it on any runtime). For one
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
    let source = build(cfg)?;
    let id = journal.register_source(cfg.name(), cfg.kind())?;
    let (trigger, shutdown) = shutdown_pair();
    let ctx = CaptureContext {
        journal: SourceJournal::new(Arc::clone(journal), id, cfg.name().to_string()),
        shutdown,
    };
    Ok((trigger, source.run(ctx)))
}

/// A [`Source::preflight`] for a check that blocks: runs it on the blocking pool and
/// names the source in its error.
pub fn preflight_blocking<E: std::fmt::Display + Send + 'static>(
    name: &str,
    check: impl FnOnce() -> Result<(), E> + Send + 'static,
) -> BoxFuture<'static, Result<(), CaptureError>> {
    let name = name.to_string();
    Box::pin(async move {
        let fail = |message: String| CaptureError::Source {
            name: name.clone(),
            message,
        };
        match tokio::task::spawn_blocking(check).await {
            Ok(checked) => checked.map_err(|e| fail(e.to_string())),
            Err(e) => Err(fail(format!("preflight failed: {e}"))),
        }
    })
}

/// A source's handle on the journal. Appends run on the blocking pool so a synced
/// write never stalls the async runtime.
#[derive(Clone)]
pub struct SourceJournal {
    journal: Arc<Journal>,
    id: SourceId,
    name: String,
}

impl SourceJournal {
    /// Binds a registered source.
    pub fn new(journal: Arc<Journal>, id: SourceId, name: String) -> Self {
        SourceJournal { journal, id, name }
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
        let (journal, id) = (Arc::clone(&self.journal), self.id);
        tokio::task::spawn_blocking(move || journal.append(id, &events, &progress))
            .await
            .map_err(|e| JournalError::Storage(format!("append task failed: {e}")))?
    }

    /// [`SourceJournal::append`] for callers already on a blocking thread.
    pub fn append_blocking(
        &self,
        events: &[ChangeEvent],
        progress: &Progress,
    ) -> Result<Appended, JournalError> {
        self.journal.append(self.id, events, progress)
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

    /// Where capture resumes: one checkpoint per stream, empty on first start.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, JournalError> {
        self.journal.checkpoints(self.id)
    }

    /// Starts a base image consistent with `position`.
    pub fn begin_image(
        &self,
        position: Position,
        time: Timestamp,
        format: &str,
    ) -> Result<ImageWriter, JournalError> {
        self.journal.begin_image(self.id, position, time, format)
    }

    /// The source's newest journaled event, if any.
    pub fn last_event(&self) -> Result<Option<ChangeEvent>, JournalError> {
        Ok(self.journal.last_event(self.id)?.map(|e| e.event))
    }

    /// Publishes a health report (JSON) for `status`.
    pub fn set_health(&self, report: &serde_json::Value) -> Result<(), JournalError> {
        self.journal.set_health(self.id, &report.to_string())
    }

    /// The newest base image, if any.
    pub fn latest_image(&self) -> Result<Option<BaseImageMeta>, JournalError> {
        self.journal
            .image_at_or_before(self.id, crate::journal::ImageBound::Seq(u64::MAX))
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
