//! The shared real-server scenario: what to write, in which encodings, and
//! what the parsed dump must contain.

use std::collections::BTreeMap;

use tidemark::connectors::redis::rdb::{StreamId, Value};

use super::bin_client::{noise, now_ms, Client, Resp};

/// What differs between server generations.
pub struct Flavor {
    pub rdb_version: u32,
    /// Redis >= 7.0: FUNCTION, DEBUG enabled via --enable-debug-command.
    pub modern: bool,
    pub list_type: u8,
    pub small_str_set_type: u8,
    pub small_zset_type: u8,
    pub small_hash_type: u8,
    pub stream_type: u8,
    /// Redis >= 7.4: hash field expiration.
    pub hfe: bool,
}

pub const REDIS62: Flavor = Flavor {
    rdb_version: 9,
    modern: false,
    list_type: 14,
    small_str_set_type: 2,
    small_zset_type: 12,
    small_hash_type: 13,
    stream_type: 15,
    hfe: false,
};
pub const REDIS70: Flavor = Flavor {
    rdb_version: 10,
    modern: true,
    list_type: 18,
    small_str_set_type: 2,
    small_zset_type: 17,
    small_hash_type: 16,
    stream_type: 19,
    hfe: false,
};
pub const VALKEY8: Flavor = Flavor {
    rdb_version: 11,
    modern: true,
    list_type: 18,
    small_str_set_type: 20,
    small_zset_type: 17,
    small_hash_type: 16,
    stream_type: 21,
    hfe: false,
};
pub const REDIS74: Flavor = Flavor {
    rdb_version: 12,
    modern: true,
    list_type: 18,
    small_str_set_type: 20,
    small_zset_type: 17,
    small_hash_type: 16,
    stream_type: 21,
    hfe: true,
};

pub struct Want {
    pub value: Value,
    pub expire: Option<i64>,
    pub rdb_type: u8,
}

#[derive(Default)]
pub struct Expected {
    pub keys: BTreeMap<(u64, Vec<u8>), Want>,
    pub function: Option<Vec<u8>>,
    /// Window in which stream deliveries happened.
    pub t0: i64,
    pub t1: i64,
    /// `entries-read` per group as reported by XINFO GROUPS (7.0+).
    pub entries_read: BTreeMap<Vec<u8>, Option<u64>>,
}

pub fn normalize(v: Value) -> Value {
    match v {
        Value::Set(mut s) => {
            s.sort();
            Value::Set(s)
        }
        Value::Hash(mut h) => {
            h.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Hash(h)
        }
        Value::SortedSet(mut z) => {
            z.sort_by(|a, b| a.0.cmp(&b.0));
            Value::SortedSet(z)
        }
        other => other,
    }
}

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn batched(c: &mut Client, cmd: &str, key: &[u8], args: &[Vec<u8>], step: usize) {
    for chunk in args.chunks(step) {
        let mut a: Vec<&[u8]> = vec![cmd.as_bytes(), key];
        a.extend(chunk.iter().map(|v| v.as_slice()));
        let r = c.raw(&a);
        assert!(!r.is_error(), "{cmd} -> {r:?}");
    }
}

impl Expected {
    pub fn add(&mut self, db: u64, key: &[u8], value: Value, rdb_type: u8) {
        let w = Want {
            value: normalize(value),
            expire: None,
            rdb_type,
        };
        assert!(self.keys.insert((db, key.to_vec()), w).is_none());
    }
}

pub fn sid(i: u64) -> StreamId {
    StreamId::new(1000 + i / 2, i % 2)
}

pub fn populate(c: &mut Client, f: &Flavor) -> Expected {
    let mut e = Expected::default();
    for (k, v) in [
        ("list-compress-depth", "1"),
        ("stream-node-max-entries", "4"),
        ("rdbcompression", "yes"),
        ("hash-max-ziplist-entries", "128"),
        ("hash-max-ziplist-value", "64"),
        ("zset-max-ziplist-entries", "128"),
        ("zset-max-ziplist-value", "64"),
        ("set-max-intset-entries", "512"),
    ] {
        c.cmd(&["CONFIG", "SET", k, v]);
    }
    c.cmd(&["SELECT", "0"]);

    // Strings: raw, int-encoded (8/16/32 bit), too big for int32, LZF, binary.
    let lzf = b"abc-".repeat(5000);
    let binary: Vec<u8> = (0..=255u8).collect();
    let strings: Vec<(&[u8], Vec<u8>)> = vec![
        (b"str:plain", b("hello world")),
        (b"str:int8", b("-7")),
        (b"str:int16", b("12345")),
        (b"str:int32", b("2147483647")),
        (b"str:int64", b("9007199254740993")),
        (b"str:empty", b("")),
        (b"str:lzf", lzf),
        (b"str:binary", binary),
        (b"bin\x00key\xff\r\n", b("v")),
    ];
    for (k, v) in strings {
        c.raw(&[b"SET", k, &v]);
        e.add(0, k, Value::String(v), 0);
    }

    // Lists: small (listpack / ziplist), large multi-node with compressed
    // interior nodes, and plain nodes (7.0+).
    let small: Vec<Vec<u8>> = vec![b("a"), b("1"), b("-5"), b(""), b("bb")];
    batched(c, "RPUSH", b"list:small", &small, 100);
    e.add(0, b"list:small", Value::List(small), f.list_type);
    let large: Vec<Vec<u8>> = (0..3000)
        .map(|i| {
            if i % 3 == 0 {
                (i as i64 * 7919 - 10000).to_string().into_bytes()
            } else {
                format!("item-{i}-{}", "x".repeat(i % 50)).into_bytes()
            }
        })
        .collect();
    batched(c, "RPUSH", b"list:large", &large, 500);
    e.add(0, b"list:large", Value::List(large), f.list_type);
    if f.modern {
        c.cmd(&["DEBUG", "QUICKLIST-PACKED-THRESHOLD", "1000"]);
        let plain = vec![b("x"), noise(3000, 7), b("y"), b"z".repeat(2000)];
        batched(c, "RPUSH", b"list:plain", &plain, 100);
        e.add(0, b"list:plain", Value::List(plain), 18);
    }

    // Sets: intset (up to 64-bit members), small strings, large hashtable.
    let ints: Vec<Vec<u8>> = ["1", "2", "3", "-100", "70000", "5000000000"]
        .iter()
        .map(|s| b(s))
        .collect();
    batched(c, "SADD", b"set:intset", &ints, 100);
    e.add(0, b"set:intset", Value::Set(ints), 11);
    let strs = vec![b("a"), b("b"), b("c"), b("10")];
    batched(c, "SADD", b"set:small", &strs, 100);
    e.add(0, b"set:small", Value::Set(strs), f.small_str_set_type);
    let many: Vec<Vec<u8>> = (0..1000).map(|i| format!("m{i}").into_bytes()).collect();
    batched(c, "SADD", b"set:large", &many, 500);
    e.add(0, b"set:large", Value::Set(many), 2);

    // Sorted sets: compact with awkward scores, large skiplist.
    let scores: [(&str, f64); 8] = [
        ("1.5", 1.5),
        ("-2.25", -2.25),
        ("0", 0.0),
        ("3", 3.0),
        ("inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
        ("1e300", 1e300),
        ("0.1", 0.1),
    ];
    let mut args = Vec::new();
    let mut want = Vec::new();
    for (i, (s, v)) in scores.iter().enumerate() {
        args.push(b(s));
        args.push(format!("member{i}").into_bytes());
        want.push((format!("member{i}").into_bytes(), *v));
    }
    batched(c, "ZADD", b"zset:small", &args, 100);
    e.add(0, b"zset:small", Value::SortedSet(want), f.small_zset_type);
    let mut args = Vec::new();
    let mut want = Vec::new();
    for i in 0..300 {
        let score = f64::from(i) * 0.5 - 10.0;
        args.push(format!("{score}").into_bytes());
        args.push(format!("z{i}").into_bytes());
        want.push((format!("z{i}").into_bytes(), score));
    }
    batched(c, "ZADD", b"zset:large", &args, 200);
    e.add(0, b"zset:large", Value::SortedSet(want), 5);

    // Hashes: compact, large hashtable, and a long value forcing hashtable.
    let fields = [
        ("f1", "v1"),
        ("f2", "42"),
        ("f3", ""),
        ("f4", "-9000000000"),
    ];
    let args: Vec<Vec<u8>> = fields.iter().flat_map(|(f, v)| [b(f), b(v)]).collect();
    batched(c, "HSET", b"hash:small", &args, 100);
    let want = fields.iter().map(|(f, v)| (b(f), b(v), None)).collect();
    e.add(0, b"hash:small", Value::Hash(want), f.small_hash_type);
    let mut args = Vec::new();
    let mut want = Vec::new();
    for i in 0..300 {
        args.push(format!("field{i}").into_bytes());
        args.push(format!("value{}", i * 3).into_bytes());
        want.push((
            format!("field{i}").into_bytes(),
            format!("value{}", i * 3).into_bytes(),
            None,
        ));
    }
    batched(c, "HSET", b"hash:large", &args, 200);
    e.add(0, b"hash:large", Value::Hash(want), 4);
    let long = "L".repeat(100);
    c.cmd(&["HSET", "hash:longval", "f", &long]);
    e.add(
        0,
        b"hash:longval",
        Value::Hash(vec![(b("f"), b(&long), None)]),
        4,
    );

    // Expiries.
    let at = now_ms() + 3_600_000;
    c.cmd(&["SET", "exp:str", "soon"]);
    c.cmd(&["PEXPIREAT", "exp:str", &at.to_string()]);
    e.add(0, b"exp:str", Value::String(b("soon")), 0);
    e.keys.get_mut(&(0, b("exp:str"))).expect("key").expire = Some(at);
    c.cmd(&["HSET", "exp:hash", "a", "1"]);
    c.cmd(&["PEXPIREAT", "exp:hash", &(at + 1).to_string()]);
    e.add(
        0,
        b"exp:hash",
        Value::Hash(vec![(b("a"), b("1"), None)]),
        f.small_hash_type,
    );
    e.keys.get_mut(&(0, b("exp:hash"))).expect("key").expire = Some(at + 1);

    // Hash field expiration (7.4+): listpack-ex and hashtable with metadata.
    if f.hfe {
        let t = now_ms() + 7_200_000;
        c.cmd(&["HSET", "hfe:small", "f1", "v1", "f2", "v2", "f3", "3"]);
        c.cmd(&[
            "HPEXPIREAT",
            "hfe:small",
            &t.to_string(),
            "FIELDS",
            "1",
            "f1",
        ]);
        c.cmd(&[
            "HPEXPIREAT",
            "hfe:small",
            &(t + 5).to_string(),
            "FIELDS",
            "1",
            "f3",
        ]);
        let want = vec![
            (b("f1"), b("v1"), Some(t)),
            (b("f2"), b("v2"), None),
            (b("f3"), b("3"), Some(t + 5)),
        ];
        e.add(0, b"hfe:small", Value::Hash(want), 25);
        let mut args = Vec::new();
        let mut want = Vec::new();
        for i in 0..300i64 {
            args.push(format!("k{i}").into_bytes());
            args.push(format!("v{i}").into_bytes());
            want.push((
                format!("k{i}").into_bytes(),
                format!("v{i}").into_bytes(),
                (i % 3 == 0).then_some(t + i),
            ));
        }
        batched(c, "HSET", b"hfe:large", &args, 200);
        for i in (0..300i64).step_by(3) {
            c.cmd(&[
                "HPEXPIREAT",
                "hfe:large",
                &(t + i).to_string(),
                "FIELDS",
                "1",
                &format!("k{i}"),
            ]);
        }
        e.add(0, b"hfe:large", Value::Hash(want), 24);
    }

    // Other databases.
    c.cmd(&["SELECT", "1"]);
    c.cmd(&["SET", "db1:key", "one"]);
    e.add(1, b"db1:key", Value::String(b("one")), 0);
    c.cmd(&["SELECT", "5"]);
    c.cmd(&["RPUSH", "db5:list", "p", "q"]);
    e.add(
        5,
        b"db5:list",
        Value::List(vec![b("p"), b("q")]),
        f.list_type,
    );
    c.cmd(&["SELECT", "0"]);

    // Streams (checked separately, see check_stream).
    for i in 1..=10u64 {
        let id = sid(i).to_string();
        if i == 3 || i == 7 {
            c.cmd(&["XADD", "stream:s1", &id, "other", &format!("x{i}")]);
        } else {
            c.cmd(&[
                "XADD",
                "stream:s1",
                &id,
                "name",
                &format!("n{i}"),
                "n",
                &i.to_string(),
            ]);
        }
    }
    c.cmd(&[
        "XDEL",
        "stream:s1",
        &sid(4).to_string(),
        &sid(10).to_string(),
    ]);
    c.cmd(&["XGROUP", "CREATE", "stream:s1", "g1", "0"]);
    c.cmd(&["XGROUP", "CREATE", "stream:s1", "g2", "$"]);
    e.t0 = now_ms();
    c.cmd(&[
        "XREADGROUP",
        "GROUP",
        "g1",
        "c1",
        "COUNT",
        "3",
        "STREAMS",
        "stream:s1",
        ">",
    ]);
    c.cmd(&[
        "XREADGROUP",
        "GROUP",
        "g1",
        "c2",
        "COUNT",
        "2",
        "STREAMS",
        "stream:s1",
        ">",
    ]);
    c.cmd(&["XACK", "stream:s1", "g1", &sid(2).to_string()]);
    let claim = sid(3).to_string();
    c.cmd(&[
        "XCLAIM",
        "stream:s1",
        "g1",
        "c2",
        "0",
        &claim,
        "TIME",
        "1700000000000",
        "RETRYCOUNT",
        "5",
        "JUSTID",
    ]);
    c.cmd(&["XGROUP", "CREATECONSUMER", "stream:s1", "g1", "c3"]);
    e.t1 = now_ms();
    if f.modern {
        c.cmd(&[
            "XGROUP",
            "SETID",
            "stream:s1",
            "g2",
            "$",
            "ENTRIESREAD",
            "10",
        ]);
        for g in c.cmd(&["XINFO", "GROUPS", "stream:s1"]).array() {
            let kv = g.array();
            let name = kv.iter().position(|x| x.bulk() == b"name").expect("name");
            let p = kv
                .iter()
                .position(|x| matches!(x, Resp::Bulk(Some(v)) if v == b"entries-read"))
                .expect("entries-read");
            let read = match &kv[p + 1] {
                Resp::Int(i) => Some(*i as u64),
                _ => None,
            };
            e.entries_read.insert(kv[name + 1].bulk(), read);
        }
    }
    c.cmd(&["XADD", "stream:empty", "5-5", "a", "b"]);
    c.cmd(&["XDEL", "stream:empty", "5-5"]);

    if f.modern {
        let code = "#!lua name=mylib\nredis.register_function('f', function() return 1 end)";
        c.cmd(&["FUNCTION", "LOAD", code]);
        e.function = Some(b(code));
    }
    e
}
