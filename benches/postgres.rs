//! PostgreSQL capture and restore benchmarks, each beside a baseline from the same run.
//!
//! - P1: capture rate draining a slot that already holds pgbench WAL, against
//!   `pg_recvlogical` draining an identical slot to /dev/null; resident memory during
//!   the drain.
//! - P5: commit-to-durable lag under pgbench at a fixed rate: probe transactions whose
//!   commit LSN is watched until the journal's checkpoint passes it.
//! - P4: restore of a pgbench database (scale 10 by default) plus N x 15 s of
//!   `pgbench -c 4` history (N from `--p4-lengths`, default `1,4`; the figure is
//!   `1,4,16`), by net effect (and by every change for N <= `--p4-every-up-to`, default
//!   1), against `pg_dump -Fc` at that moment + `pg_restore` of the dump; peak resident
//!   memory of the restore; digests compared with the baseline's.
//!
//! Run: `cargo bench --profile dev --bench postgres [-- --txns N --scale S --p4-lengths 1,4,16
//! --p4-secs 15 --p4-only 1]`

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

/// The value of a comma-separated `--name a,b,c` flag, or `default`.
fn list_arg(name: &str, default: &[u64]) -> Vec<u64> {
    let args: Vec<String> = std::env::args().collect();
    let mut v: Vec<u64> = args
        .windows(2)
        .find(|w| w[0] == name)
        .map(|w| {
            w[1].split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| default.to_vec());
    v.sort_unstable();
    v.dedup();
    v
}

/// Peak resident memory of this process while `f` runs (sampled every 5 ms), MiB.
async fn peak_rss_during<T>(f: impl std::future::Future<Output = T>) -> (T, u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = rss_kib();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib());
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss_kib())
        })
    };
    let out = f.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, sampler.join().unwrap() >> 10)
}

/// One moment of the P4 history: after `length` x `secs` s of pgbench.
struct Moment {
    length: u64,
    at: Timestamp,
    txns: u64,
    dump: std::path::PathBuf,
    dump_time: Duration,
}

fn pgbench_txns(out: &std::process::Output) -> u64 {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split(['/', ' ']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// P4: pgbench scale `scale` captured, then `secs` s of `pgbench -c 4` repeated up to
/// each of `lengths` times; at each length, the database is dumped (`pg_dump -Fc`,
/// timed) and the journal's moment noted. Then each moment is restored by
/// `pg_restore` of its dump and by tidemark (net effect; every change as well up to
/// `every_up_to`), digests compared.
async fn p4_restore(scale: u64, lengths: &[u64], secs: u64, every_up_to: u64) {
    let pg = tokio::task::block_in_place(Postgres::start).unwrap();
    pg.psql("postgres", "CREATE DATABASE app");
    let s = scale.to_string();
    tokio::task::block_in_place(|| run(&pg, "pgbench", &["-i", "-q", "-s", &s, "app"]));
    let dir = tempfile::tempdir().unwrap();
    let journal =
        Arc::new(Journal::open(&dir.path().join("j"), JournalOptions::default()).unwrap());
    let r = start(&journal, &pg.url("app"));
    wait_lsn(&journal, 1, Duration::from_millis(20)).await;
    let mut moments = Vec::new();
    let (mut done_secs, mut txns) = (0, 0);
    for &length in lengths {
        let t = (length * secs - done_secs).to_string();
        done_secs = length * secs;
        let out = tokio::task::block_in_place(|| {
            run(
                &pg,
                "pgbench",
                &["-T", &t, "-c", "4", "-j", "2", "-n", "app"],
            )
        });
        txns += pgbench_txns(&out);
        let end = lsn_of(&pg.psql("app", "SELECT pg_current_wal_lsn()"));
        wait_lsn(&journal, end, Duration::from_millis(20)).await;
        let at = Timestamp::now();
        loop {
            let covered = journal.source("app").unwrap().stats.coverage_us;
            if covered.is_some_and(|c| c >= at.as_micros()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dump = dir.path().join(format!("app-{length}.dump"));
        let b0 = Instant::now();
        tokio::task::block_in_place(|| {
            run(
                &pg,
                "pg_dump",
                &["-Fc", "-d", "app", "-f", dump.to_str().unwrap()],
            )
        });
        moments.push(Moment {
            length,
            at,
            txns,
            dump,
            dump_time: b0.elapsed(),
        });
    }
    r.trigger.fire();
    r.task.await.unwrap().unwrap();
    println!(
        "\n## P4 restore of pgbench scale {scale} plus N x {secs} s of `pgbench -c 4`, against `pg_dump -Fc` + `pg_restore`"
    );
    println!(
        "{:>4} {:>9} {:>10} {:>13} {:>13} {:>7} {:>9} {:>7} {:>13} {:>7}",
        "N",
        "txns",
        "changes",
        "baseline",
        "net effect",
        "ratio",
        "peak RSS",
        "digest",
        "every change",
        "ratio"
    );
    for m in &moments {
        let via_dump = format!("via_dump_{}", m.length);
        pg.psql("postgres", &format!("CREATE DATABASE {via_dump}"));
        let b0 = Instant::now();
        tokio::task::block_in_place(|| {
            run(
                &pg,
                "pg_restore",
                &["-d", &via_dump, m.dump.to_str().unwrap()],
            )
        });
        let baseline = m.dump_time + b0.elapsed();
        let expected = tidemark::connectors::postgres::digest::digest_url(&pg.url(&via_dump))
            .await
            .unwrap();
        let plan = tidemark::restore::plan(&journal, "app", TimeSpec::At(m.at)).unwrap();
        let mut times = Vec::new();
        let (mut peak, mut changes, mut equal) = (0, 0, true);
        for every_change in [false, true] {
            if every_change && m.length > every_up_to {
                continue;
            }
            let db = format!(
                "via_{}_{}",
                if every_change { "every" } else { "net" },
                m.length
            );
            pg.psql("postgres", &format!("CREATE DATABASE {db}"));
            let conn = tidemark::connectors::postgres::conn::ConnInfo::parse(&pg.url(&db)).unwrap();
            let opts = tidemark::connectors::postgres::restore::PgRestoreOptions {
                every_change,
                ..Default::default()
            };
            let t0 = Instant::now();
            let (summary, rss) = peak_rss_during(tidemark::connectors::postgres::restore::restore(
                &journal,
                &plan,
                &conn,
                &opts,
                false,
                &mut tidemark::restore::driver::NoProgress,
            ))
            .await;
            times.push(t0.elapsed());
            let summary = summary.unwrap();
            changes = summary.changes;
            if !every_change {
                peak = rss;
            }
            let got = tidemark::connectors::postgres::digest::digest_url(&pg.url(&db))
                .await
                .unwrap();
            equal &= got == expected;
            pg.psql("postgres", &format!("DROP DATABASE {db}"));
        }
        pg.psql("postgres", &format!("DROP DATABASE {via_dump}"));
        let ratio = |d: &Duration| d.as_secs_f64() / baseline.as_secs_f64();
        let every = times
            .get(1)
            .map_or(("-".to_string(), "-".to_string()), |d| {
                (format!("{d:.2?}"), format!("{:.2}", ratio(d)))
            });
        println!(
            "{:>4} {:>9} {:>10} {:>13} {:>13} {:>7.2} {:>6} MiB {:>7} {:>13} {:>7}",
            format!("{}x", m.length),
            m.txns,
            changes,
            format!("{baseline:.2?}"),
            format!("{:.2?}", times[0]),
            ratio(&times[0]),
            peak,
            if equal { "equal" } else { "DIFFER" },
            every.0,
            every.1
        );
        assert!(
            equal,
            "a restore's digest differs from pg_restore's at {}x",
            m.length
        );
    }
    println!(
        "(baseline: pg_dump -Fc at the moment + pg_restore; goal: ratio <= 1.0 at every length)"
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
        if arg("--p4-only", 0) == 0 {
            p1_drain(&pg, arg("--txns", 5000)).await;
            p5_lag(&pg).await;
        }
        drop(pg);
        p4_restore(
            arg("--scale", 10),
            &list_arg("--p4-lengths", &[1, 4]),
            arg("--p4-secs", 15),
            arg("--p4-every-up-to", 1),
        )
        .await;
    });
}
