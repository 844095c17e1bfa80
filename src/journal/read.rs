//! Reading the journal: events by source and sequence, the time and position
//! indexes, checkpoints, and a whole-journal consistency check.

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::{keys, record, Journal, JournalError, SourceId};
use crate::event::ChangeEvent;
use crate::position::Position;
use crate::time::Timestamp;

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct CheckpointRecord {
    #[prost(message, optional, tag = "1")]
    pub position: Option<Position>,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

/// A source's resume point for one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The last position the journal holds durably; capture resumes after it.
    pub position: Position,
    /// The source's newest sequence number when the checkpoint was written.
    pub seq: u64,
}

/// One event with its place in the journal.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Global sequence number.
    pub seq: u64,
    /// The event, with `source` filled in.
    pub event: ChangeEvent,
}

/// A position-index value: the sequence range of the batch the entry starts.
pub(super) fn encode_pos_entry(first: u64, last: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&first.to_be_bytes());
    v[8..].copy_from_slice(&last.to_be_bytes());
    v
}

/// Decodes a position-index value (an 8-byte value is a single event).
pub(super) fn decode_pos_entry(v: &[u8]) -> Option<(u64, u64)> {
    match v.len() {
        16 => Some((keys::be_u64(v, 0)?, keys::be_u64(v, 8)?)),
        8 => keys::be_u64(v, 0).map(|s| (s, s)),
        _ => None,
    }
}

pub(super) fn encode_batch(src: SourceId, last_seq: u64) -> Vec<u8> {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&src.to_be_bytes());
    v[4..].copy_from_slice(&last_seq.to_be_bytes());
    record::seal(&v)
}

/// Decodes a batch index entry into `(source, last_seq)`.
pub(super) fn decode_batch(key: &[u8], value: &[u8]) -> Result<(SourceId, u64), JournalError> {
    let what = || format!("batches/{}", keys::be_u64(key, 0).unwrap_or(0));
    let p = record::open(value, &what)?;
    match (keys::be_u32(p, 0), keys::be_u64(p, 4)) {
        (Some(src), Some(last)) if p.len() == 12 => Ok((src, last)),
        _ => Err(JournalError::Corrupt {
            record: what(),
            detail: "malformed batch entry".into(),
        }),
    }
}

impl Journal {
    fn decode_event(
        &self,
        src: SourceId,
        seq: u64,
        value: &[u8],
        name: &str,
    ) -> Result<ChangeEvent, JournalError> {
        let mut e: ChangeEvent = record::open_msg(value, &|| format!("events/{name}:{seq}"))?;
        e.source = name.to_string();
        let _ = src;
        Ok(e)
    }

    fn name_of(&self, src: SourceId) -> String {
        self.view()
            .sources
            .get(&src)
            .map(|s| s.name.clone())
            .unwrap_or_else(|| format!("#{src}"))
    }

    /// The events of `src` with `from <= seq <= through`, in sequence order, each
    /// verified against its checksum.
    pub fn events(
        &self,
        src: SourceId,
        from: u64,
        through: u64,
    ) -> impl Iterator<Item = Result<LogEntry, JournalError>> + '_ {
        let name = self.name_of(src);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::event(src, through.saturating_add(1)).to_vec());
        if through == u64::MAX {
            ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
        }
        let start = keys::event(src, from);
        self.db
            .iterator_cf_opt(
                self.cf(keys::CF_EVENTS),
                ro,
                IteratorMode::From(&start, Direction::Forward),
            )
            .map(move |item| {
                let (k, v) = item?;
                let seq = keys::be_u64(&k, 4).unwrap_or(0);
                Ok(LogEntry {
                    seq,
                    event: self.decode_event(src, seq, &v, &name)?,
                })
            })
    }

    /// Number of events of `src` with `from <= seq <= through` (reads keys only).
    pub fn count_events(
        &self,
        src: SourceId,
        from: u64,
        through: u64,
    ) -> Result<u64, JournalError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::event(src, through.saturating_add(1)).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_EVENTS), ro);
        it.seek(keys::event(src, from));
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }

    /// The newest event of `src` whose time on the journal's axis is at or before
    /// `at`: every event of `src` with a sequence number up to the returned one is
    /// "at or before `at`", none after it is. `None`: no event is.
    ///
    /// The axis is the running maximum of event times per source (source clocks may
    /// step back; the axis never does), so this is two index seeks, never a scan.
    pub fn seq_at_time(&self, src: SourceId, at: Timestamp) -> Result<Option<u64>, JournalError> {
        // The newest index entry at or before `at` (where the axis rose to t0 at s0)
        // and the next one (the first event whose axis is above `at` is before it).
        let Some((t0, s0)) = self.time_entry_at_or_before(src, at.as_micros())? else {
            return Ok(None);
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_TIME), ro);
        match at.as_micros().checked_add(1) {
            Some(next) => it.seek(keys::time(src, next, 0)),
            None => it.seek(keys::source_end(src)),
        }
        let bound = match it.key() {
            Some(k) => keys::be_u64(k, 12).unwrap_or(u64::MAX),
            None => u64::MAX,
        };
        it.status()?;
        // Between the two entries the axis only rises within batches (one entry per
        // batch marks its first rise): walk them until it passes `at`.
        let mut axis = t0;
        let mut found = self.last_seq_below(src, s0.saturating_add(1))?;
        for e in self.events(src, s0.saturating_add(1), bound.saturating_sub(1)) {
            let e = e?;
            axis = axis.max(e.event.time_us());
            if axis > at.as_micros() {
                break;
            }
            found = Some(e.seq);
        }
        Ok(found)
    }

    /// The newest time-index entry of `src` at or before `at`: `(time, seq)`.
    fn time_entry_at_or_before(
        &self,
        src: SourceId,
        at: i64,
    ) -> Result<Option<(i64, u64)>, JournalError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(src.to_be_bytes().to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_TIME), ro);
        it.seek_for_prev(keys::time(src, at, u64::MAX));
        let found = it.key().and_then(|k| {
            (keys::be_u32(k, 0) == Some(src)).then(|| {
                let t = keys::be_u64(k, 4).map(|u| (u ^ (1 << 63)) as i64)?;
                Some((t, keys::be_u64(k, 12)?))
            })?
        });
        it.status()?;
        Ok(found)
    }

    /// The bytes `src` holds in the journal: its events as stored (before block
    /// compression) and its base images' chunks.
    pub fn source_bytes(&self, src: SourceId) -> Result<u64, JournalError> {
        let held = self
            .view()
            .sources
            .get(&src)
            .map_or(0, |s| s.stats.held_bytes);
        let images: u64 = self.images(src)?.iter().map(|m| m.bytes).sum();
        Ok(held + images)
    }

    /// Number and stored bytes of the events of `src` with `from <= seq <= through`.
    pub(super) fn measure_events(
        &self,
        src: SourceId,
        from: u64,
        through: u64,
    ) -> Result<(u64, u64), JournalError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::event(src, through.saturating_add(1)).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_EVENTS), ro);
        it.seek(keys::event(src, from));
        let (mut n, mut bytes) = (0, 0);
        while let Some(v) = it.value() {
            n += 1;
            bytes += v.len() as u64;
            it.next();
        }
        it.status()?;
        Ok((n, bytes))
    }

    /// The time axis of `src` at sequence number `seq`: the running maximum of the
    /// times of its events up to `seq` (`None` if it has none there). Walks the time
    /// index back from its newest entry (one step per batch after `seq`: placing an
    /// image just behind the stream's head), then the events after that entry.
    pub fn watermark_at(&self, src: SourceId, seq: u64) -> Result<Option<i64>, JournalError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(src.to_be_bytes().to_vec());
        ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_TIME), ro);
        it.seek_to_last();
        let mut entry = None;
        while let Some(k) = it.key() {
            if let Some(s) = keys::be_u64(k, 12).filter(|s| *s <= seq) {
                entry = keys::be_u64(k, 4).map(|u| ((u ^ (1 << 63)) as i64, s));
                break;
            }
            it.prev();
        }
        it.status()?;
        let Some((mut axis, s0)) = entry else {
            return Ok(None);
        };
        // The axis may have risen after the entry within its batch.
        for e in self.events(src, s0.saturating_add(1), seq) {
            axis = axis.max(e?.event.time_us());
        }
        Ok(Some(axis))
    }

    /// The newest sequence number of `src` strictly below `bound`.
    pub fn last_seq_below(&self, src: SourceId, bound: u64) -> Result<Option<u64>, JournalError> {
        if bound == 0 {
            return Ok(None);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(keys::event(src, 0).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_EVENTS), ro);
        it.seek_for_prev(keys::event(src, bound - 1));
        let found = it.key().and_then(|k| {
            (keys::be_u32(k, 0) == Some(src))
                .then(|| keys::be_u64(k, 4))
                .flatten()
        });
        it.status()?;
        Ok(found)
    }

    /// The sequence number of the newest event of `src` whose position is at or
    /// before `pos` in the same stream.
    ///
    /// The position index holds one entry per stream per batch (the stream's first
    /// position in the batch, with the batch's sequence range), since positions rise
    /// within a stream (the source contract). So this is one index seek and a scan of
    /// at most one batch.
    pub fn seq_at_position(
        &self,
        src: SourceId,
        pos: &Position,
    ) -> Result<Option<u64>, JournalError> {
        let mut key = src.to_be_bytes().to_vec();
        let Some(stream_len) = pos.write_index_key(&mut key) else {
            return Ok(None);
        };
        let prefix = key[..6 + stream_len].to_vec();
        let ordinal = key[6 + stream_len..].to_vec();
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(prefix.clone());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_POS), ro);
        it.seek_for_prev(&key);
        let range = match (it.key(), it.value()) {
            (Some(k), Some(v)) if k.starts_with(&prefix) => decode_pos_entry(v),
            _ => None,
        };
        it.status()?;
        let Some((first, last)) = range else {
            return Ok(None);
        };
        let mut found = None;
        let mut probe = Vec::with_capacity(64);
        for entry in self.events(src, first, last) {
            let entry = entry?;
            let Some(p) = entry.event.position.as_ref() else {
                continue;
            };
            probe.clear();
            let Some(len) = p.write_index_key(&mut probe) else {
                continue;
            };
            if probe[..2 + len] != key[4..6 + stream_len] {
                continue; // another stream
            }
            if probe[2 + len..] > ordinal[..] {
                break;
            }
            found = Some(entry.seq);
        }
        Ok(found)
    }

    /// The checkpoints of `src`, one per stream: where capture resumes.
    pub fn checkpoints(&self, src: SourceId) -> Result<Vec<Checkpoint>, JournalError> {
        let prefix = keys::checkpoint_prefix(src);
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(keys::CF_STATE), prefix) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let rec: CheckpointRecord =
                record::open_msg(&v, &|| format!("state/checkpoint/{src}"))?;
            if let Some(position) = rec.position {
                out.push(Checkpoint {
                    position,
                    seq: rec.seq,
                });
            }
        }
        Ok(out)
    }

    /// The newest event of `src`, if any.
    pub fn last_event(&self, src: SourceId) -> Result<Option<LogEntry>, JournalError> {
        match self.last_seq_below(src, u64::MAX)? {
            Some(seq) => self.events(src, seq, seq).next().transpose(),
            None => Ok(None),
        }
    }

    /// Records a source's latest health report (a JSON document that `status`
    /// shows: lag, retained WAL, warnings). Not part of the event log; not synced.
    pub fn set_health(&self, src: SourceId, json: &str) -> Result<(), JournalError> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(
            self.cf(keys::CF_STATE),
            keys::health(src),
            record::seal(json.as_bytes()),
        );
        self.write_unsynced(wb)
    }

    /// Records a source's supervision state (a JSON document: `starting`,
    /// `capturing`, `retrying` with attempt and last error, `stopped` with its error).
    /// Not part of the event log; not synced.
    pub fn set_supervision(&self, src: SourceId, json: &str) -> Result<(), JournalError> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(
            self.cf(keys::CF_STATE),
            keys::supervision(src),
            record::seal(json.as_bytes()),
        );
        self.write_unsynced(wb)
    }

    /// The latest supervision state of `src`, if any.
    pub fn supervision(&self, src: SourceId) -> Result<Option<String>, JournalError> {
        self.read_text(keys::supervision(src).to_vec(), || {
            format!("state/supervision/{src}")
        })
    }

    /// Durably records a connector's note about its source (e.g. "this journal
    /// created replication slot S"): synced, like an append.
    pub fn set_note(&self, src: SourceId, name: &str, value: &str) -> Result<(), JournalError> {
        let mut wb = rocksdb::WriteBatch::default();
        wb.put_cf(
            self.cf(keys::CF_STATE),
            keys::note(src, name),
            record::seal(value.as_bytes()),
        );
        self.write(wb)
    }

    /// A note recorded with [`Journal::set_note`].
    pub fn note(&self, src: SourceId, name: &str) -> Result<Option<String>, JournalError> {
        self.read_text(keys::note(src, name), || format!("state/note/{src}/{name}"))
    }

    fn read_text(
        &self,
        key: Vec<u8>,
        what: impl Fn() -> String,
    ) -> Result<Option<String>, JournalError> {
        match self.db.get_cf(self.cf(keys::CF_STATE), key)? {
            Some(v) => Ok(Some(
                String::from_utf8_lossy(record::open(&v, &what)?).into_owned(),
            )),
            None => Ok(None),
        }
    }

    /// The latest health report of `src`, if any.
    pub fn health(&self, src: SourceId) -> Result<Option<String>, JournalError> {
        match self.db.get_cf(self.cf(keys::CF_STATE), keys::health(src))? {
            Some(v) => Ok(Some(
                String::from_utf8_lossy(record::open(&v, &|| format!("state/health/{src}"))?)
                    .into_owned(),
            )),
            None => Ok(None),
        }
    }

    /// Every event in global sequence order starting at `from`, following the
    /// by-sequence index (each batch is one contiguous range of one source).
    pub fn log_from(&self, from: u64) -> impl Iterator<Item = Result<LogEntry, JournalError>> + '_ {
        let mut batches = self.db.raw_iterator_cf(self.cf(keys::CF_BATCHES));
        batches.seek_for_prev(from.to_be_bytes());
        if !batches.valid() {
            batches.seek_to_first();
        }
        let mut current: Option<Box<dyn Iterator<Item = Result<LogEntry, JournalError>> + '_>> =
            None;
        std::iter::from_fn(move || loop {
            if let Some(it) = current.as_mut() {
                if let Some(item) = it.next() {
                    return Some(item);
                }
                current = None;
            }
            let (k, v) = match (batches.key(), batches.value()) {
                (Some(k), Some(v)) => (k.to_vec(), v.to_vec()),
                _ => return batches.status().err().map(|e| Err(e.into())),
            };
            batches.next();
            let first = keys::be_u64(&k, 0).unwrap_or(0);
            match decode_batch(&k, &v) {
                Ok((src, last)) if last >= from => {
                    current = Some(Box::new(self.events(src, first.max(from), last)));
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        })
    }

    /// Checks the whole journal: every batch's events present and intact, sequence
    /// numbers contiguous, each source's checkpoint and counters consistent with its
    /// newest event. Returns the number of events checked.
    pub fn verify(&self) -> Result<u64, JournalError> {
        let bad = |detail: String| JournalError::Corrupt {
            record: "(journal structure)".into(),
            detail,
        };
        let sources = self.sources();
        let mut expected_next: Option<u64> = None;
        let mut checked = 0u64;
        for item in self
            .db
            .iterator_cf(self.cf(keys::CF_BATCHES), IteratorMode::Start)
        {
            let (k, v) = item?;
            let first = keys::be_u64(&k, 0).unwrap_or(0);
            let (src, last) = decode_batch(&k, &v)?;
            if let Some(next) = expected_next {
                if first != next {
                    return Err(bad(format!(
                        "sequence gap: expected batch at {next}, found {first}"
                    )));
                }
            }
            expected_next = Some(last + 1);
            let floor = sources
                .iter()
                .find(|s| s.id == src)
                .map(|s| s.stats.floor_us.is_some());
            let n = self.count_events(src, first, last)?;
            // Retention may have dropped a pruned source's old batches whole.
            if n != last - first + 1 && !(n == 0 && floor == Some(true)) {
                return Err(bad(format!(
                    "batch {first}..={last} of source {src} has {n} events"
                )));
            }
            for e in self.events(src, first, last) {
                e?;
                checked += 1;
            }
        }
        for s in &sources {
            if let Some(next) = expected_next {
                if s.stats.last_seq >= next {
                    return Err(bad(format!("source {} counters ahead of the log", s.name)));
                }
            }
            for cp in self.checkpoints(s.id)? {
                if cp.seq > s.stats.last_seq {
                    return Err(bad(format!("checkpoint of {} ahead of its events", s.name)));
                }
            }
        }
        Ok(checked)
    }
}
