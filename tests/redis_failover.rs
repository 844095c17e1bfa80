//! Following the primary through failovers: a primary and a replica
//! (`--replicaof`) on loopback, writes under load, then
//! - Sentinel (`redis-server FILE --sentinel`) promotes the replica after the
//!   primary is killed with SIGKILL; capture, configured with
//!   `redis+sentinel://`, goes on with `PSYNC` continue and no new base image,
//!   also across two restarts of `tidemark run` after the failover;
//! - a manual failover (`REPLICAOF NO ONE`, the old primary made a replica of the
//!   new one) with the source configured with both addresses: the same;
//! - a promoted replica that lacks part of what the journal holds: `PSYNC` is
//!   refused, a new base image is taken and said so.
//!
//! Each time the journal's offsets run on without gap or duplicate across the
//! switch of replication id, a restore at latest equals the new primary, and a
//! restore at a moment before the failover equals the source at that moment.
//!
//! Why writes pause for the instant of the kill: the promoted replica can
//! continue tidemark's history only if it received everything tidemark did. Under
//! load, the primary writes to its two replicas one after the other, so at a
//! random kill either may be ahead; when tidemark is, `PSYNC` is refused, rightly
//! (the third test). The first two hold writes (`CLIENT PAUSE WRITE`), wait for the
//! replica to reach the primary's offset, then kill.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::sentinel::Sentinel;
use common::tidemark::Tidemark;
use common::{redis70, server_bin, Redis, RespClient};
use tidemark::connectors::redis::digest::digest_url;
use tidemark::connectors::redis::resp::encoded_len;
use tidemark::event::Payload;
use tidemark::journal::Journal;
use tidemark::position::PositionKind;

/// A backlog that holds what the writer sends between the promotion and
/// tidemark's reconnect (its retry backoff reaches seconds; the writer does not
/// wait): with Redis's default 1 MB the promoted replica would have dropped the
/// offsets tidemark asks for, and answer with a full resync.
const ARGS: &[&str] = &[
    "--repl-ping-replica-period",
    "1",
    "--repl-backlog-size",
    "64mb",
];

/// Every server of the estate: Redis 7.0, and 6.2, 7.4, Valkey 8 and 9 where
/// `.ci/run` fetched them (each also runs its own Sentinel).
fn servers() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if let Some(b) = redis70() {
        v.push(("redis 7.0", b));
    }
    for (name, var) in [
        ("redis 6.2", "TIDEMARK_REDIS62_SERVER"),
        ("redis 7.4", "TIDEMARK_REDIS74_SERVER"),
        ("valkey 8", "TIDEMARK_VALKEY8_SERVER"),
        ("valkey 9", "TIDEMARK_VALKEY9_SERVER"),
    ] {
        if let Some(b) = server_bin(var, None) {
            v.push((name, b));
        }
    }
    v
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn info(port: u16, field: &str) -> String {
    RespClient::connect(port)
        .ok()
        .and_then(|mut c| c.cmd(&["INFO", "replication"]).ok())
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        })
        .unwrap_or_default()
}

/// A writer that keeps writing to whichever of `ports` accepts writes (a
/// replica answers READONLY, a dead server does not answer), with quiet
/// moments on request.
struct Load {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    idle: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Load {
    fn start(ports: Vec<u16>) -> Load {
        let (stop, pause, idle, writes) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let handle = {
            let (stop, pause, idle, writes) = (
                Arc::clone(&stop),
                Arc::clone(&pause),
                Arc::clone(&idle),
                Arc::clone(&writes),
            );
            std::thread::spawn(move || {
                let mut at = 0usize;
                let mut conn: Option<RespClient> = None;
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    if pause.load(Ordering::SeqCst) {
                        idle.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    idle.store(false, Ordering::SeqCst);
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match RespClient::connect(ports[at]) {
                            Ok(c) => conn.insert(c),
                            Err(_) => {
                                at = (at + 1) % ports.len();
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    n += 1;
                    let db = (n % 3).to_string();
                    let ok = c.cmd(&["SELECT", &db]).is_ok()
                        && c.cmd(&["INCR", "counter"]).is_ok()
                        && c.cmd(&["RPUSH", "log", &n.to_string()]).is_ok()
                        && c.cmd(&["HSET", "h", &(n % 50).to_string(), &n.to_string()])
                            .is_ok();
                    if ok {
                        writes.fetch_add(1, Ordering::SeqCst);
                    } else {
                        conn = None;
                        at = (at + 1) % ports.len();
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        };
        Load {
            stop,
            pause,
            idle,
            writes,
            handle: Some(handle),
        }
    }

    /// Holds the writer; returns once no write is in flight.
    fn hold(&self) {
        self.pause.store(true, Ordering::SeqCst);
        self.idle.store(false, Ordering::SeqCst);
        wait_for("the writer to pause", Duration::from_secs(30), || {
            self.idle.load(Ordering::SeqCst)
        });
    }

    fn resume(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }

    /// Waits until `n` more rounds of writes succeeded.
    fn wait_writes(&self, n: u64) {
        let start = self.writes.load(Ordering::SeqCst);
        wait_for("writes", Duration::from_secs(60), || {
            self.writes.load(Ordering::SeqCst) >= start + n
        });
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("writer");
        }
        self.writes.load(Ordering::SeqCst)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A primary and its replica, in sync.
fn pair(bin: &str) -> (Redis, Redis) {
    let primary = Redis::start_bin(bin, ARGS);
    let p = primary.port.to_string();
    let mut args = ARGS.to_vec();
    args.extend(["--replicaof", "127.0.0.1", &p]);
    let replica = Redis::start_bin(bin, &args);
    wait_for("the replica's link", Duration::from_secs(30), || {
        info(replica.port, "master_link_status:") == "up"
    });
    (primary, replica)
}

/// Quiet moment on `primary`: the writer held, the journal caught up; the
/// moment and the digest of the primary then.
fn snapshot(tm: &Tidemark, load: &Load, primary: &Redis) -> (String, String) {
    load.hold();
    let t = tm.wait_caught_up(&mut primary.client());
    let d = digest_url(&primary.url()).expect("digest").digest;
    load.resume();
    (t.to_rfc3339(), d)
}

/// Holds writes on `old` and waits until `replica` has everything `old` sent.
fn pause_until_replica_has_all(old: &Redis, replica: &Redis) {
    old.client()
        .cmd(&["CLIENT", "PAUSE", "20000", "WRITE"])
        .expect("CLIENT PAUSE");
    wait_for(
        "the replica to reach the primary's offset",
        Duration::from_secs(30),
        || {
            let want = info(old.port, "master_repl_offset:");
            !want.is_empty() && info(replica.port, "master_repl_offset:") == want
        },
    );
}

/// Events in sequence order: every offset is the previous one plus the
/// command's size, across replication-id switches without a base image between
/// them (a `PSYNC` continue), and from each image's own offset. Returns the
/// replication ids in the order they appear and the events of each.
fn assert_contiguous(tm: &Tidemark) -> (Vec<String>, HashMap<String, u64>) {
    let j = Journal::open_read_only(&tm.journal).expect("journal");
    let src = j.source("cache").expect("source");
    let images: Vec<(u64, String, u64)> = j
        .images(src.id)
        .expect("images")
        .into_iter()
        .map(|m| match m.position.and_then(|p| p.kind) {
            Some(PositionKind::Redis(p)) => (m.after_seq, p.replid, p.offset),
            _ => panic!("image without a redis position"),
        })
        .collect();
    let mut order = Vec::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut prev: Option<u64> = None;
    for e in j.events(src.id, 1, u64::MAX) {
        let e = e.expect("event");
        if let Some((_, id, off)) = images.iter().rev().find(|(after, ..)| *after == e.seq - 1) {
            prev = Some(*off);
            if order.last() != Some(id) {
                order.push(id.clone());
            }
        }
        let Some(PositionKind::Redis(p)) = e.event.position.and_then(|p| p.kind) else {
            panic!("seq {}: not a redis position", e.seq);
        };
        let Some(Payload::Redis(cmd)) = e.event.payload else {
            panic!("seq {}: not a redis command", e.seq);
        };
        let before = prev.unwrap_or_else(|| panic!("seq {}: no image before it", e.seq));
        assert_eq!(
            p.offset,
            before + encoded_len(&cmd.args),
            "seq {} ({}): gap or duplicate after offset {before}",
            e.seq,
            p.replid
        );
        prev = Some(p.offset);
        if order.last() != Some(&p.replid) {
            order.push(p.replid.clone());
        }
        *counts.entry(p.replid).or_insert(0) += 1;
    }
    (order, counts)
}

fn image_count(tm: &Tidemark) -> usize {
    let j = Journal::open_read_only(&tm.journal).expect("journal");
    let src = j.source("cache").expect("source");
    j.images(src.id).expect("images").len()
}

fn restore_digest(tm: &Tidemark, bin: &str, at: &str) -> String {
    let target = Redis::start_bin(bin, &[]);
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
    digest_url(&target.url()).expect("digest").digest
}

fn status(tm: &Tidemark) -> (serde_json::Value, String) {
    let out = tm.cli(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let text = String::from_utf8_lossy(&tm.cli(&["status"]).stdout).into_owned();
    (doc["sources"][0].clone(), text)
}

#[test]
fn sentinel_failover_continues_without_a_new_base_image() {
    for (name, bin) in servers() {
        eprintln!("{name}");
        sentinel_case(&bin);
    }
}

fn sentinel_case(bin: &str) {
    let bin = bin.to_string();
    let (mut old, new) = pair(&bin);
    let sentinel = Sentinel::start(&bin, old.port, "");
    wait_for(
        "Sentinel to find the replica",
        Duration::from_secs(30),
        || sentinel.knows_replica(new.port),
    );
    old.client().cmd(&["SET", "before", "image"]).expect("SET");
    let mut tm = Tidemark::new(&format!("redis+sentinel://127.0.0.1:{}/m", sentinel.port));
    tm.start();
    let load = Load::start(vec![old.port, new.port]);
    load.wait_writes(300);
    let (t1, d1) = snapshot(&tm, &load, &old);
    load.wait_writes(300);
    let old_id = info(old.port, "master_replid:");

    pause_until_replica_has_all(&old, &new);
    old.kill9();
    wait_for(
        "Sentinel to promote the replica",
        Duration::from_secs(60),
        || sentinel.primary() == Some(new.port) && info(new.port, "role:") == "master",
    );
    let new_id = info(new.port, "master_replid:");
    assert_eq!(info(new.port, "master_replid2:"), old_id);
    wait_for(
        "capture to follow the new primary",
        Duration::from_secs(60),
        || tm.progress().is_some_and(|(id, ..)| id == new_id),
    );
    load.wait_writes(300);
    // Two restarts after the failover resume in the new history.
    for run in 2..=3 {
        tm.kill9();
        tm.start();
        wait_for(
            "the restarted capture to resume",
            Duration::from_secs(60),
            || {
                let log = tm.log(run);
                log.contains("resumed replication") || log.contains("base image taken")
            },
        );
        load.wait_writes(500);
    }
    let (t2, d2) = snapshot(&tm, &load, &new);
    let writes = load.finish();
    tm.stop();

    assert_eq!(
        image_count(&tm),
        1,
        "a new base image was taken:\n{}",
        tm.log(1)
    );
    let (order, counts) = assert_contiguous(&tm);
    assert_eq!(order, vec![old_id.clone(), new_id.clone()], "{counts:?}");
    let log = tm.log(1);
    assert!(
        log.contains("the primary's replication id changed"),
        "{log}"
    );
    assert!(log.contains("following a new primary"), "{log}");
    for run in 2..=3 {
        let log = tm.log(run);
        assert!(
            log.contains("resumed replication (PSYNC continue)"),
            "run {run}:\n{log}"
        );
        assert!(!log.contains("base image taken"), "run {run}:\n{log}");
    }
    let (row, text) = status(&tm);
    let r = &row["health"]["redis"];
    assert_eq!(r["primary"], format!("127.0.0.1:{}", new.port), "{row}");
    assert!(
        r["found_via"]
            .as_str()
            .is_some_and(|v| v.contains("Sentinel")),
        "{row}"
    );
    assert!(
        text.contains(&format!("following primary 127.0.0.1:{}", new.port)),
        "{text}"
    );

    assert_eq!(
        restore_digest(&tm, &bin, &t1),
        d1,
        "restore at {t1}, before the failover"
    );
    assert_eq!(restore_digest(&tm, &bin, &t2), d2, "restore at {t2}");
    assert_eq!(restore_digest(&tm, &bin, "latest"), d2, "restore at latest");
    // `digest` through the Sentinel URL digests the primary it names.
    let out = Command::new(common::tidemark::bin())
        .args([
            "digest",
            &format!("redis+sentinel://127.0.0.1:{}/m", sentinel.port),
        ])
        .output()
        .expect("digest");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&d2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(writes > 900);
}

#[test]
fn manual_failover_with_both_addresses_continues() {
    for (name, bin) in servers() {
        eprintln!("{name}");
        manual_case(&bin);
    }
}

fn manual_case(bin: &str) {
    let bin = bin.to_string();
    let (old, new) = pair(&bin);
    let mut tm = Tidemark::new(&format!(
        "redis://127.0.0.1:{},127.0.0.1:{}",
        old.port, new.port
    ));
    tm.start();
    let load = Load::start(vec![old.port, new.port]);
    load.wait_writes(300);
    let (t1, d1) = snapshot(&tm, &load, &old);
    load.wait_writes(300);
    let old_id = info(old.port, "master_replid:");

    pause_until_replica_has_all(&old, &new);
    new.client()
        .cmd(&["REPLICAOF", "NO", "ONE"])
        .expect("promote");
    let np = new.port.to_string();
    old.client()
        .cmd(&["REPLICAOF", "127.0.0.1", &np])
        .expect("demote");
    old.client().cmd(&["CLIENT", "UNPAUSE"]).expect("unpause");
    let new_id = info(new.port, "master_replid:");
    wait_for(
        "capture to follow the new primary",
        Duration::from_secs(60),
        || tm.progress().is_some_and(|(id, ..)| id == new_id),
    );
    load.wait_writes(300);
    let (t2, d2) = snapshot(&tm, &load, &new);
    load.finish();
    tm.stop();

    assert_eq!(image_count(&tm), 1, "{}", tm.log(1));
    let (order, _) = assert_contiguous(&tm);
    assert_eq!(order, vec![old_id, new_id]);
    let (row, _) = status(&tm);
    let c = &row["health"]["redis"]["last_change"];
    assert_eq!(c["to"], format!("127.0.0.1:{}", new.port), "{row}");
    assert_eq!(c["psync"], "continue", "{row}");
    assert_eq!(c["new_base_image"], false, "{row}");
    assert_eq!(restore_digest(&tm, &bin, &t1), d1, "before the failover");
    assert_eq!(restore_digest(&tm, &bin, &t2), d2, "after it");
}

#[test]
fn a_new_primary_lacking_journaled_writes_gets_a_new_base_image() {
    for (name, bin) in servers() {
        eprintln!("{name}");
        refused_case(&bin);
    }
}

fn refused_case(bin: &str) {
    let bin = bin.to_string();
    let (mut old, new) = pair(&bin);
    let mut tm = Tidemark::new(&format!(
        "redis://127.0.0.1:{},127.0.0.1:{}",
        old.port, new.port
    ));
    tm.start();
    let mut c = old.client();
    for i in 0..200 {
        c.cmd(&["SET", &format!("k{i}"), "old"]).expect("SET");
    }
    let t1 = tm.wait_caught_up(&mut old.client()).to_rfc3339();
    let d1 = digest_url(&old.url()).expect("digest").digest;
    // The replica leaves early: what the old primary takes next, only the
    // journal gets.
    new.client()
        .cmd(&["REPLICAOF", "NO", "ONE"])
        .expect("promote");
    for i in 0..100 {
        c.cmd(&["SET", &format!("k{i}"), "journal only"])
            .expect("SET");
    }
    let t2 = tm.wait_caught_up(&mut old.client()).to_rfc3339();
    let d2 = digest_url(&old.url()).expect("digest").digest;
    old.kill9();
    let mut c = new.client();
    c.cmd(&["SET", "after", "failover"]).expect("SET");
    let new_id = info(new.port, "master_replid:");
    wait_for(
        "capture to follow the new primary",
        Duration::from_secs(60),
        || tm.progress().is_some_and(|(id, ..)| id == new_id),
    );
    let t3 = tm.wait_caught_up(&mut new.client()).to_rfc3339();
    let d3 = digest_url(&new.url()).expect("digest").digest;
    tm.stop();

    assert_eq!(image_count(&tm), 2);
    let log = tm.log(1);
    assert!(log.contains("taking a new base image"), "{log}");
    assert!(
        log.contains("could not continue the journal's history"),
        "{log}"
    );
    let (order, _) = assert_contiguous(&tm);
    assert_eq!(order.last(), Some(&new_id));
    let (row, text) = status(&tm);
    let ch = &row["health"]["redis"]["last_change"];
    assert_eq!(ch["new_base_image"], true, "{row}");
    assert!(text.contains("full resync, new base image"), "{text}");
    for (at, want) in [(&t1, &d1), (&t2, &d2), (&t3, &d3)] {
        assert_eq!(&restore_digest(&tm, &bin, at), want, "restore at {at}");
    }
    assert_ne!(d2, d3);
}
