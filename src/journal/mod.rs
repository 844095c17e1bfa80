//! The journal: an append-only, event-sourced log of every source, on RocksDB.
//!
//! # Guarantees
//! - **Atomic, durable appends.** [`Journal::append`] writes a source's events, their
//!   index entries, the source's checkpoint, coverage and counters in one RocksDB
//!   `WriteBatch`. With [`SyncPolicy::Always`] (the default) the write-ahead log is
//!   fsynced before `append` returns; with [`SyncPolicy::Os`] it survives a crash of
//!   tidemark but not of the machine. Either the whole batch is in the journal after
//!   a crash, or none of it.
//! - **Checkpoints never disagree with events.** A checkpoint is only ever written in
//!   the same batch as the events it covers (or alone, for heartbeats).
//! - **Sequence numbers** are global, start at 1, increase by one per event, and have
//!   no gaps: a failed append consumes none. A batch is one contiguous range.
//! - **Integrity.** Every stored record carries a CRC-32C that is verified on read; the
//!   store carries a format version, and a journal written by a newer format is refused.
//!
//! Appends are serialised by one mutex (the order of sequence numbers is the order of
//! durability); reads go straight to RocksDB and never block appends.

mod breaks;
mod commit;
mod image;
mod keyindex;
mod keys;
mod read;
mod record;
mod retention;
mod scrub;

pub use breaks::{Break, RESYNC_NOTE};
pub use image::{ImageBound, ImageWriter};
pub use keyindex::{key_hash, IndexStep, CF_KEYS};
pub use read::{Checkpoint, LogEntry};
pub use retention::PruneReport;
pub use scrub::{flip_byte_for_test, Damage, ScrubReport, TestRecord};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

use crate::config::{Compression, SourceKind, SyncPolicy};
use crate::event::ChangeEvent;
use crate::position::Position;

/// The on-disk format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_MAGIC: &[u8; 8] = b"TIDEMARK";

/// A source's id inside one journal (stable for the journal's life).
pub type SourceId = u32;

/// How to open a journal.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalOptions {
    /// When appends are durable.
    pub sync: SyncPolicy,
    /// Block compression.
    pub compression: Compression,
}

/// Why a journal operation failed. Messages name the journal or record and say what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// No journal at the path (read-only commands never create one).
    #[error("no journal at {0}: `tidemark run` creates it; check [journal] path")]
    NotFound(PathBuf),
    /// The directory cannot be created or written.
    #[error(
        "cannot use {path} as the journal directory: {detail}; choose a writable [journal] path"
    )]
    Unwritable {
        /// The path.
        path: PathBuf,
        /// The underlying problem.
        detail: String,
    },
    /// Another process has the journal open for writing.
    #[error("journal {0} is in use by another tidemark process; stop it first, or point [journal] path elsewhere")]
    Locked(PathBuf),
    /// The directory holds something other than a tidemark journal.
    #[error(
        "{path} is not a tidemark journal ({detail}); choose an empty directory for [journal] path"
    )]
    NotAJournal {
        /// The path.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The journal was written by a newer tidemark.
    #[error("journal {path} has format version {found}, this tidemark reads up to {supported}; upgrade tidemark")]
    NewerFormat {
        /// The path.
        path: PathBuf,
        /// Version on disk.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// A record failed verification.
    #[error("journal record {record} is damaged ({detail}); the journal cannot be trusted past it: restore the journal from a replica")]
    Corrupt {
        /// Which record.
        record: String,
        /// What failed.
        detail: String,
    },
    /// The source is not in the journal.
    #[error("no source named `{name}` in the journal (known: {known})")]
    UnknownSource {
        /// The name asked for.
        name: String,
        /// Names the journal has.
        known: String,
    },
    /// The configured kind of a source differs from the journaled one.
    #[error("source `{name}` is journaled as kind {journaled} but configured as {configured}; give the new source a new name")]
    KindMismatch {
        /// Source name.
        name: String,
        /// Kind in the journal.
        journaled: SourceKind,
        /// Kind in the config.
        configured: SourceKind,
    },
    /// An event handed to `append` is unusable; nothing was written.
    #[error("refusing to append to source `{source_name}`: {reason}")]
    InvalidEvent {
        /// Source name.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The journal was opened read-only.
    #[error("journal {0} is open read-only")]
    ReadOnly(PathBuf),
    /// Any other storage error.
    #[error("journal storage error: {0}")]
    Storage(String),
}

impl From<rocksdb::Error> for JournalError {
    fn from(e: rocksdb::Error) -> Self {
        let s = e.into_string();
        if s.starts_with("Corruption") {
            JournalError::Corrupt {
                record: "(storage block)".into(),
                detail: s,
            }
        } else {
            JournalError::Storage(s)
        }
    }
}

/// A registered source and its running figures.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Journal-local id.
    pub id: SourceId,
    /// Configured name.
    pub name: String,
    /// Kind.
    pub kind: SourceKind,
    /// Counters, watermark and coverage.
    pub stats: SourceStats,
}

/// Per-source figures kept in the same batch as the source's events.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SourceStats {
    /// Events currently in the journal.
    #[prost(uint64, tag = "1")]
    pub event_count: u64,
    /// Sequence number of the newest event.
    #[prost(uint64, tag = "2")]
    pub last_seq: u64,
    /// Time of the newest event (µs).
    #[prost(int64, optional, tag = "3")]
    pub last_event_time_us: Option<i64>,
    /// Running maximum of event times: the time axis of the index (µs).
    #[prost(int64, optional, tag = "4")]
    pub watermark_us: Option<i64>,
    /// The journal holds everything of this source up to this time (µs).
    #[prost(int64, optional, tag = "5")]
    pub coverage_us: Option<i64>,
    /// Retention dropped history before this time (µs).
    #[prost(int64, optional, tag = "6")]
    pub floor_us: Option<i64>,
    /// Base images in the journal.
    #[prost(uint64, tag = "7")]
    pub images: u64,
    /// Encoded bytes of every event ever appended (retention does not lower it).
    #[prost(uint64, tag = "8")]
    pub bytes: u64,
    /// Encoded bytes of the events the journal holds now (retention lowers it).
    /// Counted from the version that added it: older events are not in it.
    #[prost(uint64, tag = "9")]
    pub held_bytes: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SourceRecord {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(string, tag = "2")]
    kind: String,
}

/// What a source has safely journaled, written atomically with an append.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Source positions (one per stream) now safely journaled; the source resumes
    /// after them. Empty: the position of the batch's last event in each stream.
    pub checkpoint: Vec<Position>,
    /// The journal now holds everything of the source up to this time.
    pub coverage: Option<crate::time::Timestamp>,
}

/// The sequence numbers an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// First sequence number of the batch (meaningless if `count == 0`).
    pub first_seq: u64,
    /// Number of events written.
    pub count: u64,
}

/// The readers' copy of the writer's state.
#[derive(Default)]
struct View {
    next_seq: u64,
    sources: HashMap<SourceId, SourceInfo>,
}

struct WriterState {
    next_seq: u64,
    next_image: u64,
    next_source: u32,
    sources: HashMap<SourceId, SourceInfo>,
    /// The group commit's state (see [`commit`]).
    commit: commit::CommitState,
}

/// An open journal. Share it with `Arc`; every method takes `&self`.
pub struct Journal {
    db: DB,
    path: PathBuf,
    read_only: bool,
    sync: bool,
    state: Mutex<WriterState>,
    /// Signalled when a group write ends (see [`commit`]).
    committed: std::sync::Condvar,
    /// What readers see of `state`, published after each write: reads never wait
    /// for the writer lock, which an append holds across its fsync.
    view: RwLock<View>,
    /// Random identity, stable for the journal's life; empty in a read-only open of
    /// a journal that was never opened for writing by this version.
    id: String,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` for capture.
    pub fn open(path: &Path, opts: JournalOptions) -> Result<Journal, JournalError> {
        if path.exists() && !path.is_dir() {
            return Err(JournalError::Unwritable {
                path: path.into(),
                detail: "it exists and is not a directory".into(),
            });
        }
        if path.join("CURRENT").exists() {
            // Check the format before RocksDB may write anything into a foreign store.
            drop(Journal::open_read_only(path)?);
        } else if path.is_dir()
            && std::fs::read_dir(path)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(JournalError::NotAJournal {
                path: path.into(),
                detail: "the directory is not empty".into(),
            });
        }
        std::fs::create_dir_all(path).map_err(|e| JournalError::Unwritable {
            path: path.into(),
            detail: e.to_string(),
        })?;
        let mut db_opts = db_options(opts.compression);
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // The key index is made by the first open for writing of this version; a
        // read-only open does without it (see `keyindex`).
        let cfs = keys::ALL_CFS
            .iter()
            .chain(std::iter::once(&keyindex::CF_KEYS))
            .map(|n| ColumnFamilyDescriptor::new(*n, db_options(opts.compression)));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| open_error(path, e))?;
        let mut journal = Journal::from_db(db, path, false, opts.sync == SyncPolicy::Always)?;
        journal.init_format()?;
        journal.ensure_id()?;
        journal.remove_orphan_chunks()?;
        Ok(journal)
    }

    /// Opens an existing journal for reading only. Works while another process
    /// captures into it (it sees the journal as of opening) and never writes.
    pub fn open_read_only(path: &Path) -> Result<Journal, JournalError> {
        if !path.join("CURRENT").exists() {
            return Err(JournalError::NotFound(path.into()));
        }
        let opts = db_options(Compression::None);
        let present = DB::list_cf(&opts, path).map_err(|e| open_error(path, e))?;
        if !present.iter().any(|c| c == keys::CF_META) {
            return Err(JournalError::NotAJournal {
                path: path.into(),
                detail: "a RocksDB store without tidemark's column families".into(),
            });
        }
        // `open` creates the column families one by one: a reader racing a first
        // start may see only some. Refuse rather than panic on a missing one later.
        if let Some(missing) = keys::ALL_CFS
            .iter()
            .find(|n| !present.iter().any(|c| c == *n))
        {
            return Err(JournalError::NotAJournal {
                path: path.into(),
                detail: format!("column family `{missing}` is missing (a journal still being created? try again)"),
            });
        }
        let db = DB::open_cf_for_read_only(&opts, path, &present, false)
            .map_err(|e| open_error(path, e))?;
        let journal = Journal::from_db(db, path, true, false)?;
        journal.check_format()?;
        Ok(journal)
    }

    fn from_db(db: DB, path: &Path, read_only: bool, sync: bool) -> Result<Journal, JournalError> {
        let mut journal = Journal {
            db,
            path: path.into(),
            read_only,
            sync,
            state: Mutex::new(WriterState {
                next_seq: 1,
                next_image: 1,
                next_source: 1,
                sources: HashMap::new(),
                commit: Default::default(),
            }),
            committed: std::sync::Condvar::new(),
            view: RwLock::new(View {
                next_seq: 1,
                sources: HashMap::new(),
            }),
            id: String::new(),
        };
        if let Some(v) = journal
            .db
            .get_cf(journal.cf(keys::CF_META), keys::META_JOURNAL_ID)?
        {
            journal.id = String::from_utf8_lossy(record::open(&v, &|| "meta/journal_id".into())?)
                .into_owned();
        }
        if journal.try_cf(keys::CF_EVENTS).is_some() {
            let loaded = journal.load_state()?;
            journal.state = Mutex::new(loaded);
            journal.publish(&journal.lock(), None);
        }
        Ok(journal)
    }

    fn load_state(&self) -> Result<WriterState, JournalError> {
        let mut st = WriterState {
            next_seq: 1,
            next_image: 1,
            next_source: 1,
            sources: HashMap::new(),
            commit: Default::default(),
        };
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_BATCHES));
        it.seek_to_last();
        if let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (_, last) = read::decode_batch(k, v)?;
            st.next_seq = last + 1;
        }
        it.status()?;
        if let Some(v) = self
            .db
            .get_cf(self.cf(keys::CF_META), keys::META_NEXT_IMAGE)?
        {
            let p = record::open(&v, &|| "meta/next_image_id".into())?;
            st.next_image = keys::be_u64(p, 0).unwrap_or(1);
        }
        for item in self
            .db
            .prefix_iterator_cf(self.cf(keys::CF_META), keys::META_SOURCE_PREFIX)
        {
            let (k, v) = item?;
            let Some(name) = k.strip_prefix(keys::META_SOURCE_PREFIX) else {
                break;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let what = || format!("meta/source/{name}");
            let rec: SourceRecord = record::open_msg(&v, &what)?;
            let kind = SourceKind::parse(&rec.kind).ok_or_else(|| JournalError::Corrupt {
                record: what(),
                detail: format!("unknown source kind `{}`", rec.kind),
            })?;
            let stats = match self
                .db
                .get_cf(self.cf(keys::CF_STATE), keys::stats(rec.id))?
            {
                Some(v) => record::open_msg(&v, &|| format!("state/stats/{name}"))?,
                None => SourceStats::default(),
            };
            st.next_source = st.next_source.max(rec.id + 1);
            st.sources.insert(
                rec.id,
                SourceInfo {
                    id: rec.id,
                    name,
                    kind,
                    stats,
                },
            );
        }
        Ok(st)
    }

    fn init_format(&self) -> Result<(), JournalError> {
        if self
            .db
            .get_cf(self.cf(keys::CF_META), keys::META_FORMAT)?
            .is_some()
        {
            return self.check_format();
        }
        let mut it = self.db.raw_iterator_cf(self.cf(keys::CF_EVENTS));
        it.seek_to_first();
        if it.valid() {
            return Err(JournalError::NotAJournal {
                path: self.path.clone(),
                detail: "events without a format record".into(),
            });
        }
        let mut v = FORMAT_MAGIC.to_vec();
        v.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(keys::CF_META), keys::META_FORMAT, record::seal(&v));
        self.write(wb)
    }

    /// Gives the journal its identity if it has none yet (journals made by older
    /// versions get one on their first open for writing).
    fn ensure_id(&mut self) -> Result<(), JournalError> {
        if !self.id.is_empty() {
            return Ok(());
        }
        let mut bytes = [0u8; 8];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        if random.is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            bytes = (t ^ ((std::process::id() as u64) << 32)).to_be_bytes();
        }
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut wb = WriteBatch::default();
        wb.put_cf(
            self.cf(keys::CF_META),
            keys::META_JOURNAL_ID,
            record::seal(id.as_bytes()),
        );
        self.write(wb)?;
        self.id = id;
        Ok(())
    }

    /// The journal's identity: 16 hex digits, stable for its lifetime.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    fn check_format(&self) -> Result<(), JournalError> {
        let Some(v) = self.db.get_cf(self.cf(keys::CF_META), keys::META_FORMAT)? else {
            return Err(JournalError::NotAJournal {
                path: self.path.clone(),
                detail: "no format record".into(),
            });
        };
        let p = record::open(&v, &|| "meta/format".into())?;
        if p.len() != 12 || &p[..8] != FORMAT_MAGIC {
            return Err(JournalError::NotAJournal {
                path: self.path.clone(),
                detail: "unrecognised format record".into(),
            });
        }
        let found = keys::be_u32(p, 8).unwrap_or(u32::MAX);
        if found > FORMAT_VERSION {
            return Err(JournalError::NewerFormat {
                path: self.path.clone(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        Ok(())
    }

    /// Overwrites the format version (tests of the newer-format refusal only).
    #[doc(hidden)]
    pub fn force_format_version_for_test(&self, version: u32) -> Result<(), JournalError> {
        let mut v = FORMAT_MAGIC.to_vec();
        v.extend_from_slice(&version.to_be_bytes());
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(keys::CF_META), keys::META_FORMAT, record::seal(&v));
        self.write(wb)
    }

    /// The journal's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Registers `name` as a source of `kind`, or returns its id if it is already
    /// registered with that kind. Durable when it returns.
    pub fn register_source(&self, name: &str, kind: SourceKind) -> Result<SourceId, JournalError> {
        let mut st = self.lock_for_write()?;
        if let Some(s) = st.sources.values().find(|s| s.name == name) {
            if s.kind != kind {
                return Err(JournalError::KindMismatch {
                    name: name.into(),
                    journaled: s.kind,
                    configured: kind,
                });
            }
            return Ok(s.id);
        }
        let id = st.next_source;
        let mut key = keys::META_SOURCE_PREFIX.to_vec();
        key.extend_from_slice(name.as_bytes());
        let rec = SourceRecord {
            id,
            kind: kind.as_str().into(),
        };
        let mut wb = WriteBatch::default();
        wb.put_cf(self.cf(keys::CF_META), key, record::seal_msg(&rec));
        self.write(wb)?;
        st.next_source += 1;
        st.sources.insert(
            id,
            SourceInfo {
                id,
                name: name.into(),
                kind,
                stats: SourceStats::default(),
            },
        );
        self.publish(&st, Some(id));
        Ok(id)
    }

    /// Every registered source, ordered by id.
    pub fn sources(&self) -> Vec<SourceInfo> {
        let st = self.view();
        let mut v: Vec<_> = st.sources.values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Result<SourceInfo, JournalError> {
        let st = self.view();
        if let Some(s) = st.sources.values().find(|s| s.name == name) {
            return Ok(s.clone());
        }
        let mut known: Vec<_> = st.sources.values().map(|s| s.name.clone()).collect();
        known.sort();
        Err(JournalError::UnknownSource {
            name: name.into(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        })
    }

    /// Appends `events` of source `src` and records `progress`, atomically; durable
    /// when it returns (see the module guarantees). `ChangeEvent::source` is ignored
    /// (the journal key names the source); every event needs a position of the
    /// source's kind, else nothing is written. An empty `events` records only
    /// `progress` (a heartbeat).
    pub fn append(
        &self,
        src: SourceId,
        events: &[ChangeEvent],
        progress: &Progress,
    ) -> Result<Appended, JournalError> {
        self.append_inner(src, events, progress, WriteBatch::default(), None)
    }

    /// [`Journal::append`] that also writes `wb` and, if given, seals `image`
    /// (setting its `after_seq`) in the same atomic batch. Plain appends go through
    /// the group commit ([`commit`]); these wait until no group write is in flight.
    fn append_inner(
        &self,
        src: SourceId,
        events: &[ChangeEvent],
        progress: &Progress,
        mut wb: WriteBatch,
        image: Option<&mut crate::event::BaseImageMeta>,
    ) -> Result<Appended, JournalError> {
        if image.is_none() && wb.is_empty() {
            return self.append_grouped(src, events, progress);
        }
        let mut st = self.lock_for_write()?;
        let first_seq = st.next_seq;
        let info = st.sources.get(&src).cloned().ok_or_else(|| {
            JournalError::Storage(format!("append to unregistered source id {src}"))
        })?;
        let next_image = st.next_image;
        let (stats, count) = self.build(
            &info, first_seq, events, progress, &mut wb, image, next_image,
        )?;
        self.write(wb)?;
        st.next_seq += count;
        if let Some(info) = st.sources.get_mut(&src) {
            info.stats = stats;
        }
        self.publish(&st, Some(src));
        Ok(Appended { first_seq, count })
    }

    /// Checks everything that can make an append fail before anything is built, so
    /// [`Journal::build`] never leaves half an append in a shared batch.
    fn validate(
        info: &SourceInfo,
        events: &[ChangeEvent],
        progress: &Progress,
    ) -> Result<(), JournalError> {
        let invalid = |reason: String| JournalError::InvalidEvent {
            source_name: info.name.clone(),
            reason,
        };
        let mut probe = Vec::with_capacity(64);
        for (i, e) in events.iter().enumerate() {
            let pos = e
                .position
                .as_ref()
                .ok_or_else(|| invalid(format!("event {i} has no position")))?;
            if pos.source_kind() != Some(info.kind) {
                return Err(invalid(format!(
                    "event {i} has position {pos}, not a {} position",
                    info.kind
                )));
            }
            probe.clear();
            if pos.write_index_key(&mut probe).is_none() {
                return Err(invalid(format!(
                    "event {i} has an empty or unindexable position"
                )));
            }
        }
        for pos in &progress.checkpoint {
            if pos.source_kind() != Some(info.kind) {
                return Err(invalid(format!(
                    "checkpoint {pos} is not a {} position",
                    info.kind
                )));
            }
        }
        Ok(())
    }

    /// Puts an append's events, index entries, checkpoints, image seal and counters
    /// into `wb` (after [`Journal::validate`], so it fails before writing anything);
    /// returns the source's new counters and the number of events.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        info: &SourceInfo,
        first_seq: u64,
        events: &[ChangeEvent],
        progress: &Progress,
        wb: &mut WriteBatch,
        image: Option<&mut crate::event::BaseImageMeta>,
        next_image: u64,
    ) -> Result<(SourceStats, u64), JournalError> {
        Self::validate(info, events, progress)?;
        let src = info.id;
        let mut stats = info.stats.clone();
        let (cf_events, cf_pos, cf_time) = (
            self.cf(keys::CF_EVENTS),
            self.cf(keys::CF_POS),
            self.cf(keys::CF_TIME),
        );
        let mut buf = Vec::with_capacity(512);
        let mut pos_key = Vec::with_capacity(64);
        // Per stream in this batch: its name, the index key and sequence number of its
        // first event (the batch's one position-index entry for the stream), and its
        // newest position (the default checkpoint).
        let mut per_stream: Vec<(Vec<u8>, Vec<u8>, u64, &Position)> = Vec::new();
        let mut time_indexed = false;
        for (i, e) in events.iter().enumerate() {
            let seq = first_seq + i as u64;
            // Validated above: every event has an indexable position of the kind.
            let Some(pos) = e.position.as_ref() else {
                continue;
            };
            pos_key.clear();
            pos_key.extend_from_slice(&src.to_be_bytes());
            let Some(stream_len) = pos.write_index_key(&mut pos_key) else {
                continue;
            };
            encode_event(e, &mut buf);
            wb.put_cf(cf_events, keys::event(src, seq), &buf);
            stats.bytes += buf.len() as u64;
            stats.held_bytes += buf.len() as u64;
            let t = e.time_us();
            if stats.watermark_us.is_none_or(|w| t > w) {
                stats.watermark_us = Some(t);
                // One time-index entry per batch, at its first rise of the axis:
                // lookups walk the rest of the batch (see `seq_at_time`).
                if !time_indexed {
                    wb.put_cf(cf_time, keys::time(src, t, seq), []);
                    time_indexed = true;
                }
            }
            stats.last_event_time_us = Some(t);
            let stream = &pos_key[6..6 + stream_len];
            match per_stream.iter_mut().find(|(s, ..)| s == stream) {
                Some(slot) => slot.3 = pos,
                None => per_stream.push((stream.to_vec(), pos_key.clone(), seq, pos)),
            }
        }
        let count = events.len() as u64;
        if count > 0 {
            let last_seq = first_seq + count - 1;
            wb.put_cf(
                self.cf(keys::CF_BATCHES),
                first_seq.to_be_bytes(),
                read::encode_batch(src, last_seq),
            );
            stats.event_count += count;
            stats.last_seq = last_seq;
            for (_, first_key, stream_first_seq, _) in &per_stream {
                wb.put_cf(
                    cf_pos,
                    first_key,
                    read::encode_pos_entry(*stream_first_seq, last_seq),
                );
            }
        }
        let checkpoint: Vec<&Position> = if progress.checkpoint.is_empty() {
            per_stream.iter().map(|(.., p)| *p).collect()
        } else {
            progress.checkpoint.iter().collect()
        };
        for pos in checkpoint {
            let (stream, _) = pos.index_key().unwrap_or_default();
            let cp = read::CheckpointRecord {
                position: Some(pos.clone()),
                seq: stats.last_seq,
            };
            wb.put_cf(
                self.cf(keys::CF_STATE),
                keys::checkpoint(src, &stream),
                record::seal_msg(&cp),
            );
        }
        if let Some(meta) = image {
            meta.after_seq = first_seq + count - 1;
            meta.sealed_us = crate::time::Timestamp::now().as_micros();
            meta.source_bytes = stats.bytes;
            stats.images += 1;
            let next_image = next_image.max(meta.id + 1);
            wb.put_cf(
                self.cf(keys::CF_META),
                keys::META_NEXT_IMAGE,
                record::seal(&next_image.to_be_bytes()),
            );
            wb.put_cf(
                self.cf(keys::CF_IMAGES),
                keys::image(src, meta.id),
                record::seal_msg(&*meta),
            );
        }
        if let Some(c) = progress.coverage {
            stats.coverage_us = Some(
                stats
                    .coverage_us
                    .map_or(c.as_micros(), |old| old.max(c.as_micros())),
            );
        }
        wb.put_cf(
            self.cf(keys::CF_STATE),
            keys::stats(src),
            record::seal_msg(&stats),
        );
        Ok((stats, count))
    }

    /// Sequence number the next appended event will get.
    pub fn next_seq(&self) -> u64 {
        self.view().next_seq
    }

    /// Bytes the journal occupies on disk.
    pub fn disk_size(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.path)
    }

    /// Flushes memtables to table files (tests and benchmarks).
    pub fn flush(&self) -> Result<(), JournalError> {
        for name in keys::ALL_CFS {
            self.db.flush_cf(self.cf(name))?;
        }
        if let Some(cf) = self.try_cf(keyindex::CF_KEYS) {
            self.db.flush_cf(cf)?;
        }
        Ok(())
    }

    fn write(&self, wb: WriteBatch) -> Result<(), JournalError> {
        if self.read_only {
            return Err(JournalError::ReadOnly(self.path.clone()));
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }

    /// A write outside the event log (health, supervision state): no fsync, and no
    /// writer lock, so it never waits behind another source's synced append.
    fn write_unsynced(&self, wb: WriteBatch) -> Result<(), JournalError> {
        if self.read_only {
            return Err(JournalError::ReadOnly(self.path.clone()));
        }
        self.db.write_opt(wb, &WriteOptions::default())?;
        Ok(())
    }

    /// Copies the writer's state for readers: one source's entry (`Some`), or all.
    fn publish(&self, st: &WriterState, src: Option<SourceId>) {
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.next_seq = st.next_seq;
        match src.and_then(|id| st.sources.get(&id).map(|s| (id, s))) {
            Some((id, s)) => {
                view.sources.insert(id, s.clone());
            }
            None => view.sources = st.sources.clone(),
        }
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        // A panic while holding the lock cannot leave the state half-updated: it is
        // only changed after a successful write. Recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer lock once no group write is in flight: for writes that carry
    /// counters (image seals, retention), which must not overtake a group's events.
    fn lock_for_write(&self) -> Result<MutexGuard<'_, WriterState>, JournalError> {
        if self.read_only {
            return Err(JournalError::ReadOnly(self.path.clone()));
        }
        let mut st = self.lock();
        while st.commit.writing {
            st = self.committed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Ok(st)
    }

    fn try_cf(&self, name: &str) -> Option<&ColumnFamily> {
        self.db.cf_handle(name)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        match self.db.cf_handle(name) {
            Some(cf) => cf,
            // Every column family is created at open and checked by open_read_only.
            None => panic!("journal column family {name} missing after open"),
        }
    }
}

fn encode_event(e: &ChangeEvent, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    if e.source.is_empty() {
        let _ = prost::Message::encode(e, buf);
    } else {
        let mut e = e.clone();
        e.source.clear();
        let _ = prost::Message::encode(&e, buf);
    }
    let crc = crc32c::crc32c(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_le_bytes());
}

fn db_options(compression: Compression) -> Options {
    let mut o = Options::default();
    o.set_compression_type(match compression {
        Compression::Lz4 => rocksdb::DBCompressionType::Lz4,
        Compression::None => rocksdb::DBCompressionType::None,
    });
    o.set_max_background_jobs(2);
    o.set_bytes_per_sync(1 << 20);
    // The appender and the WAL fsync overlap with memtable inserts of the next batch.
    o.set_enable_pipelined_write(true);
    o
}

fn open_error(path: &Path, e: rocksdb::Error) -> JournalError {
    let s = e.into_string();
    let lower = s.to_ascii_lowercase();
    if lower.contains("lock")
        && (lower.contains("temporarily unavailable")
            || lower.contains("lock hold")
            || lower.contains("no locks"))
    {
        JournalError::Locked(path.into())
    } else if lower.contains("permission denied") || lower.contains("read-only file system") {
        JournalError::Unwritable {
            path: path.into(),
            detail: s,
        }
    } else if s.starts_with("Corruption") {
        JournalError::Corrupt {
            record: "(store metadata)".into(),
            detail: s,
        }
    } else {
        JournalError::Storage(s)
    }
}

#[cfg(test)]
mod tests;
