//! Kafka restore target: what each partition contained at a moment, into a cluster.
//!
//! # The cut rule
//! "Partition P contained record R at T" means R was appended to P at or before T
//! (record timestamps are set by producers and say nothing about this). Capture
//! observes every partition's high-water mark once a second: it reads the clock
//! (`before`), asks the brokers, reads the clock again (`after`, milliseconds
//! later). The restore cut of P at T is the larger of
//! - the newest mark observed with `before <= T` (every offset below it was in P by
//!   `after`), and
//! - the offset after the newest record captured by T (it was fetched, so appended,
//!   before).
//!
//! Records below the cut that capture fetched only after T were in P at T too, so
//! the restore reads the whole journal for them. Precision: a record appended
//! within an observation's round trip (`before`..`after`) may be included in a
//! restore to `before`; one appended in the second before an observation that
//! capture had not fetched yet may be left out. Coverage (`before` of the newest
//! observation every partition had caught up with) is where both bounds meet, so a
//! restore to `latest` holds every record captured up to it.
//!
//! Then: create each topic on the target (same partition count, explicit configs),
//! refuse a non-empty target topic unless `--force`, produce every record below the
//! cut into the same partition in offset order with key, value, headers and
//! timestamp, and set each configured group's committed offset to the translated
//! offset: the target offset of the first restored record (as the broker reported
//! its delivery) plus the number of restored records below the source offset.

mod apply;
pub mod target;

use std::collections::BTreeMap;

use crate::connectors::kafka::KafkaError;
use crate::event::{KafkaGroupOffset, KafkaTopicMeta, Payload};
use crate::journal::{Journal, JournalError};
use crate::position::PositionKind;
use crate::restore::RestorePlan;

pub use apply::{check_topic_map, restore, KafkaRestoreOptions, KafkaRestoreSummary};

/// Why a Kafka restore failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaRestoreError {
    /// Reading the journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Talking to the target failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// A target topic holds records.
    #[error("target topic `{topic}` already holds records (partition {partition} ends at offset {end}); restore into new or empty topics (see --topic-map), or pass --force to append after them")]
    NotEmpty {
        /// Target topic.
        topic: String,
        /// A non-empty partition.
        partition: i32,
        /// Its high-water mark.
        end: i64,
    },
    /// A target topic exists with too few partitions.
    #[error("target topic `{topic}` has {have} partitions, the source had {need} at that moment; delete it or map the topic elsewhere with --topic-map")]
    TooFewPartitions {
        /// Target topic.
        topic: String,
        /// Partitions it has.
        have: i32,
        /// Partitions needed.
        need: i32,
    },
    /// `--topic-map` names a topic the source did not have.
    #[error("--topic-map names `{topic}`, which the source did not have at that moment (it had: {known})")]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// Topics it had.
        known: String,
    },
    /// Nothing was observed at or before the moment.
    #[error("source `{source_name}`: capture had observed nothing at {at} (it began later); the journal cannot say what the topics held then: choose a later --at")]
    BeforeCapture {
        /// Source name.
        source_name: String,
        /// The moment.
        at: crate::time::Timestamp,
    },
    /// `--topic-map` is malformed or maps two topics onto one.
    #[error("--topic-map: {0}; give a list of distinct source=target pairs, e.g. orders=orders_restored,audit=audit_restored")]
    BadTopicMap(String),
    /// Stopped on request part-way ([`crate::restore::RestoreError::Stopped`]).
    #[error("stopped before the end: {0}")]
    Stopped(String),
    /// Producing failed.
    #[error("writing to the target failed: {0}; the target topics are partially restored: delete them and run the restore again")]
    Produce(String),
}

/// What the source looked like at the restore moment, from the journal alone.
#[derive(Debug, Default, Clone)]
pub struct Cut {
    /// Topics with partition counts and configs.
    pub topics: BTreeMap<String, KafkaTopicMeta>,
    /// Per partition: restore records with offsets below this.
    pub end: BTreeMap<(String, i32), i64>,
    /// Committed offsets of the configured groups at the moment.
    pub groups: Vec<KafkaGroupOffset>,
    /// Records to restore per partition (when counted).
    pub records: BTreeMap<(String, i32), u64>,
}

impl Cut {
    /// Records to restore in all.
    pub fn total_records(&self) -> u64 {
        self.records.values().sum()
    }
}

/// Computes the cut for `plan` (see the module docs): the newest observed state at
/// or before the moment, raised by the records captured after it up to the moment;
/// with `count`, a pass over all events fills `records`. Topics deleted before the
/// moment (absent from that state) are not restored.
pub fn cut(journal: &Journal, plan: &RestorePlan, count: bool) -> Result<Cut, KafkaRestoreError> {
    let mut c = Cut::default();
    if plan.last_seq < plan.first_seq {
        return Err(KafkaRestoreError::BeforeCapture {
            source_name: plan.source.name.clone(),
            at: plan.at,
        });
    }
    // The newest observed state at or before the moment: topics, marks, groups.
    // Every record captured before it lies below its marks (it was fetched, so
    // appended, before the marks were read), so only records after it can raise
    // the cut.
    let state = crate::connectors::kafka::status::state_at_or_before(
        journal,
        plan.source.id,
        plan.last_seq,
    )?;
    let from = match state {
        Some((seq, s)) => {
            for t in s.topics {
                c.topics.insert(t.name.clone(), t);
            }
            for p in s.partitions {
                c.end.insert((p.topic, p.partition), p.high_watermark);
            }
            c.groups = s.group_offsets;
            seq + 1
        }
        None => plan.first_seq,
    };
    if from <= plan.last_seq {
        for item in journal.events(plan.source.id, from, plan.last_seq) {
            let e = item?.event;
            if let (Some(Payload::Kafka(_)), Some(PositionKind::Kafka(p))) = (
                &e.payload,
                e.position.as_ref().and_then(|p| p.kind.as_ref()),
            ) {
                let end = c.end.entry((p.topic.clone(), p.partition)).or_insert(0);
                *end = (*end).max(p.offset + 1);
            }
        }
    }
    // Topics seen only through records (no state event yet) still get restored.
    for (t, p) in c.end.keys() {
        let meta = c.topics.entry(t.clone()).or_insert_with(|| KafkaTopicMeta {
            name: t.clone(),
            partitions: 0,
            configs: Vec::new(),
        });
        meta.partitions = meta.partitions.max(p + 1);
    }
    if count {
        for_each_record(journal, plan, &c.end.clone(), |key, _, _| {
            *c.records.entry(key.clone()).or_insert(0) += 1;
            Ok(())
        })?;
    }
    Ok(c)
}

/// Calls `f(partition, offset, record)` for every journaled record below the cut,
/// in journal order (which is offset order within a partition).
pub(crate) fn for_each_record<F>(
    journal: &Journal,
    plan: &RestorePlan,
    end: &BTreeMap<(String, i32), i64>,
    mut f: F,
) -> Result<(), KafkaRestoreError>
where
    F: FnMut(&(String, i32), i64, &crate::event::KafkaRecord) -> Result<(), KafkaRestoreError>,
{
    let mut key = (String::new(), 0);
    for item in journal.events(plan.source.id, 1, u64::MAX) {
        let e = item?.event;
        let (Some(Payload::Kafka(r)), Some(PositionKind::Kafka(p))) = (
            &e.payload,
            e.position.as_ref().and_then(|p| p.kind.as_ref()),
        ) else {
            continue;
        };
        if key.0 != p.topic || key.1 != p.partition {
            key = (p.topic.clone(), p.partition);
        }
        if end.get(&key).is_some_and(|&end| p.offset < end) {
            f(&key, p.offset, r)?;
        }
    }
    Ok(())
}

/// Topic configs that shape what a topic holds; restored whenever the source
/// reported them, even as defaults (some brokers, tansu among them, mark every
/// entry as a default).
pub const DATA_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "delete.retention.ms",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.type",
];

/// Whether a journaled topic config is set on the restored topic: every config the
/// source had set on the topic, and the [`DATA_CONFIGS`].
pub fn copies_config(e: &crate::event::KafkaConfigEntry) -> bool {
    e.explicit || DATA_CONFIGS.contains(&e.name.as_str())
}

/// Parses `--topic-map a=b,c=d`.
pub fn parse_topic_map(s: &str) -> Result<BTreeMap<String, String>, KafkaRestoreError> {
    let mut m = BTreeMap::new();
    for pair in s.split(',').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() => {
                m.insert(a.to_string(), b.to_string());
            }
            _ => {
                return Err(KafkaRestoreError::BadTopicMap(format!(
                    "`{s}` is not a list of source=target pairs"
                )))
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_map_parses_pairs_and_refuses_garbage() {
        let m = parse_topic_map("a=b,c=d").unwrap();
        assert_eq!(m.get("a").map(String::as_str), Some("b"));
        assert_eq!(m.len(), 2);
        assert!(parse_topic_map("a").is_err());
        assert!(parse_topic_map("a=").is_err());
    }
}
