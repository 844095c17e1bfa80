//! Writing an RDB: the payload tidemark sends a restore target that follows it as
//! a replica (see `restore::primary`).
//!
//! The writer emits **RDB version 9** with the plain value types every server of
//! the estate loads (Redis 6.2 to 7.4, Valkey 8 and 9): strings, lists (type 1, a
//! length and the elements), sets, sorted sets with binary scores (type 5) and
//! hashes, each key with its absolute expiry. The loading server converts them to
//! its own encodings (listpacks, quicklists) as it reads them, so one payload
//! suits every target version, and none of a newer version's encodings has to be
//! written. Records the plain types cannot hold (streams, hashes with field TTLs,
//! function libraries) are left to the caller, which sends them as commands on the
//! replication stream after the RDB ([`RdbWriter::key`] says so by returning
//! `false`).
//!
//! The trailer is the CRC-64 of everything before it, as every loader checks.

use std::io::{self, Write};

use super::crc64::crc64_update;
use crate::connectors::redis::image::{KvRecord, KvValue};

/// RDB version written in the header.
pub const WRITTEN_VERSION: u32 = 9;

const OP_AUX: u8 = 0xFA;
const OP_RESIZEDB: u8 = 0xFB;
const OP_EXPIRETIME_MS: u8 = 0xFC;
const OP_SELECTDB: u8 = 0xFE;
const OP_EOF: u8 = 0xFF;

const TYPE_STRING: u8 = 0;
const TYPE_LIST: u8 = 1;
const TYPE_SET: u8 = 2;
const TYPE_HASH: u8 = 4;
const TYPE_ZSET_2: u8 = 5;

/// Whether the plain types of an RDB 9 hold `rec` (else it goes as commands).
pub fn holds(rec: &KvRecord) -> bool {
    match &rec.value {
        Some(KvValue::Stream(_) | KvValue::FunctionLibrary(_)) => false,
        Some(KvValue::Hash(h)) => h.field_expire_ms.iter().all(|t| *t <= 0),
        _ => true,
    }
}

/// Streams an RDB into `out`, keeping the running checksum.
pub struct RdbWriter<W: Write> {
    out: W,
    crc: u64,
    db: Option<u32>,
    /// Bytes written so far.
    written: u64,
}

impl<W: Write> RdbWriter<W> {
    /// Writes the header and the auxiliary fields naming the writer.
    pub fn new(out: W) -> io::Result<RdbWriter<W>> {
        let mut w = RdbWriter {
            out,
            crc: 0,
            db: None,
            written: 0,
        };
        w.put(format!("REDIS{WRITTEN_VERSION:04}").as_bytes())?;
        w.aux(b"redis-bits", b"64")?;
        w.aux(b"tidemark-ver", env!("CARGO_PKG_VERSION").as_bytes())?;
        Ok(w)
    }

    /// Writes `rec` if the plain types can hold it; `false` (nothing written) for a
    /// stream, a hash with field TTLs or a function library.
    pub fn key(&mut self, rec: &KvRecord) -> io::Result<bool> {
        let Some(value) = &rec.value else {
            return Ok(true);
        };
        if !holds(rec) {
            return Ok(false);
        }
        if self.db != Some(rec.db) {
            self.put(&[OP_SELECTDB])?;
            self.len(u64::from(rec.db))?;
            self.db = Some(rec.db);
        }
        if let Some(t) = rec.expire_at_ms {
            self.put(&[OP_EXPIRETIME_MS])?;
            self.put(&t.to_le_bytes())?;
        }
        match value {
            KvValue::String(v) => {
                self.put(&[TYPE_STRING])?;
                self.string(&rec.key)?;
                self.string(v)?;
            }
            KvValue::List(l) => self.items(TYPE_LIST, &rec.key, &l.items)?,
            KvValue::Set(s) => self.items(TYPE_SET, &rec.key, &s.items)?,
            KvValue::SortedSet(z) => {
                self.put(&[TYPE_ZSET_2])?;
                self.string(&rec.key)?;
                self.len(z.members.len() as u64)?;
                for (m, s) in z.members.iter().zip(&z.scores) {
                    self.string(m)?;
                    self.put(&s.to_le_bytes())?;
                }
            }
            KvValue::Hash(h) => {
                self.put(&[TYPE_HASH])?;
                self.string(&rec.key)?;
                self.len(h.fields.len() as u64)?;
                for (f, v) in h.fields.iter().zip(&h.values) {
                    self.string(f)?;
                    self.string(v)?;
                }
            }
            KvValue::Stream(_) | KvValue::FunctionLibrary(_) => unreachable!("not plain"),
        }
        Ok(true)
    }

    /// A size hint for database `db` (optional; lets the loader size its tables).
    pub fn resize_hint(&mut self, db: u32, keys: u64, expires: u64) -> io::Result<()> {
        self.put(&[OP_SELECTDB])?;
        self.len(u64::from(db))?;
        self.db = Some(db);
        self.put(&[OP_RESIZEDB])?;
        self.len(keys)?;
        self.len(expires)
    }

    /// Writes the end marker and the checksum; returns the sink and the RDB's size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.put(&[OP_EOF])?;
        let crc = self.crc.to_le_bytes();
        self.out.write_all(&crc)?;
        self.out.flush()?;
        Ok((self.out, self.written + 8))
    }

    fn items(&mut self, ty: u8, key: &[u8], items: &[Vec<u8>]) -> io::Result<()> {
        self.put(&[ty])?;
        self.string(key)?;
        self.len(items.len() as u64)?;
        for i in items {
            self.string(i)?;
        }
        Ok(())
    }

    fn aux(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.put(&[OP_AUX])?;
        self.string(key)?;
        self.string(value)
    }

    fn string(&mut self, s: &[u8]) -> io::Result<()> {
        self.len(s.len() as u64)?;
        self.put(s)
    }

    /// The RDB length encoding: 6 bits, 14 bits, 32 or 64 bits big-endian.
    fn len(&mut self, n: u64) -> io::Result<()> {
        if n < 1 << 6 {
            self.put(&[n as u8])
        } else if n < 1 << 14 {
            self.put(&[0x40 | (n >> 8) as u8, n as u8])
        } else if let Ok(n) = u32::try_from(n) {
            self.put(&[0x80])?;
            self.put(&n.to_be_bytes())
        } else {
            self.put(&[0x81])?;
            self.put(&n.to_be_bytes())
        }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc = crc64_update(self.crc, b);
        self.written += b.len() as u64;
        self.out.write_all(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::redis::image::{HashVal, Items, Zset};
    use crate::connectors::redis::rdb::{Entry, Item, RdbParser, Value};

    fn rec(db: u32, key: &str, ttl: Option<i64>, value: KvValue) -> KvRecord {
        KvRecord {
            db,
            key: key.as_bytes().to_vec(),
            expire_at_ms: ttl,
            value: Some(value),
        }
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    /// What the writer writes, the crate's own parser reads back (checksum
    /// included), whatever the sizes of the length encodings.
    #[test]
    fn written_rdb_parses_back() {
        let big = vec![7u8; 70_000];
        let many: Vec<Vec<u8>> = (0..20_000).map(|i| i.to_string().into_bytes()).collect();
        let recs = vec![
            rec(
                0,
                "s",
                Some(1_700_000_000_123),
                KvValue::String(big.clone()),
            ),
            rec(
                0,
                "l",
                None,
                KvValue::List(Items {
                    items: many.clone(),
                }),
            ),
            rec(
                3,
                "set",
                None,
                KvValue::Set(Items {
                    items: vec![b("a")],
                }),
            ),
            rec(
                3,
                "z",
                None,
                KvValue::SortedSet(Zset {
                    members: vec![b("m"), b("n")],
                    scores: vec![1.5, f64::NEG_INFINITY],
                }),
            ),
            rec(
                3,
                "h",
                None,
                KvValue::Hash(HashVal {
                    fields: vec![b("f")],
                    values: vec![b("v")],
                    field_expire_ms: vec![0],
                }),
            ),
        ];
        let mut w = RdbWriter::new(Vec::new()).unwrap();
        for r in &recs {
            assert!(w.key(r).unwrap());
        }
        let ttl_hash = rec(
            0,
            "ht",
            None,
            KvValue::Hash(HashVal {
                fields: vec![b("f")],
                values: vec![b("v")],
                field_expire_ms: vec![5],
            }),
        );
        assert!(!w.key(&ttl_hash).unwrap(), "field TTLs go as commands");
        let (bytes, size) = w.finish().unwrap();
        assert_eq!(size, bytes.len() as u64);
        let mut parser = RdbParser::new(bytes.as_slice());
        let mut keys: Vec<Entry> = Vec::new();
        while let Some(item) = parser.next_item().unwrap() {
            if let Item::Entry(e) = item {
                keys.push(e);
            }
        }
        assert_eq!(keys.len(), recs.len());
        assert_eq!(keys[0].expire_at_ms, Some(1_700_000_000_123));
        assert!(matches!(&keys[0].value, Value::String(v) if *v == big));
        assert!(matches!(&keys[1].value, Value::List(v) if *v == many));
        assert_eq!(keys[2].db, 3);
        match &keys[3].value {
            Value::SortedSet(z) => {
                assert_eq!(z.len(), 2);
                assert_eq!(z[1].1, f64::NEG_INFINITY);
            }
            other => panic!("not a sorted set: {other:?}"),
        }
    }
}
