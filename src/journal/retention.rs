//! Retention: drop history older than a window while keeping every moment inside the
//! window restorable.
//!
//! For each source, the horizon is `now - window`. A restore to any time `T` at or
//! after the horizon needs the newest base image at or before `T`, and the events
//! after it. The oldest such image is `B`, the newest image at or before the horizon;
//! so the events up to `B.after_seq` and every image older than `B` can go. A source
//! with no image at or before the horizon keeps everything (a restore cannot start
//! without an image), and so does a source without images, such as a Kafka log.
//! Everything a source drops goes in one atomic batch, together with its new
//! `floor_us` (restores before the floor are refused).

use std::time::Duration;

use rocksdb::{ReadOptions, WriteBatch};

use super::{keys, record, ImageBound, Journal, JournalError};
use crate::time::Timestamp;

/// What retention dropped (or would drop) for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Source name.
    pub source: String,
    /// Id of the oldest image kept (the restore floor), if any pruning applied.
    pub kept_image: Option<u64>,
    /// Events dropped.
    pub events_dropped: u64,
    /// Base images dropped.
    pub images_dropped: u64,
}

impl Journal {
    /// Applies a retention `window` as of `now`. With `dry_run`, reports and changes
    /// nothing.
    pub fn prune(
        &self,
        now: Timestamp,
        window: Duration,
        dry_run: bool,
    ) -> Result<Vec<PruneReport>, JournalError> {
        let horizon = now.saturating_sub(window);
        let mut reports = Vec::new();
        for info in self.sources() {
            let src = info.id;
            let mut report = PruneReport {
                source: info.name.clone(),
                kept_image: None,
                events_dropped: 0,
                images_dropped: 0,
            };
            // Per part (a cluster shard; the empty part is the whole source): its
            // newest image at or before the horizon is kept with everything after
            // it. The cut is the lowest of those, and of the first image of a part
            // that has none before the horizon (its events follow that image).
            let keeps = self.part_images_at_or_before(src, ImageBound::Time(horizon))?;
            let Some(keep) = keeps.iter().min_by_key(|m| m.after_seq).cloned() else {
                reports.push(report);
                continue;
            };
            let all = self.images(src)?;
            let kept_of = |part: &str| keeps.iter().find(|k| k.part == part);
            let cut = all
                .iter()
                .filter(|m| kept_of(&m.part).is_none())
                .map(|m| m.after_seq)
                .fold(keep.after_seq, u64::min);
            report.kept_image = Some(keep.id);
            let (dropped, dropped_bytes) = self.measure_events(src, 0, cut)?;
            report.events_dropped = dropped;
            let floor = keeps
                .iter()
                .map(|k| k.time_us)
                .max()
                .unwrap_or(keep.time_us);
            let older: Vec<_> = all
                .into_iter()
                .filter(|m| kept_of(&m.part).is_some_and(|k| m.id < k.id))
                .collect();
            report.images_dropped = older.len() as u64;
            if dry_run || (report.events_dropped == 0 && older.is_empty()) {
                reports.push(report);
                continue;
            }
            let mut wb = WriteBatch::default();
            wb.delete_range_cf(
                self.cf(keys::CF_EVENTS),
                keys::event(src, 0),
                keys::event(src, cut + 1),
            );
            self.delete_index_entries(src, cut, &mut wb)?;
            self.delete_key_entries(src, cut, &mut wb);
            for m in &older {
                wb.delete_cf(self.cf(keys::CF_IMAGES), keys::image(src, m.id));
                wb.delete_range_cf(
                    self.cf(keys::CF_CHUNKS),
                    keys::chunk(m.id, 0),
                    keys::chunk(m.id + 1, 0),
                );
            }
            // Update counters under the writer lock so no append interleaves.
            let mut st = self.lock_for_write()?;
            let Some(live) = st.sources.get_mut(&src) else {
                continue;
            };
            let mut stats = live.stats.clone();
            stats.event_count = stats.event_count.saturating_sub(report.events_dropped);
            stats.held_bytes = stats.held_bytes.saturating_sub(dropped_bytes);
            stats.images = stats.images.saturating_sub(report.images_dropped);
            stats.floor_us = Some(floor);
            wb.put_cf(
                self.cf(keys::CF_STATE),
                keys::stats(src),
                record::seal_msg(&stats),
            );
            self.write(wb)?;
            live.stats = stats;
            self.publish(&st, Some(src));
            drop(st);
            // Range deletes only hide the records: compact the ranges so the space
            // is given back now rather than at some later compaction.
            self.db.compact_range_cf(
                self.cf(keys::CF_EVENTS),
                Some(&keys::event(src, 0)[..]),
                Some(&keys::event(src, cut + 1)[..]),
            );
            for m in &older {
                self.db.compact_range_cf(
                    self.cf(keys::CF_CHUNKS),
                    Some(&keys::chunk(m.id, 0)[..]),
                    Some(&keys::chunk(m.id + 1, 0)[..]),
                );
            }
            tracing::info!(source = %info.name, events = report.events_dropped, images = report.images_dropped, "retention pruned history");
            reports.push(report);
        }
        Ok(reports)
    }

    /// Deletes the position and time index entries of `src` that point at or below
    /// `cut`.
    fn delete_index_entries(
        &self,
        src: u32,
        cut: u64,
        wb: &mut WriteBatch,
    ) -> Result<(), JournalError> {
        let pos = self.cf(keys::CF_POS);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(pos, ro);
        it.seek(src.to_be_bytes());
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if super::read::decode_pos_entry(v).is_some_and(|(_, last)| last <= cut) {
                wb.delete_cf(pos, k);
            }
            it.next();
        }
        it.status()?;
        let time = self.cf(keys::CF_TIME);
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::source_end(src).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(time, ro);
        it.seek(src.to_be_bytes());
        // Keep the newest entry at or below the cut: it still starts the run of
        // equal times that the first kept events belong to.
        let mut previous: Option<Vec<u8>> = None;
        while let Some(k) = it.key() {
            if keys::be_u64(k, 12).is_none_or(|s| s > cut) {
                break;
            }
            if let Some(p) = previous.replace(k.to_vec()) {
                wb.delete_cf(time, p);
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }
}
