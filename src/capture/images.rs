//! Base images on a schedule: when a source's next image is due.
//!
//! A source's first image is taken when its history starts; after that a kind that
//! supports it ([`crate::connectors::Connector::scheduled_images`]) takes another
//! while capture goes on, whichever comes first of: `image_interval` since the
//! newest image was sealed, `image_after_bytes` of events journaled since, or a
//! request left by `tidemark image take` (a file in the journal's `requests/`
//! folder, removed when the image is sealed). Images bound what a restore replays
//! and let retention drop older history.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::SourceJournal;
use crate::time::Timestamp;

/// Default `image_interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// Default `image_after_bytes`.
pub const DEFAULT_AFTER_BYTES: u64 = 10 << 30;
/// How often the schedule looks at the journal.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After a failed image, the next try waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// When a source takes its next base image; `None` turns a trigger off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImagePolicy {
    /// Time since the newest image was sealed.
    pub interval: Option<Duration>,
    /// Event bytes journaled since the newest image.
    pub after_bytes: Option<u64>,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        ImagePolicy {
            interval: Some(DEFAULT_INTERVAL),
            after_bytes: Some(DEFAULT_AFTER_BYTES),
        }
    }
}

/// The request file `tidemark image take SOURCE` leaves for a running capture.
pub fn request_path(journal_dir: &Path, source: &str) -> PathBuf {
    journal_dir.join("requests").join(format!("image.{source}"))
}

/// Leaves a request for an image of `source`; `run` takes it within seconds.
pub fn request(journal_dir: &Path, source: &str) -> std::io::Result<PathBuf> {
    let path = request_path(journal_dir, source);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, Timestamp::now().to_string())?;
    Ok(path)
}

/// One source's schedule, polled by its capture loop.
pub struct ImageSchedule {
    policy: ImagePolicy,
    journal: SourceJournal,
    next_check: Instant,
}

impl ImageSchedule {
    /// The schedule of the source behind `journal`.
    pub fn new(policy: ImagePolicy, journal: SourceJournal) -> Self {
        ImageSchedule {
            policy,
            journal,
            next_check: Instant::now(),
        }
    }

    fn request(&self) -> PathBuf {
        request_path(self.journal.journal().path(), self.journal.name())
    }

    /// Why an image is due now, if one is (looks at most once a second). A source
    /// without any image yet is not due: its first image comes with its history.
    pub fn due(&mut self) -> Option<String> {
        let now = Instant::now();
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_EVERY;
        if self.request().exists() {
            return Some("requested by `tidemark image take`".into());
        }
        let latest = self.journal.latest_image().ok()??;
        if let Some(interval) = self.policy.interval {
            let sealed = if latest.sealed_us > 0 {
                latest.sealed_us
            } else {
                latest.time_us
            };
            let age = Timestamp::now().as_micros().saturating_sub(sealed);
            if age >= interval.as_micros() as i64 {
                return Some(format!(
                    "image_interval: {} since the newest image",
                    humantime::format_duration(Duration::from_secs((age / 1_000_000) as u64))
                ));
            }
        }
        if let Some(limit) = self.policy.after_bytes {
            let stats = self
                .journal
                .journal()
                .source(self.journal.name())
                .ok()?
                .stats;
            let since = stats.bytes.saturating_sub(latest.source_bytes);
            if since >= limit {
                return Some(format!(
                    "image_after_bytes: {since} bytes journaled since the newest image"
                ));
            }
        }
        None
    }

    /// The image was sealed: a pending request is answered.
    pub fn taken(&mut self) {
        let _ = std::fs::remove_file(self.request());
    }

    /// The image failed: try again later, not at once.
    pub fn failed(&mut self) {
        self.next_check = Instant::now() + RETRY_AFTER;
    }
}

/// Parses a byte size: `10GiB`, `512MiB`, `64KiB`, `1GB`, `100000` (bytes).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    };
    (n >= 0.0).then_some((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_bytes("10GiB"), Some(10 << 30));
        assert_eq!(parse_bytes("1.5 MiB"), Some(3 << 19));
        assert_eq!(parse_bytes("2kb"), Some(2000));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("ten"), None);
        assert_eq!(parse_bytes("5 parsecs"), None);
    }
}
