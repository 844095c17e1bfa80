//! Integration tests against real servers: write every type in small and
//! large encodings, SAVE, parse dump.rdb and compare logical content.
//!
//! Binaries: Redis 7.0 from `TIDEMARK_REDIS_SERVER` (default `redis-server`),
//! Redis 6.2 from `TIDEMARK_REDIS62_SERVER`, Redis 7.4 from
//! `TIDEMARK_REDIS74_SERVER`, Valkey 8 from `TIDEMARK_VALKEY8_SERVER`, Valkey 9
//! from `TIDEMARK_VALKEY9_SERVER` (`.ci/run` sets them). A test whose binary is
//! absent prints `SKIP: ...` naming the variable and passes.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use common::bin_client::*;
use common::rdb_scenario::*;
use common::{redis70, server_bin, Redis};
use tidemark::connectors::redis::rdb::*;
fn check_stream(s: &Stream, f: &Flavor, e: &Expected) {
    let ids: Vec<StreamId> = s.entries.iter().map(|x| x.id).collect();
    let live: Vec<StreamId> = [1, 2, 3, 5, 6, 7, 8, 9].iter().map(|&i| sid(i)).collect();
    assert_eq!(ids, live);
    for entry in &s.entries {
        let i = 2 * (entry.id.ms - 1000) + entry.id.seq;
        let want = if i == 3 || i == 7 {
            vec![(b("other"), format!("x{i}").into_bytes())]
        } else {
            vec![
                (b("name"), format!("n{i}").into_bytes()),
                (b("n"), i.to_string().into_bytes()),
            ]
        };
        assert_eq!(entry.fields, want, "entry {}", entry.id);
    }
    assert_eq!(s.length, 8);
    assert_eq!(s.last_id, sid(10));
    assert_eq!(s.first_id, sid(1));
    if f.stream_type >= 19 {
        assert_eq!(s.max_deleted_id, sid(10));
        assert_eq!(s.entries_added, 10);
    } else {
        assert_eq!(s.entries_added, 8);
    }
    assert_eq!(s.groups.len(), 2);
    let g1 = &s.groups[0];
    assert_eq!(g1.name, b("g1"));
    assert_eq!(g1.last_id, sid(6));
    assert_eq!(
        g1.entries_read,
        e.entries_read.get(&b("g1")).copied().flatten()
    );
    let pel: Vec<(StreamId, u64)> = g1.pel.iter().map(|p| (p.id, p.delivery_count)).collect();
    assert_eq!(
        pel,
        vec![(sid(1), 1), (sid(3), 5), (sid(5), 1), (sid(6), 1)]
    );
    for p in &g1.pel {
        if p.id == sid(3) {
            assert_eq!(p.delivery_time_ms, 1_700_000_000_000);
        } else {
            assert!((e.t0..=e.t1).contains(&p.delivery_time_ms), "{p:?}");
        }
    }
    let names: Vec<&[u8]> = g1.consumers.iter().map(|c| c.name.as_slice()).collect();
    assert_eq!(names, vec![&b"c1"[..], b"c2", b"c3"]);
    assert_eq!(g1.consumers[0].pel, vec![sid(1)]);
    assert_eq!(g1.consumers[1].pel, vec![sid(3), sid(5), sid(6)]);
    assert!(g1.consumers[2].pel.is_empty());
    for c in &g1.consumers {
        assert!((e.t0..=e.t1 + 5000).contains(&c.seen_time_ms), "{c:?}");
        assert_eq!(c.active_time_ms.is_some(), f.stream_type >= 21);
    }
    let g2 = &s.groups[1];
    assert_eq!((g2.name.as_slice(), g2.last_id), (&b"g2"[..], sid(10)));
    assert!(g2.pel.is_empty() && g2.consumers.is_empty());
    assert_eq!(
        g2.entries_read,
        e.entries_read.get(&b("g2")).copied().flatten()
    );
    if f.modern {
        assert_eq!(e.entries_read.len(), 2, "XINFO GROUPS checked");
        assert_eq!(g2.entries_read, Some(10));
    }
}

fn parse_file(path: &Path) -> (Vec<Item>, u32) {
    let file = std::fs::File::open(path).expect("open dump");
    let mut p = RdbParser::from_read(file);
    let items: Vec<Item> = p.by_ref().collect::<Result<_>>().expect("parse dump.rdb");
    assert!(p.is_finished());
    let v = p.version().expect("version");
    (items, v)
}

fn verify(items: &[Item], version: u32, f: &Flavor, e: &Expected) {
    assert_eq!(version, f.rdb_version);
    let mut got: BTreeMap<(u64, Vec<u8>), Entry> = BTreeMap::new();
    let mut functions = Vec::new();
    let mut aux = BTreeMap::new();
    let mut dbs = Vec::new();
    for it in items {
        match it {
            Item::Entry(en) => {
                let k = (en.db, en.key.clone());
                assert!(got.insert(k, en.clone()).is_none(), "duplicate key");
            }
            Item::FunctionLibrary(code) => functions.push(code.clone()),
            Item::Aux { key, value } => {
                aux.insert(key.clone(), value.clone());
            }
            Item::SelectDb(n) => dbs.push(*n),
            Item::ResizeDb { .. } => {}
        }
    }
    assert!(
        aux.contains_key(&b("redis-ver")) || aux.contains_key(&b("valkey-ver")),
        "{aux:?}"
    );
    assert_eq!(dbs, vec![0, 1, 5]);
    assert_eq!(functions, e.function.iter().cloned().collect::<Vec<_>>());
    for ((db, key), w) in &e.keys {
        let en = got
            .remove(&(*db, key.clone()))
            .unwrap_or_else(|| panic!("missing key {:?}", String::from_utf8_lossy(key)));
        let name = String::from_utf8_lossy(key);
        assert_eq!(en.expire_at_ms, w.expire, "expiry of {name}");
        assert_eq!(en.rdb_type, w.rdb_type, "rdb type of {name}");
        assert!(normalize(en.value) == w.value, "value of {name}");
    }
    let s1 = got.remove(&(0, b("stream:s1"))).expect("stream:s1");
    assert_eq!(s1.rdb_type, f.stream_type);
    let Value::Stream(s) = &s1.value else {
        panic!("not a stream")
    };
    check_stream(s, f, e);
    let empty = got.remove(&(0, b("stream:empty"))).expect("stream:empty");
    let Value::Stream(s) = &empty.value else {
        panic!("not a stream")
    };
    assert!(s.entries.is_empty() && s.groups.is_empty());
    assert_eq!((s.length, s.last_id), (0, StreamId::new(5, 5)));
    assert!(
        got.is_empty(),
        "unexpected keys: {:?}",
        got.keys().collect::<Vec<_>>()
    );
}

/// Truncations and byte flips of a real dump must be errors, never panics.
fn robustness(dump: &[u8]) {
    let step = (dump.len() / 300).max(1);
    for cut in (0..dump.len()).step_by(step) {
        assert!(
            RdbParser::new(&dump[..cut])
                .collect::<Result<Vec<_>>>()
                .is_err(),
            "cut {cut}"
        );
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..400 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pos = 9 + (seed as usize) % (dump.len() - 9);
        let mut c = dump.to_vec();
        c[pos] ^= (seed >> 32) as u8 | 1;
        let res: Result<Vec<_>> = RdbParser::new(&c[..]).collect();
        assert!(res.is_err(), "flip at {pos} went unnoticed");
    }
}

/// A reader returning at most 7 bytes per call, like a slow socket.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(7).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn run_scenario(bin: &str, extra: &[&str], f: &Flavor) {
    let server = Redis::start_bin(bin, extra);
    let mut c = Client::connect(server.port).expect("connect");
    let e = populate(&mut c, f);
    c.cmd(&["SAVE"]);
    let (items, version) = parse_file(&server.dir().join("dump.rdb"));
    verify(&items, version, f, &e);

    let dump = std::fs::read(server.dir().join("dump.rdb")).expect("read dump");
    // Tiny reads through a tiny buffer give identical items.
    let trickled: Vec<Item> = RdbParser::new(std::io::BufReader::with_capacity(16, Trickle(&dump)))
        .collect::<Result<_>>()
        .expect("trickle parse");
    assert!(trickled == items);
    robustness(&dump);

    // Full sync as a replica over the socket: parse the payload straight
    // from the connection, then read the replication stream that follows.
    let repl = Client::connect(server.port).expect("connect");
    let (mut r, mut w) = repl.into_parts();
    std::io::Write::write_all(&mut w, &encode_command(&[b"PSYNC", b"?", b"-1"])).expect("psync");
    let line = read_line(&mut r).expect("fullresync");
    assert!(line.starts_with("+FULLRESYNC"), "{line}");
    let len: u64 = loop {
        let l = read_line(&mut r).expect("payload header");
        if let Some(n) = l.strip_prefix('$') {
            break n.parse().expect("payload length");
        }
        assert!(l.is_empty(), "unexpected line {l:?}");
    };
    let mut p = RdbParser::new(&mut r);
    let synced: Vec<Item> = p
        .by_ref()
        .collect::<Result<_>>()
        .expect("parse sync payload");
    assert_eq!(p.offset(), len);
    let count = |v: &[Item]| v.iter().filter(|i| matches!(i, Item::Entry(_))).count();
    assert_eq!(count(&synced), count(&items));
    c.cmd(&["SET", "after-sync", "1"]);
    let next = read_line(&mut r).expect("replication stream");
    assert!(
        next.starts_with('*'),
        "replication stream starts with {next:?}"
    );
}

#[test]
fn redis_7_0_all_types() {
    let Some(bin) = redis70() else {
        return;
    };
    run_scenario(&bin, &["--enable-debug-command", "yes"], &REDIS70);
}

#[test]
fn redis_6_2_all_types() {
    let Some(bin) = server_bin("TIDEMARK_REDIS62_SERVER", None) else {
        return;
    };
    run_scenario(&bin, &[], &REDIS62);
}

#[test]
fn valkey_8_all_types() {
    let Some(bin) = server_bin("TIDEMARK_VALKEY8_SERVER", None) else {
        return;
    };
    run_scenario(&bin, &["--enable-debug-command", "yes"], &VALKEY8);
}

#[test]
fn redis_7_4_all_types_and_hash_field_expiry() {
    let Some(bin) = server_bin("TIDEMARK_REDIS74_SERVER", None) else {
        return;
    };
    run_scenario(&bin, &["--enable-debug-command", "yes"], &REDIS74);
}

#[test]
fn redis_7_0_strings_over_10_mb() {
    let Some(bin) = redis70() else {
        return;
    };
    let server = Redis::start_bin(&bin, &[]);
    let mut c = Client::connect(server.port).expect("connect");
    let raw = noise(12 << 20, 42);
    let packed = b"0123456789abcdef".repeat((11 << 20) / 16);
    c.raw(&[b"SET", b"big:noise", &raw]);
    c.raw(&[b"SET", b"big:lzf", &packed]);
    c.cmd(&["SAVE"]);
    let size = std::fs::metadata(server.dir().join("dump.rdb"))
        .expect("stat")
        .len();
    assert!(
        size < (13 << 20),
        "LZF must have compressed big:lzf ({size} bytes)"
    );
    let (items, _) = parse_file(&server.dir().join("dump.rdb"));
    let mut found = 0;
    for it in items {
        if let Item::Entry(en) = it {
            match en.key.as_slice() {
                b"big:noise" => assert!(en.value == Value::String(raw.clone())),
                b"big:lzf" => assert!(en.value == Value::String(packed.clone())),
                k => panic!("unexpected key {k:?}"),
            }
            found += 1;
        }
    }
    assert_eq!(found, 2);
}

/// Valkey 9 writes `VALKEY080` headers (RDB 80) with its own hash-field-TTL
/// type; not supported yet, and it must fail loudly rather than misparse.
#[test]
fn valkey_9_is_rejected_cleanly() {
    let Some(bin) = server_bin("TIDEMARK_VALKEY9_SERVER", None) else {
        return;
    };
    let server = Redis::start_bin(&bin, &[]);
    let mut c = Client::connect(server.port).expect("connect");
    c.cmd(&["SET", "k", "v"]);
    c.cmd(&["SAVE"]);
    let file = std::fs::File::open(server.dir().join("dump.rdb")).expect("open dump");
    let first = RdbParser::from_read(file).next().expect("an item");
    assert!(matches!(first, Err(RdbError::BadMagic { .. })), "{first:?}");
}
