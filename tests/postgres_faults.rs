//! Faults an attacker or an unlucky operator can cause with PostgreSQL (real
//! server): a second journal trying to take the first one's slot, a slot whose
//! consumer moved it past the journal, a dropped publication, a restore into the
//! captured database, and passwords in malformed URLs.

mod common;

use std::time::Duration;

use common::run::{bin, digest, pg_source, Run};
use common::Postgres;

fn config(url: &str) -> String {
    pg_source("app", url)
}

fn load(pg: &Postgres, from: u32, to: u32) {
    pg.psql(
        "app",
        &format!("INSERT INTO t SELECT g, md5(g::text) FROM generate_series({from}, {to}) g"),
    );
}

fn restore_latest(run: &Run, pg: &Postgres, into: &str) -> String {
    pg.psql("postgres", &format!("CREATE DATABASE {into}"));
    let out = run.cli(&[
        "restore",
        "--source",
        "app",
        "--at",
        "latest",
        "--target",
        &pg.url(into),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("digest of the restored database: "), "{text}");
    digest(&pg.url(into))
}

#[test]
fn a_second_journal_cannot_take_the_first_ones_slot() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let mut first = Run::new(&config(&pg.url("app")));
    first.start(&[]);
    load(&pg, 1, 100);
    first.wait_covered("app");
    assert!(first.stop());
    // While the first journal's `run` is down, a fresh journal with the same source
    // name starts: it must refuse, and leave the slot alone.
    load(&pg, 101, 324);
    let mut second = Run::new(&config(&pg.url("app")));
    second.start(&[]);
    let (ok, log) = second.wait_exit(Duration::from_secs(60));
    assert!(!ok, "the second journal must not start capturing: {log}");
    for needle in [
        "tidemark_app",
        "already exists",
        "did not create it",
        "--take-over-slots",
        "confirmed_flush",
    ] {
        assert!(log.contains(needle), "expected `{needle}` in:\n{log}");
    }
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tidemark_app'"
        ),
        "1"
    );
    // The first journal resumes and loses nothing.
    first.start(&[]);
    load(&pg, 325, 400);
    first.wait_covered("app");
    assert_eq!(
        restore_latest(&first, &pg, "restored1"),
        digest(&pg.url("app"))
    );
    assert!(first.stop());

    // Taking over is explicit; the first journal then sees the gap and stops.
    second.start(&["--take-over-slots"]);
    second.wait_covered("app");
    load(&pg, 401, 450);
    second.wait_covered("app");
    assert!(second.stop());
    first.start(&[]);
    let (ok, log) = first.wait_exit(Duration::from_secs(60));
    assert!(!ok);
    assert!(
        log.contains("consumed that WAL") && log.contains("not in this journal"),
        "{log}"
    );
}

#[test]
fn a_dropped_publication_stops_the_source_with_what_to_do() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let mut run = Run::new(&config(&pg.url("app")));
    run.start(&[]);
    run.wait_covered("app");
    pg.psql("app", "DROP PUBLICATION tidemark");
    load(&pg, 1, 10);
    let row = run.wait_source("app", "stopped", Duration::from_secs(60), |r| {
        r["state"] == "stopped"
    });
    let e = row["supervision"]["error"].as_str().unwrap_or_default();
    assert!(
        e.contains("publication") && e.contains("tidemark resync app"),
        "{row}"
    );
    let (ok, log) = run.wait_exit(Duration::from_secs(30));
    assert!(!ok, "every source stopped: run exits non-zero");
    assert!(!log.contains("replication resumed"), "{log}");
    // What the error says to do works: a new history, with the publication made again.
    let out = run.cli(&["resync", "app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run.start(&[]);
    run.wait_covered("app");
    load(&pg, 11, 20);
    run.wait_covered("app");
    assert!(run.stop(), "{}", run.log());
    assert_eq!(
        run.source("app").unwrap()["breaks"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        restore_latest(&run, &pg, "restored"),
        digest(&pg.url("app"))
    );
}

#[test]
fn with_resync_auto_a_dropped_publication_starts_a_new_history_by_itself() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let mut run = Run::new(&format!("{}resync = \"auto\"\n", config(&pg.url("app"))));
    run.start(&[]);
    run.wait_covered("app");
    load(&pg, 1, 10);
    run.wait_covered("app");
    pg.psql("app", "DROP PUBLICATION tidemark");
    load(&pg, 11, 20);
    run.wait_source(
        "app",
        "a break and a second base image",
        Duration::from_secs(60),
        |r| r["base_images"] == 2 && r["breaks"].as_array().is_some_and(|b| b.len() == 1),
    );
    load(&pg, 21, 30);
    run.wait_covered("app");
    assert!(run.stop(), "{}", run.log());
    assert!(run.log().contains("resync"), "{}", run.log());
    assert_eq!(
        restore_latest(&run, &pg, "restored"),
        digest(&pg.url("app"))
    );
}

#[test]
fn a_restore_into_the_captured_database_is_refused() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    load(&pg, 1, 50);
    let mut run = Run::new(&config(&pg.url("app")));
    run.start(&[]);
    run.wait_covered("app");
    let before = digest(&pg.url("app"));
    // The same database, also through another spelling of the URL.
    for target in [
        pg.url("app"),
        pg.url("app").replace("127.0.0.1", "localhost"),
    ] {
        let out = run.cli(&[
            "restore", "--source", "app", "--at", "latest", "--target", &target, "--force",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("is the database that source `app` captures")
                && err.contains("--into-live-source"),
            "{err}"
        );
    }
    assert_eq!(digest(&pg.url("app")), before, "nothing changed");
    // Still capturing, trigger intact.
    load(&pg, 51, 60);
    run.wait_covered("app");
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_event_trigger WHERE evtname = 'tidemark_ddl'"
        ),
        "1"
    );
    assert!(run.stop());
}

#[test]
fn no_password_appears_in_any_error() {
    let dir = tempfile::tempdir().unwrap();
    let urls = [
        "postgres://u:hun/ter2@127.0.0.1:1/db",
        "postgres://u:hun#ter2@127.0.0.1:1/db",
        "postgres://u:hun?ter2@127.0.0.1:1/db",
        "postgres:/u:hunter2@127.0.0.1:1/db",
        "postgresql://127.0.0.1:1/db?password=hunter2",
        "postgres://u:hunter2@127.0.0.1:99999/db",
        "redis://:hun/ter2@127.0.0.1:1",
        "redis://u:hunter2@127.0.0.1:99999",
        "rediss://u:hunter2@127.0.0.1:1",
        "kafka://user:hunter2@127.0.0.1:1",
        "mysql://u:hunter2@h/db",
    ];
    for url in urls {
        let out = bin().args(["digest", url]).output().unwrap();
        assert!(!out.status.success(), "digest {url} succeeded");
        let mut outputs = vec![out];
        for kind in ["postgres", "redis"] {
            let cfg = dir.path().join("t.toml");
            std::fs::write(
                &cfg,
                format!("[journal]\npath = \"j\"\n[[source]]\nname = \"s\"\nkind = \"{kind}\"\nurl = \"{url}\"\n"),
            )
            .unwrap();
            outputs.push(
                bin()
                    .arg("-c")
                    .arg(&cfg)
                    .args(["config", "validate"])
                    .output()
                    .unwrap(),
            );
        }
        for out in outputs {
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !all.contains("hunter2") && !all.contains("ter2"),
                "{url} leaked: {all}"
            );
        }
    }
}
