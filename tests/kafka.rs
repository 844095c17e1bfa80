//! Kafka capture and restore against a real Kafka-protocol broker (tansu, see
//! `tests/common/mod.rs`). Without a tansu binary each test prints a SKIP line.
//!
//! What tansu 0.6 cannot exercise (said again in README): transactions (so
//! read_committed's handling of aborted records and markers is librdkafka's and
//! untested here), and adding partitions to an existing topic (no CreatePartitions);
//! new topics are tested instead. Its ListOffsets(latest) answers the last batch's
//! base offset + 1; capture also reads the high-water mark of fetch responses.

mod common;
mod kafka_support;

use std::time::{Duration, Instant};

use common::Tansu;
use kafka_support::*;
use tidemark::event::Payload;
use tidemark::journal::Journal;
use tidemark::position::PositionKind;
use tidemark::time::Timestamp;

fn in_secs(n: i64) -> Timestamp {
    Timestamp::from_micros(Timestamp::now().as_micros() + n * 1_000_000)
}
/// `tidemark -c CFG restore --source events --at AT --target TARGET EXTRA...`.
fn restore(cfg: &str, at: &str, target: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "-c", cfg, "restore", "--source", "events", "--at", at, "--target", target,
    ];
    args.extend_from_slice(extra);
    tidemark(&args)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Capture two topics (one by regex), a topic created during capture, keys,
/// headers, null keys and values, and a consumer group; restore at two moments
/// into another broker and compare digests and translated group offsets.
#[test]
fn capture_and_restore_at_several_times() {
    let Some(src) = Tansu::start("capture_and_restore_at_several_times") else {
        return;
    };
    let Some(dst) = Tansu::start("capture_and_restore_at_several_times") else {
        return;
    };
    src.create_topic("orders", 3);
    src.create_topic_with("audit.a", 2, &[("retention.ms", "3600000")]);
    src.create_topic("other", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_config(
        dir.path(),
        &src.addr(),
        &["orders", "^audit\\..*"],
        &["billing"],
    );
    let c = cfg.to_str().unwrap();
    let runner = Runner::start(&cfg, dir.path().join("run.log"));

    // Moment 1: odd records included.
    let p = producer(&src.addr());
    produce(
        &p,
        "orders",
        &[
            Rec {
                partition: 0,
                key: None,
                value: Some(b"no key"),
                headers: &[],
                timestamp: 1_600_000_000_000,
            },
            Rec {
                partition: 0,
                key: Some(b"tomb"),
                value: None,
                headers: &[],
                timestamp: 1_600_000_000_001,
            },
            Rec {
                partition: 1,
                key: Some(b""),
                value: Some(b""),
                headers: &[("h1", Some(b"v1")), ("h2", None), ("h1", Some(b"again"))],
                timestamp: 1_600_000_000_002,
            },
        ],
    );
    simple(&p, "orders", 3, "one", 30);
    simple(&p, "audit.a", 2, "one", 10);
    simple(&p, "other", 1, "one", 5);
    commit_group(
        &src.addr(),
        "billing",
        &[("orders", 0, 4), ("orders", 1, 2), ("audit.a", 1, 5)],
    );
    let t1 = wait_coverage(&cfg, in_secs(5), &runner.log);
    let d1 = digest(&src.url(), &["orders", "^audit\\..*"]);
    assert_eq!(d1.len(), 5, "{d1:?}");
    assert_eq!(d1[&("orders".to_string(), 0)].0, 12);

    // Moment 2: a topic created during capture, more records, the group moved on.
    src.create_topic("audit.b", 2);
    simple(&p, "orders", 3, "two", 9);
    simple(&p, "audit.b", 2, "two", 6);
    commit_group(
        &src.addr(),
        "billing",
        &[("orders", 0, 10), ("audit.b", 1, 2)],
    );
    let t2 = wait_coverage(&cfg, in_secs(7), &runner.log);
    let d2 = digest(&src.url(), &["orders", "^audit\\..*"]);
    assert_eq!(d2.len(), 7, "{d2:?}");
    // Records after moment 2 must not be restored at moment 2.
    simple(&p, "orders", 3, "three", 6);
    wait_coverage(&cfg, Timestamp::now(), &runner.log);

    let st = status(&cfg).unwrap();
    let parts = st["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 7, "{st}");
    for p in parts {
        assert_eq!(p["lag"], 0, "{p}");
        assert!(p.get("seconds_until_loss").is_some());
        if p["topic"] == "audit.a" {
            assert_eq!(p["retention_ms"], 3600000, "{p}");
        }
    }
    assert!(
        st["position"].as_str().unwrap().contains("orders/0@"),
        "{st}"
    );
    runner.stop();

    // Restore moment 1 into the empty target under the same names.
    let at1 = t1.to_rfc3339();
    let out = tidemark(&[
        "-c",
        c,
        "restore",
        "--source",
        "events",
        "--at",
        &at1,
        "--target",
        &dst.url(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("created topic orders"),
        "{}",
        stdout(&out)
    );
    assert_eq!(digest(&dst.url(), &["orders", "^audit\\..*"]), d1);
    assert!(stdout(&out).contains(&format!(
        "orders/0 records=12 sha256={}",
        d1[&("orders".to_string(), 0)].1
    )));
    assert_eq!(
        committed(&dst.addr(), "billing", "orders", 3),
        vec![4, 2, -1]
    );
    assert_eq!(committed(&dst.addr(), "billing", "audit.a", 2), vec![-1, 5]);
    assert_eq!(
        topic_configs(&dst.addr(), "audit.a")
            .get("retention.ms")
            .map(String::as_str),
        Some("3600000"),
        "topic configs restored"
    );

    // The same again is refused: the target holds records now.
    let out = tidemark(&[
        "-c",
        c,
        "restore",
        "--source",
        "events",
        "--at",
        &at1,
        "--target",
        &dst.url(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds records") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    // With --force the records go after the existing ones, offsets translated to match.
    let out = restore(c, &at1, &dst.url(), &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let n0 = d1[&("orders".to_string(), 0)].0 as i64;
    let n1 = d1[&("orders".to_string(), 1)].0 as i64;
    assert_eq!(
        committed(&dst.addr(), "billing", "orders", 3),
        vec![n0 + 4, n1 + 2, -1]
    );
    assert_eq!(
        digest(&dst.url(), &["orders"])[&("orders".to_string(), 0)].0,
        2 * n0 as u64
    );

    // Unreachable targets and moments before capture began are refused clearly.
    let dead = format!(
        "kafka://127.0.0.1:{}",
        tidemark::sandbox::free_port().unwrap()
    );
    let start = Instant::now();
    let out = restore(c, &at1, &dead, &[]);
    assert!(
        stderr(&out).contains("cannot reach the Kafka brokers"),
        "{}",
        stderr(&out)
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    let out = restore(c, "2020-01-01T00:00:00Z", &dst.url(), &[]);
    assert!(stderr(&out).contains("began later"), "{}", stderr(&out));

    // Moment 2 under other names, after a dry run that touches nothing.
    let at2 = t2.to_rfc3339();
    let map = "orders=orders2,audit.a=audit.a2,audit.b=audit.b2";
    let args = [
        "-c",
        c,
        "restore",
        "--source",
        "events",
        "--at",
        &at2,
        "--target",
        &dst.url(),
        "--topic-map",
        map,
    ];
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let out = tidemark(&dry);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("orders -> orders2"),
        "{}",
        stdout(&out)
    );
    let out = tidemark(&["digest", &dst.url(), "--topics", "orders2"]);
    assert!(
        stderr(&out).contains("does not exist"),
        "dry run created a topic"
    );
    let out = tidemark(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = renamed(&d2, |t| format!("{t}2"));
    assert_eq!(
        digest(&dst.url(), &["orders2", "audit.a2", "audit.b2"]),
        want
    );
    assert_eq!(
        committed(&dst.addr(), "billing", "orders2", 3),
        vec![10, 2, -1]
    );
    assert_eq!(
        committed(&dst.addr(), "billing", "audit.b2", 2),
        vec![-1, 2]
    );

    // A map naming a topic the source never had is refused.
    let out = tidemark(&[
        "-c",
        c,
        "restore",
        "--source",
        "events",
        "--at",
        &at2,
        "--target",
        &dst.url(),
        "--topic-map",
        "nosuch=x",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    // So is one that would merge two topics into one.
    let out = restore(c, &at2, &dst.url(), &["--topic-map", "orders=x,audit.a=x"]);
    assert!(
        stderr(&out).contains("would both be restored into x"),
        "{}",
        stderr(&out)
    );
}

/// Offsets of each partition in the journal: `0..n` contiguous, no duplicate.
fn journal_offsets(path: &std::path::Path) -> std::collections::BTreeMap<(String, i32), Vec<i64>> {
    let j = Journal::open_read_only(path).unwrap();
    let id = j.source("events").unwrap().id;
    let mut out: std::collections::BTreeMap<(String, i32), Vec<i64>> = Default::default();
    for e in j.events(id, 1, u64::MAX) {
        let e = e.unwrap().event;
        if let (Some(Payload::Kafka(_)), Some(PositionKind::Kafka(p))) = (
            &e.payload,
            e.position.as_ref().and_then(|p| p.kind.as_ref()),
        ) {
            out.entry((p.topic.clone(), p.partition))
                .or_default()
                .push(p.offset);
        }
    }
    out
}

/// `tidemark run` is SIGKILLed twice while records stream in; after restarts the
/// journal holds every partition's offsets `0..high-water mark` exactly once.
#[test]
fn kill9_and_restart_leave_no_gap_and_no_duplicate() {
    let Some(src) = Tansu::start("kill9_and_restart_leave_no_gap_and_no_duplicate") else {
        return;
    };
    src.create_topic("stream", 3);
    let dir = tempfile::tempdir().unwrap();
    let cfg = kafka_config(dir.path(), &src.addr(), &["stream"], &[]);
    let addr = src.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let p = producer(&addr);
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                simple(&p, "stream", 3, &format!("b{n}"), 50);
                n += 1;
            }
            n * 50
        })
    };
    for round in 0..2 {
        let r = Runner::start(&cfg, dir.path().join(format!("run{round}.log")));
        let start = Instant::now();
        loop {
            let events = status(&cfg).and_then(|s| s["events"].as_u64()).unwrap_or(0);
            if events > 200 * (round + 1) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no progress in round {round}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r.kill9();
    }
    let r = Runner::start(&cfg, dir.path().join("run-final.log"));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let produced = producing.join().unwrap();
    wait_coverage(&cfg, Timestamp::now(), &r.log);
    r.stop();
    let offsets = journal_offsets(&dir.path().join("journal"));
    let total: usize = offsets.values().map(Vec::len).sum();
    assert_eq!(total, produced, "every produced record journaled once");
    let d = digest(&src.url(), &["stream"]);
    for ((t, p), v) in &offsets {
        let want: Vec<i64> = (0..v.len() as i64).collect();
        assert_eq!(v, &want, "{t}/{p}: offsets contiguous from 0, no duplicate");
        assert_eq!(
            d[&(t.clone(), *p)].0,
            v.len() as u64,
            "{t}/{p}: as many as the broker has"
        );
    }
}

/// Unreachable brokers fail within a bounded time with a message naming them;
/// unknown topics are named.
#[test]
fn bad_inputs_fail_clearly_and_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("127.0.0.1:{}", tidemark::sandbox::free_port().unwrap());
    let cfg = kafka_config(dir.path(), &dead, &["orders"], &[]);
    // Unreachable brokers at start-up: the source starts in `retrying`, naming them.
    let start = Instant::now();
    let runner = Runner::start(&cfg, dir.path().join("run.log"));
    loop {
        let row = status(&cfg);
        let err = row
            .as_ref()
            .and_then(|r| r["supervision"]["last_error"].as_str().map(str::to_string));
        if row.as_ref().is_some_and(|r| r["state"] == "retrying") {
            let err = err.unwrap_or_default();
            assert!(
                err.contains(&format!("cannot reach the Kafka brokers {dead}")),
                "{err}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no retrying state: {row:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    runner.stop();

    let out = tidemark(&["digest", &format!("kafka://{dead}")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    let out = tidemark(&["digest", "kafka://nohostport"]);
    assert!(
        stderr(&out).contains("kafka://host:port"),
        "{}",
        stderr(&out)
    );
    let out = tidemark(&["digest", "mysql://127.0.0.1:1"]);
    assert!(
        stderr(&out).contains("unsupported URL scheme"),
        "{}",
        stderr(&out)
    );

    let Some(src) = Tansu::start("bad_inputs_fail_clearly_and_quickly") else {
        return;
    };
    src.create_topic("orders", 1);
    let out = tidemark(&["digest", &src.url(), "--topics", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("topic `nosuch` does not exist") && stderr(&out).contains("orders"),
        "{}",
        stderr(&out)
    );
}
