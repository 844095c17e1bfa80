//! PostgreSQL capture and restore benchmarks, each beside a baseline from the same run.
//!
//! - P1: capture rate draining a slot that already holds pgbench WAL, against
//!   `pg_recvlogical` draining an identical slot to /dev/null; resident memory during
//!   the drain.
//! - P5: commit-to-durable lag under pgbench at a fixed rate: probe transactions whose
//!   commit LSN is watched until the journal's checkpoint passes it.
//! - P4: restore of a pgbench database (scale 10 by default, `--p4-txns` pgbench
//!   transactions after the image), by net effect and by every change, against
//!   `pg_dump -Fc | pg_restore` of the same data.
//!
//! Run: `cargo bench --profile dev --bench postgres [-- --txns N --scale S --p4-txns N]`

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::arg;
use tidemark::capture::{self, ShutdownTrigger};
use tidemark::config::SourceConfig;
use tidemark::journal::{Journal, JournalOptions};
use tidemark::position::PositionKind;
use tidemark::sandbox::Postgres;
use tidemark::time::{TimeSpec, Timestamp};

fn run(pg: &Postgres, tool: &str, args: &[&str]) -> std::process::Output {
    let out = pg.tool(tool).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    s.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4
}

struct Running {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<Result<(), capture::CaptureError>>,
}

fn start(journal: &Arc<Journal>, url: &str) -> Running {
    let cfg = SourceConfig::parse_one(
        "app",
        "postgres",
        toml::from_str(&format!("url = {url:?}")).unwrap(),
    )
    .unwrap();
    let (trigger, run) = capture::start(journal, &cfg).unwrap();
    let task = tokio::spawn(run);
    Running { trigger, task }
}

fn checkpoint_lsn(journal: &Journal) -> u64 {
    let Ok(s) = journal.source("app") else {
        return 0;
    };
    journal
        .checkpoints(s.id)
        .unwrap()
        .iter()
        .find_map(|c| match &c.position.kind {
            Some(PositionKind::Postgres(p)) => Some(p.lsn),
            _ => None,
        })
        .unwrap_or(0)
}

async fn wait_lsn(journal: &Journal, lsn: u64, poll: Duration) -> Instant {
    loop {
        if checkpoint_lsn(journal) >= lsn {
            return Instant::now();
        }
        tokio::time::sleep(poll).await;
    }
}

fn lsn_of(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

async fn p1_drain(pg: &Postgres, txns: u64) {
    let dir = tempfile::tempdir().unwrap();
    let journal =
        Arc::new(Journal::open(&dir.path().join("j"), JournalOptions::default()).unwrap());
    let r = start(&journal, &pg.url("app"));
    wait_lsn(&journal, 1, Duration::from_millis(20)).await; // slot + image
    r.trigger.fire();
    r.task.await.unwrap().unwrap();
    run(
        pg,
        "pg_recvlogical",
        &[
            "-d",
            "app",
            "-S",
            "baseline",
            "--create-slot",
            "-P",
            "pgoutput",
        ],
    );
    let t = txns.to_string();
    tokio::task::block_in_place(|| run(pg, "pgbench", &["-t", &t, "-c", "4", "-n", "app"]));
    let end = lsn_of(&pg.psql("app", "SELECT pg_current_wal_lsn()"));
    let changes = txns * 4 * 4; // 4 clients x (3 updates + 1 insert)
                                // Baseline: pg_recvlogical to /dev/null up to the same LSN.
    let b0 = Instant::now();
    let endpos = format!("{:X}/{:X}", end >> 32, end & 0xffff_ffff);
    run(
        pg,
        "pg_recvlogical",
        &[
            "-d",
            "app",
            "-S",
            "baseline",
            "--start",
            "--endpos",
            &endpos,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=tidemark",
            "-f",
            "/dev/null",
        ],
    );
    let baseline = b0.elapsed();
    // tidemark: resume and drain to the same LSN.
    let rss_before = rss_kib();
    let t0 = Instant::now();
    let r = start(&journal, &pg.url("app"));
    let mut rss_max = rss_before;
    loop {
        rss_max = rss_max.max(rss_kib());
        if checkpoint_lsn(&journal) >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ours = t0.elapsed();
    r.trigger.fire();
    r.task.await.unwrap().unwrap();
    let rate = |d: Duration| changes as f64 / d.as_secs_f64();
    println!("## P1 capture drain: {changes} row changes of pgbench WAL already in the slot");
    println!(
        "pg_recvlogical -> /dev/null  {:>10.0} changes/s ({baseline:.2?})",
        rate(baseline)
    );
    println!(
        "tidemark -> journal (synced) {:>10.0} changes/s ({ours:.2?})",
        rate(ours)
    );
    println!(
        "ratio {:.2} (goal >= 0.9); resident memory {} MiB before, {} MiB peak during the drain",
        rate(ours) / rate(baseline),
        rss_before >> 10,
        rss_max >> 10
    );
}

async fn p5_lag(pg: &Postgres) {
    // A new journal: the slot P1's journal created is not its to take.
    pg.psql(
        "postgres",
        "SELECT pg_drop_replication_slot('tidemark_app')",
    );
    let dir = tempfile::tempdir().unwrap();
    let journal =
        Arc::new(Journal::open(&dir.path().join("j"), JournalOptions::default()).unwrap());
    let r = start(&journal, &pg.url("app"));
    wait_lsn(&journal, 1, Duration::from_millis(20)).await;
    pg.psql("app", "CREATE TABLE IF NOT EXISTS probe (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    let mut load = pg
        .tool("pgbench")
        .args(["-R", "200", "-T", "12", "-c", "2", "-n", "app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = pg.url("app");
    let conn = tidemark::connectors::postgres::conn::ConnInfo::parse(&url).unwrap();
    let client = conn.connect().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lags = Vec::new();
    for _ in 0..200 {
        let row = client
            .query_one(
                "INSERT INTO probe DEFAULT VALUES RETURNING pg_current_wal_lsn()::text",
                &[],
            )
            .await
            .unwrap();
        let committed = Instant::now();
        let lsn = lsn_of(row.get::<_, &str>(0));
        let durable = wait_lsn(&journal, lsn, Duration::from_micros(200)).await;
        lags.push(durable - committed);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    load.wait().unwrap();
    r.trigger.fire();
    r.task.await.unwrap().unwrap();
    lags.sort();
    println!("\n## P5 commit -> durable in the journal, under pgbench -R 200 (200 probes)");
    println!(
        "p50 {:.1?}  p99 {:.1?}  max {:.1?}  (goal p99 < 100 ms)",
        lags[lags.len() / 2],
        lags[lags.len() * 99 / 100],
        lags[lags.len() - 1]
    );
}

async fn p4_restore(scale: u64, txns: u64) {
    let pg = tokio::task::block_in_place(Postgres::start).unwrap();
    pg.psql("postgres", "CREATE DATABASE app");
    let s = scale.to_string();
    tokio::task::block_in_place(|| run(&pg, "pgbench", &["-i", "-q", "-s", &s, "app"]));
    let dir = tempfile::tempdir().unwrap();
    let journal =
        Arc::new(Journal::open(&dir.path().join("j"), JournalOptions::default()).unwrap());
    let r = start(&journal, &pg.url("app"));
    wait_lsn(&journal, 1, Duration::from_millis(20)).await;
    let per_client = txns.div_ceil(2).to_string();
    tokio::task::block_in_place(|| {
        run(&pg, "pgbench", &["-t", &per_client, "-c", "2", "-n", "app"])
    });
    let end = lsn_of(&pg.psql("app", "SELECT pg_current_wal_lsn()"));
    wait_lsn(&journal, end, Duration::from_millis(20)).await;
    let at = Timestamp::now();
    loop {
        if journal
            .source("app")
            .unwrap()
            .stats
            .coverage_us
            .is_some_and(|c| c >= at.as_micros())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.trigger.fire();
    r.task.await.unwrap().unwrap();
    pg.psql("postgres", "CREATE DATABASE via_dump");
    let b0 = Instant::now();
    let dump = dir.path().join("app.dump");
    run(
        &pg,
        "pg_dump",
        &["-Fc", "-d", "app", "-f", dump.to_str().unwrap()],
    );
    run(
        &pg,
        "pg_restore",
        &["-d", "via_dump", dump.to_str().unwrap()],
    );
    let baseline = b0.elapsed();
    let plan = tidemark::restore::plan(&journal, "app", TimeSpec::At(at)).unwrap();
    let mut times = Vec::new();
    let mut summary = tidemark::connectors::postgres::restore::PgRestoreSummary::default();
    for (db, every_change) in [("via_net_effect", false), ("via_every_change", true)] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        let t0 = Instant::now();
        summary = tidemark::connectors::postgres::restore::restore(
            &journal,
            &plan,
            &tidemark::connectors::postgres::conn::ConnInfo::parse(&pg.url(db)).unwrap(),
            &tidemark::connectors::postgres::restore::PgRestoreOptions {
                every_change,
                ..Default::default()
            },
            false,
            &mut tidemark::restore::driver::NoProgress,
        )
        .await
        .unwrap();
        times.push(t0.elapsed());
    }
    println!(
        "\n## P4 restore of pgbench scale {scale} ({} rows in the image, {} transactions, {} changes after it)",
        summary.image_rows, summary.transactions, summary.changes
    );
    println!("pg_dump -Fc | pg_restore            {baseline:.2?}");
    println!("tidemark restore (net effect)       {:.2?}", times[0]);
    println!("tidemark restore (every change)     {:.2?}", times[1]);
    println!(
        "ratio net effect {:.2}, every change {:.2} (goal <= 1.0)",
        times[0].as_secs_f64() / baseline.as_secs_f64(),
        times[1].as_secs_f64() / baseline.as_secs_f64()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pg = tokio::task::block_in_place(Postgres::start).unwrap();
        pg.psql("postgres", "CREATE DATABASE app");
        tokio::task::block_in_place(|| run(&pg, "pgbench", &["-i", "-q", "-s", "1", "app"]));
        p1_drain(&pg, arg("--txns", 5000)).await;
        p5_lag(&pg).await;
        drop(pg);
        p4_restore(arg("--scale", 10), arg("--p4-txns", 1000)).await;
    });
}
