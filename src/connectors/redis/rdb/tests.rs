//! Whole-stream tests on hand-built RDB buffers.

use crate::connectors::redis::rdb::listpack::tests::build as lp;
use crate::connectors::redis::rdb::listpack::Elem;
use crate::connectors::redis::rdb::ziplist::tests::build as zl;
use crate::connectors::redis::rdb::*;

/// Minimal RDB writer for tests.
struct Rdb(Vec<u8>);

impl Rdb {
    fn new(version: u32) -> Self {
        Rdb(format!("REDIS{version:04}").into_bytes())
    }
    fn byte(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn len(mut self, n: u64) -> Self {
        if n < 64 {
            self.0.push(n as u8);
        } else if n < 16384 {
            self.0.push(0x40 | (n >> 8) as u8);
            self.0.push(n as u8);
        } else if n <= u64::from(u32::MAX) {
            self.0.push(0x80);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            self.0.push(0x81);
            self.0.extend_from_slice(&n.to_be_bytes());
        }
        self
    }
    fn s(self, b: &[u8]) -> Self {
        self.len(b.len() as u64).raw(b)
    }
    fn ms(self, t: i64) -> Self {
        self.raw(&t.to_le_bytes())
    }
    fn eof(self) -> Vec<u8> {
        let mut v = self.byte(255).0;
        let crc = crc64_update(0, &v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }
}

fn parse(buf: &[u8]) -> Result<Vec<Item>> {
    RdbParser::new(buf).collect()
}

fn entry_values(buf: &[u8]) -> Vec<Value> {
    parse(buf)
        .unwrap()
        .into_iter()
        .filter_map(|i| match i {
            Item::Entry(e) => Some(e.value),
            _ => None,
        })
        .collect()
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[test]
fn header_opcodes_and_strings() {
    let buf = Rdb::new(11)
        .byte(250)
        .s(b"redis-ver")
        .s(b"7.2.0")
        .byte(250)
        .s(b"ctime")
        .raw(&[0xc2, 1, 0, 0, 0])
        .byte(245)
        .s(b"#!lua name=x\n")
        .byte(254)
        .len(3)
        .byte(251)
        .len(2)
        .len(1)
        .byte(252)
        .ms(1_700_000_000_123)
        .byte(248)
        .len(77) // idle, ignored
        .byte(0)
        .s(b"k1")
        .s(b"v1")
        .byte(253)
        .raw(&1_700_000_000i32.to_le_bytes())
        .byte(249)
        .byte(5) // freq, ignored
        .byte(0)
        .s(b"k2")
        .raw(&[0xc0, 0x85])
        .byte(244)
        .len(1)
        .len(2)
        .len(3) // slot info, ignored
        .byte(0)
        .s(b"k3")
        .s(b"")
        .eof();
    let items = parse(&buf).unwrap();
    assert_eq!(
        items,
        vec![
            Item::Aux {
                key: b("redis-ver"),
                value: b("7.2.0")
            },
            Item::Aux {
                key: b("ctime"),
                value: b("1")
            },
            Item::FunctionLibrary(b("#!lua name=x\n")),
            Item::SelectDb(3),
            Item::ResizeDb {
                db_size: 2,
                expires_size: 1
            },
            Item::Entry(Entry {
                db: 3,
                key: b("k1"),
                expire_at_ms: Some(1_700_000_000_123),
                value: Value::String(b("v1")),
                rdb_type: 0,
            }),
            Item::Entry(Entry {
                db: 3,
                key: b("k2"),
                expire_at_ms: Some(1_700_000_000_000),
                value: Value::String(b("-123")),
                rdb_type: 0,
            }),
            Item::Entry(Entry {
                db: 3,
                key: b("k3"),
                expire_at_ms: None,
                value: Value::String(vec![]),
                rdb_type: 0,
            }),
        ]
    );
}

#[test]
fn legacy_collection_types() {
    let zipmap = {
        let mut z = vec![1u8, 1, b'f', 1, 0, b'v'];
        z.push(255);
        z
    };
    let intset = {
        let mut v = 2u32.to_le_bytes().to_vec();
        v.extend_from_slice(&2u32.to_le_bytes());
        v.extend_from_slice(&(-5i16).to_le_bytes());
        v.extend_from_slice(&7i16.to_le_bytes());
        v
    };
    let buf = Rdb::new(9)
        .byte(1)
        .s(b"list")
        .len(2)
        .s(b"a")
        .raw(&[0xc0, 7])
        .byte(2)
        .s(b"set")
        .len(1)
        .s(b"m")
        .byte(3)
        .s(b"zset")
        .len(4)
        .s(b"a")
        .byte(3)
        .raw(b"1.5")
        .s(b"b")
        .byte(253)
        .s(b"c")
        .byte(254)
        .s(b"d")
        .byte(255)
        .byte(4)
        .s(b"hash")
        .len(1)
        .s(b"f")
        .s(b"v")
        .byte(5)
        .s(b"zset2")
        .len(1)
        .s(b"x")
        .raw(&(-2.25f64).to_le_bytes())
        .byte(9)
        .s(b"zipmap")
        .s(&zipmap)
        .byte(10)
        .s(b"zl")
        .s(&zl(&[Elem::Bytes(b"x"), Elem::Int(-3)]))
        .byte(11)
        .s(b"intset")
        .s(&intset)
        .byte(12)
        .s(b"zzl")
        .s(&zl(&[
            Elem::Bytes(b"m"),
            Elem::Bytes(b"2.5"),
            Elem::Bytes(b"n"),
            Elem::Int(4),
        ]))
        .byte(13)
        .s(b"hzl")
        .s(&zl(&[Elem::Bytes(b"f"), Elem::Int(1)]))
        .byte(14)
        .s(b"ql")
        .len(2)
        .s(&zl(&[Elem::Bytes(b"a")]))
        .s(&zl(&[Elem::Int(2), Elem::Bytes(b"c")]))
        .eof();
    let v = entry_values(&buf);
    assert_eq!(v[0], Value::List(vec![b("a"), b("7")]));
    assert_eq!(v[1], Value::Set(vec![b("m")]));
    match &v[2] {
        Value::SortedSet(z) => {
            assert_eq!(z[0], (b("a"), 1.5));
            assert!(z[1].1.is_nan());
            assert_eq!(z[2].1, f64::INFINITY);
            assert_eq!(z[3].1, f64::NEG_INFINITY);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(v[3], Value::Hash(vec![(b("f"), b("v"), None)]));
    assert_eq!(v[4], Value::SortedSet(vec![(b("x"), -2.25)]));
    assert_eq!(v[5], Value::Hash(vec![(b("f"), b("v"), None)]));
    assert_eq!(v[6], Value::List(vec![b("x"), b("-3")]));
    assert_eq!(v[7], Value::Set(vec![b("-5"), b("7")]));
    assert_eq!(v[8], Value::SortedSet(vec![(b("m"), 2.5), (b("n"), 4.0)]));
    assert_eq!(v[9], Value::Hash(vec![(b("f"), b("1"), None)]));
    assert_eq!(v[10], Value::List(vec![b("a"), b("2"), b("c")]));
}

#[test]
fn listpack_types_and_hash_field_expiry() {
    let buf = Rdb::new(12)
        .byte(16)
        .s(b"h")
        .s(&lp(&[Elem::Bytes(b"f"), Elem::Bytes(b"v")]))
        .byte(17)
        .s(b"z")
        .s(&lp(&[Elem::Bytes(b"m"), Elem::Int(-1)]))
        .byte(18)
        .s(b"l")
        .len(2)
        .len(2)
        .s(&lp(&[Elem::Bytes(b"a"), Elem::Int(1)]))
        .len(1)
        .s(b"plain")
        .byte(20)
        .s(b"s")
        .s(&lp(&[Elem::Bytes(b"x"), Elem::Int(9)]))
        // HASH_METADATA: min 1000, TTLs relative (+1), 0 = none.
        .byte(24)
        .s(b"hm")
        .ms(1000)
        .len(2)
        .len(1)
        .s(b"a")
        .s(b"1")
        .len(0)
        .s(b"b")
        .s(b"2")
        // HASH_METADATA_PRE_GA: absolute TTLs.
        .byte(22)
        .s(b"hmp")
        .len(1)
        .len(5000)
        .s(b"a")
        .s(b"1")
        // HASH_LISTPACK_EX: min expire then (field, value, ttl) triples.
        .byte(25)
        .s(b"hlx")
        .ms(7000)
        .s(&lp(&[
            Elem::Bytes(b"a"),
            Elem::Bytes(b"1"),
            Elem::Int(7000),
            Elem::Bytes(b"b"),
            Elem::Int(2),
            Elem::Int(0),
        ]))
        .byte(23)
        .s(b"hlxp")
        .s(&lp(&[
            Elem::Bytes(b"a"),
            Elem::Bytes(b"1"),
            Elem::Int(9000),
        ]))
        .eof();
    let v = entry_values(&buf);
    assert_eq!(v[0], Value::Hash(vec![(b("f"), b("v"), None)]));
    assert_eq!(v[1], Value::SortedSet(vec![(b("m"), -1.0)]));
    assert_eq!(v[2], Value::List(vec![b("a"), b("1"), b("plain")]));
    assert_eq!(v[3], Value::Set(vec![b("x"), b("9")]));
    assert_eq!(
        v[4],
        Value::Hash(vec![(b("a"), b("1"), Some(1000)), (b("b"), b("2"), None)])
    );
    assert_eq!(v[5], Value::Hash(vec![(b("a"), b("1"), Some(5000))]));
    assert_eq!(
        v[6],
        Value::Hash(vec![(b("a"), b("1"), Some(7000)), (b("b"), b("2"), None)])
    );
    assert_eq!(v[7], Value::Hash(vec![(b("a"), b("1"), Some(9000))]));
}

fn stream_rdb(type_id: u8) -> Vec<u8> {
    let mut node_key = 100u64.to_be_bytes().to_vec();
    node_key.extend_from_slice(&0u64.to_be_bytes());
    let node = lp(&[
        Elem::Int(1),
        Elem::Int(0),
        Elem::Int(1),
        Elem::Bytes(b"f"),
        Elem::Int(0),
        Elem::Int(2),
        Elem::Int(0),
        Elem::Int(1),
        Elem::Bytes(b"v"),
        Elem::Int(4),
    ]);
    let mut pel_id = 100u64.to_be_bytes().to_vec();
    pel_id.extend_from_slice(&1u64.to_be_bytes());
    let mut r = Rdb::new(11)
        .byte(type_id)
        .s(b"st")
        .len(1)
        .s(&node_key)
        .s(&node)
        .len(1)
        .len(100)
        .len(1); // length, last id
    if type_id >= 19 {
        r = r.len(100).len(1).len(0).len(0).len(1); // first, max deleted, added
    }
    r = r.len(1).s(b"g").len(100).len(1);
    if type_id >= 19 {
        r = r.len(1);
    }
    r = r.len(1).raw(&pel_id).ms(555).len(3).len(1).s(b"c").ms(600);
    if type_id >= 21 {
        r = r.ms(601);
    }
    r.len(1).raw(&pel_id).eof()
}

#[test]
fn streams_all_versions() {
    for t in [15u8, 19, 21] {
        let v = entry_values(&stream_rdb(t));
        let Value::Stream(s) = &v[0] else {
            panic!("{v:?}")
        };
        let id = StreamId::new(100, 1);
        assert_eq!(
            s.entries,
            vec![StreamEntry {
                id,
                fields: vec![(b("f"), b("v"))]
            }]
        );
        assert_eq!((s.length, s.last_id, s.first_id), (1, id, id));
        assert_eq!(s.entries_added, 1);
        let g = &s.groups[0];
        assert_eq!(g.name, b("g"));
        assert_eq!(g.entries_read, (t >= 19).then_some(1));
        assert_eq!(
            g.pel,
            vec![PendingEntry {
                id,
                delivery_time_ms: 555,
                delivery_count: 3
            }]
        );
        assert_eq!(g.consumers[0].pel, vec![id]);
        assert_eq!(g.consumers[0].seen_time_ms, 600);
        assert_eq!(g.consumers[0].active_time_ms, (t >= 21).then_some(601));
    }
}

#[test]
fn every_truncation_is_an_error() {
    for buf in [stream_rdb(21), stream_rdb(15)] {
        for cut in 0..buf.len() {
            assert!(parse(&buf[..cut]).is_err(), "cut {cut}");
        }
    }
}

#[test]
fn every_single_byte_corruption_is_handled() {
    let buf = stream_rdb(19);
    for i in 0..buf.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut c = buf.clone();
            c[i] ^= x;
            // Any result is fine (the checksum catches what parses); no panic.
            let res = parse(&c);
            // Header flips may turn the version below 5 (no checksum).
            assert!(i < 9 || res.is_err(), "flip {i} ^ {x:#x} went unnoticed");
        }
    }
}

#[test]
fn checksum_verification() {
    let good = Rdb::new(10).byte(0).s(b"k").s(b"value").eof();
    assert!(parse(&good).is_ok());
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 12] ^= 0x20; // inside "value"
    assert!(matches!(
        parse(&bad),
        Err(RdbError::ChecksumMismatch { .. })
    ));
    let mut disabled = good[..n - 8].to_vec();
    disabled.extend_from_slice(&[0; 8]);
    assert!(parse(&disabled).is_ok());
    // RDB < 5 has no checksum at all.
    let old = Rdb::new(4).byte(0).s(b"k").s(b"v").byte(255).0;
    assert_eq!(parse(&old).unwrap().len(), 1);
}

#[test]
fn unsupported_things_are_errors() {
    let module = Rdb::new(10).byte(7).s(b"mykey").raw(&[0; 16]).eof();
    match parse(&module) {
        Err(RdbError::UnsupportedType {
            type_id: 7,
            key,
            offset: 9,
            ..
        }) => assert_eq!(key, "mykey"),
        other => panic!("{other:?}"),
    }
    let unknown = Rdb::new(10).byte(99).s(b"k\xff").eof();
    match parse(&unknown) {
        Err(RdbError::UnsupportedType {
            type_id: 99, key, ..
        }) => assert_eq!(key, "k\u{fffd}"),
        other => panic!("{other:?}"),
    }
    let aux = Rdb::new(10).byte(247).eof();
    assert!(matches!(
        parse(&aux),
        Err(RdbError::UnsupportedOpcode {
            opcode: 247,
            offset: 9,
            ..
        })
    ));
    assert!(matches!(
        parse(b"REDIS0013"),
        Err(RdbError::UnsupportedVersion { version: 13, .. })
    ));
    assert!(matches!(
        parse(b"RADIS0009"),
        Err(RdbError::BadMagic { .. })
    ));
    // After an error the iterator ends.
    let mut p = RdbParser::new(&b"RADIS0009"[..]);
    assert!(p.next().is_some_and(|r| r.is_err()));
    assert!(p.next().is_none());
}

#[test]
fn stops_exactly_after_checksum() {
    let mut buf = Rdb::new(10).byte(0).s(b"k").s(b"v").eof();
    buf.extend_from_slice(b"+REPLSTREAM");
    let mut p = RdbParser::new(&buf[..]);
    assert_eq!(p.by_ref().count(), 1);
    assert!(p.is_finished());
    let rest = p.into_inner();
    assert_eq!(rest, b"+REPLSTREAM");
}
