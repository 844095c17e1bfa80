//! Redis capture and point-in-time restore against real servers: every type and
//! encoding in the base image, a command workload (expiries, MULTI/EXEC, Lua,
//! functions, SELECT, FLUSHALL, values over 10 MB) journaled as it runs, and
//! restores at several moments compared with the source at those moments, by
//! `tidemark digest` and by the server's own `DEBUG DIGEST`.
//!
//! Servers: Redis 7.0 (`TIDEMARK_REDIS_SERVER`, default `redis-server`), Redis 6.2
//! (`TIDEMARK_REDIS62_SERVER`), Valkey 8 (`TIDEMARK_VALKEY8_SERVER`), Redis 7.4
//! (`TIDEMARK_REDIS74_SERVER`), Valkey 9 (`TIDEMARK_VALKEY9_SERVER`); a missing one
//! prints SKIP naming the variable.

mod common;

use common::bin_client::{noise, Client};
use common::rdb_scenario::{populate, Flavor, REDIS62, REDIS70, REDIS74, VALKEY8};
use common::tidemark::Tidemark;
use common::{redis70, server_bin, Redis};
use tidemark::connectors::redis::digest::digest_url;
use tidemark::time::Timestamp;

/// Server arguments for a flavour: pings every second (coverage), DEBUG on.
fn server_args(f: &Flavor) -> Vec<&'static str> {
    let mut a = vec!["--repl-ping-replica-period", "1"];
    if f.modern {
        a.extend(["--enable-debug-command", "yes"]);
    }
    a
}

fn debug_digest(c: &mut Client) -> String {
    String::from_utf8_lossy(&c.cmd(&["DEBUG", "DIGEST"]).bulk()).into_owned()
}

/// One round of writes; `round` varies what is written.
fn workload(c: &mut Client, f: &Flavor, round: u32) {
    let r = round.to_string();
    c.cmd(&["SELECT", "0"]);
    for i in 0..200 {
        let k = format!("w:{round}:{i}");
        c.cmd(&["SET", &k, &format!("v{i}")]);
        c.cmd(&["INCRBY", "w:counter", "3"]);
        c.cmd(&["LPUSH", "w:list", &k]);
        c.cmd(&["SADD", "w:set", &k]);
        c.cmd(&["ZADD", "w:zset", &format!("{}.25", i), &k]);
        c.cmd(&["HSET", "w:hash", &k, &r]);
    }
    c.cmd(&["APPEND", "str:plain", "!"]);
    c.cmd(&["RPOP", "w:list"]);
    c.cmd(&["SREM", "w:set", &format!("w:{round}:7")]);
    c.cmd(&["ZINCRBY", "w:zset", "1.5", &format!("w:{round}:8")]);
    c.cmd(&["HDEL", "w:hash", &format!("w:{round}:9")]);
    c.cmd(&["XADD", "w:stream", "*", "round", &r]);
    c.cmd(&["XADD", "w:stream", "MAXLEN", "5", "*", "round", &r]);
    // Expiries: far (kept), already past (deleted), short (expires meanwhile).
    c.cmd(&["SET", &format!("ttl:far:{r}"), "x", "EX", "100000"]);
    c.cmd(&["PEXPIREAT", "w:counter", "4102444800000"]);
    c.cmd(&["SET", &format!("ttl:short:{r}"), "x", "PX", "50"]);
    c.cmd(&["EXPIRE", &format!("w:{round}:3"), "0"]);
    c.cmd(&["PERSIST", "w:counter"]);
    // Transactions and scripts.
    c.cmd(&["MULTI"]);
    c.cmd(&["SET", "tx:a", &r]);
    c.cmd(&["INCR", "tx:n"]);
    c.cmd(&["LPUSH", "tx:l", &r]);
    c.cmd(&["EXEC"]);
    c.cmd(&[
        "EVAL",
        "redis.call('SET', KEYS[1], ARGV[1]); redis.call('RPUSH', KEYS[2], ARGV[1]); return 1",
        "2",
        "lua:s",
        "lua:l",
        &r,
    ]);
    if f.modern {
        c.cmd(&[
            "FUNCTION",
            "LOAD",
            "REPLACE",
            "#!lua name=wlib\nredis.register_function('wset', function(keys, args) redis.call('SET', keys[1], args[1]); return redis.call('INCR', keys[2]) end)",
        ]);
        c.cmd(&["FCALL", "wset", "2", "fn:s", "fn:n", &r]);
    }
    if f.hfe {
        c.cmd(&["HSET", "w:hfe", "a", "1", "b", "2"]);
        c.cmd(&["HPEXPIREAT", "w:hfe", "4102444800000", "FIELDS", "1", "a"]);
    }
    // Other databases.
    for db in ["1", "2", "3"] {
        c.cmd(&["SELECT", db]);
        c.cmd(&["SET", &format!("db{db}:{r}"), db]);
        c.cmd(&["HSET", "h", &r, db]);
    }
    c.cmd(&["SELECT", "2"]);
    c.cmd(&["MOVE", &format!("db2:{r}"), "5"]);
    c.cmd(&["SELECT", "0"]);
    match round {
        1 => {
            // A value over 10 MB through the command stream.
            c.raw(&[b"SET", b"big:stream", &noise(11 << 20, 9)]);
            c.cmd(&["SELECT", "3"]);
            c.cmd(&["FLUSHDB"]);
            c.cmd(&["SELECT", "0"]);
        }
        2 => {
            c.cmd(&["FLUSHALL"]);
            c.cmd(&["SET", "after:flushall", "1"]);
            c.cmd(&["SELECT", "4"]);
            c.cmd(&["RPUSH", "after:list", "a", "b"]);
            c.cmd(&["SELECT", "0"]);
        }
        _ => {}
    }
}

/// A moment recorded while the workload pauses.
struct Moment {
    at: Timestamp,
    digest: String,
    keys: u64,
    debug: String,
}

fn record(tm: &Tidemark, primary: &Redis, c: &mut Client) -> Moment {
    let at = tm.wait_caught_up(&mut primary.client());
    let d = digest_url(&primary.url()).expect("digest source");
    Moment {
        at,
        digest: d.digest,
        keys: d.keys,
        debug: debug_digest(c),
    }
}

/// Base image of every type and encoding, then a workload in rounds, then a
/// restore at each recorded moment into a fresh server of the same version.
fn capture_and_restore(bin: &str, f: &Flavor) {
    let args = server_args(f);
    let primary = Redis::start_bin(bin, &args);
    let mut c = Client::connect(primary.port).expect("connect");
    populate(&mut c, f);
    c.cmd(&["SELECT", "0"]);
    // A value over 10 MB in the base image too.
    c.raw(&[b"SET", b"big:image", &noise(12 << 20, 5)]);
    let mut tm = Tidemark::new(&primary.url());
    tm.start();
    let mut moments = vec![record(&tm, &primary, &mut c)];
    for round in 0..3 {
        workload(&mut c, f, round);
        moments.push(record(&tm, &primary, &mut c));
    }
    tm.stop();
    assert!(tm.log(1).contains("base image taken"), "{}", tm.log(1));

    for (i, m) in moments.iter().enumerate() {
        let target = Redis::start_bin(bin, &args);
        let out = tm.cli(&[
            "restore",
            "--source",
            "cache",
            "--at",
            &m.at.to_rfc3339(),
            "--target",
            &target.url(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "restore {i} failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("restored "), "{stdout}");
        let d = digest_url(&target.url()).expect("digest target");
        // Every restore ends with the target's digest, as `tidemark digest` computes it.
        assert!(
            stdout.contains(&format!("digest of the restored database: {}", d.digest)),
            "{stdout}"
        );
        assert_eq!(
            (d.digest.as_str(), d.keys),
            (m.digest.as_str(), m.keys),
            "moment {i}: tidemark digest differs"
        );
        let mut tc = Client::connect(target.port).expect("connect target");
        assert_eq!(
            debug_digest(&mut tc),
            m.debug,
            "moment {i}: DEBUG DIGEST differs"
        );
        eprintln!("moment {i}: {} keys, digest {} equal", m.keys, m.digest);
    }
    // A second restore into the now non-empty target is refused without --force.
    let target = Redis::start_bin(bin, &args);
    target.client().cmd(&["SET", "x", "1"]).expect("set");
    let at = moments[1].at.to_rfc3339();
    let out = tm.cli(&[
        "restore",
        "--source",
        "cache",
        "--at",
        &at,
        "--target",
        &target.url(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let out = tm.cli(&[
        "restore",
        "--source",
        "cache",
        "--at",
        &at,
        "--target",
        &target.url(),
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        digest_url(&target.url()).expect("digest").digest,
        moments[1].digest
    );
}

#[test]
fn redis_7_0_capture_and_restore_at_moments() {
    let Some(bin) = redis70() else { return };
    capture_and_restore(&bin, &REDIS70);
}

#[test]
fn redis_6_2_capture_and_restore_at_moments() {
    let Some(bin) = server_bin("TIDEMARK_REDIS62_SERVER", None) else {
        return;
    };
    capture_and_restore(&bin, &REDIS62);
}

#[test]
fn valkey_8_capture_and_restore_at_moments() {
    let Some(bin) = server_bin("TIDEMARK_VALKEY8_SERVER", None) else {
        return;
    };
    capture_and_restore(&bin, &VALKEY8);
}

#[test]
fn redis_7_4_capture_and_restore_at_moments() {
    let Some(bin) = server_bin("TIDEMARK_REDIS74_SERVER", None) else {
        return;
    };
    capture_and_restore(&bin, &REDIS74);
}

/// Valkey 9 writes `VALKEY080` dump files, but to a replica that announces no
/// newer capability it sends a Redis-format RDB: capture works.
#[test]
fn valkey_9_capture_and_restore_at_moments() {
    let Some(bin) = server_bin("TIDEMARK_VALKEY9_SERVER", None) else {
        return;
    };
    capture_and_restore(&bin, &VALKEY8);
}
