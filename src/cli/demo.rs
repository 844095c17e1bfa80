//! `tidemark demo`: the main job, end to end, on a throwaway PostgreSQL.
//!
//! Start a server and a journal, capture a pgbench workload, pick a moment in the
//! middle, restore that moment into a new database and show that its digest equals
//! the source's digest taken at that moment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::capture;
use crate::connectors::postgres::digest::digest_url;
use crate::journal::{Journal, JournalOptions};
use crate::restore::driver::{self, NoProgress, Outcome, Request};
use crate::sandbox::Postgres;
use crate::time::{TimeSpec, Timestamp};

fn say(s: impl AsRef<str>) {
    println!("tidemark demo: {}", s.as_ref());
}

fn pgbench(pg: &Postgres, args: &[&str]) -> Result<()> {
    let out = pg
        .tool("pgbench")
        .args(args)
        .output()
        .context("cannot run pgbench")?;
    if !out.status.success() {
        bail!(
            "pgbench {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits until the journal covers `source` up to `t` (while `task` runs).
async fn wait_coverage<T>(
    journal: &Journal,
    source: &str,
    t: Timestamp,
    task: &tokio::task::JoinHandle<T>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if task.is_finished() {
            bail!("capture stopped (see the error above)");
        }
        if let Ok(info) = journal.source(source) {
            if info.stats.coverage_us.is_some_and(|c| c >= t.as_micros()) {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("capture did not reach {t} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn demo(seconds: u64) -> Result<()> {
    let secs = seconds.max(1).to_string();
    let pg = Postgres::start().map_err(anyhow::Error::msg)?;
    say(format!(
        "started a throwaway PostgreSQL on 127.0.0.1:{}",
        pg.port
    ));
    pg.try_psql("postgres", "CREATE DATABASE app")
        .map_err(anyhow::Error::msg)?;
    pgbench(&pg, &["-i", "-q", "-s", "1", "app"])?;
    say("loaded pgbench tables into database `app` (100,000 accounts)");
    let dir = tempfile::tempdir()?;
    let journal = Arc::new(Journal::open(
        &dir.path().join("journal"),
        JournalOptions::default(),
    )?);
    let url = pg.url("app");
    let settings: toml::Table = toml::from_str(&format!("url = {url:?}"))?;
    let cfg = crate::config::SourceConfig::parse_one("app", "postgres", settings)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (moment, expected, later) = rt.block_on(async {
        let (trigger, run) = capture::start(&journal, &cfg)?;
        let task = tokio::spawn(async move {
            let r = run.await;
            if let Err(error) = &r {
                tracing::error!(%error, "capture failed");
            }
            r
        });
        wait_coverage(&journal, "app", Timestamp::now(), &task).await?;
        say(format!(
            "capturing into a journal at {} (base image taken, streaming)",
            dir.path().display()
        ));

        let pg_ref = &pg;
        let s = secs.clone();
        tokio::task::block_in_place(|| pgbench(pg_ref, &["-T", &s, "-c", "2", "-n", "app"]))?;
        let moment = Timestamp::now();
        let expected = digest_url(&url).await?;
        say(format!(
            "ran pgbench for {seconds}s; the moment to restore is {moment}; source digest then: {}",
            expected.overall
        ));
        tokio::task::block_in_place(|| pgbench(pg_ref, &["-T", &s, "-c", "2", "-n", "app"]))?;
        let later = digest_url(&url).await?;
        say(format!(
            "ran pgbench for {seconds}s more; source digest now: {}",
            later.overall
        ));
        wait_coverage(&journal, "app", Timestamp::now(), &task).await?;
        trigger.fire();
        task.await.context("capture task")??;
        let info = journal.source("app")?;
        say(format!(
            "stopped capture: {} changes journaled, all acknowledged to the server",
            info.stats.event_count
        ));
        Ok::<_, anyhow::Error>((moment, expected, later))
    })?;

    pg.try_psql("postgres", "CREATE DATABASE restored")
        .map_err(anyhow::Error::msg)?;
    let plan = crate::restore::plan(&journal, "app", TimeSpec::At(moment))?;
    say(format!("restoring `app` as of {moment} into database `restored`: base image plus {} journaled changes", plan.events));
    let target = pg.url("restored");
    let request = Request {
        journal: &journal,
        plan: &plan,
        target: &target,
        options: &Default::default(),
        force: false,
        dry_run: false,
        into_live_source: false,
        live_sources: vec![("app".into(), url.clone())],
        timeouts: Default::default(),
        settings: None,
        gate: None,
    };
    let Outcome::Done(summary) = driver::restore(request, &mut NoProgress)? else {
        bail!("the restore did not run");
    };
    let got = summary.digest;
    let counts: Vec<String> = summary
        .applied
        .counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    say(format!(
        "restored {} in {:.1}s; restored digest: {}",
        counts.join(", "),
        summary.seconds,
        got.overall
    ));
    if got != expected {
        bail!(
            "the restored database differs from the source at {moment}: {} != {}",
            got.overall,
            expected.overall
        );
    }
    if later == expected {
        bail!("the workload after the moment changed nothing; the demo proves nothing");
    }
    say(format!(
        "the restore equals the source at {moment} (and differs from the source now): PASS"
    ));
    Ok(())
}
