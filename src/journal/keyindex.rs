//! The key index: which events of a source touched a key (a primary key, a Redis
//! key, a record key, a document `_id`, a Kubernetes `namespace/name`, as
//! [`crate::event::Touch::key`] gives it), so that `history` reads the versions of
//! one key instead of scanning the whole source.
//!
//! # Layout (column family `by_key`)
//! - `(source u32, epoch u64, hash u64, seq u64)` → empty: event `seq` touched a
//!   key whose FNV-1a 64 hash is `hash`; `epoch = seq >> 18`. One entry per
//!   distinct key per event.
//! - `(source u32)` → checksummed `u64`: the source's **indexed-through**
//!   sequence: every event of the source at or below it has its entries.
//!
//! # Guarantees
//! - **Off the acknowledgement path.** Appends never write or wait for the index.
//!   [`Journal::index_keys`] follows the journal from indexed-through and indexes
//!   events once they are readable, which for an append is after it is durable;
//!   `tidemark run` calls it from a background task.
//! - **Consistent after a crash.** One step's entries and its new indexed-through
//!   are one `WriteBatch` (in the write-ahead log, not fsynced): after a crash the
//!   index holds every entry up to the indexed-through it shows, and the events
//!   after it are simply not indexed yet. Nothing is ever indexed that is not in
//!   the journal (events are durable before they are readable).
//! - **A hit is a candidate, never an answer.** Two keys can share a hash, and an
//!   entry can outlive its event (below): readers re-read each hit's event and
//!   check its touches ([`crate::app::history`] does).
//! - **Retention** deletes, in the batch that drops the events, every epoch wholly
//!   at or below the cut (a range delete). The entries of the epoch the cut falls
//!   in stay until a later prune; they point at events that no longer exist and
//!   readers skip them.
//! - **Missing index.** A journal made before the index, or whose index was
//!   dropped, has no indexed-through: the indexer rebuilds it from the source's
//!   first event, and readers scan whatever is not indexed yet.

use std::collections::HashSet;

use rocksdb::{ReadOptions, WriteBatch};

use super::{keys, record, Journal, JournalError, SourceId};

/// Column family of the key index.
pub const CF_KEYS: &str = "by_key";

/// log2 of the sequence numbers per epoch (see the module's layout).
const EPOCH_BITS: u32 = 18;

/// The key index's hash of `key`: FNV-1a, 64 bits (stable across builds, unlike
/// the standard library's hasher).
pub fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn entry_key(src: SourceId, hash: u64, seq: u64) -> [u8; 28] {
    let mut k = [0u8; 28];
    k[..4].copy_from_slice(&src.to_be_bytes());
    k[4..12].copy_from_slice(&(seq >> EPOCH_BITS).to_be_bytes());
    k[12..20].copy_from_slice(&hash.to_be_bytes());
    k[20..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn epoch_start(src: SourceId, epoch: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&src.to_be_bytes());
    k[4..].copy_from_slice(&epoch.to_be_bytes());
    k
}

/// What one [`Journal::index_keys`] step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStep {
    /// Events indexed.
    pub events: u64,
    /// The source's indexed-through after the step.
    pub through: u64,
    /// Whether the step reached the source's newest readable event.
    pub caught_up: bool,
}

impl Journal {
    /// The source's indexed-through sequence: 0 when nothing is indexed (or the
    /// journal has no key index: a read-only open of a journal made before it).
    pub fn keys_indexed_through(&self, src: SourceId) -> Result<u64, JournalError> {
        let Some(cf) = self.try_cf(CF_KEYS) else {
            return Ok(0);
        };
        match self.db.get_cf(cf, src.to_be_bytes())? {
            None => Ok(0),
            Some(v) => {
                let p = record::open(&v, &|| format!("by_key/source {src}"))?;
                Ok(keys::be_u64(p, 0).unwrap_or(0))
            }
        }
    }

    /// Indexes up to `max_events` events of `src` after its indexed-through, in one
    /// batch with the new indexed-through (see the module's guarantees). Never
    /// takes the writer lock: appends do not wait for it.
    pub fn index_keys(&self, src: SourceId, max_events: usize) -> Result<IndexStep, JournalError> {
        let Some(cf) = self.try_cf(CF_KEYS) else {
            return Err(JournalError::ReadOnly(self.path.clone()));
        };
        let mut through = self.keys_indexed_through(src)?;
        let mut wb = WriteBatch::default();
        let mut events = 0u64;
        let mut seen = HashSet::new();
        let mut caught_up = true;
        for entry in self.events(src, through.saturating_add(1), u64::MAX) {
            if events as usize >= max_events {
                caught_up = false;
                break;
            }
            let entry = entry?;
            seen.clear();
            for t in entry.event.touches() {
                if let Some(k) = t.key {
                    let h = key_hash(&k);
                    if seen.insert(h) {
                        wb.put_cf(cf, entry_key(src, h, entry.seq), []);
                    }
                }
            }
            through = entry.seq;
            events += 1;
        }
        if events > 0 {
            wb.put_cf(cf, src.to_be_bytes(), record::seal(&through.to_be_bytes()));
            self.write_unsynced(wb)?;
        }
        Ok(IndexStep {
            events,
            through,
            caught_up,
        })
    }

    /// Sequences of the events of `src` with `from <= seq <= through` that the
    /// index says touched `key`, in order: candidates, to be re-checked (a hash
    /// collision, or an entry whose event retention dropped).
    pub fn key_candidates(
        &self,
        src: SourceId,
        key: &str,
        from: u64,
        through: u64,
    ) -> Result<Vec<u64>, JournalError> {
        let Some(cf) = self.try_cf(CF_KEYS) else {
            return Ok(Vec::new());
        };
        let h = key_hash(key);
        let mut out = Vec::new();
        if from > through {
            return Ok(out);
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(cf, ro);
        for epoch in (from >> EPOCH_BITS)..=(through >> EPOCH_BITS) {
            let prefix = &entry_key(src, h, epoch << EPOCH_BITS)[..20];
            it.seek(entry_key(src, h, from.max(epoch << EPOCH_BITS)));
            while let Some(k) = it.key() {
                if !k.starts_with(prefix) {
                    break;
                }
                match keys::be_u64(k, 20) {
                    Some(seq) if seq <= through => out.push(seq),
                    _ => break,
                }
                it.next();
            }
            it.status()?;
        }
        Ok(out)
    }

    /// Puts into `wb` the deletion of the key index's epochs of `src` wholly at or
    /// below `cut` (retention; see the module's guarantees).
    pub(super) fn delete_key_entries(&self, src: SourceId, cut: u64, wb: &mut WriteBatch) {
        if let Some(cf) = self.try_cf(CF_KEYS) {
            let end = cut.saturating_add(1) >> EPOCH_BITS;
            if end > 0 {
                wb.delete_range_cf(cf, epoch_start(src, 0), epoch_start(src, end));
            }
        }
    }

    /// Drops `src`'s key index, entries and indexed-through (tests of the rebuild).
    #[doc(hidden)]
    pub fn drop_key_index_for_test(&self, src: SourceId) -> Result<(), JournalError> {
        if let Some(cf) = self.try_cf(CF_KEYS) {
            let mut wb = WriteBatch::default();
            wb.delete_range_cf(cf, src.to_be_bytes(), keys::source_end(src));
            self.write_unsynced(wb)?;
        }
        Ok(())
    }

    /// Adds an index entry saying event `seq` touched `key` (tests that a wrong
    /// candidate is never shown, as a hash collision would make one).
    #[doc(hidden)]
    pub fn add_key_entry_for_test(
        &self,
        src: SourceId,
        key: &str,
        seq: u64,
    ) -> Result<(), JournalError> {
        if let Some(cf) = self.try_cf(CF_KEYS) {
            let mut wb = WriteBatch::default();
            wb.put_cf(cf, entry_key(src, key_hash(key), seq), []);
            self.write_unsynced(wb)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_sort_by_source_epoch_hash_then_seq() {
        let h = key_hash("a");
        assert!(entry_key(1, h, 5) < entry_key(1, h, 6));
        assert!(entry_key(1, u64::MAX, 5) < entry_key(1, 0, 1 << EPOCH_BITS));
        assert!(entry_key(1, u64::MAX, u64::MAX) < entry_key(2, 0, 0));
        // The indexed-through key sorts before every entry of its source and is
        // outside every range retention deletes.
        assert!(src_key(1).as_slice() < &epoch_start(1, 0)[..]);
        assert!(epoch_start(1, 0)[..] <= entry_key(1, 0, 0)[..]);
        assert_ne!(key_hash("ab"), key_hash("ba"));
        assert_eq!(key_hash(""), 0xcbf2_9ce4_8422_2325);
    }

    fn src_key(src: u32) -> Vec<u8> {
        src.to_be_bytes().to_vec()
    }
}
