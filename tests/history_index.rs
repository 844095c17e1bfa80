//! The key index of `history`: indexed history equals the scan of the same range
//! at every stage (nothing indexed, part, all, a colliding entry, after retention,
//! index dropped and rebuilt), and after a `kill -9` of `tidemark run` between
//! append and index (real Redis).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidemark::app::history::search;
use tidemark::config::SourceKind;
use tidemark::event::{ChangeEvent, Payload, RedisCommand};
use tidemark::journal::{Journal, JournalOptions, Progress};
use tidemark::position::Position;
use tidemark::time::Timestamp;

use common::run::Run;
use common::Redis;

const KEYS: u64 = 97;
const SEC: i64 = 1_000_000;

/// Event `i`: mostly `SET k<i%97>`, every 10th a `DEL` of two keys, every 7th an
/// `MSET` of two, at time `t0 + i` ms.
fn event(i: u64, t0: i64) -> ChangeEvent {
    let k = |n: u64| format!("k{}", n % KEYS).into_bytes();
    let args: Vec<Vec<u8>> = if i.is_multiple_of(10) {
        vec![b"DEL".to_vec(), k(i), k(i + 1)]
    } else if i.is_multiple_of(7) {
        vec![
            b"MSET".to_vec(),
            k(i),
            b"1".to_vec(),
            k(i + 3),
            b"2".to_vec(),
        ]
    } else {
        vec![b"SET".to_vec(), k(i), i.to_string().into_bytes()]
    };
    let t = t0 + i as i64 * 1000;
    ChangeEvent {
        position: Some(Position::redis("r1", i + 1)),
        commit_time_us: Some(t),
        capture_time_us: t,
        payload: Some(Payload::Redis(RedisCommand { db: 0, args })),
        ..Default::default()
    }
}

fn image(j: &Arc<Journal>, src: u32, offset: u64, t: i64) {
    j.begin_image(
        src,
        Position::redis("r1", offset),
        Timestamp::from_micros(t),
        "test",
    )
    .unwrap()
    .finish(&Progress::default())
    .unwrap();
}

/// Index and scan agree for a few keys over the whole range and two sub-ranges.
fn assert_same(j: &Journal, stage: &str) -> u64 {
    let mut candidates = 0;
    for key in ["k0", "k1", "k50", "k96", "missing"] {
        for (from, to, within) in [
            (1, u64::MAX, None),
            (1000, 200_000, None),
            (250_000, 290_000, Some("db 0 key")),
        ] {
            let (indexed, how) = search(j, "c", key, within, from, to, true).unwrap();
            let (scanned, scan) = search(j, "c", key, within, from, to, false).unwrap();
            assert_eq!(scan.indexed_through, 0);
            assert!(
                indexed == scanned,
                "{stage}: `{key}` {from}..{to}: {} indexed vs {} scanned versions",
                indexed.len(),
                scanned.len()
            );
            candidates += how.index_candidates;
        }
    }
    candidates
}

#[test]
fn indexed_history_equals_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(&dir.path().join("j"), JournalOptions::default()).unwrap());
    let src = j.register_source("c", SourceKind::Redis).unwrap();
    let t0 = 1_700_000_000 * SEC;
    image(&j, src, 0, t0 - SEC);
    let n = 300_000u64;
    for b in (0..n).collect::<Vec<_>>().chunks(2000) {
        let events: Vec<ChangeEvent> = b.iter().map(|&i| event(i, t0)).collect();
        j.append(src, &events, &Progress::default()).unwrap();
        if b[0] == 280_000 {
            image(&j, src, b[0] + 1, t0 + 280_000 * 1000 + 1);
        }
    }
    assert_eq!(j.keys_indexed_through(src).unwrap(), 0);
    assert_eq!(assert_same(&j, "nothing indexed"), 0);

    let step = j.index_keys(src, 100_000).unwrap();
    assert_eq!(
        (step.events, step.through, step.caught_up),
        (100_000, 100_000, false)
    );
    assert!(assert_same(&j, "part indexed") > 0);
    while !j.index_keys(src, 100_000).unwrap().caught_up {}
    assert_eq!(j.keys_indexed_through(src).unwrap(), n);
    let all = assert_same(&j, "all indexed");

    // A wrong candidate (as a hash collision makes one) shows nothing: seq 3 is
    // `SET k2`; k1 is at 1 (`DEL k0 k1`) and 2 (`SET k1`).
    j.add_key_entry_for_test(src, "k1", 3).unwrap();
    assert_eq!(assert_same(&j, "wrong candidate"), all + 1);
    let (h, how) = search(&j, "c", "k1", None, 1, 10, true).unwrap();
    assert_eq!(h.iter().map(|v| v.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((how.index_candidates, how.events_scanned), (3, 0));

    // Retention to the second image: events up to it go, and the index's whole
    // epochs below it (seq < 2^18) with them.
    let now = Timestamp::from_micros(t0 + 290_000 * 1000);
    let r = j.prune(now, Duration::from_secs(5), false).unwrap();
    assert!(r[0].events_dropped > 262_144, "{r:?}");
    let after = assert_same(&j, "after prune");
    assert!(
        after < all / 2,
        "{after} candidates after prune, {all} before"
    );

    // Index lost: nothing indexed, history scans; the indexer rebuilds it.
    j.drop_key_index_for_test(src).unwrap();
    assert_eq!(j.keys_indexed_through(src).unwrap(), 0);
    assert_eq!(assert_same(&j, "index dropped"), 0);
    while !j.index_keys(src, 100_000).unwrap().caught_up {}
    assert_eq!(j.keys_indexed_through(src).unwrap(), n);
    assert!(assert_same(&j, "rebuilt") > 0);
}

/// `history --json` of `key`: the versions (stdout) and how (stderr).
fn history(run: &Run, key: &str, scan: bool) -> (Vec<Value>, Value) {
    try_history(run, key, scan).unwrap_or_else(|e| panic!("history: {e}"))
}

fn try_history(run: &Run, key: &str, scan: bool) -> Result<(Vec<Value>, Value), String> {
    let mut args = vec!["history", "--source", "cache", "--key", key, "--json"];
    if scan {
        args.push("--scan");
    }
    let out = run.cli(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(err.into_owned());
    }
    let versions: Vec<Value> = serde_json::from_slice(&out.stdout).expect("history --json");
    let how = err
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary on stderr: {err}"));
    Ok((versions, how))
}

/// Waits until `key` has `n` versions in the journal and, with `indexed`, the
/// index covers all of them.
fn wait_versions(run: &Run, key: &str, n: usize, indexed: bool) -> Value {
    let start = Instant::now();
    loop {
        // Before the first capture there is no journal (or no source) yet.
        let (v, how) = try_history(run, key, false).unwrap_or_default();
        let newest = v.last().and_then(|v| v["seq"].as_u64()).unwrap_or(0);
        if v.len() == n && (!indexed || how["indexed_through"].as_u64() >= Some(newest)) {
            return how;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "`{key}`: {} versions, {how}; log:\n{}",
            v.len(),
            run.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_history_same(run: &Run, keys: &[&str]) {
    for key in keys {
        let (indexed, _) = history(run, key, false);
        let (scanned, how) = history(run, key, true);
        assert_eq!(how["indexed_through"], 0);
        assert_eq!(indexed, scanned, "`{key}`");
    }
}

#[test]
fn history_after_kill9_between_append_and_index() {
    let redis = Redis::start_with(&["--repl-ping-replica-period", "1"]);
    let mut run = Run::new(&format!(
        "[[source]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"{}\"\n",
        redis.url()
    ));
    let mut c = redis.client();
    let write = |c: &mut common::RespClient, round: usize| {
        for i in 0..200 {
            let v = format!("{round}-{i}");
            c.cmd(&["SET", &format!("k{}", i % 20), &v]).unwrap();
        }
        c.cmd(&["DEL", "k3", "k4"]).unwrap();
    };
    run.start(&[]);
    run.wait_covered("cache");
    write(&mut c, 1);
    // 10 SETs of k3 and one DEL: all found by the index once it caught up.
    let how = wait_versions(&run, "k3", 11, true);
    assert!(how["indexed_through"].as_u64().unwrap() > 0, "{how}");
    run.kill9();

    // Appended, acknowledged, never indexed; then kill -9.
    std::env::set_var(tidemark_pause(), "1");
    run.start(&[]);
    std::env::remove_var(tidemark_pause());
    run.wait_covered("cache");
    write(&mut c, 2);
    let how = wait_versions(&run, "k3", 22, false);
    run.kill9();
    assert!(
        how["events_scanned"].as_u64().unwrap() >= 201,
        "the tail was not left to the scan: {how}"
    );
    assert_history_same(&run, &["k3", "k7", "k19", "nope"]);

    // The next run indexes the tail; the answers stay the same.
    run.start(&[]);
    run.wait_covered("cache");
    write(&mut c, 3);
    wait_versions(&run, "k3", 33, true);
    assert_history_same(&run, &["k3", "k7", "k19", "nope"]);
    let (v, _) = history(&run, "k3", false);
    let actions: Vec<&str> = v.iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "deleted").count(), 3);
    run.stop();
}

/// The failpoint that keeps `run` from indexing.
fn tidemark_pause() -> &'static str {
    "TIDEMARK_FAILPOINT_KEY_INDEX_PAUSE"
}
