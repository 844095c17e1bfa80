//! One supervisor per source: a failing source never stops the others.
//!
//! Each source runs as an explicit state machine,
//!
//! ```text
//! starting ──▶ capturing ──(transient error)──▶ retrying(attempt, error, next try) ──▶ starting …
//!     │             │                                   │
//!     └─────────────┴──(permanent error, shutdown)──────┴──▶ stopped(error?)
//! ```
//!
//! - A **transient** error ([`CaptureError::is_transient`]) is retried with the
//!   shared [`Backoff`]; the backoff starts over once an attempt made progress.
//! - A **permanent** error stops this source only; the others keep capturing.
//! - **Poison pills.** The same error at the same journal position (checkpoints and
//!   coverage unchanged) after the source had connected, [`POISON_TRIES`] times in
//!   a row, is permanent: capture cannot get past that change, and retrying forever
//!   would only freeze coverage while looking alive. It stops with
//!   [`CaptureError::Poisoned`], naming the position.
//!
//! The state is written to the journal (unsynced, like health) on every
//! transition, so `tidemark status` (another process) shows it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;

use super::backoff::Backoff;
use super::{CaptureContext, CaptureError, Capturing, Shutdown, Source, SourceJournal};
use crate::time::Timestamp;

/// Same failure, same position, this many attempts in a row: the source stops.
pub const POISON_TRIES: u32 = 5;

/// Where a supervised source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Building, connecting, preparing.
    Starting,
    /// Connected and streaming.
    Capturing,
    /// Waiting to try again after a transient error.
    Retrying {
        /// Failed attempts in a row.
        attempt: u32,
        /// The last error.
        last_error: String,
        /// When the next attempt starts.
        next_try: Timestamp,
    },
    /// Not capturing any more: shut down (`None`) or failed permanently.
    Stopped(Option<String>),
}

impl State {
    /// The state's name, as `status` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Capturing => "capturing",
            State::Retrying { .. } => "retrying",
            State::Stopped(_) => "stopped",
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut doc = json!({ "state": self.name(), "at": Timestamp::now().to_rfc3339() });
        match self {
            State::Retrying {
                attempt,
                last_error,
                next_try,
            } => {
                doc["attempt"] = json!(attempt);
                doc["last_error"] = json!(last_error);
                doc["next_try"] = json!(next_try.to_rfc3339());
            }
            State::Stopped(Some(e)) => doc["error"] = json!(e),
            _ => {}
        }
        doc
    }
}

/// Builds a fresh capture for each attempt.
pub type Factory = Box<dyn Fn() -> Result<Box<dyn Source>, CaptureError> + Send + Sync>;

/// Runs one source until shutdown or a permanent failure; returns the failure.
/// `first_error` starts the source in `retrying` (its server was unreachable at
/// start-up).
pub async fn supervise(
    factory: Factory,
    journal: SourceJournal,
    mut shutdown: Shutdown,
    first_error: Option<CaptureError>,
) -> Result<(), CaptureError> {
    let name = journal.name().to_string();
    let mut backoff = Backoff::default();
    let mut attempt = 0u32;
    let mut repeats: Option<(String, String, u32)> = None;
    let mut pending = first_error;
    loop {
        if let Some(error) = pending.take() {
            attempt += 1;
            let message = error.to_string();
            let position = journal.position_text();
            let key = journal.progress_key();
            let tries = match &repeats {
                Some((m, k, n)) if *m == message && *k == key => n + 1,
                _ => 1,
            };
            repeats = Some((message.clone(), key, tries));
            if tries >= POISON_TRIES {
                let inner = match &error {
                    CaptureError::Source { error, .. } => error.to_string(),
                    other => other.to_string(),
                };
                let error = CaptureError::Poisoned {
                    name: name.clone(),
                    tries,
                    position,
                    error: inner,
                };
                return stop(&journal, Err(error));
            }
            let delay = backoff.next_delay();
            let next_try =
                Timestamp::from_micros(Timestamp::now().as_micros() + delay.as_micros() as i64);
            tracing::warn!(source = %name, attempt, retry_in_ms = delay.as_millis() as u64, %error, "capture interrupted; retrying");
            publish(
                &journal,
                &State::Retrying {
                    attempt,
                    last_error: message,
                    next_try,
                },
            );
            tokio::select! {
                _ = shutdown.wait() => return stop(&journal, Ok(())),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        if shutdown.is_fired() {
            return stop(&journal, Ok(()));
        }
        publish(&journal, &State::Starting);
        let source = match factory() {
            Ok(s) => s,
            Err(e) => return stop(&journal, Err(e)),
        };
        let connected = Arc::new(AtomicBool::new(false));
        let before = journal.progress_key();
        let capturing = {
            let (journal, connected, name) =
                (journal.clone(), Arc::clone(&connected), name.clone());
            Capturing::new(move || {
                if !connected.swap(true, Ordering::SeqCst) {
                    tracing::info!(source = %name, "capturing");
                    publish(&journal, &State::Capturing);
                }
            })
        };
        let ctx = CaptureContext {
            journal: journal.clone(),
            shutdown: shutdown.clone(),
            capturing,
        };
        match source.run(ctx).await {
            Ok(()) => return stop(&journal, Ok(())),
            Err(e) if !e.is_transient() => return stop(&journal, Err(e)),
            Err(e) => {
                let progressed = journal.progress_key() != before;
                if progressed {
                    backoff.reset();
                    attempt = 0;
                }
                if !connected.load(Ordering::SeqCst) || progressed {
                    // Only failures after connecting, with nothing gained, count
                    // towards a poison pill; an unreachable server never does.
                    repeats = None;
                }
                pending = Some(e);
            }
        }
    }
}

fn stop(journal: &SourceJournal, outcome: Result<(), CaptureError>) -> Result<(), CaptureError> {
    let state = State::Stopped(outcome.as_ref().err().map(|e| e.to_string()));
    match &outcome {
        Ok(()) => tracing::info!(source = %journal.name(), "capture stopped"),
        Err(error) => {
            tracing::error!(source = %journal.name(), %error, "capture of this source stopped; the other sources go on")
        }
    }
    publish(journal, &state);
    outcome
}

fn publish(journal: &SourceJournal, state: &State) {
    if let Err(error) = journal.set_supervision(&state.to_json()) {
        tracing::warn!(source = %journal.name(), %error, "cannot record the source's state");
    }
}
