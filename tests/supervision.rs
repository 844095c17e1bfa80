//! One supervisor per source (real PostgreSQL and Redis servers): a source that
//! fails permanently, or whose server is down at start-up, does not stop the
//! others; a poison pill stops its source after a bounded number of tries; a
//! black-holed server times out with a clear error.

mod common;

use std::time::{Duration, Instant};

use common::run::{bin, digest, pg_source, BlackHole, Run};
use common::{Postgres, Redis};
use tidemark::sandbox::free_port;

fn source(name: &str, url: &str) -> String {
    pg_source(name, url) + "\n"
}

/// Restores `name` at latest into a fresh database `into` and returns its digest.
fn restore_latest(run: &Run, pg: &Postgres, name: &str, into: &str) -> String {
    pg.psql("postgres", &format!("CREATE DATABASE {into}"));
    let out = run.cli(&[
        "restore",
        "--source",
        name,
        "--at",
        "latest",
        "--target",
        &pg.url(into),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("restore --json");
    let overall = v["digest"]["overall"]
        .as_str()
        .expect("digest in summary")
        .to_string();
    assert_eq!(
        overall,
        digest(&pg.url(into)),
        "the summary's digest is the target's"
    );
    overall
}

#[test]
fn a_source_that_fails_permanently_stops_alone() {
    let pg = Postgres::start();
    for db in ["a", "b"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(db, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    }
    let mut run = Run::new(&(source("a", &pg.url("a")) + &source("b", &pg.url("b"))));
    run.start(&[]);
    run.wait_covered("a");
    run.wait_covered("b");
    // Take source a's slot away for good: end its walsender, drop the slot.
    let start = Instant::now();
    loop {
        pg.psql("postgres", "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'tidemark_a' AND active_pid IS NOT NULL");
        if pg
            .try_psql("postgres", "SELECT pg_drop_replication_slot('tidemark_a')")
            .is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cannot drop the slot"
        );
    }
    pg.psql(
        "b",
        "INSERT INTO t SELECT g, 'x' || g FROM generate_series(1, 500) g",
    );
    let a = run.wait_source("a", "stopped", Duration::from_secs(60), |r| {
        r["state"] == "stopped"
    });
    let error = a["supervision"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no longer exists") && error.contains("tidemark resync a"),
        "{a}"
    );
    run.wait_covered("b");
    let b = run.source("b").unwrap();
    assert_eq!(b["state"], "capturing", "{b}");
    assert_eq!(
        restore_latest(&run, &pg, "b", "b_restored"),
        digest(&pg.url("b"))
    );
    // The text status names the failed source's error too.
    let text = String::from_utf8_lossy(&run.cli(&["status"]).stdout).to_string();
    assert!(
        text.contains("stopped: ") && text.contains("no longer exists"),
        "{text}"
    );
    assert!(
        !run.stop(),
        "run exits non-zero when a source stopped with an error"
    );
}

#[test]
fn a_server_down_at_start_up_retries_while_the_others_capture() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE b");
    pg.psql("b", "CREATE TABLE t (id int PRIMARY KEY)");
    let redis_port = free_port().unwrap();
    let body = format!(
        "{}[[source]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{redis_port}\"\n",
        source("b", &pg.url("b"))
    );
    let mut run = Run::new(&body);
    run.start(&[]);
    run.wait_covered("b");
    let cache = run.wait_source("cache", "retrying", Duration::from_secs(30), |r| {
        r["state"] == "retrying"
    });
    assert!(
        cache["supervision"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot connect"),
        "{cache}"
    );
    pg.psql("b", "INSERT INTO t SELECT generate_series(1, 100)");
    run.wait_covered("b");
    assert_eq!(
        restore_latest(&run, &pg, "b", "b_restored"),
        digest(&pg.url("b"))
    );
    // The server comes up: the source captures within seconds, without a restart.
    let redis = Redis::start_on(redis_port);
    let mut c = redis.client();
    c.cmd(&["SET", "k", "v"]).unwrap();
    run.wait_source("cache", "capturing", Duration::from_secs(30), |r| {
        r["state"] == "capturing"
    });
    run.wait_covered("cache");
    assert!(
        run.stop(),
        "a clean stop after every source recovered exits 0; log:\n{}",
        run.log()
    );
}

#[test]
fn a_poison_pill_stops_its_source_after_bounded_tries() {
    let pg = Postgres::start();
    // A SQL_ASCII database stores any bytes, also in DDL; tidemark carries values as
    // bytes but schemas as UTF-8, so a DDL statement holding 0xE9 cannot be journaled.
    pg.psql("postgres", "CREATE DATABASE legacy ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
    pg.psql(
        "legacy",
        "CREATE TABLE notes (id int PRIMARY KEY, body text)",
    );
    pg.psql("postgres", "CREATE DATABASE fine");
    pg.psql("fine", "CREATE TABLE t (id int PRIMARY KEY)");
    let mut run =
        Run::new(&(source("legacy", &pg.url("legacy")) + &source("fine", &pg.url("fine"))));
    run.start(&[]);
    run.wait_covered("legacy");
    pg.psql("legacy", "INSERT INTO notes VALUES (1, 'ok')");
    pg.psql("legacy", "INSERT INTO notes VALUES (2, E'caf\\xe9')");
    // The byte itself in the query text (psql's client encoding is SQL_ASCII here).
    let ddl: &[u8] = b"ALTER TABLE notes ADD COLUMN tag text DEFAULT 'caf\xe9'";
    let out = pg
        .tool("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", "legacy", "-c"])
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(ddl))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    let row = run.wait_source("legacy", "stopped", Duration::from_secs(90), |r| {
        r["state"] == "stopped"
    });
    let error = row["supervision"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for needle in ["attempts", "position", "not UTF-8"] {
        assert!(error.contains(needle), "expected `{needle}` in: {error}");
    }
    assert!(started.elapsed() < Duration::from_secs(80));
    // Everything before the pill is journaled; the other source goes on.
    pg.psql("fine", "INSERT INTO t SELECT generate_series(1, 10)");
    run.wait_covered("fine");
    assert_eq!(run.source("fine").unwrap()["state"], "capturing");
    let log = run.log();
    let retries = log.matches("capture interrupted; retrying").count();
    assert!(
        (3..=6).contains(&retries),
        "bounded retries, got {retries}:\n{log}"
    );
    assert!(!run.stop());
}

#[test]
fn black_holed_servers_time_out_with_a_clear_error() {
    let hole = BlackHole::start();
    let body = format!(
        "[timeouts]\nconnect = \"2s\"\nread = \"2s\"\n\n[[source]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"postgres://u:hunter2@127.0.0.1:{}/app\"\n",
        hole.port
    );
    let mut run = Run::new(&body);
    for url in [
        format!("postgres://u:hunter2@127.0.0.1:{}/app", hole.port),
        format!("redis://:hunter2@127.0.0.1:{}", hole.port),
    ] {
        let t = Instant::now();
        let out = bin()
            .arg("-c")
            .arg(&run.config)
            .args(["digest", &url])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("did not answer"), "{url}: {err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{url} took {:?}",
            t.elapsed()
        );
    }
    // `run` does not hang either: the source is `retrying`, with the reason.
    run.start(&[]);
    let row = run.wait_source("db", "retrying", Duration::from_secs(30), |r| {
        r["state"] == "retrying"
    });
    let e = row["supervision"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        e.contains("did not answer") && !e.contains("hunter2"),
        "{row}"
    );
    assert!(run.stop(), "{}", run.log());
}

#[test]
fn a_stream_that_goes_silent_mid_run_is_detected_and_resumed() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY)");
    let proxy = common::run::Proxy::start(pg.port);
    let url = format!("postgres://postgres@127.0.0.1:{}/app", proxy.port);
    let body = format!(
        "[timeouts]\nconnect = \"2s\"\nread = \"10s\"\nstall = \"3s\"\n\n{}",
        source("app", &url)
    );
    let mut run = Run::new(&body);
    run.start(&[]);
    run.wait_covered("app");
    proxy.freeze(true);
    pg.psql("app", "INSERT INTO t SELECT generate_series(1, 100)");
    let row = run.wait_source("app", "retrying", Duration::from_secs(30), |r| {
        r["state"] == "retrying"
    });
    assert!(
        run.log().contains("no data and no keepalive"),
        "{row}\n{}",
        run.log()
    );
    proxy.freeze(false);
    run.wait_source("app", "capturing", Duration::from_secs(30), |r| {
        r["state"] == "capturing"
    });
    pg.psql("app", "INSERT INTO t SELECT generate_series(101, 200)");
    run.wait_covered("app");
    assert_eq!(
        restore_latest(&run, &pg, "app", "restored"),
        digest(&pg.url("app"))
    );
    assert!(run.stop(), "{}", run.log());
}
