//! Writing a [`Cut`] into a target cluster: topics, records, group offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

use super::{cut, for_each_record, Cut, KafkaRestoreError};
use crate::connectors::kafka::digest::{Digests, PartitionDigest};
use crate::connectors::kafka::{
    futures_block_on, Connection, KafkaError, CONNECT_TIMEOUT, REQUEST_TIMEOUT,
};
use crate::event::{KafkaRecord, KafkaTimestampType};
use crate::journal::Journal;
use crate::restore::{ProgressSink, RestoreError, RestorePlan};

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct KafkaRestoreOptions {
    /// `kafka://host:port[,...]`.
    pub target: String,
    /// Source topic → target topic (unlisted topics keep their names).
    pub topic_map: BTreeMap<String, String>,
    /// Write into topics that already hold records (after them).
    pub force: bool,
}

/// What a restore did.
#[derive(Debug, Default)]
pub struct KafkaRestoreSummary {
    /// Target topics created.
    pub created: Vec<String>,
    /// Target topics that existed already.
    pub reused: Vec<String>,
    /// Digests of what was written, by target `(topic, partition)`.
    pub digests: Digests,
    /// Group offsets set: `(group, target topic, partition, source offset, target offset)`.
    pub groups: Vec<(String, String, i32, i64, i64)>,
    /// Records written.
    pub records: u64,
    /// Wall time spent writing.
    pub elapsed: Duration,
}

/// Collects what librdkafka's background thread reports about deliveries: the
/// first failure, and the offset of the first record written to each partition
/// (where the restored records start on the target; records of a partition are
/// written in order by the idempotent producer).
#[derive(Default)]
struct DeliveryLog {
    first_error: Mutex<Option<String>>,
    first_offsets: Mutex<HashMap<String, HashMap<i32, i64>>>,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let mut firsts = self.first_offsets.lock().unwrap_or_else(|p| p.into_inner());
                let per_topic = match firsts.get_mut(m.topic()) {
                    Some(p) => p,
                    None => firsts.entry(m.topic().to_string()).or_default(),
                };
                let first = per_topic.entry(m.partition()).or_insert(m.offset());
                *first = (*first).min(m.offset());
            }
            Err((e, _)) => {
                let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

impl DeliveryLog {
    /// Offset of the first record delivered to `topic`/`partition`.
    fn first_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let firsts = self.first_offsets.lock().unwrap_or_else(|p| p.into_inner());
        firsts.get(topic)?.get(&partition).copied()
    }

    fn check(&self) -> Result<(), KafkaRestoreError> {
        let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        match first.as_ref() {
            Some(e) => Err(KafkaRestoreError::Produce(e.clone())),
            None => Ok(()),
        }
    }
}

/// Where one source partition's records go, and what was written there.
struct PartOut {
    target: String,
    partition: i32,
    /// The target partition's high-water mark before the restore.
    base: i64,
    written: i64,
    digest: PartitionDigest,
    /// Group offsets on this partition `(source offset, index)`, ascending.
    pending: Vec<(i64, usize)>,
    /// First entry of `pending` not yet translated.
    next_pending: usize,
}

/// Restores `plan` into `opts.target` (see the module docs of `restore::kafka`).
pub fn restore(
    journal: &Journal,
    plan: &RestorePlan,
    opts: &KafkaRestoreOptions,
    progress: &mut dyn ProgressSink,
) -> Result<KafkaRestoreSummary, KafkaRestoreError> {
    let c = cut(journal, plan, false)?;
    check_topic_map(&c, &opts.topic_map)?;
    let target = |t: &str| {
        opts.topic_map
            .get(t)
            .cloned()
            .unwrap_or_else(|| t.to_string())
    };
    let conn = Connection::from_url(&opts.target)?;
    let mut summary = KafkaRestoreSummary::default();
    let base = prepare_topics(&conn, &c, &target, opts.force, &mut summary)?;

    let ctx = DeliveryLog::default();
    let mut cfg = conn.client_config();
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.max.bytes", "104857600");
    let producer: BaseProducer<DeliveryLog> = cfg
        .create_with_context(ctx)
        .map_err(|e| conn.request_error("producer set-up", e))?;

    // One output per source partition, found once per run of records of the same
    // partition (the journal holds records in fetch order: runs per partition).
    let mut outs: Vec<PartOut> = Vec::with_capacity(c.end.len());
    let mut index: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for key in c.end.keys() {
        index.insert(key.clone(), outs.len());
        outs.push(PartOut {
            target: target(&key.0),
            partition: key.1,
            base: base.get(key).copied().unwrap_or(0),
            written: 0,
            digest: PartitionDigest::default(),
            pending: Vec::new(),
            next_pending: 0,
        });
    }
    // Group offsets to translate, per source partition, ascending.
    for (i, g) in c.groups.iter().enumerate() {
        if let Some(&o) = index.get(&(g.topic.clone(), g.partition)) {
            outs[o].pending.push((g.offset, i));
        }
    }
    outs.iter_mut().for_each(|o| o.pending.sort());
    // Group offset -> (partition output, restored records below it).
    let mut translated: Vec<Option<(usize, i64)>> = vec![None; c.groups.len()];
    let total = plan.events; // an upper bound: it includes state events
    let start = Instant::now();
    let mut n = 0u64;
    let mut cur: Option<((String, i32), usize)> = None;
    for_each_record(journal, plan, &c.end, |key, offset, r| {
        let slot = match &cur {
            Some((k, slot)) if k == key => *slot,
            _ => {
                let Some(&slot) = index.get(key) else {
                    return Ok(());
                };
                cur = Some((key.clone(), slot));
                slot
            }
        };
        let out = &mut outs[slot];
        while let Some(&(o, i)) = out.pending.get(out.next_pending) {
            if o > offset {
                break;
            }
            translated[i] = Some((slot, out.written));
            out.next_pending += 1;
        }
        send(&producer, &out.target, out.partition, r)?;
        out.written += 1;
        out.digest.add(r);
        n += 1;
        if n.is_multiple_of(4096) {
            producer.poll(Duration::ZERO);
            producer.context().check()?;
            progress
                .update("records", n, Some(total))
                .map_err(|e| match e {
                    RestoreError::Stopped(why) => KafkaRestoreError::Stopped(why),
                    other => KafkaRestoreError::Produce(other.to_string()),
                })?;
        }
        Ok(())
    })?;
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| KafkaRestoreError::Produce(e.to_string()))?;
    producer.context().check()?;
    summary.records = n;
    summary.elapsed = start.elapsed();
    // Group offsets at or past the last restored record point at the end.
    for (slot, out) in outs.iter().enumerate() {
        for &(_, i) in &out.pending[out.next_pending..] {
            translated[i] = Some((slot, out.written));
        }
    }
    // Where the restored records start: the first delivered offset (exact on any
    // broker), else the high-water mark read before writing.
    let starts: Vec<i64> = outs
        .iter()
        .map(|o| {
            producer
                .context()
                .first_offset(&o.target, o.partition)
                .unwrap_or(o.base)
        })
        .collect();
    let translated: Vec<Option<i64>> = translated
        .into_iter()
        .map(|t| t.map(|(slot, below)| starts[slot] + below))
        .collect();
    for out in outs {
        summary
            .digests
            .insert((out.target, out.partition), out.digest);
    }
    commit_groups(&conn, &c, &translated, &target, &mut summary)?;
    Ok(summary)
}

/// `--topic-map` names only topics the source had, and maps no two onto one.
pub fn check_topic_map(
    c: &Cut,
    topic_map: &BTreeMap<String, String>,
) -> Result<(), KafkaRestoreError> {
    for src in topic_map.keys() {
        if !c.topics.contains_key(src) {
            return Err(KafkaRestoreError::UnknownTopic {
                topic: src.clone(),
                known: c.topics.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let mut seen = BTreeMap::new();
    for src in c.topics.keys() {
        let to = topic_map.get(src).unwrap_or(src);
        if let Some(other) = seen.insert(to.clone(), src.clone()) {
            return Err(KafkaRestoreError::BadTopicMap(format!(
                "{other} and {src} would both be restored into {to}"
            )));
        }
    }
    Ok(())
}

/// Produces one record, waiting while librdkafka's queue is full.
fn send(
    producer: &BaseProducer<DeliveryLog>,
    topic: &str,
    partition: i32,
    r: &KafkaRecord,
) -> Result<(), KafkaRestoreError> {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition);
    if let Some(k) = r.key.as_deref() {
        rec = rec.key(k);
    }
    if let Some(v) = r.value.as_deref() {
        rec = rec.payload(v);
    }
    if !r.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for h in &r.headers {
            headers = headers.insert(Header {
                key: &h.key,
                value: h.value.as_deref(),
            });
        }
        rec = rec.headers(headers);
    }
    if r.timestamp_type != KafkaTimestampType::NotAvailable as i32 && r.timestamp_ms >= 0 {
        rec = rec.timestamp(r.timestamp_ms);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(Duration::from_millis(20));
                producer.context().check()?;
            }
            Err((e, _)) => return Err(KafkaRestoreError::Produce(e.to_string())),
        }
    }
}

/// Creates missing target topics and checks existing ones; returns each target
/// partition's starting offset (its high-water mark before the restore).
fn prepare_topics(
    conn: &Connection,
    c: &Cut,
    target: &dyn Fn(&str) -> String,
    force: bool,
    summary: &mut KafkaRestoreSummary,
) -> Result<BTreeMap<(String, i32), i64>, KafkaRestoreError> {
    let meta = conn.query_client(None)?;
    let existing = conn.topics(&meta)?;
    let admin = conn.admin()?;
    let mut base = BTreeMap::new();
    for (src, m) in &c.topics {
        let tt = target(src);
        let need = m.partitions;
        match existing.get(&tt) {
            Some(&have) => {
                if have < need {
                    return Err(KafkaRestoreError::TooFewPartitions {
                        topic: tt,
                        have,
                        need,
                    });
                }
                for p in 0..need {
                    let (low, high) = conn.watermarks(&meta, &tt, p)?;
                    if high > low && !force {
                        return Err(KafkaRestoreError::NotEmpty {
                            topic: tt,
                            partition: p,
                            end: high,
                        });
                    }
                    base.insert((src.clone(), p), high);
                }
                summary.reused.push(tt);
            }
            None => {
                create_topic(conn, &admin, &tt, m)?;
                wait_for_topic(conn, &meta, &tt, need)?;
                for p in 0..need {
                    base.insert((src.clone(), p), 0);
                }
                summary.created.push(tt);
            }
        }
    }
    Ok(base)
}

fn create_topic(
    conn: &Connection,
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    name: &str,
    m: &crate::event::KafkaTopicMeta,
) -> Result<(), KafkaRestoreError> {
    let opts = AdminOptions::new()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .operation_timeout(Some(REQUEST_TIMEOUT));
    let configs: Vec<(&str, &str)> = m
        .configs
        .iter()
        .filter(|e| super::copies_config(e))
        .map(|e| (e.name.as_str(), e.value.as_str()))
        .collect();
    // Replication -1: the target cluster's default.
    let mut topic = NewTopic::new(name, m.partitions.max(1), TopicReplication::Fixed(-1));
    for (k, v) in &configs {
        topic = topic.set(k, v);
    }
    let results = futures_block_on(admin.create_topics([&topic], &opts))
        .map_err(|e| conn.request_error(&format!("CreateTopics {name}"), e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                return Err(conn
                    .request_error(&format!("CreateTopics {t}"), code)
                    .into())
            }
        }
    }
    Ok(())
}

fn wait_for_topic(
    conn: &Connection,
    meta: &rdkafka::consumer::BaseConsumer,
    name: &str,
    partitions: i32,
) -> Result<(), KafkaRestoreError> {
    let start = Instant::now();
    loop {
        if conn
            .topics(meta)?
            .get(name)
            .is_some_and(|&n| n >= partitions)
        {
            return Ok(());
        }
        if start.elapsed() > CONNECT_TIMEOUT {
            return Err(KafkaError::Request {
                what: format!("creating topic {name}"),
                brokers: conn.brokers.clone(),
                detail: format!("it did not appear with {partitions} partitions"),
                hint: "check the broker's logs".into(),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn commit_groups(
    conn: &Connection,
    c: &Cut,
    translated: &[Option<i64>],
    target: &dyn Fn(&str) -> String,
    summary: &mut KafkaRestoreSummary,
) -> Result<(), KafkaRestoreError> {
    let mut by_group: BTreeMap<&str, TopicPartitionList> = BTreeMap::new();
    for (g, t) in c.groups.iter().zip(translated) {
        let Some(to) = *t else { continue };
        let tt = target(&g.topic);
        let tpl = by_group.entry(g.group.as_str()).or_default();
        tpl.add_partition_offset(&tt, g.partition, Offset::Offset(to))
            .map_err(|e| conn.request_error("offset list", e))?;
        if let Some(mut el) = tpl.find_partition(&tt, g.partition) {
            el.set_metadata(&g.metadata);
        }
        summary
            .groups
            .push((g.group.clone(), tt, g.partition, g.offset, to));
    }
    for (group, tpl) in by_group {
        let client = conn.query_client(Some(group))?;
        client
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| conn.request_error(&format!("OffsetCommit for group {group}"), e))?;
    }
    Ok(())
}
