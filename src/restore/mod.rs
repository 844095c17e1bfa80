//! Restore: rebuilding a source at a moment from the journal.
//!
//! [`plan`] decides, from the journal alone, what a restore of one source to one
//! moment needs: the newest base image at or before the moment, and the range of
//! events after it up to the moment. It refuses moments the journal cannot vouch
//! for: beyond the source's coverage, or before what retention kept. The one
//! [`driver`] then hands the plan to the kind's [`Target`].
//!
//! # The restore target contract
//! A [`Target`] rebuilds one source at one moment in a database (server, cluster)
//! of its kind. The driver calls `occupied`, then (unless it holds data and
//! `--force` was not given) `apply`, then `digest`. Every target guarantees:
//! - **Refuse to clobber.** `occupied` only reads; a target holding data is refused
//!   by the driver unless `--force`, and [`Target::force_effect`] says what `--force`
//!   does to the data already there.
//! - **Whole transactions, in order.** Events are applied in sequence order; a
//!   transaction is applied entirely or not at all (a moment inside one applies none
//!   of it).
//! - **Re-runs are stated.** [`Target::rerun`] says what running the same restore
//!   again after a failure does, and the target does exactly that.
//! - **Progress** goes through the one [`ProgressSink`] the driver gives it.
//! - **Prove it.** `digest` is computed exactly as `tidemark digest` computes it for
//!   that URL, so the result can be compared with the source at that moment.

pub mod driver;

use std::fmt;

use crate::config::SourceKind;
use crate::digest::Digest;
use crate::event::BaseImageMeta;
use crate::journal::{ImageBound, Journal, JournalError, SourceInfo};
use crate::time::{TimeSpec, Timestamp};

/// A database being rebuilt from the journal. See the module docs for the contract.
pub trait Target {
    /// The target for messages, secrets masked.
    fn describe(&self) -> String;

    /// What the target already holds (`"12 tables"`), or `None` if it is empty.
    /// Reads only.
    fn occupied(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
    ) -> Result<Option<String>, RestoreError>;

    /// What `--force` does to data already in the target.
    fn force_effect(&self) -> &'static str;

    /// What re-running the same restore after a failure does.
    fn rerun(&self) -> Rerun;

    /// Hands the target the configured source's settings (keys that open sealed
    /// payloads), before any other call. Default: nothing to take.
    fn configure(&mut self, _settings: &dyn crate::connectors::SourceSettings) {}

    /// Kind-specific lines for `--dry-run` (what would be created where). Reads
    /// only; a kind whose preview is a diff against the target reads the target.
    fn preview(
        &mut self,
        _journal: &Journal,
        _plan: &RestorePlan,
    ) -> Result<Vec<String>, RestoreError> {
        Ok(Vec::new())
    }

    /// Applies `plan`: the base image, then the events. `force`: the target may
    /// hold data (see [`Target::force_effect`]).
    fn apply(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        force: bool,
        progress: &mut dyn ProgressSink,
    ) -> Result<Applied, RestoreError>;

    /// The digest of the target as it is now, as `tidemark digest` computes it.
    fn digest(&mut self) -> Result<Digest, RestoreError>;

    /// Asks the target to restore in two steps: [`Target::apply`] restores
    /// everything but keeps it from running (Kubernetes: every workload at zero
    /// replicas, its replica count at the moment in an annotation), and
    /// [`Target::release`] then makes it exactly as it was at the moment. Called
    /// before `apply`; returns whether the target holds (kinds with nothing that
    /// runs do not, and ignore it). The digest is taken after the release.
    fn hold(&mut self) -> bool {
        false
    }

    /// Ends a hold (see [`Target::hold`]): what was kept from running is set as it
    /// was at the moment. Returns what it released (`"3 workloads scaled up"`).
    fn release(&mut self) -> Result<String, RestoreError> {
        Ok(String::new())
    }

    /// Removes what a restore of `plan` into this target put there (`rehearse`
    /// tears its sandbox down), and says what it removed. Afterwards the target is
    /// as empty as a restore needs it. Kinds that cannot say so refuse, naming what
    /// to remove by hand.
    fn teardown(
        &mut self,
        _journal: &Journal,
        _plan: &RestorePlan,
    ) -> Result<String, RestoreError> {
        Err(RestoreError::Refused(format!(
            "tearing down {} is not available for this kind: remove what the restore created by hand",
            self.describe()
        )))
    }
}

/// What re-running a failed restore does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rerun {
    /// Run it again with `--force`: the target is emptied and rebuilt from the
    /// start, so the result is the same as a first run.
    StartOverWithForce,
    /// Delete what the failed run created first: `--force` would append after it.
    CleanUpFirst,
}

impl fmt::Display for Rerun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rerun::StartOverWithForce => "run the same restore again with --force: the target is emptied and rebuilt from the start",
            Rerun::CleanUpFirst => "delete what the failed run wrote into the target, then run the restore again (with --force the new records would be appended after the partial ones)",
        })
    }
}

/// What a target reports having applied.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Applied {
    /// Named counts, in display order (`("tables", 4), ("rows from the image", 1000)`).
    pub counts: Vec<(String, u64)>,
    /// Source position of the last change applied (or the image's).
    pub final_position: Option<String>,
    /// Further lines worth showing (topics created, group offsets set).
    pub notes: Vec<String>,
}

/// Where a target reports progress, and learns that it must stop.
pub trait ProgressSink {
    /// `done` units of `what` so far (`"rows"`, `"records"`), `total` if known.
    /// Targets call it at least every few thousand units. An `Err` (always
    /// [`RestoreError::Stopped`]: another source of the same application restore
    /// failed) means stop now: the target returns it as it is and leaves what it
    /// applied so far, which the driver reports with what a re-run does.
    fn update(&mut self, what: &str, done: u64, total: Option<u64>) -> Result<(), RestoreError>;
}

/// Why a restore cannot go ahead. Each message says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Journal trouble (includes an unknown source name).
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Nothing captured yet.
    #[error(
        "source `{0}` has no coverage yet: nothing has been captured; run `tidemark run` first"
    )]
    NoCoverage(String),
    /// The moment is after what the journal covers.
    #[error("source `{source_name}` is covered only up to {coverage}; {at} is beyond it: choose --at {coverage} or earlier (or `latest`), or wait for capture to catch up")]
    BeyondCoverage {
        /// Source name.
        source_name: String,
        /// Requested moment.
        at: Timestamp,
        /// Coverage.
        coverage: Timestamp,
    },
    /// The moment is before what retention kept.
    #[error("source `{source_name}`: {at} is before the oldest restorable moment, {floor} (retention dropped older history)")]
    BeforeFloor {
        /// Source name.
        source_name: String,
        /// Requested moment.
        at: Timestamp,
        /// Oldest restorable moment.
        floor: Timestamp,
    },
    /// The moment lies in a break of the source's history, or the replay to it
    /// would cross one.
    #[error("source `{source_name}` has a break in its history: it was captured up to {covered_until}, and a new history (after {reason}) begins with the base image taken after {new_from}; {at} lies between, where nothing was captured: choose --at up to {covered_until}, or from the new history's first base image on")]
    InBreak {
        /// Source name.
        source_name: String,
        /// Requested moment.
        at: Timestamp,
        /// The old history's coverage.
        covered_until: Timestamp,
        /// When the new history began.
        new_from: Timestamp,
        /// Why it broke.
        reason: String,
    },
    /// The kind needs a base image and there is none early enough.
    #[error(
        "source `{source_name}` has no base image at or before {at}{earliest}; choose a later --at"
    )]
    NoImage {
        /// Source name.
        source_name: String,
        /// Requested moment.
        at: Timestamp,
        /// Hint naming the earliest image, if any.
        earliest: String,
    },
    /// The target refused or failed; the message names it and what to do.
    #[error("restore target: {0}")]
    Target(String),
    /// The target holds data and `--force` was not given.
    #[error("target {target} already holds {holds}; restore into an empty one, or pass --force to {effect}")]
    Occupied {
        /// The target, password masked.
        target: String,
        /// What it holds.
        holds: String,
        /// What `--force` would do.
        effect: &'static str,
    },
    /// The target is a database the journal captures.
    #[error("target {target} is the database that source `{source_name}` captures: restoring into it would roll the live database back and break its capture; restore into another database, or pass --into-live-source if rolling it back is really what you want")]
    IntoLiveSource {
        /// The target, password masked.
        target: String,
        /// The configured source it is.
        source_name: String,
    },
    /// A kind-specific option is malformed or does not apply.
    #[error("{0}")]
    Options(String),
    /// The target refused what was written, or the journal holds something this
    /// version cannot apply.
    #[error("restore failed: {0}")]
    Apply(String),
    /// The target cannot take this restore, found before anything was changed
    /// (the message names what and what to do); re-running changes nothing.
    #[error("restore refused: {0}")]
    Refused(String),
    /// Applying failed part-way.
    #[error("{error}; to try again: {rerun}")]
    Failed {
        /// What failed.
        error: Box<RestoreError>,
        /// What a re-run does.
        rerun: Rerun,
    },
    /// Stopped part-way on request (another source of the same application
    /// restore failed); the message says why.
    #[error("stopped before the end: {0}")]
    Stopped(String),
    /// Restored, but held from running (Kubernetes workloads at zero replicas)
    /// because the restore it waited for did not end well; the message says why
    /// and how to release it.
    #[error("{0}")]
    Held(String),
    /// No restore target for this kind in this build.
    #[error("restoring {0} sources is not available in this version of tidemark (see README, \"Status\"); --dry-run shows the plan")]
    NotAvailable(SourceKind),
}

/// What a restore of one source to one moment consists of.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The source.
    pub source: SourceInfo,
    /// The moment restored to.
    pub at: Timestamp,
    /// The base image to load first, if the kind uses images. For a source captured
    /// in parts (a Redis Cluster), the part image with the lowest `after_seq`.
    pub image: Option<BaseImageMeta>,
    /// For a source captured in parts, each part's newest image at or before `at`
    /// (by part; see [`BaseImageMeta::part`]): each part starts from its own image
    /// and replays its own events after it. Empty for a source in one part.
    pub parts: Vec<BaseImageMeta>,
    /// Replay events of the source with `first_seq <= seq <= last_seq` (a source in
    /// parts: its target keeps each part's events up to `at` from this range).
    pub first_seq: u64,
    /// See `first_seq`; `first_seq > last_seq` means nothing to replay.
    pub last_seq: u64,
    /// Number of events to replay.
    pub events: u64,
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "restore plan for source `{}` ({}) at {}",
            self.source.name, self.source.kind, self.at
        )?;
        for m in &self.parts {
            writeln!(
                f,
                "  part {}: base image #{} at {} (position {}, {} chunks, {} bytes), its events after sequence {}",
                m.part,
                m.id,
                Timestamp::from_micros(m.time_us),
                m.position.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                m.chunks,
                m.bytes,
                m.after_seq
            )?;
        }
        match &self.image {
            Some(_) if !self.parts.is_empty() => {}
            Some(m) => {
                let pos = m
                    .position
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                writeln!(
                    f,
                    "  base image #{} at {} (position {}, {} chunks, {} bytes, format {})",
                    m.id,
                    Timestamp::from_micros(m.time_us),
                    pos,
                    m.chunks,
                    m.bytes,
                    m.format
                )?;
            }
            None => writeln!(f, "  no base image: replay from the start of the journal")?,
        }
        if !self.parts.is_empty() {
            return write!(
                f,
                "  each part replays its own events up to the moment, among sequence {}..={} ({} events)",
                self.first_seq, self.last_seq, self.events
            );
        }
        if self.events == 0 {
            write!(f, "  no events to replay")
        } else {
            write!(
                f,
                "  replay {} events, sequence {}..={}",
                self.events, self.first_seq, self.last_seq
            )
        }
    }
}

/// Whether restores of `kind` start from a base image.
pub fn kind_uses_images(kind: SourceKind) -> bool {
    crate::connectors::for_kind(kind).is_none_or(|c| c.uses_images())
}

/// Plans a restore of `source` to `at`, from the journal alone.
pub fn plan(journal: &Journal, source: &str, at: TimeSpec) -> Result<RestorePlan, RestoreError> {
    let info = journal.source(source)?;
    let Some(coverage) = info.stats.coverage_us.map(Timestamp::from_micros) else {
        return Err(RestoreError::NoCoverage(info.name));
    };
    let at = match at {
        TimeSpec::Latest => coverage,
        TimeSpec::At(t) if t > coverage => {
            return Err(RestoreError::BeyondCoverage {
                source_name: info.name,
                at: t,
                coverage,
            })
        }
        TimeSpec::At(t) => t,
    };
    if let Some(floor) = info.stats.floor_us.map(Timestamp::from_micros) {
        if at < floor {
            return Err(RestoreError::BeforeFloor {
                source_name: info.name,
                at,
                floor,
            });
        }
    }
    let mut parts = journal.part_images_at_or_before(info.id, ImageBound::Time(at))?;
    let image = if parts.iter().any(|m| !m.part.is_empty()) {
        parts.iter().min_by_key(|m| m.after_seq).cloned()
    } else {
        parts.clear();
        journal.image_at_or_before(info.id, ImageBound::Time(at))?
    };
    for b in journal.breaks(info.id)? {
        let image_before_break = image
            .as_ref()
            .is_none_or(|m| m.time_us < b.new_history_from_us);
        if at.as_micros() > b.covered_until_us && image_before_break {
            return Err(RestoreError::InBreak {
                source_name: info.name,
                at,
                covered_until: Timestamp::from_micros(b.covered_until_us),
                new_from: Timestamp::from_micros(b.new_history_from_us),
                reason: b.reason,
            });
        }
    }
    if image.is_none() && kind_uses_images(info.kind) {
        let earliest = match journal.images(info.id)?.first() {
            Some(m) => format!(
                " (the earliest is at {})",
                Timestamp::from_micros(m.time_us)
            ),
            None => " (none has been taken yet)".to_string(),
        };
        return Err(RestoreError::NoImage {
            source_name: info.name,
            at,
            earliest,
        });
    }
    let first_seq = image.as_ref().map_or(1, |m| m.after_seq + 1);
    // A source in parts is cut per part by its target (each part's events up to
    // `at`; the source's time axis is the maximum over parts, which a trailing part
    // would be cut short by): the range is everything after the first image.
    let last_seq = if parts.is_empty() {
        journal.seq_at_time(info.id, at)?.unwrap_or(0)
    } else {
        info.stats.last_seq
    };
    let events = if last_seq >= first_seq {
        journal.count_events(info.id, first_seq, last_seq)?
    } else {
        0
    };
    Ok(RestorePlan {
        source: info,
        at,
        image,
        parts,
        first_seq,
        last_seq,
        events,
    })
}
