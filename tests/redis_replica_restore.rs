//! Restores with replica semantics: tidemark serves the target the replication
//! protocol (the default, `--apply-as primary`), against real servers.
//!
//! The workload is what replaying as a client gets wrong: keys whose absolute
//! expiry lies between the restored moment and the restore (a client replay loses
//! them mid-way, and a later `RENAME` of one fails), stream trims with `LIMIT` and
//! `MINID` (propagated in a form a client may not send), `RESTORE` payloads, Lua
//! and functions, `SWAPDB`, `FLUSHDB` in another database, `MOVE`, `COPY`. Five
//! moments are restored; at each the target's `DEBUG DIGEST`, read by the restore
//! while the target still follows tidemark, equals the source's at that moment.
//!
//! Servers: Redis 7.0 (`redis-server`), 6.2 (`TIDEMARK_REDIS62_SERVER`), 7.4
//! (`TIDEMARK_REDIS74_SERVER`), Valkey 8 (`TIDEMARK_VALKEY8_SERVER`) and 9
//! (`TIDEMARK_VALKEY9_SERVER`); a missing one is a failure in CI.

mod common;

use std::time::Duration;

use common::bin_client::{now_ms, Client};
use common::rdb_scenario::{Flavor, REDIS62, REDIS70, REDIS74, VALKEY8};
use common::tidemark::Tidemark;
use common::{redis70, server_bin, Redis};
use tidemark::connectors::redis::digest::digest_url;
use tidemark::time::Timestamp;

/// Small stream nodes, so approximate trims remove whole nodes; DEBUG on.
fn server_args(f: &Flavor) -> Vec<&'static str> {
    let mut a = vec![
        "--repl-ping-replica-period",
        "1",
        "--stream-node-max-entries",
        "4",
    ];
    if f.modern {
        a.extend(["--enable-debug-command", "yes"]);
    }
    a
}

fn debug_digest(c: &mut Client) -> String {
    String::from_utf8_lossy(&c.cmd(&["DEBUG", "DIGEST"]).bulk()).into_owned()
}

/// A moment recorded while the workload pauses.
struct Moment {
    at: Timestamp,
    debug: String,
    keys: u64,
}

fn record(tm: &Tidemark, primary: &Redis, c: &mut Client) -> Moment {
    let at = tm.wait_caught_up(&mut primary.client());
    let debug = debug_digest(c);
    let d = digest_url(&primary.url()).expect("digest source");
    Moment {
        at,
        debug,
        keys: d.keys,
    }
}

/// One round of writes; `soon` is the absolute expiry (Unix ms) of its volatile
/// keys: after every moment is recorded, before the restores.
fn round(c: &mut Client, f: &Flavor, r: u32, soon: i64) {
    let s = r.to_string();
    c.cmd(&["SELECT", "0"]);
    // Keys that expire after the moment but before the restore, written and then
    // used: a client replay sees them vanish under it.
    for i in 0..20 {
        let k = format!("exp:{r}:{i}");
        c.cmd(&["SET", &k, "v", "PXAT", &(soon + i).to_string()]);
        c.cmd(&["APPEND", &k, "w"]);
    }
    c.cmd(&["HSET", &format!("exph:{r}"), "f", "1"]);
    c.cmd(&["PEXPIREAT", &format!("exph:{r}"), &soon.to_string()]);
    c.cmd(&["HINCRBY", &format!("exph:{r}"), "f", "2"]);
    c.cmd(&["RENAME", &format!("exph:{r}"), &format!("exph:{r}:renamed")]);
    c.cmd(&["SET", &format!("far:{r}"), &s, "PXAT", "4102444800000"]);
    c.cmd(&["RENAME", &format!("far:{r}"), &format!("far:{r}:renamed")]);
    // Streams trimmed with LIMIT and MINID, approximately and exactly.
    for i in 0..40 {
        c.cmd(&["XADD", "st", "*", "r", &s, "i", &i.to_string()]);
    }
    c.cmd(&[
        "XADD", "st", "MAXLEN", "~", "24", "LIMIT", "8", "*", "r", &s,
    ]);
    c.cmd(&["XTRIM", "st", "MAXLEN", "~", "12", "LIMIT", "4"]);
    let ids = c.cmd(&["XRANGE", "st", "-", "+", "COUNT", "6"]).array();
    let minid = String::from_utf8_lossy(&ids[5].array()[0].bulk()).into_owned();
    c.cmd(&["XTRIM", "st", "MINID", "~", &minid, "LIMIT", "4"]);
    c.cmd(&["XTRIM", "st", "MINID", "=", &minid]);
    // DUMP / RESTORE payloads.
    c.cmd(&["RPUSH", &format!("src:{r}"), "a", "b", &s]);
    let payload = c.raw(&[b"DUMP", format!("src:{r}").as_bytes()]).bulk();
    c.raw(&[
        b"RESTORE",
        format!("restored:{r}").as_bytes(),
        b"0",
        &payload,
    ]);
    let abs = (now_ms() + 3_600_000).to_string();
    c.raw(&[
        b"RESTORE",
        format!("restored:{r}:ttl").as_bytes(),
        abs.as_bytes(),
        &payload,
        b"ABSTTL",
    ]);
    // Lua, functions.
    c.cmd(&[
        "EVAL",
        "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])",
        "2",
        "lua:s",
        "lua:n",
        &s,
    ]);
    if f.modern {
        c.cmd(&[
            "FUNCTION",
            "LOAD",
            "REPLACE",
            "#!lua name=rlib\nredis.register_function('rset', function(keys, args) redis.call('SET', keys[1], args[1]); return redis.call('INCR', keys[2]) end)",
        ]);
        c.cmd(&["FCALL", "rset", "2", "fn:s", "fn:n", &s]);
    }
    if f.hfe {
        c.cmd(&["HSET", "hfe", "a", &s, "b", &s]);
        c.cmd(&["HPEXPIREAT", "hfe", "4102444800000", "FIELDS", "1", "a"]);
    }
    // Databases: COPY, MOVE, SWAPDB, FLUSHDB elsewhere.
    c.cmd(&["COPY", &format!("src:{r}"), &format!("copy:{r}")]);
    c.cmd(&["COPY", &format!("src:{r}"), &format!("copy:{r}"), "DB", "2"]);
    c.cmd(&["SET", &format!("mv:{r}"), &s]);
    c.cmd(&["MOVE", &format!("mv:{r}"), "3"]);
    c.cmd(&["SELECT", "1"]);
    c.cmd(&["SET", &format!("db1:{r}"), &s]);
    c.cmd(&["SELECT", "0"]);
    c.cmd(&["SWAPDB", "1", "2"]);
    if r % 2 == 1 {
        c.cmd(&["SELECT", "3"]);
        c.cmd(&["FLUSHDB"]);
        c.cmd(&["SELECT", "0"]);
    }
}

fn restore(tm: &Tidemark, at: &Timestamp, target: &Redis, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["restore", "--source", "cache", "--at", &at.to_rfc3339()]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(["--target".into(), target.url()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tm.cli(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn replica_semantics(bin: &str, f: &Flavor) {
    let args = server_args(f);
    let primary = Redis::start_bin(bin, &args);
    let mut c = Client::connect(primary.port).expect("connect");
    // A base image with a stream, a volatile key and a hash.
    for i in 0..10 {
        c.cmd(&["XADD", "st", "*", "base", &i.to_string()]);
    }
    c.cmd(&["SET", "base:ttl", "x", "PXAT", "4102444800000"]);
    c.cmd(&["HSET", "base:h", "a", "1"]);
    let mut tm = Tidemark::new(&primary.url());
    tm.start();
    let mut moments = vec![record(&tm, &primary, &mut c)];
    // Recording the moments takes a few seconds; the volatile keys outlive it
    // (so each moment holds them), and the restores wait until they are gone.
    let soon = now_ms() + 12_000;
    for r in 0..4 {
        round(&mut c, f, r, soon);
        moments.push(record(&tm, &primary, &mut c));
    }
    tm.stop();
    let recorded = now_ms();
    assert!(
        recorded < soon,
        "recording the moments took {} ms, past the keys' expiry: nothing to prove",
        recorded - (soon - 12_000)
    );
    let wait = soon + 300 - now_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    for (i, m) in moments.iter().enumerate() {
        let target = Redis::start_bin(bin, &args);
        let (ok, out) = restore(&tm, &m.at, &target, &[]);
        assert!(ok, "restore {i} failed:\n{out}");
        assert!(
            out.contains("applied as the target's primary"),
            "moment {i}:\n{out}"
        );
        assert!(
            out.contains(&format!(
                "DEBUG DIGEST of the target at the moment (read before its promotion): {}",
                m.debug
            )),
            "moment {i}: DEBUG DIGEST differs from the source's {}:\n{out}",
            m.debug
        );
        // Keys whose expiry fell between the moment and the restore are held until
        // the promotion, left out of the digest and said so.
        let d = digest_url(&target.url()).expect("digest target");
        let expired = m
            .keys
            .checked_sub(d.keys)
            .expect("the target holds more keys");
        if i > 0 {
            assert!(expired >= 20, "moment {i}: {expired} keys expired since");
            assert!(
                out.contains(&format!("{expired} keys of the moment have expired since")),
                "moment {i}:\n{out}"
            );
        }
        let mut tc = Client::connect(target.port).expect("connect target");
        assert_eq!(
            tc.cmd(&["EXISTS", "exp:0:0"]).int(),
            0,
            "expired on promotion"
        );
        let role = String::from_utf8_lossy(&tc.cmd(&["INFO", "replication"]).bulk()).into_owned();
        assert!(role.contains("role:master"), "target promoted: {role}");
        for (name, was) in [("masterauth", ""), ("repl-diskless-load", "disabled")] {
            let v = tc.cmd(&["CONFIG", "GET", name]).array();
            assert_eq!(v[1].bulk(), was.as_bytes(), "{name} put back");
        }
        eprintln!(
            "moment {i}: {} keys, DEBUG DIGEST {} equal",
            m.keys, m.debug
        );
    }
    // The same history replayed as a client fails: the expired key's RENAME, or
    // the trim a client may not send.
    let target = Redis::start_bin(bin, &args);
    let last = moments.last().expect("moments");
    let (ok, out) = restore(&tm, &last.at, &target, &["--apply-as", "client"]);
    assert!(
        !ok,
        "a client replay of this history was expected to fail:\n{out}"
    );
    assert!(
        out.contains("no such key") || out.contains("LIMIT"),
        "client replay failure names the refused command:\n{out}"
    );
}

#[test]
fn redis_7_0_restores_with_replica_semantics() {
    let Some(bin) = redis70() else { return };
    replica_semantics(&bin, &REDIS70);
}

#[test]
fn redis_6_2_restores_with_replica_semantics() {
    let Some(bin) = server_bin("TIDEMARK_REDIS62_SERVER", None) else {
        return;
    };
    replica_semantics(&bin, &REDIS62);
}

#[test]
fn redis_7_4_restores_with_replica_semantics() {
    let Some(bin) = server_bin("TIDEMARK_REDIS74_SERVER", None) else {
        return;
    };
    replica_semantics(&bin, &REDIS74);
}

#[test]
fn valkey_8_restores_with_replica_semantics() {
    let Some(bin) = server_bin("TIDEMARK_VALKEY8_SERVER", None) else {
        return;
    };
    replica_semantics(&bin, &VALKEY8);
}

#[test]
fn valkey_9_restores_with_replica_semantics() {
    let Some(bin) = server_bin("TIDEMARK_VALKEY9_SERVER", None) else {
        return;
    };
    replica_semantics(&bin, &VALKEY8);
}

/// A target whose ACL forbids `REPLICAOF` cannot follow tidemark: the default
/// restore replays as a client and says so; `--apply-as primary` refuses and
/// changes nothing.
#[test]
fn a_target_that_cannot_follow_falls_back_to_client_replay() {
    let Some(bin) = redis70() else { return };
    let args = server_args(&REDIS70);
    let primary = Redis::start_bin(&bin, &args);
    let mut c = Client::connect(primary.port).expect("connect");
    c.cmd(&["SET", "a", "1"]);
    let mut tm = Tidemark::new(&primary.url());
    tm.start();
    c.cmd(&["SET", "b", "2"]);
    let m = record(&tm, &primary, &mut c);
    tm.stop();
    let target = Redis::start_bin(&bin, &args);
    let mut tc = Client::connect(target.port).expect("connect target");
    tc.cmd(&["ACL", "SETUSER", "default", "-replicaof", "-slaveof"]);
    let (ok, out) = restore(&tm, &m.at, &target, &["--apply-as", "primary"]);
    assert!(!ok, "{out}");
    assert!(out.contains("refused REPLICAOF"), "{out}");
    assert!(out.contains("--apply-as client"), "{out}");
    assert_eq!(tc.cmd(&["DBSIZE"]).int(), 0, "nothing changed");
    let (ok, out) = restore(&tm, &m.at, &target, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("applied as a client"), "{out}");
    assert!(out.contains("cannot follow tidemark"), "{out}");
    assert_eq!(tc.cmd(&["DEBUG", "DIGEST"]).bulk(), m.debug.as_bytes());
}

/// History the target cannot hold is refused by name before anything changes.
#[test]
fn commands_the_target_does_not_know_are_refused_by_name() {
    let Some(bin74) = server_bin("TIDEMARK_REDIS74_SERVER", None) else {
        return;
    };
    let Some(bin70) = redis70() else { return };
    let primary = Redis::start_bin(&bin74, &server_args(&REDIS74));
    let mut c = Client::connect(primary.port).expect("connect");
    c.cmd(&["SET", "a", "1"]);
    let mut tm = Tidemark::new(&primary.url());
    tm.start();
    tm.wait_caught_up(&mut primary.client());
    c.cmd(&["HSET", "h", "f", "1", "g", "2"]);
    c.cmd(&["HPEXPIRE", "h", "100000000", "FIELDS", "1", "f"]);
    let m = record(&tm, &primary, &mut c);
    tm.stop();
    let target = Redis::start_bin(&bin70, &server_args(&REDIS70));
    let (ok, out) = restore(&tm, &m.at, &target, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("does not know: HPEXPIRE"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    let mut tc = Client::connect(target.port).expect("connect target");
    assert_eq!(tc.cmd(&["DBSIZE"]).int(), 0);
}

/// A command the target knows but refuses from its primary (a `RESTORE` payload
/// of a newer RDB version) cannot be answered to tidemark; the error counters
/// show it, and the restore fails naming the kind.
#[test]
fn a_command_the_replica_refuses_fails_the_restore() {
    let Some(bin74) = server_bin("TIDEMARK_REDIS74_SERVER", None) else {
        return;
    };
    let Some(bin70) = redis70() else { return };
    let primary = Redis::start_bin(&bin74, &server_args(&REDIS74));
    let mut c = Client::connect(primary.port).expect("connect");
    c.cmd(&["RPUSH", "l", "a", "b"]);
    let mut tm = Tidemark::new(&primary.url());
    tm.start();
    tm.wait_caught_up(&mut primary.client());
    let payload = c.raw(&[b"DUMP", b"l"]).bulk();
    c.raw(&[b"RESTORE", b"l2", b"0", &payload]);
    c.cmd(&["SET", "after", "1"]);
    let m = record(&tm, &primary, &mut c);
    tm.stop();
    let target = Redis::start_bin(&bin70, &server_args(&REDIS70));
    let (ok, out) = restore(&tm, &m.at, &target, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the target refused commands of the replicated history (ERR: 1"),
        "{out}"
    );
    assert!(out.contains("--force"), "{out}");
    let mut tc = Client::connect(target.port).expect("connect target");
    let role = String::from_utf8_lossy(&tc.cmd(&["INFO", "replication"]).bulk()).into_owned();
    assert!(
        role.contains("role:master"),
        "promoted back after the failure: {role}"
    );
}
