//! PostgreSQL through the `tidemark` binary: kill -9 during load and restart (no gap,
//! no duplicate), graceful stop, restore and digest commands, and bad inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Postgres;
use tidemark::journal::Journal;
use tidemark::position::PositionKind;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    c.env_remove("TIDEMARK_CONFIG").env("RUST_LOG", "warn");
    c
}

fn write_config(dir: &Path, url: &str) -> PathBuf {
    let p = dir.join("tidemark.toml");
    std::fs::write(&p, format!("[journal]\npath = \"journal\"\n\n[[source]]\nname = \"app\"\nkind = \"postgres\"\nurl = \"{url}\"\n")).unwrap();
    p
}

fn run(cfg: &Path) -> Child {
    bin()
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// One line on stderr, non-zero exit, containing every needle, and no secret.
fn assert_fails(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && l.starts_with("error"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in: {err}");
    }
    assert!(!err.contains("s3cr3t"), "password leaked: {err}");
}

/// Coverage of `app` per `tidemark status --json` (read-only, works during `run`).
fn coverage(cfg: &Path) -> Option<String> {
    let out = bin()
        .args(["-c", cfg.to_str().unwrap(), "status", "--json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["sources"][0]["coverage"].as_str().map(str::to_string)
}

fn wait_covered(cfg: &Path, t: &str) {
    let start = Instant::now();
    while coverage(cfg).is_none_or(|c| c.as_str() < t) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "coverage never reached {t} (now {:?})",
            coverage(cfg)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn now() -> String {
    tidemark::time::Timestamp::now().to_rfc3339()
}

fn digest(url: &str) -> String {
    let out = bin().args(["digest", url, "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["overall"].as_str().unwrap().to_string()
}

#[test]
fn kill9_during_load_then_restart_loses_and_duplicates_nothing() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    let out = pg
        .tool("pgbench")
        .args(["-i", "-q", "-s", "1", "app"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &pg.url("app"));
    let mut child = run(&cfg);
    wait_covered(&cfg, &now());
    let mut load = pg
        .tool("pgbench")
        .args(["-T", "10", "-c", "2", "-n", "app"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seed = 0x9E37_79B9u64;
    for _ in 0..4 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(600 + (seed >> 33) % 1400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = run(&cfg);
    }
    assert!(load.wait().unwrap().success());
    let end = now();
    wait_covered(&cfg, &end);
    let expected = digest(&pg.url("app"));
    // Graceful stop: SIGTERM, exit 0.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "run did not stop cleanly: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No duplicate: change positions strictly rise through the journal.
    let journal = Journal::open_read_only(&dir.path().join("journal")).unwrap();
    let src = journal.source("app").unwrap().id;
    let mut last = (0u64, 0u32);
    let mut n = 0;
    for e in journal.events(src, 0, u64::MAX) {
        let e = e.unwrap();
        let Some(PositionKind::Postgres(p)) = e.event.position.and_then(|p| p.kind) else {
            panic!("not a postgres position")
        };
        assert!(
            (p.lsn, p.index) > last,
            "position {:?} not after {last:?}: duplicate or out of order",
            (p.lsn, p.index)
        );
        last = (p.lsn, p.index);
        n += 1;
    }
    assert!(n > 1000, "only {n} changes journaled");
    drop(journal);
    // No gap: the restore at the end equals the source.
    pg.psql("postgres", "CREATE DATABASE restored");
    let out = bin()
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "restore",
            "--source",
            "app",
            "--at",
            &end,
            "--target",
            &pg.url("restored"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("digest of the restored database: {expected}")),
        "{text}\nexpected digest {expected}"
    );
    assert_eq!(digest(&pg.url("restored")), expected);
}

#[test]
fn bad_inputs_get_one_clear_line() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    pg.psql("postgres", "SET password_encryption = 'scram-sha-256'; CREATE ROLE tm LOGIN REPLICATION SUPERUSER PASSWORD 'right'");
    let hba = pg.data_dir().join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n").unwrap();
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let dir = tempfile::tempdir().unwrap();

    // Wrong password: named, never echoed.
    let wrong = format!("postgres://tm:s3cr3t@127.0.0.1:{}/app", pg.port);
    let cfg = write_config(dir.path(), &wrong);
    let out = bin()
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    assert_fails(&out, &["password"]);

    // A working capture for the restore checks.
    let cfg = write_config(
        dir.path(),
        &format!("postgres://tm:right@127.0.0.1:{}/app", pg.port),
    );
    let mut child = run(&cfg);
    wait_covered(&cfg, &now());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let c = cfg.to_str().unwrap();
    // Non-empty target.
    pg.psql("postgres", "CREATE DATABASE other");
    pg.psql("other", "CREATE TABLE x (a int)");
    let out = bin()
        .args([
            "-c",
            c,
            "restore",
            "--source",
            "app",
            "--at",
            "latest",
            "--target",
            &pg.url("other"),
        ])
        .output()
        .unwrap();
    assert_fails(&out, &["already holds 1 tables", "--force"]);
    // The captured database itself, even with --force.
    let out = bin()
        .args([
            "-c",
            c,
            "restore",
            "--source",
            "app",
            "--at",
            "latest",
            "--target",
            &pg.url("app"),
            "--force",
        ])
        .output()
        .unwrap();
    assert_fails(&out, &["is the database that source `app` captures"]);
    // Beyond coverage.
    let out = bin()
        .args([
            "-c",
            c,
            "restore",
            "--source",
            "app",
            "--at",
            "2099-01-01T00:00:00Z",
            "--target",
            &pg.url("app"),
        ])
        .output()
        .unwrap();
    assert_fails(&out, &["covered only up to", "choose --at"]);
    // Unknown source.
    let out = bin()
        .args([
            "-c",
            c,
            "restore",
            "--source",
            "nope",
            "--at",
            "latest",
            "--target",
            &pg.url("app"),
        ])
        .output()
        .unwrap();
    assert_fails(&out, &["no source named `nope`"]);
    // Target of the wrong kind.
    let out = bin()
        .args([
            "-c",
            c,
            "restore",
            "--source",
            "app",
            "--at",
            "latest",
            "--target",
            "redis://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_fails(&out, &["not a postgres URL"]);
}

#[test]
fn wal_level_replica_is_named_with_the_fix() {
    let pg = Postgres::start_with(&["wal_level=replica"]);
    pg.psql("postgres", "CREATE DATABASE app");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &pg.url("app"));
    let out = bin()
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    assert_fails(&out, &["wal_level", "logical", "restart"]);
}
