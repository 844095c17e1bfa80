//! Source safety for `tidemark status`: per-partition lag and how long until the
//! broker's retention deletes records the journal does not have yet, from the
//! newest journaled `KafkaState` and the checkpoints (no broker is contacted).

use serde_json::{json, Value};

use crate::event::{KafkaState, Payload};
use crate::journal::{Journal, JournalError, SourceId};
use crate::position::{Position, PositionKind};
use crate::time::Timestamp;

/// The newest journaled state of a Kafka source.
pub fn latest_state(journal: &Journal, src: SourceId) -> Result<Option<KafkaState>, JournalError> {
    Ok(state_at_or_before(journal, src, u64::MAX)?.map(|(_, s)| s))
}

/// The newest journaled state of a Kafka source with a sequence number at or below
/// `last_seq`, with that sequence number. State events are numbered 0, 1, 2, ... on
/// their reserved stream, so this is a binary search over the position index (a
/// few dozen seeks for years of states), never a scan.
pub fn state_at_or_before(
    journal: &Journal,
    src: SourceId,
    last_seq: u64,
) -> Result<Option<(u64, KafkaState)>, JournalError> {
    let seq_of = |n: i64| journal.seq_at_position(src, &Position::kafka_state(n));
    let read = |seq: u64| -> Result<Option<(i64, KafkaState)>, JournalError> {
        for item in journal.events(src, seq, seq) {
            let e = item?.event;
            if let (Some(Payload::KafkaState(s)), Some(PositionKind::Kafka(p))) =
                (e.payload, e.position.and_then(|p| p.kind))
            {
                return Ok(Some((p.offset, s)));
            }
        }
        Ok(None)
    };
    let Some(newest) = seq_of(i64::MAX)? else {
        return Ok(None);
    };
    let Some((n_max, state)) = read(newest)? else {
        return Ok(None);
    };
    if newest <= last_seq {
        return Ok(Some((newest, state)));
    }
    // Largest ordinal n < n_max whose event is at or below last_seq.
    let (mut a, mut b, mut found) = (0i64, n_max, None);
    while a < b {
        let mid = a + (b - a) / 2;
        match seq_of(mid)? {
            Some(s) if s <= last_seq => {
                found = Some(s);
                a = mid + 1;
            }
            _ => b = mid,
        }
    }
    match found {
        Some(seq) => Ok(read(seq)?.map(|(_, s)| (seq, s))),
        None => Ok(None),
    }
}

/// One JSON object per partition: `topic`, `partition`, `high_watermark` (as last
/// observed), `journaled_next`, `lag` (records the broker had that the journal did
/// not, at `observed_at`), `caught_up` (the journal held everything up to then),
/// `retention_ms`, and `retention_deadline` / `seconds_until_loss`: when retention
/// may delete the oldest record not yet journaled (null when nothing is at risk or
/// retention is unknown or infinite). The deadline is conservative: the oldest
/// uncaptured record was appended after `caught_up`.
pub fn partition_rows(
    journal: &Journal,
    src: SourceId,
    now: Timestamp,
) -> Result<Vec<Value>, JournalError> {
    let Some(state) = latest_state(journal, src)? else {
        return Ok(Vec::new());
    };
    let checkpoints = journal.checkpoints(src)?;
    let mut rows = Vec::new();
    for p in &state.partitions {
        let journaled_next = checkpoints
            .iter()
            .filter_map(|c| match &c.position.kind {
                Some(PositionKind::Kafka(k))
                    if k.topic == p.topic && k.partition == p.partition =>
                {
                    Some(k.offset + 1)
                }
                _ => None,
            })
            .max()
            .unwrap_or(0)
            .max(p.journaled_next);
        let lag = (p.high_watermark - journaled_next).max(0);
        let retention_ms = state
            .topics
            .iter()
            .find(|t| t.name == p.topic)
            .and_then(|t| t.configs.iter().find(|c| c.name == "retention.ms"))
            .and_then(|c| c.value.parse::<i64>().ok())
            .filter(|&ms| ms >= 0);
        let since = p.caught_up_us.unwrap_or(state.observed_before_us);
        let deadline = match (lag > 0, retention_ms) {
            (true, Some(ms)) => Some(since.saturating_add(ms.saturating_mul(1000))),
            _ => None,
        };
        rows.push(json!({
            "topic": p.topic,
            "partition": p.partition,
            "high_watermark": p.high_watermark,
            "journaled_next": journaled_next,
            "lag": lag,
            "observed_at": Timestamp::from_micros(state.observed_after_us).to_rfc3339(),
            "caught_up": p.caught_up_us.map(|t| Timestamp::from_micros(t).to_rfc3339()),
            "retention_ms": retention_ms,
            "retention_deadline": deadline.map(|t| Timestamp::from_micros(t).to_rfc3339()),
            "seconds_until_loss": deadline.map(|t| (t - now.as_micros()) / 1_000_000),
        }));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceKind;
    use crate::event::{
        ChangeEvent, KafkaConfigEntry, KafkaPartitionState, KafkaRecord, KafkaTopicMeta,
    };
    use crate::journal::{JournalOptions, Progress};

    fn state(n: i64, high: i64, caught_up: i64) -> ChangeEvent {
        ChangeEvent {
            position: Some(Position::kafka_state(n)),
            capture_time_us: caught_up,
            payload: Some(Payload::KafkaState(KafkaState {
                observed_before_us: caught_up,
                observed_after_us: caught_up,
                topics: vec![KafkaTopicMeta {
                    name: "t".into(),
                    partitions: 1,
                    configs: vec![KafkaConfigEntry {
                        name: "retention.ms".into(),
                        value: "60000".into(),
                        explicit: true,
                    }],
                }],
                partitions: vec![KafkaPartitionState {
                    topic: "t".into(),
                    partition: 0,
                    low_watermark: 0,
                    high_watermark: high,
                    journaled_next: 0,
                    caught_up_us: Some(caught_up),
                }],
                group_offsets: vec![],
            })),
            ..Default::default()
        }
    }

    fn record(offset: i64, t: i64) -> ChangeEvent {
        ChangeEvent {
            position: Some(Position::kafka("t", 0, offset)),
            capture_time_us: t,
            payload: Some(Payload::Kafka(KafkaRecord::default())),
            ..Default::default()
        }
    }

    #[test]
    fn lag_and_retention_deadline_come_from_the_newest_state_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("j"), JournalOptions::default()).unwrap();
        let src = j.register_source("k", SourceKind::Kafka).unwrap();
        let sec = 1_000_000;
        let first = [state(0, 2, sec), record(0, 2 * sec), record(1, 2 * sec)];
        j.append(src, &first, &Progress::default()).unwrap();
        let second = [state(1, 10, 3 * sec), record(2, 4 * sec)];
        j.append(src, &second, &Progress::default()).unwrap();
        // The state search finds each state by sequence number.
        assert_eq!(state_at_or_before(&j, src, 1).unwrap().unwrap().0, 1);
        assert_eq!(state_at_or_before(&j, src, 3).unwrap().unwrap().0, 1);
        assert_eq!(state_at_or_before(&j, src, 4).unwrap().unwrap().0, 4);
        assert!(state_at_or_before(&j, src, 0).unwrap().is_none());
        let rows = partition_rows(&j, src, Timestamp::from_micros(13 * sec)).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r["journaled_next"], 3, "{r}");
        assert_eq!(r["lag"], 7, "{r}");
        assert_eq!(r["retention_ms"], 60000, "{r}");
        // Caught up at 3 s, retention 60 s: records not yet journaled may go at 63 s.
        assert_eq!(r["seconds_until_loss"], 50, "{r}");
    }
}
