//! PostgreSQL capture in the test's runtime, and restores from its journal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Postgres;
use tidemark::capture::{self, ShutdownTrigger};
use tidemark::config::SourceConfig;
use tidemark::connectors::postgres::digest::digest_url;
use tidemark::digest::Digest;
use tidemark::journal::{Journal, JournalOptions};
use tidemark::restore::driver::NoProgress;
use tidemark::restore::RestoreError;
use tidemark::time::{TimeSpec, Timestamp};
use tidemark::{connectors, restore};

/// Capture running in the test's runtime.
pub struct Capture {
    pub journal: Arc<Journal>,
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), capture::CaptureError>>,
    _dir: tempfile::TempDir,
}

impl Capture {
    pub async fn start(url: &str) -> Capture {
        Capture::start_with(url, "").await
    }

    /// As [`Capture::start`], with more `[[source]]` settings (TOML lines).
    pub async fn start_with(url: &str, settings: &str) -> Capture {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(
            Journal::open(&dir.path().join("journal"), JournalOptions::default()).unwrap(),
        );
        let cfg = SourceConfig::parse_one(
            "app",
            "postgres",
            toml::from_str(&format!("url = {url:?}\n{settings}")).unwrap(),
        )
        .unwrap();
        let (trigger, run) = capture::start(&journal, &cfg).unwrap();
        let task = tokio::spawn(run);
        let c = Capture {
            journal,
            trigger,
            task,
            _dir: dir,
        };
        c.wait_covered(Timestamp::now()).await;
        c
    }

    /// Waits until the journal covers the source up to `t`.
    pub async fn wait_covered(&self, t: Timestamp) {
        let start = Instant::now();
        loop {
            if let Ok(s) = self.journal.source("app") {
                if s.stats.coverage_us.is_some_and(|c| c >= t.as_micros()) {
                    return;
                }
            }
            assert!(!self.task.is_finished(), "capture stopped early");
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "coverage never reached {t}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A moment after everything committed so far, once the journal covers it.
    pub async fn moment(&self) -> Timestamp {
        let t = Timestamp::now();
        self.wait_covered(t).await;
        t
    }

    pub async fn stop(self) -> Arc<Journal> {
        self.trigger.fire();
        self.task.await.unwrap().unwrap();
        self.journal
    }
}

/// Restores `app` at `at` into the database at `url` (which must exist).
pub async fn try_restore(
    journal: &Journal,
    at: Timestamp,
    url: &str,
) -> Result<connectors::postgres::restore::PgRestoreSummary, RestoreError> {
    let plan = restore::plan(journal, "app", TimeSpec::At(at)).unwrap();
    let conn = connectors::postgres::conn::ConnInfo::parse(url).unwrap();
    connectors::postgres::restore::restore(
        journal,
        &plan,
        &conn,
        &Default::default(),
        false,
        &mut NoProgress,
    )
    .await
}

/// Restores `app` at `at` into a new database `db` and returns its digest.
pub async fn restore_into(pg: &Postgres, journal: &Journal, at: Timestamp, db: &str) -> Digest {
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    try_restore(journal, at, &pg.url(db)).await.unwrap();
    digest_url(&pg.url(db)).await.unwrap()
}
