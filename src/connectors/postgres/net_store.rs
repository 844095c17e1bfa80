//! Where a net-effect restore keeps its per-key state: in memory up to a limit,
//! then in a temporary RocksDB on disk ("spilled"), so a restore's memory stays
//! bounded on any history.
//!
//! The state is one entry per (table, key): the key's last row version, or its
//! deletion, encoded compactly ([`Row`]). Rows inserted into tables without a key
//! are kept as COPY text, appended in order. When the entries in memory pass the
//! limit, all of them are written to the spill database (a later write of a key
//! replaces the earlier one) and memory starts empty again; a look-up reads memory
//! first, then the spill database. The spill directory is removed when the store
//! is dropped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

use crate::event::{PgValue, PgValueKind};
use crate::restore::RestoreError;

/// Memory a restore's net state may use before it spills to disk, by default.
pub const DEFAULT_MEMORY_LIMIT: usize = 256 << 20;

/// What a key ends as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Net {
    /// Deleted (the key may not exist at all on the target).
    Deleted,
    /// The row, every column known.
    Full(Row),
    /// The row with some columns unknown (unchanged TOAST values the target holds).
    Partial(Row),
}

/// One value of a stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Val<'a> {
    Null,
    /// Not known here: unchanged TOAST.
    Unknown,
    Text(&'a [u8]),
}

/// A row encoded as bytes: per column a tag (0 NULL, 1 unknown, 2 text) and, for
/// text, a 4-byte length and the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Row(pub Vec<u8>);

impl Row {
    /// Encodes values in column order (`None`: unknown).
    pub fn encode<'a>(values: impl IntoIterator<Item = Val<'a>>) -> Row {
        let mut out = Vec::new();
        for v in values {
            match v {
                Val::Null => out.push(0),
                Val::Unknown => out.push(1),
                Val::Text(t) => {
                    out.push(2);
                    out.extend_from_slice(&(t.len() as u32).to_le_bytes());
                    out.extend_from_slice(t);
                }
            }
        }
        Row(out)
    }

    /// Encodes a journaled tuple (text, NULL and unchanged-TOAST values only).
    pub fn of_tuple(t: &[PgValue]) -> Row {
        Row::encode(t.iter().map(val_of))
    }

    /// The values, in column order.
    pub fn values(&self) -> RowIter<'_> {
        RowIter(&self.0)
    }

    /// True if every value is known.
    pub fn complete(&self) -> bool {
        !self.values().any(|v| v == Val::Unknown)
    }

    /// The row in COPY text format, with its newline.
    pub fn copy_line(&self, out: &mut Vec<u8>) {
        for (i, v) in self.values().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            match v {
                Val::Null | Val::Unknown => out.extend_from_slice(b"\\N"),
                Val::Text(t) => copy_escape(t, out),
            }
        }
        out.push(b'\n');
    }
}

/// A journaled value as a stored one.
pub(super) fn val_of(v: &PgValue) -> Val<'_> {
    match PgValueKind::try_from(v.kind) {
        Ok(PgValueKind::Null) => Val::Null,
        Ok(PgValueKind::UnchangedToast) => Val::Unknown,
        _ => Val::Text(&v.data),
    }
}

/// Appends `t` escaped for COPY text format.
pub(super) fn copy_escape(t: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in t.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&t[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&t[start..]);
}

/// Iterates a [`Row`]'s values.
pub(super) struct RowIter<'a>(&'a [u8]);

impl<'a> Iterator for RowIter<'a> {
    type Item = Val<'a>;
    fn next(&mut self) -> Option<Val<'a>> {
        let (&tag, rest) = self.0.split_first()?;
        match tag {
            0 => {
                self.0 = rest;
                Some(Val::Null)
            }
            1 => {
                self.0 = rest;
                Some(Val::Unknown)
            }
            _ => {
                let len = rest
                    .get(..4)
                    .map_or(0, |l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
                let text = rest.get(4..4 + len).unwrap_or_default();
                self.0 = rest.get(4 + len..).unwrap_or_default();
                Some(Val::Text(text))
            }
        }
    }
}

/// A key's values encoded as one byte string (4-byte length, bytes, per column).
pub(super) fn encode_key<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn encode_net(n: &Net) -> Vec<u8> {
    let (tag, row) = match n {
        Net::Deleted => (0, &[][..]),
        Net::Full(r) => (1, &r.0[..]),
        Net::Partial(r) => (2, &r.0[..]),
    };
    let mut out = Vec::with_capacity(1 + row.len());
    out.push(tag);
    out.extend_from_slice(row);
    out
}

fn decode_net(b: &[u8]) -> Net {
    match b.split_first() {
        Some((1, r)) => Net::Full(Row(r.to_vec())),
        Some((2, r)) => Net::Partial(Row(r.to_vec())),
        _ => Net::Deleted,
    }
}

type Hasher = foldhash::fast::RandomState;

/// Per-table state in memory.
#[derive(Default)]
struct Mem {
    rows: HashMap<Vec<u8>, Net, Hasher>,
    /// COPY text of rows appended (keyless tables).
    appends: Vec<u8>,
}

struct Spill {
    db: rocksdb::DB,
    /// Appended chunks written so far (their keys' sequence).
    chunks: u64,
    _dir: tempfile::TempDir,
}

/// Spill-database key prefix of a table's keyed rows (`kind` 0) or appended chunks (1).
fn prefix(table: u32, kind: u8) -> Vec<u8> {
    let mut k = table.to_be_bytes().to_vec();
    k.push(kind);
    k
}

/// The net state of every table of a restore, by table number.
pub(super) struct NetStore {
    limit: usize,
    used: usize,
    dir: Option<PathBuf>,
    mem: HashMap<u32, Mem>,
    spill: Option<Spill>,
    /// Bytes written to the spill database, for the report.
    pub spilled_bytes: u64,
}

fn spill_error(e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Target(format!(
        "the net-effect restore cannot use its temporary spill database: {e}; free disk space in the temporary directory (TMPDIR), or restore with every change replayed"
    ))
}

/// Estimated memory of one entry beyond its bytes (map slot, allocations).
const ENTRY_OVERHEAD: usize = 64;

impl NetStore {
    /// A store that spills past `limit` bytes, into a directory under `dir` (the
    /// system's temporary directory if `None`).
    pub fn new(limit: usize, dir: Option<PathBuf>) -> NetStore {
        NetStore {
            limit,
            used: 0,
            dir,
            mem: HashMap::new(),
            spill: None,
            spilled_bytes: 0,
        }
    }

    /// True once anything went to disk.
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    fn entry_size(key: &[u8], n: &Net) -> usize {
        key.len()
            + ENTRY_OVERHEAD
            + match n {
                Net::Deleted => 0,
                Net::Full(r) | Net::Partial(r) => r.0.len(),
            }
    }

    /// What `key` of `table` ends as so far, if anything.
    pub fn get(&self, table: u32, key: &[u8]) -> Result<Option<Net>, RestoreError> {
        if let Some(n) = self.mem.get(&table).and_then(|m| m.rows.get(key)) {
            return Ok(Some(n.clone()));
        }
        let Some(s) = &self.spill else {
            return Ok(None);
        };
        let mut k = prefix(table, 0);
        k.extend_from_slice(key);
        Ok(s.db
            .get_pinned(&k)
            .map_err(spill_error)?
            .map(|v| decode_net(&v)))
    }

    /// Records what `key` of `table` ends as.
    pub fn put(&mut self, table: u32, key: Vec<u8>, n: Net) -> Result<(), RestoreError> {
        let klen = key.len();
        self.used += Self::entry_size(&key, &n);
        let rows = &mut self.mem.entry(table).or_default().rows;
        if let Some(old) = rows.insert(key, n) {
            self.used = self.used.saturating_sub(klen + Self::entry_size(&[], &old));
        }
        self.check()
    }

    /// Appends a row (COPY text line) to `table`'s appended rows.
    pub fn append(&mut self, table: u32, line: &[u8]) -> Result<(), RestoreError> {
        self.mem
            .entry(table)
            .or_default()
            .appends
            .extend_from_slice(line);
        self.used += line.len();
        self.check()
    }

    fn check(&mut self) -> Result<(), RestoreError> {
        if self.used > self.limit {
            self.spill_all()?;
        }
        Ok(())
    }

    /// Writes everything in memory to the spill database.
    fn spill_all(&mut self) -> Result<(), RestoreError> {
        if self.spill.is_none() {
            let mut b = tempfile::Builder::new();
            b.prefix("tidemark-restore-spill-");
            let dir = match &self.dir {
                Some(d) => b.tempdir_in(d),
                None => b.tempdir(),
            }
            .map_err(spill_error)?;
            let mut opts = rocksdb::Options::default();
            opts.create_if_missing(true);
            opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            let mut t = rocksdb::BlockBasedOptions::default();
            t.set_bloom_filter(10.0, false);
            opts.set_block_based_table_factory(&t);
            let db = rocksdb::DB::open(&opts, dir.path()).map_err(spill_error)?;
            tracing::info!(dir = %dir.path().display(), "net-effect restore state spills to disk");
            self.spill = Some(Spill {
                db,
                chunks: 0,
                _dir: dir,
            });
        }
        let Some(s) = self.spill.as_mut() else {
            return Ok(());
        };
        let mut batch = rocksdb::WriteBatch::default();
        for (table, m) in self.mem.drain() {
            for (key, n) in m.rows {
                let mut k = prefix(table, 0);
                k.extend_from_slice(&key);
                let v = encode_net(&n);
                self.spilled_bytes += (k.len() + v.len()) as u64;
                batch.put(k, v);
            }
            if !m.appends.is_empty() {
                let mut k = prefix(table, 1);
                k.extend_from_slice(&s.chunks.to_be_bytes());
                s.chunks += 1;
                self.spilled_bytes += m.appends.len() as u64;
                batch.put(k, m.appends);
            }
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.disable_wal(true);
        s.db.write_opt(batch, &wo).map_err(spill_error)?;
        self.used = 0;
        Ok(())
    }

    /// Every (key, state) of `table`, each key once with its last state.
    pub fn rows(
        &self,
        table: u32,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Net), RestoreError>> + '_ {
        let mem = self.mem.get(&table);
        let p = prefix(table, 0);
        let spilled = self.spill.iter().flat_map(move |s| {
            let p = p.clone();
            s.db.prefix_iterator(p.clone())
                .map(move |item| {
                    let (k, v) = item.map_err(spill_error)?;
                    Ok(k.strip_prefix(p.as_slice()).map(|key| (key.to_vec(), v)))
                })
                .take_while(|r| !matches!(r, Ok(None)))
                .filter_map(move |r| match r {
                    Ok(Some((key, v))) => {
                        if mem.is_some_and(|m| m.rows.contains_key(&key)) {
                            None
                        } else {
                            Some(Ok((key, decode_net(&v))))
                        }
                    }
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                })
        });
        let in_memory = mem
            .into_iter()
            .flat_map(|m| m.rows.iter().map(|(k, n)| Ok((k.clone(), n.clone()))));
        spilled.chain(in_memory)
    }

    /// The COPY text of `table`'s appended rows, in order, in chunks.
    pub fn appends(
        &self,
        table: u32,
    ) -> impl Iterator<Item = Result<Cow<'_, [u8]>, RestoreError>> + '_ {
        let p = prefix(table, 1);
        let spilled = self.spill.iter().flat_map(move |s| {
            let p = p.clone();
            s.db.prefix_iterator(p.clone())
                .map(move |item| {
                    let (k, v) = item.map_err(spill_error)?;
                    Ok(k.starts_with(&p).then(|| Cow::Owned(v.to_vec())))
                })
                .take_while(|r| !matches!(r, Ok(None)))
                .filter_map(Result::transpose)
        });
        let in_memory = self
            .mem
            .get(&table)
            .filter(|m| !m.appends.is_empty())
            .map(|m| Ok(Cow::Borrowed(m.appends.as_slice())));
        spilled.chain(in_memory)
    }

    /// Forgets everything (after a segment is applied); the spill database is
    /// emptied too.
    pub fn clear(&mut self) -> Result<(), RestoreError> {
        self.mem.clear();
        self.used = 0;
        if let Some(s) = &self.spill {
            let mut batch = rocksdb::WriteBatch::default();
            batch.delete_range(&[0u8; 5][..], &[0xffu8; 6][..]);
            s.db.write(batch).map_err(spill_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> Net {
        Net::Full(Row::encode([Val::Text(s.as_bytes()), Val::Null]))
    }

    #[test]
    fn rows_encode_and_copy_escape() {
        let r = Row::encode([Val::Text(b"a\tb\\c\nd"), Val::Null, Val::Unknown]);
        assert_eq!(
            r.values().collect::<Vec<_>>(),
            vec![Val::Text(b"a\tb\\c\nd"), Val::Null, Val::Unknown]
        );
        assert!(!r.complete());
        let mut line = Vec::new();
        r.copy_line(&mut line);
        assert_eq!(line, b"a\\tb\\\\c\\nd\t\\N\t\\N\n");
    }

    #[test]
    fn spilled_state_reads_back_the_last_version_of_each_key() {
        let mut s = NetStore::new(200, None);
        for round in 0..5 {
            for k in 0..20u32 {
                let v = format!("{k}:{round}");
                s.put(1, encode_key([&k.to_le_bytes()[..]]), full(&v))
                    .unwrap();
                s.append(2, format!("{v}\n").as_bytes()).unwrap();
            }
        }
        s.put(1, encode_key([&3u32.to_le_bytes()[..]]), Net::Deleted)
            .unwrap();
        assert!(s.spilled());
        let mut seen = HashMap::new();
        for r in s.rows(1) {
            let (k, n) = r.unwrap();
            assert!(seen.insert(k, n).is_none(), "key twice");
        }
        assert_eq!(seen.len(), 20);
        for k in 0..20u32 {
            let key = encode_key([&k.to_le_bytes()[..]]);
            let want = if k == 3 {
                Net::Deleted
            } else {
                full(&format!("{k}:4"))
            };
            assert_eq!(seen[&key], want);
            assert_eq!(s.get(1, &key).unwrap(), Some(want));
        }
        let text: Vec<u8> = s.appends(2).flat_map(|c| c.unwrap().to_vec()).collect();
        let lines: Vec<&str> = std::str::from_utf8(&text).unwrap().lines().collect();
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[0], "0:0");
        assert_eq!(lines[99], "19:4");
        s.clear().unwrap();
        assert_eq!(
            s.get(1, &encode_key([&5u32.to_le_bytes()[..]])).unwrap(),
            None
        );
    }
}
