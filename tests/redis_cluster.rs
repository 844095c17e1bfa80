//! Redis Cluster: capture of three primaries under load, `tidemark run` killed
//! with SIGKILL twice (every shard resumes with `PSYNC` continue: no new base
//! image, offsets contiguous per shard), then a restore at `latest` into a second
//! cluster of another shape (two primaries), equal to the source overall and per
//! source shard (`tidemark digest` of the source against the restore's digest).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::run::Run;
use common::{redis70, Redis, RespClient};
use serde_json::Value;
use tidemark::connectors::redis::cluster::topology::{key_slot, SLOTS};
use tidemark::connectors::redis::resp::encoded_len;
use tidemark::event::Payload;
use tidemark::journal::Journal;
use tidemark::position::PositionKind;

/// A cluster of `n` primaries on loopback, slots split evenly.
struct Cluster {
    nodes: Vec<Redis>,
    /// Inclusive slot range of each node.
    ranges: Vec<(u16, u16)>,
    /// Slots moved since (slot, new node), newest last.
    moved: Vec<(u16, usize)>,
}

impl Cluster {
    fn start(bin: &str, n: usize) -> Cluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--repl-ping-replica-period",
            "1",
            "--repl-backlog-size",
            "64mb",
        ];
        let nodes: Vec<Redis> = (0..n).map(|_| Redis::start_bin(bin, &args)).collect();
        let per = SLOTS / n;
        let mut ranges = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let a = i * per;
            let b = if i + 1 == n {
                SLOTS - 1
            } else {
                (i + 1) * per - 1
            };
            ranges.push((a as u16, b as u16));
            let mut c = node.client();
            c.cmd(&["CLUSTER", "SET-CONFIG-EPOCH", &(i + 1).to_string()])
                .expect("config epoch");
            c.cmd(&["CLUSTER", "ADDSLOTSRANGE", &a.to_string(), &b.to_string()])
                .expect("addslots");
        }
        let mut first = nodes[0].client();
        for node in &nodes[1..] {
            first
                .cmd(&["CLUSTER", "MEET", "127.0.0.1", &node.port.to_string()])
                .expect("meet");
        }
        let start = Instant::now();
        'wait: loop {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "cluster never became ok"
            );
            for node in &nodes {
                let mut c = node.client();
                let info = c.cmd(&["CLUSTER", "INFO"]).unwrap_or_default();
                let known = c.cmd(&["CLUSTER", "NODES"]).unwrap_or_default();
                if !info.contains("cluster_state:ok") || known.lines().count() != n {
                    std::thread::sleep(Duration::from_millis(100));
                    continue 'wait;
                }
            }
            break;
        }
        Cluster {
            nodes,
            ranges,
            moved: Vec::new(),
        }
    }

    fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.nodes[0].port)
    }

    /// The node serving `slot`.
    fn node_of(&self, slot: u16) -> usize {
        if let Some(&(_, n)) = self.moved.iter().rev().find(|(s, _)| *s == slot) {
            return n;
        }
        self.ranges
            .iter()
            .position(|&(a, b)| a <= slot && slot <= b)
            .expect("slot served")
    }
}

/// Hash tags whose slots lie on node `i` of `c`: keys spread over many slots.
fn tags_on(c: &Cluster, i: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|k| format!("t{k}"))
        .filter(|t| c.node_of(key_slot(t.as_bytes())) == i)
        .take(n)
        .collect()
}

/// Writes to node `i` until `ctl.stop` (and not while `ctl.pause`): strings, counters, lists, hashes, expiring
/// keys, multi-key commands and MULTI/EXEC within one hash tag, deletes.
fn load(port: u16, tags: Vec<String>, ctl: Arc<Control>) {
    let mut c = RespClient::connect(port).expect("connect");
    let mut n = 0u64;
    while !ctl.stop.load(Ordering::Relaxed) {
        if ctl.pause.load(Ordering::SeqCst) {
            ctl.paused.fetch_add(1, Ordering::SeqCst);
            while ctl.pause.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            ctl.paused.fetch_sub(1, Ordering::SeqCst);
        }
        let t = &tags[(n as usize) % tags.len()];
        let k = format!("k{n}{{{t}}}");
        c.cmd(&["SET", &k, &format!("v{n}")]).expect("set");
        c.cmd(&["INCRBY", &format!("ctr{{{t}}}"), "3"])
            .expect("incr");
        c.cmd(&["RPUSH", &format!("list{{{t}}}"), &n.to_string()])
            .expect("rpush");
        c.cmd(&[
            "HSET",
            &format!("h{{{t}}}"),
            &format!("f{}", n % 17),
            &n.to_string(),
        ])
        .expect("hset");
        if n.is_multiple_of(5) {
            c.cmd(&[
                "MSET",
                &format!("a{{{t}}}"),
                &n.to_string(),
                &format!("b{{{t}}}"),
                "x",
            ])
            .expect("mset");
            c.cmd(&["SET", &format!("ttl{n}{{{t}}}"), "v", "EX", "3600"])
                .expect("ex");
        }
        if n.is_multiple_of(7) {
            c.cmd(&["MULTI"]).expect("multi");
            c.cmd(&["LPUSH", &format!("list{{{t}}}"), "m"])
                .expect("queued");
            c.cmd(&["ZADD", &format!("z{{{t}}}"), &n.to_string(), &k])
                .expect("queued");
            c.cmd(&["EXEC"]).expect("exec");
        }
        if n.is_multiple_of(11) && n > 0 {
            c.cmd(&["DEL", &format!("k{}{{{t}}}", n - 11)])
                .expect("del");
        }
        n += 1;
        ctl.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// The writers' switches.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    pause: AtomicBool,
    /// Writers paused right now.
    paused: AtomicU64,
    /// Rounds written in all.
    done: AtomicU64,
}

/// Up to `n` keys of `a` whose `DUMP` differs in `b` (for failure messages; sets
/// are left out: their `DUMP` depends on the encoding's order).
fn differing_keys(a: &Cluster, b: &Cluster, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for node in &a.nodes {
        let mut c = node.client();
        let keys = c.cmd(&["KEYS", "*"]).unwrap_or_default();
        for k in keys.lines() {
            let mut t = b.nodes[b.node_of(key_slot(k.as_bytes()))].client();
            let (x, y) = (c.cmd(&["DUMP", k]), t.cmd(&["DUMP", k]));
            let set = c.cmd(&["TYPE", k]).is_ok_and(|t| t == "set");
            if x != y && !set {
                let (tx, ty) = (c.cmd(&["TYPE", k]), t.cmd(&["TYPE", k]));
                out.push(format!("{k} ({tx:?} vs {ty:?})"));
                if out.len() >= n {
                    return out;
                }
            }
        }
    }
    out
}

/// Waits until the journal holds, for every primary of `c`, everything up to the
/// primary's replication offset now (its checkpoint reaches it): then every write
/// made so far has been received, and a moment taken after this includes them.
fn wait_caught_up(run: &Run, c: &Cluster) {
    let want: Vec<(String, u64)> = c
        .nodes
        .iter()
        .map(|n| {
            let info = n.client().cmd(&["INFO", "replication"]).expect("info");
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (
                field("master_replid:"),
                field("master_repl_offset:").parse().unwrap_or(0),
            )
        })
        .collect();
    run.wait_source(
        "cl",
        "every shard caught up",
        Duration::from_secs(90),
        |row| {
            let pos = row["position"].as_str().unwrap_or_default();
            want.iter().all(|(replid, off)| {
                pos.split(',').any(|cp| {
                    cp.split_once(':').is_some_and(|(r, o)| {
                        r == replid && o.parse::<u64>().is_ok_and(|o| o >= *off)
                    })
                })
            })
        },
    );
}

fn digest_json(run: &Run, url: &str) -> Value {
    let out = run.cli(&["digest", url, "--json"]);
    assert!(
        out.status.success(),
        "digest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("digest json")
}

/// `(name, rows, digest)` of each part.
fn parts(d: &Value) -> Vec<(String, u64, String)> {
    d["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["rows"].as_u64().unwrap_or(0),
                p["digest"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Per shard: every event's offset follows the previous one of its history (no
/// gap, no duplicate) and each shard has exactly one base image.
fn assert_contiguous_per_shard(journal: &std::path::Path) -> usize {
    let j = Journal::open_read_only(journal).expect("open journal");
    let src = j.source("cl").expect("source");
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut parts = std::collections::BTreeSet::new();
    for img in j.images(src.id).expect("images") {
        assert!(
            parts.insert(img.part.clone()),
            "shard {} has two base images: a resume took a full sync",
            img.part
        );
        if let Some(PositionKind::Redis(p)) = img.position.and_then(|p| p.kind) {
            last.insert(p.replid, p.offset);
        }
    }
    let mut maps = 0;
    for e in j.events(src.id, 1, u64::MAX) {
        let e = e.expect("event");
        let Some(PositionKind::Redis(p)) = e.event.position.and_then(|p| p.kind) else {
            panic!("not a redis position at seq {}", e.seq);
        };
        match e.event.payload {
            Some(Payload::RedisSlotMap(_)) => maps += 1,
            Some(Payload::Redis(cmd)) => {
                let prev = last
                    .get(&p.replid)
                    .copied()
                    .unwrap_or_else(|| panic!("seq {}: no image for {}", e.seq, p.replid));
                assert_eq!(
                    p.offset,
                    prev + encoded_len(&cmd.args),
                    "seq {}: gap or duplicate after {prev}",
                    e.seq
                );
                last.insert(p.replid, p.offset);
            }
            other => panic!("seq {}: unexpected payload {other:?}", e.seq),
        }
    }
    assert_eq!(
        maps, 1,
        "the slot map is journaled once while it does not change"
    );
    parts.len()
}

#[test]
fn cluster_capture_kill9_twice_restore_into_another_shape() {
    let Some(bin) = redis70() else { return };
    let source = Cluster::start(&bin, 3);
    let target = Cluster::start(&bin, 2);
    // The slot function is the server's.
    let mut c0 = source.nodes[0].client();
    for k in ["foo", "{user1000}.following", "k1{t9}", "plain-key-42"] {
        assert_eq!(
            c0.cmd(&["CLUSTER", "KEYSLOT", k]).expect("keyslot"),
            key_slot(k.as_bytes()).to_string()
        );
    }
    // Data before capture starts: in the base images.
    for (i, node) in source.nodes.iter().enumerate() {
        let mut c = node.client();
        for t in tags_on(&source, i, 40) {
            for n in 0..20 {
                c.cmd(&["SET", &format!("seed{n}{{{t}}}"), &format!("{i}-{n}")])
                    .expect("seed");
            }
            c.cmd(&["SADD", &format!("set{{{t}}}"), "a", "b", "c"])
                .expect("sadd");
        }
    }

    let mut run = Run::new(&format!(
        "[[source]]\nname = \"cl\"\nkind = \"redis\"\nurl = \"{}\"\n",
        source.url()
    ));
    let out = run.cli(&["config", "validate"]);
    assert!(
        out.status.success(),
        "config validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ctl = Arc::new(Control::default());
    let done = || ctl.done.load(Ordering::Relaxed);
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let (port, tags) = (source.nodes[i].port, tags_on(&source, i, 60));
            let ctl = Arc::clone(&ctl);
            std::thread::spawn(move || load(port, tags, ctl))
        })
        .collect();
    let mut middle: Option<(String, Value)> = None;

    run.start(&[]);
    run.wait_covered("cl");
    for round in 0..2 {
        let before = done();
        run.kill9();
        // Writes go on while tidemark is down.
        while done() < before + 300 {
            std::thread::sleep(Duration::from_millis(10));
        }
        run.start(&[]);
        run.wait_covered("cl");
        let log = run.log();
        assert_eq!(
            log.matches("resumed replication (PSYNC continue)").count(),
            3,
            "round {round}: every shard resumes where it was; log:\n{log}"
        );
        assert!(
            !log.contains("taking a new base image"),
            "round {round}: log:\n{log}"
        );
        if round == 0 {
            // A quiet moment in the middle: the source's digest then, to restore to.
            ctl.pause.store(true, Ordering::SeqCst);
            while ctl.paused.load(Ordering::SeqCst) < 3 {
                std::thread::sleep(Duration::from_millis(5));
            }
            wait_caught_up(&run, &source);
            let at = tidemark::time::Timestamp::now().to_rfc3339();
            let d = digest_json(&run, &source.url());
            run.wait_covered("cl");
            ctl.pause.store(false, Ordering::SeqCst);
            middle = Some((at, d));
        }
    }
    ctl.stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    assert!(done() > 900, "the load ran");
    // `latest` is the newest moment every shard covers: once every write is
    // journaled, a coverage past now includes them all.
    wait_caught_up(&run, &source);
    run.wait_covered("cl");
    assert!(run.stop(), "run stops cleanly; log:\n{}", run.log());
    assert_eq!(assert_contiguous_per_shard(&run.dir().join("journal")), 3);

    let want = digest_json(&run, &source.url());
    assert_eq!(parts(&want).len(), 3, "one part per source primary: {want}");
    let out = run.restore("cl", "latest", &target.url(), &["--json"]);
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("restore json");
    let got = &summary["digest"];
    let dry = run.restore("cl", "latest", &target.url(), &["--dry-run"]);
    let explain = format!(
        "restore: {}\nplan:\n{}{}",
        summary["applied"],
        String::from_utf8_lossy(&dry.stdout),
        String::from_utf8_lossy(&dry.stderr)
    );
    if parts(got) != parts(&want) {
        panic!(
            "per source shard: restored {:?}, source {:?}; {explain}\nkeys that differ: {:?}",
            parts(got),
            parts(&want),
            differing_keys(&source, &target, 12)
        );
    }
    assert_eq!(got["overall"], want["overall"], "overall");
    // The target's own digest (its two primaries) has the same overall value.
    let target_digest = digest_json(&run, &target.url());
    assert_eq!(parts(&target_digest).len(), 2);
    assert_eq!(target_digest["overall"], want["overall"]);
    // A second restore is refused without --force.
    let again = run.restore("cl", "latest", &target.url(), &[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    // The quiet moment in the middle, with --force into the same target: each shard
    // cut at that moment (the shards' links append in their own order).
    let (at, then) = middle.expect("middle moment");
    let out = run.restore("cl", &at, &target.url(), &["--json", "--force"]);
    assert!(
        out.status.success(),
        "restore at {at}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("restore json");
    assert_eq!(
        parts(&summary["digest"]),
        parts(&then),
        "at {at}, per source shard"
    );
    assert_eq!(summary["digest"]["overall"], then["overall"]);
    assert_ne!(then["overall"], want["overall"], "the moments differ");
}

#[test]
fn cluster_url_is_checked_without_connecting() {
    let run = Run::new("[[source]]\nname = \"cl\"\nkind = \"redis\"\nurl = \"redis+cluster://u:secret@127.0.0.1:notaport\"\n");
    let out = run.cli(&["config", "validate"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("port"), "{err}");
    assert!(!err.contains("secret"), "{err}");
}

/// Waits until the journal's newest slot map is the cluster's, and each of
/// `movers` has a base image that follows that map.
fn wait_map_followed(run: &Run, c: &Cluster, movers: &[String]) {
    use tidemark::connectors::redis::cluster::topology::{discover, ClusterUrl, SlotMap};
    let url = ClusterUrl::parse(&c.url()).expect("url");
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "capture never followed the resharding; log:\n{}",
            run.log()
        );
        let live = discover(&url, &[], &Default::default()).expect("slot map");
        let j = Journal::open_read_only(&run.dir().join("journal")).expect("journal");
        let src = j.source("cl").expect("source");
        let last = j
            .events(src.id, 1, u64::MAX)
            .filter_map(|e| e.ok())
            .filter_map(|e| match e.event.payload {
                Some(Payload::RedisSlotMap(m)) => Some((e.seq, SlotMap::from_event(&m))),
                _ => None,
            })
            .last();
        if let Some((seq, map)) = last {
            let images = j.images(src.id).expect("images");
            let imaged = movers
                .iter()
                .all(|id| images.iter().any(|m| &m.part == id && m.after_seq >= seq));
            if map.same_slots(&live) && imaged {
                return;
            }
        }
        drop(j);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Moves `slot` from node `from` to node `to` of `c` the way `redis-cli --cluster
/// reshard` does: IMPORTING/MIGRATING, `MIGRATE` of its keys, then the new owner.
/// `between` runs after the keys moved and before the slot changes owner.
fn move_slot(c: &Cluster, slot: u16, from: usize, to: usize, between: &mut dyn FnMut()) {
    let (mut a, mut b) = (c.nodes[from].client(), c.nodes[to].client());
    let (ida, idb) = (
        a.cmd(&["CLUSTER", "MYID"]).expect("myid"),
        b.cmd(&["CLUSTER", "MYID"]).expect("myid"),
    );
    let s = slot.to_string();
    b.cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &ida])
        .expect("importing");
    a.cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &idb])
        .expect("migrating");
    loop {
        let keys = a
            .cmd(&["CLUSTER", "GETKEYSINSLOT", &s, "100"])
            .expect("getkeys");
        if keys.is_empty() {
            break;
        }
        let port = c.nodes[to].port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys.lines());
        a.cmd(&args).expect("migrate");
    }
    between();
    for n in &c.nodes {
        n.client()
            .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &idb])
            .expect("setslot node");
    }
}

#[test]
fn cluster_resharding_is_followed() {
    let Some(bin) = redis70() else { return };
    let mut source = Cluster::start(&bin, 3);
    let target = Cluster::start(&bin, 2);
    let tags = tags_on(&source, 0, 3);
    for (i, node) in source.nodes.iter().enumerate() {
        let mut c = node.client();
        for t in tags_on(&source, i, 30) {
            for n in 0..10 {
                c.cmd(&["SET", &format!("s{n}{{{t}}}"), &format!("{i}-{n}")])
                    .expect("seed");
            }
            c.cmd(&["RPUSH", &format!("l{{{t}}}"), "a", "b"])
                .expect("rpush");
        }
    }
    let mut run = Run::new(&format!(
        "[[source]]\nname = \"cl\"\nkind = \"redis\"\nurl = \"{}\"\n",
        source.url()
    ));
    run.start(&[]);
    run.wait_covered("cl");
    let images = |run: &Run| {
        run.source("cl")
            .and_then(|r| r["base_images"].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(images(&run), 3);

    // Three slots of node 0 (holding keys) move to node 1. In the middle of the
    // first move, a moment that a restore must refuse (keys half moved).
    let mut during = None;
    for (k, t) in tags.iter().enumerate() {
        let slot = key_slot(t.as_bytes());
        {
            let mut mark = || {
                if k == 0 {
                    wait_caught_up(&run, &source);
                    during = Some(tidemark::time::Timestamp::now().to_rfc3339());
                }
            };
            move_slot(&source, slot, 0, 1, &mut mark);
        }
        source.ranges_moved(slot, 1);
    }
    // Capture sees the new map and re-images the two primaries whose slots changed
    // (once or, if it saw the moves apart, more often).
    let movers: Vec<String> = source.nodes[..2]
        .iter()
        .map(|n| n.client().cmd(&["CLUSTER", "MYID"]).expect("myid"))
        .collect();
    wait_map_followed(&run, &source, &movers);
    // Writes after the resharding, to the new owner of a moved slot.
    let mut c1 = source.nodes[1].client();
    c1.cmd(&["SET", &format!("after{{{}}}", tags[0]), "x"])
        .expect("write to the new owner");
    wait_caught_up(&run, &source);
    run.wait_covered("cl");
    assert!(run.stop(), "run stops; log:\n{}", run.log());
    let log = run.log();
    assert!(log.contains("taking a new base image of it"), "{log}");

    let want = digest_json(&run, &source.url());
    let out = run.restore("cl", "latest", &target.url(), &["--json"]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        parts(&summary["digest"]),
        parts(&want),
        "per shard, by the new slot map"
    );
    assert_eq!(summary["digest"]["overall"], want["overall"]);

    let during = during.expect("moment during the move");
    let out = run.restore("cl", &during, &target.url(), &["--force"]);
    assert!(
        !out.status.success(),
        "a moment with keys half moved is refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("moving between shards"), "{err}");
}

impl Cluster {
    /// Records that `slot` now belongs to node `to` (for `node_of`).
    fn ranges_moved(&mut self, slot: u16, to: usize) {
        // Ranges stay contiguous per node in this helper: keep an override list.
        self.moved.push((slot, to));
    }
}
