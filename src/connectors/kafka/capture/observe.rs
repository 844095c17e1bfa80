//! What capture knows about each partition, and the periodic observation of the
//! cluster (metadata, configs, high-water marks, group offsets) that is journaled
//! as [`KafkaState`] events and drives coverage.
//!
//! # Coverage from high-water marks
//! An observation reads the clock (`before`), then asks each partition's leader for
//! its high-water mark `h`. At `before` the partition held no record at or above `h`
//! (the mark only grows), so once the journal holds everything below `h` the
//! partition is complete up to `before`. Coverage of the source is the minimum of
//! that time over its partitions.

use std::collections::{BTreeMap, VecDeque};

use crate::event::{KafkaGroupOffset, KafkaPartitionState, KafkaState, KafkaTopicMeta};
use crate::time::Timestamp;

/// Capture's view of one partition.
#[derive(Debug, Default)]
pub struct PartState {
    /// Next offset to journal: after the journal's checkpoint, or past what the
    /// consumer skipped (transaction markers, compacted gaps). `None`: not yet known
    /// (a new partition read from its beginning).
    pub next: Option<i64>,
    /// Latest watermarks observed.
    pub low: i64,
    /// See `low`.
    pub high: i64,
    /// Observations `(before_us, high)` not yet reached by `next`, oldest first.
    pending: VecDeque<(i64, i64)>,
    /// The journal holds everything of this partition up to this time (µs).
    pub caught_up_us: Option<i64>,
}

impl PartState {
    /// Records an observation made at `before_us`.
    pub fn observe(&mut self, before_us: i64, low: i64, high: i64) {
        self.low = low;
        self.high = high;
        if self.next.is_none() && low >= high {
            // Empty partition read from its beginning: nothing to journal yet.
            self.next = Some(low);
        }
        self.pending.push_back((before_us, high));
        self.settle();
    }

    /// Advances `next` (monotonically) and settles observations it reached.
    pub fn advance(&mut self, next: i64) {
        if self.next.is_none_or(|n| next > n) {
            self.next = Some(next);
        }
        self.settle();
    }

    fn settle(&mut self) {
        let Some(next) = self.next else { return };
        while let Some(&(t, h)) = self.pending.front() {
            if next < h {
                break;
            }
            self.caught_up_us = Some(self.caught_up_us.map_or(t, |c| c.max(t)));
            self.pending.pop_front();
        }
    }
}

/// The cluster as last observed, and when the state was last journaled.
#[derive(Debug, Default)]
pub struct Observed {
    /// Captured topics with partition counts and configs.
    pub topics: BTreeMap<String, KafkaTopicMeta>,
    /// Group offsets: `(group, topic, partition) -> (offset, metadata)`.
    pub groups: BTreeMap<(String, String, i32), (i64, String)>,
    /// The last journaled state, to journal again only on change (or periodically).
    last_journaled: Option<KafkaState>,
    /// When the state was last journaled.
    pub last_journaled_at: Option<Timestamp>,
}

impl Observed {
    /// The state to journal now, if it differs from the last journaled one in
    /// anything but times (or `force`).
    pub fn state_to_journal(
        &mut self,
        parts: &BTreeMap<(String, i32), PartState>,
        before_us: i64,
        after_us: i64,
        force: bool,
    ) -> Option<KafkaState> {
        let state = KafkaState {
            observed_before_us: before_us,
            observed_after_us: after_us,
            topics: self.topics.values().cloned().collect(),
            partitions: parts
                .iter()
                .map(|((t, p), s)| KafkaPartitionState {
                    topic: t.clone(),
                    partition: *p,
                    low_watermark: s.low,
                    high_watermark: s.high,
                    journaled_next: s.next.unwrap_or(s.low),
                    caught_up_us: s.caught_up_us,
                })
                .collect(),
            group_offsets: self
                .groups
                .iter()
                .map(|((g, t, p), (o, m))| KafkaGroupOffset {
                    group: g.clone(),
                    topic: t.clone(),
                    partition: *p,
                    offset: *o,
                    metadata: m.clone(),
                })
                .collect(),
        };
        let changed = match &self.last_journaled {
            None => true,
            Some(old) => {
                old.topics != state.topics
                    || old.group_offsets != state.group_offsets
                    || old.partitions.len() != state.partitions.len()
                    || old.partitions.iter().zip(&state.partitions).any(|(a, b)| {
                        (a.low_watermark, a.high_watermark) != (b.low_watermark, b.high_watermark)
                    })
            }
        };
        if !(changed || force) {
            return None;
        }
        self.last_journaled = Some(state.clone());
        Some(state)
    }
}

/// Coverage of the source: the oldest "caught up" time over its partitions, or
/// `None` while any partition has never caught up (or there are none).
pub fn coverage(parts: &BTreeMap<(String, i32), PartState>) -> Option<Timestamp> {
    let mut min: Option<i64> = None;
    for s in parts.values() {
        let c = s.caught_up_us?;
        min = Some(min.map_or(c, |m| m.min(c)));
    }
    min.map(Timestamp::from_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_caught_up_once_next_reaches_an_observed_mark() {
        let mut s = PartState::default();
        s.observe(100, 0, 10);
        assert_eq!(s.caught_up_us, None);
        s.advance(5);
        s.observe(200, 0, 12);
        assert_eq!(s.caught_up_us, None);
        s.advance(10);
        assert_eq!(s.caught_up_us, Some(100));
        s.advance(12);
        assert_eq!(s.caught_up_us, Some(200));
        // An empty new partition is caught up at its first observation.
        let mut e = PartState::default();
        e.observe(300, 4, 4);
        assert_eq!((e.next, e.caught_up_us), (Some(4), Some(300)));
    }

    #[test]
    fn coverage_is_the_slowest_partition() {
        let mut parts = BTreeMap::new();
        let mut a = PartState::default();
        a.observe(100, 0, 0);
        let mut b = PartState::default();
        b.observe(50, 0, 1);
        parts.insert(("t".to_string(), 0), a);
        parts.insert(("t".to_string(), 1), b);
        assert_eq!(coverage(&parts), None);
        if let Some(b) = parts.get_mut(&("t".to_string(), 1)) {
            b.advance(1);
        }
        assert_eq!(coverage(&parts), Some(Timestamp::from_micros(50)));
    }
}
