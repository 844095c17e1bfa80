//! Base images: a source's full state at one position, so a restore starts from the
//! newest image before its target time and replays only what follows.
//!
//! An image is written as ordered chunks, then sealed by [`ImageWriter::finish`],
//! which writes the image's metadata, the source's checkpoint and its coverage in
//! one synced batch. Until then the image does not exist for readers; chunks of an
//! image that was never finished (a crash mid-copy) are removed at the next open.

use std::sync::Arc;

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};

use super::{keys, record, Journal, JournalError, Progress, SourceId};
use crate::event::BaseImageMeta;
use crate::position::Position;
use crate::time::Timestamp;

/// Unsynced chunk bytes buffered before a write (the final seal syncs them all).
const CHUNK_FLUSH_BYTES: usize = 8 << 20;

/// Which image to find: the newest at or before a time, or at or before a sequence
/// number.
#[derive(Debug, Clone, Copy)]
pub enum ImageBound {
    /// Source time.
    Time(Timestamp),
    /// Journal sequence number: the image's `after_seq` is at or below it.
    Seq(u64),
}

/// Writes one base image. Dropping it without [`finish`](ImageWriter::finish)
/// discards the chunks.
pub struct ImageWriter {
    journal: Arc<Journal>,
    src: SourceId,
    meta: BaseImageMeta,
    pending: WriteBatch,
    pending_bytes: usize,
    finished: bool,
}

impl Journal {
    /// Starts a base image of `src` consistent with `position`, representing the
    /// source at `time`; `format` names the chunks' encoding.
    pub fn begin_image(
        self: &Arc<Self>,
        src: SourceId,
        position: Position,
        time: Timestamp,
        format: &str,
    ) -> Result<ImageWriter, JournalError> {
        let mut st = self.lock_for_write()?;
        let id = st.next_image;
        st.next_image += 1;
        Ok(ImageWriter {
            journal: Arc::clone(self),
            src,
            meta: BaseImageMeta {
                id,
                position: Some(position),
                time_us: time.as_micros(),
                format: format.into(),
                ..Default::default()
            },
            pending: WriteBatch::default(),
            pending_bytes: 0,
            finished: false,
        })
    }

    /// Every finished image of `src`, oldest first.
    pub fn images(&self, src: SourceId) -> Result<Vec<BaseImageMeta>, JournalError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
        let start = keys::image(src, 0);
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(
            self.cf(keys::CF_IMAGES),
            ro,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item?;
            out.push(record::open_msg(&v, &|| {
                format!("images/{src}:{}", keys::be_u64(&k, 4).unwrap_or(0))
            })?);
        }
        Ok(out)
    }

    /// The newest finished image of `src` at or before `bound`. Images are few per
    /// source, so this walks them newest first.
    pub fn image_at_or_before(
        &self,
        src: SourceId,
        bound: ImageBound,
    ) -> Result<Option<BaseImageMeta>, JournalError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(keys::image(src, 0).to_vec());
        ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(keys::CF_IMAGES), ro);
        it.seek_to_last();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let meta: BaseImageMeta = record::open_msg(v, &|| {
                format!("images/{src}:{}", keys::be_u64(k, 4).unwrap_or(0))
            })?;
            let fits = match bound {
                ImageBound::Time(t) => meta.time_us <= t.as_micros(),
                ImageBound::Seq(s) => meta.after_seq <= s,
            };
            if fits {
                return Ok(Some(meta));
            }
            it.prev();
        }
        it.status()?;
        Ok(None)
    }

    /// For each part of `src` (see [`BaseImageMeta::part`]; the empty part is the
    /// whole source), its newest finished image at or before `bound`, ordered by
    /// part. A part whose every image is after `bound` is left out.
    pub fn part_images_at_or_before(
        &self,
        src: SourceId,
        bound: ImageBound,
    ) -> Result<Vec<BaseImageMeta>, JournalError> {
        let mut best: std::collections::BTreeMap<String, BaseImageMeta> = Default::default();
        for meta in self.images(src)? {
            let fits = match bound {
                ImageBound::Time(t) => meta.time_us <= t.as_micros(),
                ImageBound::Seq(s) => meta.after_seq <= s,
            };
            if fits {
                // Ids rise with sealing order: a later one is newer.
                best.insert(meta.part.clone(), meta);
            }
        }
        Ok(best.into_values().collect())
    }

    /// The chunks of `image` in order, each verified; fails if any is missing.
    pub fn image_chunks<'a>(
        &'a self,
        image: &BaseImageMeta,
    ) -> impl Iterator<Item = Result<Vec<u8>, JournalError>> + 'a {
        let (id, total) = (image.id, image.chunks);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::chunk(id + 1, 0).to_vec());
        let start = keys::chunk(id, 0);
        let mut it = self.db.iterator_cf_opt(
            self.cf(keys::CF_CHUNKS),
            ro,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut n = 0u64;
        std::iter::from_fn(move || {
            if n == total {
                return None;
            }
            let what = || format!("image_chunks/{id}:{n}");
            let item = match it.next() {
                Some(Ok((k, v))) if keys::be_u64(&k, 8) == Some(n) => {
                    record::open(&v, &what).map(<[u8]>::to_vec)
                }
                Some(Err(e)) => Err(e.into()),
                _ => Err(JournalError::Corrupt {
                    record: what(),
                    detail: "chunk missing".into(),
                }),
            };
            n += 1;
            if item.is_err() {
                n = total;
            }
            Some(item)
        })
    }

    /// Deletes chunks of images that were never finished (called at open).
    pub(super) fn remove_orphan_chunks(&self) -> Result<(), JournalError> {
        let mut finished = std::collections::HashSet::new();
        for item in self
            .db
            .iterator_cf(self.cf(keys::CF_IMAGES), IteratorMode::Start)
        {
            let (_, v) = item?;
            let meta: BaseImageMeta = record::open_msg(&v, &|| "images".into())?;
            finished.insert(meta.id);
        }
        let cf = self.cf(keys::CF_CHUNKS);
        let mut it = self.db.raw_iterator_cf(cf);
        it.seek_to_first();
        let mut wb = WriteBatch::default();
        let mut max_seen = 0;
        while let Some(k) = it.key() {
            let id = keys::be_u64(k, 0).unwrap_or(0);
            max_seen = max_seen.max(id);
            if !finished.contains(&id) {
                wb.delete_range_cf(cf, keys::chunk(id, 0), keys::chunk(id + 1, 0));
            }
            it.seek(keys::chunk(id + 1, 0));
        }
        it.status()?;
        if !wb.is_empty() {
            tracing::warn!(journal = %self.path.display(), "removing chunks of a base image that was never finished");
            self.write(wb)?;
        }
        let mut st = self.lock();
        st.next_image = st.next_image.max(max_seen + 1);
        Ok(())
    }
}

impl ImageWriter {
    /// Adds the next chunk. Chunks are buffered and written without fsync; the
    /// final seal makes them durable together.
    pub fn put_chunk(&mut self, data: &[u8]) -> Result<(), JournalError> {
        let cf = self.journal.cf(keys::CF_CHUNKS);
        self.pending.put_cf(
            cf,
            keys::chunk(self.meta.id, self.meta.chunks),
            record::seal(data),
        );
        self.meta.chunks += 1;
        self.meta.bytes += data.len() as u64;
        self.pending_bytes += data.len();
        if self.pending_bytes >= CHUNK_FLUSH_BYTES {
            let wb = std::mem::take(&mut self.pending);
            self.pending_bytes = 0;
            self.journal.db.write(wb)?;
        }
        Ok(())
    }

    /// Marks the image as one of part `part` of the source (a cluster shard), not
    /// of the whole source; see [`BaseImageMeta::part`].
    pub fn set_part(&mut self, part: &str) {
        self.meta.part = part.to_string();
    }

    /// Chunks written so far.
    pub fn chunks(&self) -> u64 {
        self.meta.chunks
    }

    /// Moves the time the image represents (before sealing): an image read while
    /// the source kept changing (MongoDB's, which the events from its position on
    /// reconcile) represents the source only from the end of the read, so a restore
    /// must not pick it for an earlier moment.
    pub fn set_time(&mut self, time: crate::time::Timestamp) {
        self.meta.time_us = time.as_micros();
    }

    /// Seals the image: metadata, checkpoint and coverage in one synced batch. The
    /// image follows every event already in the journal (`after_seq`).
    pub fn finish(mut self, progress: &Progress) -> Result<BaseImageMeta, JournalError> {
        let journal = Arc::clone(&self.journal);
        let wb = std::mem::take(&mut self.pending);
        // The image is the source's new starting point: record its position unless
        // the caller names another, through the ordinary append path.
        let mut progress = progress.clone();
        if progress.checkpoint.is_empty() {
            progress.checkpoint = self.meta.position.clone().into_iter().collect();
        }
        journal.append_inner(self.src, &[], &progress, wb, Some(&mut self.meta))?;
        self.finished = true;
        Ok(self.meta.clone())
    }
}

impl ImageWriter {
    /// Seals an image taken while capture went on: it follows the source's events
    /// up to `after_seq` (which the caller found among the journaled stream), and
    /// leaves checkpoints and coverage alone. Its time is the source's time axis at
    /// `after_seq` (never before the previous image's): a restore to any moment at
    /// or after it that starts here replays exactly the events after `after_seq`.
    pub fn finish_placed(mut self, after_seq: u64) -> Result<BaseImageMeta, JournalError> {
        let journal = Arc::clone(&self.journal);
        let mut wb = std::mem::take(&mut self.pending);
        let mut st = journal.lock_for_write()?;
        let Some(info) = st.sources.get(&self.src) else {
            return Err(JournalError::Storage(format!(
                "image of unregistered source id {}",
                self.src
            )));
        };
        let mut stats = info.stats.clone();
        let previous = journal.image_at_or_before(self.src, ImageBound::Seq(u64::MAX))?;
        if previous.as_ref().is_some_and(|p| p.after_seq > after_seq) {
            return Err(JournalError::Storage(format!(
                "image placed after sequence {after_seq} would precede the previous image (after {})",
                previous.map_or(0, |p| p.after_seq)
            )));
        }
        let axis = journal.watermark_at(self.src, after_seq)?;
        let mut time = axis.unwrap_or(self.meta.time_us);
        if let Some(p) = &previous {
            time = time.max(p.time_us);
        }
        self.meta.time_us = time;
        self.meta.after_seq = after_seq;
        self.meta.sealed_us = Timestamp::now().as_micros();
        self.meta.source_bytes = stats.bytes;
        stats.images += 1;
        let next_image = st.next_image.max(self.meta.id + 1);
        wb.put_cf(
            journal.cf(keys::CF_META),
            keys::META_NEXT_IMAGE,
            record::seal(&next_image.to_be_bytes()),
        );
        wb.put_cf(
            journal.cf(keys::CF_IMAGES),
            keys::image(self.src, self.meta.id),
            record::seal_msg(&self.meta),
        );
        wb.put_cf(
            journal.cf(keys::CF_STATE),
            keys::stats(self.src),
            record::seal_msg(&stats),
        );
        journal.write(wb)?;
        st.next_image = next_image;
        if let Some(live) = st.sources.get_mut(&self.src) {
            live.stats = stats;
        }
        journal.publish(&st, Some(self.src));
        drop(st);
        self.finished = true;
        Ok(self.meta.clone())
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.finished {
            let cf = self.journal.cf(keys::CF_CHUNKS);
            let _ = self.journal.db.delete_range_cf(
                cf,
                keys::chunk(self.meta.id, 0),
                keys::chunk(self.meta.id + 1, 0),
            );
        }
    }
}
