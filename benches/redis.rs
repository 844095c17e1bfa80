//! Redis capture and restore benchmarks against a real `redis-server`, each figure
//! printed beside a baseline measured in the same run (only ratios carry over
//! between machines).
//!
//! 1. P2 capture throughput: `redis-benchmark` writes (SET, LPUSH, HSET, ZADD) as
//!    fast as it can while tidemark captures in this process; reported as
//!    commands journaled per second of tidemark CPU time (getrusage of this
//!    process: the servers and the load generator are other processes), against
//!    the rate the server accepted; plus the largest lag behind the primary.
//! 2. Full sync: time to a sealed base image of a dataset of `--sync-mb` MB
//!    (default 200) against `redis-cli --rdb` fetching the same RDB to a file.
//! 3. Restore of that image into an empty server, as its primary (an RDB, then the
//!    stream) and as a client (pipelined commands), against the limit: the same
//!    server loading the same dataset from its own dump file (`--dbfilename`); the
//!    client rate also against `redis-benchmark -t set -P 64`.
//!
//! Run: `cargo bench --profile dev --bench redis [-- --requests N --sync-mb M]`.
//! Needs `redis-server`, `redis-cli` and `redis-benchmark` (Debian redis-tools).

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{arg, peak_rss_mb};
use tidemark::capture;
use tidemark::config::SourceConfig;
use tidemark::connectors::redis::resp::{Conn, RedisUrl};
use tidemark::journal::{Journal, JournalOptions};
use tidemark::position::PositionKind;
use tidemark::time::TimeSpec;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_in(tempfile::tempdir().expect("tempdir"), &[])
    }

    /// A server in `dir` with `extra` arguments, once it answers `PING` (after
    /// loading any dump file it was given).
    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--repl-diskless-sync-delay", "0"])
            .args([
                "--repl-backlog-size",
                "512mb",
                "--enable-debug-command",
                "yes",
            ])
            .args(["--repl-ping-replica-period", "1"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let s = Server {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..60_000 {
            if s.conn().is_ok() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> Result<Conn, tidemark::connectors::redis::RedisError> {
        let mut c = Conn::connect(&RedisUrl::parse(&self.url())?, Duration::from_secs(600))?;
        c.call(&["PING"])?;
        Ok(c)
    }

    fn cmd(&self, args: &[&str]) -> String {
        let mut c = self.conn().expect("connect");
        c.call(args).expect("command").text().unwrap_or_default()
    }

    fn dbsize(&self) -> u64 {
        match self.conn().expect("connect").call(&["DBSIZE"]) {
            Ok(tidemark::connectors::redis::resp::Reply::Int(n)) => n as u64,
            other => panic!("DBSIZE: {other:?}"),
        }
    }

    fn info_u64(&self, section: &str, field: &str) -> u64 {
        self.cmd(&["INFO", section])
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Capture of `server` into a fresh journal under `dir`, in this process.
struct Capture {
    journal: Arc<Journal>,
    id: tidemark::journal::SourceId,
    trigger: capture::ShutdownTrigger,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start(server: &Server, dir: &Path) -> Capture {
        let journal = Arc::new(
            Journal::open(&dir.join("journal"), JournalOptions::default()).expect("journal"),
        );
        let cfg = SourceConfig::parse_one(
            "bench",
            "redis",
            toml::from_str(&format!("url = {:?}", server.url())).expect("settings"),
        )
        .expect("config");
        let (trigger, run) = capture::start(&journal, &cfg).expect("start");
        let id = journal.source("bench").expect("registered").id;
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(run).expect("capture");
        });
        Capture {
            journal,
            id,
            trigger,
            thread: Some(thread),
        }
    }

    fn offset(&self) -> u64 {
        self.journal
            .checkpoints(self.id)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| match &c.position.kind {
                Some(PositionKind::Redis(p)) => Some(p.offset),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn has_image(&self) -> bool {
        !self.journal.images(self.id).unwrap_or_default().is_empty()
    }

    fn events(&self) -> u64 {
        self.journal
            .sources()
            .iter()
            .find(|s| s.id == self.id)
            .map_or(0, |s| s.stats.event_count)
    }

    fn stop(mut self) {
        self.trigger.fire();
        if let Some(t) = self.thread.take() {
            t.join().expect("capture thread");
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs redis-benchmark; returns the summed requests/s it reports.
fn redis_benchmark(port: u16, tests: &str, n: u64, pipeline: u32) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", tests, "-n", &n.to_string()])
        .args([
            "-P",
            &pipeline.to_string(),
            "-c",
            "32",
            "-r",
            "1000000",
            "-q",
        ])
        .output()
        .expect("redis-benchmark (apt-get install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<f64> = text
        .split(['\r', '\n'])
        .filter_map(|l| {
            let (_, rest) = l.split_once(": ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    rates.iter().sum::<f64>() / rates.len().max(1) as f64
}

fn p2_capture(requests: u64) {
    let server = Server::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let cap = Capture::start(&server, dir.path());
    wait_until("base image", || cap.has_image());
    let (cpu0, ev0, t0) = (cpu_seconds(), cap.events(), Instant::now());
    let port = server.port;
    let load =
        std::thread::spawn(move || redis_benchmark(port, "set,lpush,hset,zadd", requests, 16));
    let mut max_lag = 0u64;
    while !load.is_finished() {
        let lag = server
            .info_u64("replication", "master_repl_offset")
            .saturating_sub(cap.offset());
        max_lag = max_lag.max(lag);
        std::thread::sleep(Duration::from_millis(20));
    }
    let server_rate = load.join().expect("load");
    let target = server.info_u64("replication", "master_repl_offset");
    let done = Instant::now();
    wait_until("catch up", || cap.offset() >= target);
    let catch_up = done.elapsed();
    let (cpu, events, wall) = (cpu_seconds() - cpu0, cap.events() - ev0, t0.elapsed());
    cap.stop();
    let per_core = events as f64 / cpu.max(1e-9);
    let backlog = server.info_u64("replication", "repl_backlog_size");
    println!("P2 capture under redis-benchmark (SET, LPUSH, HSET, ZADD; -P 16, 32 clients):");
    println!(
        "  journaled {events} commands in {:.2}s wall, {:.2}s tidemark CPU: {:.0} cmds/s/core (goal >= 150000: {})",
        wall.as_secs_f64(),
        cpu,
        per_core,
        if per_core >= 150_000.0 { "met" } else { "NOT met" }
    );
    println!(
        "  baseline: server accepted {server_rate:.0} req/s (mean of the 4 tests); journal rate {:.0} cmds/s = {:.2}x",
        events as f64 / wall.as_secs_f64(),
        events as f64 / wall.as_secs_f64() / server_rate.max(1.0)
    );
    println!(
        "  largest lag behind the primary {max_lag} bytes ({:.1}% of repl-backlog-size {backlog}); caught up {:.0} ms after the load ended",
        max_lag as f64 * 100.0 / backlog.max(1) as f64,
        catch_up.as_secs_f64() * 1000.0
    );
}

fn full_sync_and_restore(mb: u64) {
    let server = Server::start();
    let keys = mb * 1024 * 1024 / 100;
    server.cmd(&["DEBUG", "POPULATE", &keys.to_string(), "key", "100"]);
    let used = server.info_u64("memory", "used_memory");
    let dir = tempfile::tempdir().expect("tempdir");
    let rdb = dir.path().join("base.rdb");
    let t = Instant::now();
    let st = Command::new("redis-cli")
        .args(["-p", &server.port.to_string(), "--rdb"])
        .arg(&rdb)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(st.success());
    let baseline = t.elapsed().as_secs_f64();
    let rdb_bytes = std::fs::metadata(&rdb).map(|m| m.len()).unwrap_or(0);

    let t = Instant::now();
    let cap = Capture::start(&server, dir.path());
    wait_until("base image", || cap.has_image());
    let ours = t.elapsed().as_secs_f64();
    let journal = Arc::clone(&cap.journal);
    cap.stop();
    println!(
        "Full sync of {keys} keys ({} MB in memory, RDB {} MB):",
        used >> 20,
        rdb_bytes >> 20
    );
    println!(
        "  base image in {ours:.2}s; baseline redis-cli --rdb {baseline:.2}s; ratio {:.2}x; peak RSS of this process {} MB (streams: not the dataset)",
        ours / baseline.max(1e-9),
        peak_rss_mb()
    );

    let set_rate = {
        let target = Server::start();
        redis_benchmark(target.port, "set", 1_000_000, 64)
    };
    // The limit: a server loading the same dataset from its own dump file.
    let load = || {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&rdb, d.path().join("dump.rdb")).expect("copy rdb");
        let t = Instant::now();
        let loaded = Server::start_in(d, &["--dbfilename", "dump.rdb"]);
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(loaded.dbsize(), keys, "the dump file loaded");
        secs
    };
    let empty_start = {
        let t = Instant::now();
        let _s = Server::start();
        t.elapsed().as_secs_f64()
    };
    let plan = tidemark::restore::plan(&journal, "bench", TimeSpec::Latest).expect("plan");
    let run = |mode| {
        let target = Server::start();
        let s = tidemark::connectors::redis::restore::restore(
            &journal,
            &plan,
            &RedisUrl::parse(&target.url()).expect("url"),
            &Default::default(),
            tidemark::connectors::redis::restore::ApplyOptions {
                force: false,
                mode,
                listen: None,
            },
            &mut tidemark::restore::driver::NoProgress,
        )
        .expect("restore");
        assert_eq!(target.dbsize(), keys, "every key restored");
        s
    };
    use tidemark::connectors::redis::restore::ApplyAs;
    // Three rounds, each measuring all three side by side; medians reported (the
    // machine is shared and noisy).
    let (mut loads, mut primaries, mut clients) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        loads.push(load());
        primaries.push(run(ApplyAs::Primary).seconds);
        clients.push(run(ApplyAs::Client).seconds);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (load, primary, client) = (
        median(&mut loads),
        median(&mut primaries),
        median(&mut clients),
    );
    println!(
        "Restore of {keys} keys (median of 3): as the target's primary (RDB + stream) {primary:.2}s; as a client {client:.2}s ({:.0} keys/s; redis-benchmark SET -P 64: {set_rate:.0} req/s, ratio {:.2}x)",
        keys as f64 / client.max(1e-9),
        keys as f64 / client.max(1e-9) / set_rate.max(1.0)
    );
    println!(
        "  baseline: redis-server loading the same dataset from its dump file {load:.2}s (an empty server starts in {empty_start:.2}s); primary/load ratio {:.2}x, client/load ratio {:.2}x",
        primary / load.max(1e-9),
        client / load.max(1e-9)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    p2_capture(arg("--requests", 1_000_000));
    full_sync_and_restore(arg("--sync-mb", 200));
}
