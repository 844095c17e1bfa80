//! Redis capture across failures: `tidemark run` killed with SIGKILL and
//! restarted resumes with `PSYNC` continue (offsets contiguous: no gap, no
//! duplicate); a primary restart (new replication id) takes a new base image and
//! restores on either side of it are right; bad inputs fail with one clear line.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::bin_client::Client;
use common::tidemark::Tidemark;
use common::{redis70, server_bin, Redis};
use tidemark::connectors::redis::digest::digest_url;
use tidemark::connectors::redis::resp::encoded_len;
use tidemark::event::Payload;
use tidemark::journal::Journal;
use tidemark::position::PositionKind;

const ARGS: &[&str] = &[
    "--repl-ping-replica-period",
    "1",
    "--repl-backlog-size",
    "64mb",
];

/// Every event's offset is the previous offset of its replication history plus
/// the command's size: nothing missing, nothing twice. Returns events per replid.
fn assert_contiguous(tm: &Tidemark) -> HashMap<String, u64> {
    let j = Journal::open_read_only(&tm.journal).expect("open journal");
    let src = j.source("cache").expect("source");
    let mut last: HashMap<String, u64> = HashMap::new();
    for img in j.images(src.id).expect("images") {
        if let Some(PositionKind::Redis(p)) = img.position.and_then(|p| p.kind) {
            assert!(
                last.insert(p.replid, p.offset).is_none(),
                "two images of one history"
            );
        }
    }
    let mut counts = HashMap::new();
    for e in j.events(src.id, 1, u64::MAX) {
        let e = e.expect("event");
        let Some(PositionKind::Redis(p)) = e.event.position.and_then(|p| p.kind) else {
            panic!("not a redis position at seq {}", e.seq);
        };
        let Some(Payload::Redis(cmd)) = e.event.payload else {
            panic!("not a redis command at seq {}", e.seq);
        };
        let prev = last
            .get(&p.replid)
            .copied()
            .unwrap_or_else(|| panic!("seq {}: no image for {}", e.seq, p.replid));
        assert_eq!(
            p.offset,
            prev + encoded_len(&cmd.args),
            "seq {}: gap or duplicate after offset {prev}",
            e.seq
        );
        last.insert(p.replid.clone(), p.offset);
        *counts.entry(p.replid).or_insert(0) += 1;
    }
    counts
}

fn restore(tm: &Tidemark, at: &str, target: &Redis) {
    let out = tm.cli(&[
        "restore",
        "--source",
        "cache",
        "--at",
        at,
        "--target",
        &target.url(),
    ]);
    assert!(
        out.status.success(),
        "restore at {at}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kill_9_and_restart_resume_without_gap_or_duplicate() {
    let Some(bin) = redis70() else { return };
    let primary = Redis::start_bin(&bin, ARGS);
    let mut c = Client::connect(primary.port).expect("connect");
    c.cmd(&["SET", "before", "image"]);
    let mut tm = Tidemark::new(&primary.url());
    tm.start();
    tm.wait_caught_up(&mut primary.client());

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, port) = (Arc::clone(&stop), primary.port);
        std::thread::spawn(move || {
            let mut c = Client::connect(port).expect("connect");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                c.cmd(&["INCR", "counter"]);
                c.cmd(&["SELECT", if n.is_multiple_of(2) { "0" } else { "1" }]);
                c.cmd(&["RPUSH", "log", &n.to_string()]);
            }
            n
        })
    };
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(400 + 150 * round));
        tm.kill9();
        std::thread::sleep(Duration::from_millis(200));
        tm.start();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    tm.wait_caught_up(&mut primary.client());
    let source = digest_url(&primary.url()).expect("digest");
    // status: how far the journal trails the primary, against its backlog.
    let out = tm.cli(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let r = &doc["sources"][0]["redis"];
    assert!(
        r["lag_bytes"].is_u64() && r["primary_offset"].is_u64(),
        "{doc}"
    );
    assert_eq!(r["repl_backlog_size"], 64 << 20, "{doc}");
    assert!(
        r["lag_backlog_ratio"].as_f64().is_some_and(|x| x < 0.01),
        "{doc}"
    );
    assert!(
        doc["sources"][0]["position"].is_string(),
        "existing keys stay: {doc}"
    );
    tm.stop();

    for run in 2..=4 {
        let log = tm.log(run);
        assert!(
            log.contains("resumed replication (PSYNC continue)"),
            "run {run}:\n{log}"
        );
        assert!(
            !log.contains("base image taken"),
            "run {run} took a new image:\n{log}"
        );
    }
    let counts = assert_contiguous(&tm);
    assert_eq!(counts.len(), 1);
    let target = Redis::start_bin(&bin, ARGS);
    restore(&tm, "latest", &target);
    assert_eq!(
        digest_url(&target.url()).expect("digest").digest,
        source.digest
    );
    let mut tc = Client::connect(target.port).expect("connect");
    let mut total = 0u64;
    for db in ["0", "1"] {
        tc.cmd(&["SELECT", db]);
        let n = String::from_utf8_lossy(&tc.cmd(&["GET", "counter"]).bulk()).into_owned();
        total += n.parse::<u64>().expect("number");
    }
    assert_eq!(total, writes, "every INCR restored exactly once");
}

#[test]
fn primary_restart_takes_a_new_base_image() {
    let Some(bin) = redis70() else { return };
    // Disk-based sync: the RDB comes length-prefixed (`$<len>`), not in the
    // diskless EOF-mark framing the other Redis 7 tests see.
    let mut args = ARGS.to_vec();
    args.extend(["--repl-diskless-sync", "no"]);
    let mut primary = Redis::start_bin(&bin, &args);
    let mut c = Client::connect(primary.port).expect("connect");
    c.cmd(&["SET", "old", "1"]);
    let mut tm = Tidemark::new(&primary.url());
    tm.start();
    c.cmd(&["RPUSH", "old:list", "a", "b"]);
    let t1 = tm.wait_caught_up(&mut primary.client());
    let d1 = digest_url(&primary.url()).expect("digest");
    let (old_id, _, _) = tm.progress().expect("progress");
    drop(c);

    primary.restart(); // no persistence: empty, new replication id
    let mut c = Client::connect(primary.port).expect("connect");
    c.cmd(&["SET", "new", "2"]);
    c.cmd(&["SELECT", "3"]);
    c.cmd(&["SADD", "new:set", "x"]);
    let mut waited = 0;
    while tm.progress().is_some_and(|(id, _, _)| id == old_id) {
        std::thread::sleep(Duration::from_millis(50));
        waited += 1;
        assert!(
            waited < 600,
            "no full resync after the primary restart:\n{}",
            tm.log(1)
        );
    }
    let t2 = tm.wait_caught_up(&mut primary.client());
    let d2 = digest_url(&primary.url()).expect("digest");
    tm.stop_with(libc::SIGTERM);
    assert!(tm
        .log(1)
        .contains("stopped; everything received is journaled and acknowledged"));
    assert!(
        tm.log(1).contains("taking a new base image"),
        "{}",
        tm.log(1)
    );

    let counts = assert_contiguous(&tm);
    assert!(counts.len() <= 2);
    let j = Journal::open_read_only(&tm.journal).expect("journal");
    assert_eq!(
        j.images(j.source("cache").expect("src").id)
            .expect("images")
            .len(),
        2
    );
    drop(j);
    for (at, want) in [(t1, &d1), (t2, &d2)] {
        let target = Redis::start_bin(&bin, ARGS);
        restore(&tm, &at.to_rfc3339(), &target);
        let got = digest_url(&target.url()).expect("digest");
        assert_eq!(
            (got.digest.as_str(), got.keys),
            (want.digest.as_str(), want.keys),
            "at {at}"
        );
    }
}

/// Runs capture against `url`; it must exit non-zero with a last line holding
/// every needle and no `secret`.
fn run_fails(url: &str, needles: &[&str], secret: &str) {
    let mut tm = Tidemark::new(url);
    tm.start();
    let (status, log) = tm.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "{log}");
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(last.starts_with("error: "), "{log}");
    for n in needles {
        assert!(last.contains(n), "expected `{n}` in `{last}`");
    }
    assert!(!log.contains(secret), "secret leaked: {log}");
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let Some(bin) = redis70() else { return };
    let guarded = Redis::start_bin(&bin, &["--requirepass", "s3cret-pw"]);
    run_fails(
        &format!("redis://:wrong-pw-x@127.0.0.1:{}", guarded.port),
        &["refused authentication", "check the user and password"],
        "wrong-pw-x",
    );
    run_fails(
        &format!("redis://127.0.0.1:{}", guarded.port),
        &["requires a password and the url has none"],
        "s3cret-pw",
    );
    let primary = Redis::start_bin(&bin, &[]);
    let port = primary.port.to_string();
    let replica = Redis::start_bin(&bin, &["--replicaof", "127.0.0.1", &port]);
    run_fails(
        &replica.url(),
        &["is a replica", &format!("127.0.0.1:{port}")],
        "\u{0}",
    );
    // An unreachable server is not a configuration error: the source starts in
    // `retrying`, naming the reason, and `run` keeps going.
    let mut tm = Tidemark::new("redis://127.0.0.1:1");
    tm.start();
    let start = std::time::Instant::now();
    loop {
        let out = tm.cli(&["status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let row = &doc["sources"][0];
        if row["state"] == "retrying" {
            let e = row["supervision"]["last_error"]
                .as_str()
                .unwrap_or_default();
            assert!(
                e.contains("cannot connect to Redis at 127.0.0.1:1"),
                "{row}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not retrying: {doc}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    tm.stop();
    run_fails(
        "rediss://:tls-secret@127.0.0.1:1?ca=/nonexistent/ca.pem",
        &["ca=/nonexistent/ca.pem", "cannot be read"],
        "tls-secret",
    );
    let out = std::process::Command::new(common::tidemark::bin())
        .args(["digest", "redis://:pw-in-url@127.0.0.1:1"])
        .output()
        .expect("digest");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot connect") && !err.contains("pw-in-url"),
        "{err}"
    );
}

/// The primary sees tidemark as a replica whose acknowledged offset is what the
/// journal holds: `WAIT 1` returns once a write is durable in the journal.
#[test]
fn wait_returns_once_the_journal_holds_the_write() {
    let Some(bin) = redis70() else { return };
    let primary = Redis::start_bin(&bin, ARGS);
    let mut tm = Tidemark::new(&primary.url());
    tm.start();
    tm.wait_caught_up(&mut primary.client());
    let mut c = Client::connect(primary.port).expect("connect");
    for i in 0..20 {
        c.cmd(&["SET", "k", &i.to_string()]);
        assert_eq!(
            c.cmd(&["WAIT", "1", "5000"]).int(),
            1,
            "write {i} not acknowledged"
        );
        let acked = primary
            .client()
            .cmd(&["INFO", "replication"])
            .expect("info");
        let offset = |field: &str| -> u64 {
            acked
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let slave = acked
            .lines()
            .find(|l| l.starts_with("slave0:"))
            .expect("slave0");
        let slave_off: u64 = slave
            .split(',')
            .find_map(|f| f.strip_prefix("offset="))
            .and_then(|v| v.parse().ok())
            .expect("offset");
        let (_, journaled, _) = tm.progress().expect("progress");
        assert!(
            slave_off <= journaled,
            "ACK {slave_off} ahead of the journal {journaled}"
        );
        assert!(slave_off <= offset("master_repl_offset:"));
    }
    tm.stop();
}

/// A module value (RedisJSON, from the Redis Stack 7.4 wheel) stops capture
/// with an error naming the key and the type; it is never skipped.
#[test]
fn module_values_stop_capture_naming_the_key() {
    let (Some(bin), Some(modules)) = (
        server_bin("TIDEMARK_REDIS74_SERVER", None),
        server_bin("TIDEMARK_REDIS74_MODULES", None),
    ) else {
        return;
    };
    let rejson = format!("{modules}/rejson.so");
    let primary = Redis::start_bin(&bin, &["--loadmodule", &rejson]);
    let mut c = Client::connect(primary.port).expect("connect");
    c.cmd(&["SET", "plain", "1"]);
    c.cmd(&["JSON.SET", "doc:1", "$", "{\"a\":1}"]);
    run_fails(
        &primary.url(),
        &["key \"doc:1\"", "RDB type 7 (module)", "cannot capture"],
        "\u{0}",
    );
}

/// A moment that falls between MULTI and EXEC restores none of the transaction
/// (the replay sends DISCARD); a later moment restores all of it.
#[test]
fn a_restore_cut_inside_multi_applies_none_of_it() {
    use tidemark::config::SourceKind;
    use tidemark::connectors::redis::image::{ChunkBuilder, KvRecord, KvValue, FORMAT};
    use tidemark::event::{ChangeEvent, RedisCommand};
    use tidemark::journal::{JournalOptions, Progress};
    use tidemark::position::Position;
    use tidemark::time::Timestamp;

    let Some(bin) = redis70() else { return };
    let tm = Tidemark::new("redis://127.0.0.1:1");
    {
        let j = Arc::new(Journal::open(&tm.journal, JournalOptions::default()).expect("journal"));
        let src = j
            .register_source("cache", SourceKind::Redis)
            .expect("register");
        let sec = 1_000_000;
        let mut w = j
            .begin_image(
                src,
                Position::redis("r", 0),
                Timestamp::from_micros(sec),
                FORMAT,
            )
            .expect("image");
        let mut chunks = ChunkBuilder::default();
        let rec = KvRecord {
            db: 2,
            key: b"base".to_vec(),
            expire_at_ms: None,
            value: Some(KvValue::String(b"1".to_vec())),
        };
        assert!(chunks.push(rec).is_none());
        w.put_chunk(&chunks.finish().expect("chunk")).expect("put");
        w.finish(&Progress::default()).expect("finish");
        let mut offset = 0;
        let mut ev = |t: i64, args: &[&str]| {
            let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
            offset += encoded_len(&args);
            ChangeEvent {
                position: Some(Position::redis("r", offset)),
                capture_time_us: t * sec,
                payload: Some(Payload::Redis(RedisCommand { db: 0, args })),
                ..Default::default()
            }
        };
        let events = vec![
            ev(10, &["SELECT", "0"]),
            ev(10, &["SET", "x", "1"]),
            ev(20, &["MULTI"]),
            ev(20, &["SET", "y", "2"]),
            ev(30, &["INCR", "y"]),
            ev(30, &["EXEC"]),
        ];
        let progress = Progress {
            checkpoint: Vec::new(),
            coverage: Some(Timestamp::from_micros(40 * sec)),
        };
        j.append(src, &events, &progress).expect("append");
    }
    for (at, want_y) in [("1970-01-01T00:00:25Z", None), ("latest", Some("3"))] {
        let target = Redis::start_bin(&bin, &[]);
        restore(&tm, at, &target);
        let mut c = Client::connect(target.port).expect("connect");
        assert_eq!(c.cmd(&["GET", "x"]).bulk(), b"1");
        let y = c.cmd(&["GET", "y"]);
        match want_y {
            None => assert_eq!(y, common::bin_client::Resp::Bulk(None), "at {at}"),
            Some(v) => assert_eq!(y.bulk(), v.as_bytes(), "at {at}"),
        }
        c.cmd(&["SELECT", "2"]);
        assert_eq!(c.cmd(&["GET", "base"]).bulk(), b"1");
    }
}
