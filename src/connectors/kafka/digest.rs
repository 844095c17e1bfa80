//! Per-partition digests of record contents, so a restored topic can be compared with
//! its source: SHA-256 over each record's key, value, headers and timestamp, in
//! offset order. Offsets are left out on purpose (a restored partition starts at 0).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sha2::{Digest, Sha256};

use crate::connectors::kafka::{
    fetched_high_watermark, record_of, Connection, KafkaError, TopicFilter,
};
use crate::event::KafkaRecord;

/// How long reading may make no progress before `digest` gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A running digest of one partition.
#[derive(Clone)]
pub struct PartitionDigest {
    records: u64,
    hasher: Sha256,
}

impl std::fmt::Debug for PartitionDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} records, sha256 {}", self.records, self.hex())
    }
}

impl Default for PartitionDigest {
    fn default() -> Self {
        PartitionDigest {
            records: 0,
            hasher: Sha256::new(),
        }
    }
}

impl PartitionDigest {
    /// Adds the next record (in offset order).
    pub fn add(&mut self, r: &KafkaRecord) {
        self.records += 1;
        let h = &mut self.hasher;
        let opt = |h: &mut Sha256, b: Option<&[u8]>| match b {
            None => h.update([0u8]),
            Some(b) => {
                h.update([1u8]);
                h.update((b.len() as u64).to_be_bytes());
                h.update(b);
            }
        };
        opt(h, r.key.as_deref());
        opt(h, r.value.as_deref());
        h.update((r.headers.len() as u64).to_be_bytes());
        for hd in &r.headers {
            opt(h, Some(hd.key.as_bytes()));
            opt(h, hd.value.as_deref());
        }
        h.update(r.timestamp_ms.to_be_bytes());
    }

    /// Records added.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The hex SHA-256 so far.
    pub fn hex(&self) -> String {
        self.hasher
            .clone()
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Digests of every partition of some topics, keyed by `(topic, partition)`.
pub type Digests = BTreeMap<(String, i32), PartitionDigest>;

/// Reads every partition of the selected topics from its start to its high-water
/// mark (committed records only) and digests them. Meant for topics nobody writes
/// to meanwhile: records appended while it reads may be included.
/// `topics` empty selects every non-internal topic; a named topic that does not
/// exist is an error.
pub fn digest_cluster(conn: &Connection, topics: &[String]) -> Result<Digests, KafkaError> {
    let meta = conn.query_client(None)?;
    let all = conn.topics(&meta)?;
    let filter = if topics.is_empty() {
        TopicFilter::new(&["^.*".to_string()])?
    } else {
        TopicFilter::new(topics)?
    };
    for name in filter.names() {
        if !all.contains_key(name) {
            return Err(KafkaError::UnknownTopic {
                topic: name.clone(),
                brokers: conn.brokers.clone(),
                known: all.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let mut out = Digests::new();
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (topic, &n) in all.iter().filter(|(t, _)| filter.matches(t)) {
        for p in 0..n {
            out.insert((topic.clone(), p), PartitionDigest::default());
            let (low, high) = conn.watermarks(&meta, topic, p)?;
            if high > low {
                ends.insert((topic.clone(), p), high);
                tpl.add_partition_offset(topic, p, Offset::Offset(low))
                    .map_err(|e| conn.request_error("assign", e))?;
            }
        }
    }
    if ends.is_empty() {
        return Ok(out);
    }
    let mut cfg = conn.client_config();
    cfg.set("group.id", "tidemark-digest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    let consumer: rdkafka::consumer::BaseConsumer = cfg
        .create()
        .map_err(|e| conn.request_error("consumer set-up", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| conn.request_error("assign", e))?;
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let key = (m.topic().to_string(), m.partition());
                if ends.contains_key(&key) {
                    if let Some(d) = out.get_mut(&key) {
                        d.add(&record_of(&m));
                    }
                }
            }
            Some(Err(e)) => return Err(conn.request_error("fetch", e)),
            None => {}
        }
        // A partition is done once the position reached both the mark seen at the
        // start and the one in the latest fetch response (positions also move past
        // transaction markers, which yield no record).
        if let Ok(pos) = consumer.position() {
            for el in pos.elements() {
                let key = (el.topic().to_string(), el.partition());
                let Some(&start_end) = ends.get(&key) else {
                    continue;
                };
                let fetched = fetched_high_watermark(&consumer, &key.0, key.1);
                if let (Offset::Offset(o), Some(f)) = (el.offset(), fetched) {
                    if o >= start_end.max(f) {
                        ends.remove(&key);
                    }
                }
            }
        }
        if last_progress.elapsed() > STALL_TIMEOUT {
            let left: Vec<String> = ends.keys().map(|(t, p)| format!("{t}/{p}")).collect();
            return Err(conn.request_error(
                "fetch",
                format!(
                    "no records for {}s while partitions {} were unfinished",
                    STALL_TIMEOUT.as_secs(),
                    left.join(", ")
                ),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KafkaHeader;

    fn rec(key: Option<&[u8]>, value: Option<&[u8]>, ts: i64) -> KafkaRecord {
        KafkaRecord {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: vec![],
            timestamp_ms: ts,
            timestamp_type: 1,
        }
    }

    #[test]
    fn digest_tells_null_from_empty_and_sees_every_field() {
        let d = |rs: &[KafkaRecord]| {
            let mut d = PartitionDigest::default();
            rs.iter().for_each(|r| d.add(r));
            d.hex()
        };
        let base = d(&[rec(Some(b"k"), Some(b"v"), 1)]);
        assert_eq!(base, d(&[rec(Some(b"k"), Some(b"v"), 1)]));
        assert_ne!(base, d(&[rec(Some(b"k"), Some(b"v"), 2)]));
        assert_ne!(base, d(&[rec(None, Some(b"v"), 1)]));
        assert_ne!(d(&[rec(None, None, 1)]), d(&[rec(Some(b""), None, 1)]));
        // Moving bytes between key and value changes the digest.
        assert_ne!(
            d(&[rec(Some(b"ab"), Some(b"c"), 1)]),
            d(&[rec(Some(b"a"), Some(b"bc"), 1)])
        );
        let mut h = rec(Some(b"k"), Some(b"v"), 1);
        h.headers.push(KafkaHeader {
            key: "h".into(),
            value: None,
        });
        assert_ne!(base, d(&[h]));
    }
}
