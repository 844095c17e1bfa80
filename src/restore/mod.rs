//! Restore: rebuilding a source at a moment from the journal.
//!
//! [`plan`] decides, from the journal alone, what a restore of one source to one
//! moment needs: the newest base image at or before the moment, and the range of
//! events after it up to the moment. It refuses moments the journal cannot vouch
//! for: beyond the source's coverage, or before what retention kept. Each kind's
//! restore target then applies the plan to a database of that kind.
//!
//! # What every kind's restore target must guarantee
//! - **Refuse to clobber.** A non-empty target is refused unless `--force`.
//! - **Whole transactions, in order.** Events are applied in sequence order; a
//!   transaction is applied entirely or not at all.
//! - **Prove it.** It ends with a digest computed the same way as `tidemark digest`,
//!   so the result can be compared with the source.

pub mod kafka;
pub mod postgres;
mod postgres_sql;
pub mod redis;

use std::fmt;

use crate::config::SourceKind;
use crate::event::BaseImageMeta;
use crate::journal::{ImageBound, Journal, JournalError, SourceInfo};
use crate::time::{TimeSpec, Timestamp};

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
    #[error("target {target} already holds {keys} keys; restore into an empty server, or pass --force to empty it (FLUSHALL) first")]
    TargetNotEmpty {
        /// The target, password masked.
        target: String,
        /// Keys found.
        keys: u64,
    },
    /// Talking to a Redis target failed.
    #[error(transparent)]
    Redis(#[from] crate::capture::redis::RedisError),
    /// The target refused what was written, or the journal holds something this
    /// version cannot apply.
    #[error("restore failed: {0}")]
    Apply(String),
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
    /// The base image to load first, if the kind uses images.
    pub image: Option<BaseImageMeta>,
    /// Replay events of the source with `first_seq <= seq <= last_seq`.
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
        match &self.image {
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
    !matches!(kind, SourceKind::Kafka)
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
    let image = journal.image_at_or_before(info.id, ImageBound::Time(at))?;
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
    let last_seq = journal.seq_at_time(info.id, at)?.unwrap_or(0);
    let events = if last_seq >= first_seq {
        journal.count_events(info.id, first_seq, last_seq)?
    } else {
        0
    };
    Ok(RestorePlan {
        source: info,
        at,
        image,
        first_seq,
        last_seq,
        events,
    })
}
