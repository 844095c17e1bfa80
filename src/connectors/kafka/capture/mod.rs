//! Kafka capture: every partition of every selected topic into the journal.
//!
//! - **The journal is the source of truth for resuming.** Partitions are assigned
//!   explicitly (never a group subscription) at the offset after the journal's
//!   checkpoint for that partition, or at the beginning for partitions the journal
//!   has never seen. Records and checkpoints are one atomic append, so a crash
//!   (even SIGKILL) and restart leaves neither a gap nor a duplicate.
//! - **Committed records only** (`isolation.level = read_committed`): librdkafka
//!   drops transaction markers and aborted records.
//! - **New topics and partitions** are found by refreshing metadata every
//!   [`METADATA_EVERY`] and assigned from their beginning.
//! - **Observed state** (partition counts, topic configs, watermarks, the
//!   configured groups' committed offsets) is journaled as `KafkaState` events on
//!   a reserved stream, on change and at least every [`STATE_EVERY`]; watermarks
//!   are observed every [`OBSERVE_EVERY`] and drive coverage (see [`observe`]).
//! - A record's time on the journal's axis is its capture time (when the batch that
//!   fetched it closed, milliseconds after the fetch), not its producer timestamp,
//!   which producers may set at will.
//!
//! The loop runs on one blocking thread: poll a batch, append it durably, and
//! between batches observe the cluster. Nothing is committed to the brokers.

mod observe;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::capture::{BoxFuture, CaptureContext, CaptureError, Shutdown, Source, SourceJournal};
use crate::connectors::kafka::{
    fetched_high_watermark, record_of, Connection, KafkaError, TopicFilter, REQUEST_TIMEOUT,
};
use crate::event::{ChangeEvent, Payload};
use crate::journal::Progress;
use crate::position::{Position, PositionKind};
use crate::time::Timestamp;

pub use observe::PartState;

/// How often topics and partitions are looked up (and configs and group offsets read).
pub const METADATA_EVERY: Duration = Duration::from_secs(2);
/// How often watermarks are observed (the precision of restore cuts and coverage).
pub const OBSERVE_EVERY: Duration = Duration::from_secs(1);
/// The observed state is journaled at least this often even when unchanged.
pub const STATE_EVERY: Duration = Duration::from_secs(5);
/// A batch closes after this many records...
const BATCH_RECORDS: usize = 20_000;
/// ...or this many bytes of keys and values...
const BATCH_BYTES: usize = 16 << 20;
/// ...or this long after its first record.
const BATCH_WAIT: Duration = Duration::from_millis(50);

/// A configured Kafka source.
pub struct KafkaSource {
    name: String,
    conn: Connection,
    filter: TopicFilter,
    groups: Vec<String>,
}

impl KafkaSource {
    /// Builds the capture without connecting.
    pub fn new(
        name: &str,
        conn: Connection,
        topics: &[String],
        groups: &[String],
    ) -> Result<Self, CaptureError> {
        let filter = TopicFilter::new(topics).map_err(|e| CaptureError::of(name, e))?;
        Ok(KafkaSource {
            name: name.to_string(),
            conn,
            filter,
            groups: groups.to_vec(),
        })
    }
}

impl Source for KafkaSource {
    /// Reaches the brokers (a metadata request) before the journal is opened.
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        let conn = self.conn.clone();
        crate::capture::preflight_blocking(&self.name, move || {
            conn.query_client(None)
                .and_then(|c| conn.topics(&c).map(|_| ()))
        })
    }

    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>> {
        Box::pin(async move {
            let name = self.name.clone();
            tokio::task::spawn_blocking(move || Capture::start(*self, ctx)?.run())
                .await
                .map_err(|e| CaptureError::config(&name, format!("capture thread failed: {e}")))?
        })
    }
}

/// Why the capture loop ended early.
enum LoopEnd {
    /// The appender thread stopped (its error is the one to report).
    AppenderGone,
    /// The loop itself failed.
    Failed(CaptureError),
}

impl From<CaptureError> for LoopEnd {
    fn from(e: CaptureError) -> Self {
        LoopEnd::Failed(e)
    }
}

/// The running capture (a fetching thread and an appending thread).
struct Capture {
    src: KafkaSource,
    journal: SourceJournal,
    shutdown: Shutdown,
    /// Reads records; assigned explicitly.
    consumer: BaseConsumer,
    /// Metadata and watermarks.
    meta: BaseConsumer,
    /// One never-joined client per configured group, to read its committed offsets.
    group_clients: Vec<(String, BaseConsumer)>,
    admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    parts: BTreeMap<(String, i32), PartState>,
    observed: observe::Observed,
    /// Next state-stream ordinal.
    state_seq: i64,
    /// Configs are not offered by every broker; warn once.
    configs_warned: bool,
}

impl Capture {
    fn err(&self, e: KafkaError) -> CaptureError {
        CaptureError::of(&self.src.name, e)
    }

    fn start(src: KafkaSource, ctx: CaptureContext) -> Result<Capture, CaptureError> {
        let to_err = |e: KafkaError| CaptureError::of(&src.name, e);
        let meta = src.conn.query_client(None).map_err(to_err)?;
        src.conn.topics(&meta).map_err(to_err)?; // reachability, bounded
        let mut cfg = src.conn.client_config();
        cfg.set("group.id", format!("tidemark-{}", src.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "100")
            .set("queued.max.messages.kbytes", "262144");
        let consumer: BaseConsumer = cfg
            .create()
            .map_err(|e| to_err(src.conn.request_error("consumer set-up", e)))?;
        let mut group_clients = Vec::new();
        for g in &src.groups {
            group_clients.push((g.clone(), src.conn.query_client(Some(g)).map_err(to_err)?));
        }
        let admin = src.conn.admin().map_err(to_err)?;
        let mut parts = BTreeMap::new();
        let mut state_seq = 0;
        for cp in ctx.journal.checkpoints()? {
            if cp.position.is_kafka_state() {
                if let Some(PositionKind::Kafka(p)) = &cp.position.kind {
                    state_seq = p.offset + 1;
                }
            } else if let Some(PositionKind::Kafka(p)) = cp.position.kind {
                let mut s = PartState::default();
                s.advance(p.offset + 1);
                parts.insert((p.topic, p.partition), s);
            }
        }
        tracing::info!(source = %src.name, brokers = %src.conn.brokers, resumed_partitions = parts.len(), "kafka capture connected");
        ctx.capturing.now();
        Ok(Capture {
            journal: ctx.journal,
            shutdown: ctx.shutdown,
            consumer,
            meta,
            group_clients,
            admin,
            parts,
            observed: observe::Observed::default(),
            state_seq,
            configs_warned: false,
            src,
        })
    }

    /// Runs the loop with a second thread doing the durable appends, so fetching the
    /// next batch overlaps the fsync of the previous one. Batches reach the appender
    /// in order, each with the progress (coverage) that holds once it is durable;
    /// the channel is bounded so capture never runs far ahead of the journal.
    fn run(mut self) -> Result<(), CaptureError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<ChangeEvent>, Progress)>(2);
        let journal = self.journal.clone();
        let appender = std::thread::Builder::new()
            .name(format!("tidemark-append-{}", self.src.name))
            .spawn(move || -> Result<(), CaptureError> {
                let (mut busy, mut n, started) = (Duration::ZERO, 0usize, Instant::now());
                for (events, progress) in rx {
                    let t = Instant::now();
                    journal.append_blocking(&events, &progress)?;
                    busy += t.elapsed();
                    n += events.len();
                }
                tracing::debug!(
                    events = n,
                    busy_ms = busy.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "kafka journal appender finished"
                );
                Ok(())
            })
            .map_err(|e| {
                CaptureError::config(
                    &self.src.name,
                    format!("cannot start the journal thread: {e}"),
                )
            })?;
        let looped = self.capture_loop(&tx);
        drop(tx); // the appender drains what is queued, then ends
        let appended = appender.join().unwrap_or_else(|_| {
            Err(CaptureError::config(
                &self.src.name,
                "journal thread panicked",
            ))
        });
        // A journal failure is the root cause when both failed.
        appended?;
        match looped {
            Ok(()) | Err(LoopEnd::AppenderGone) => {
                tracing::info!(source = %self.src.name, "kafka capture stopped");
                Ok(())
            }
            Err(LoopEnd::Failed(e)) => Err(e),
        }
    }

    fn capture_loop(
        &mut self,
        tx: &std::sync::mpsc::SyncSender<(Vec<ChangeEvent>, Progress)>,
    ) -> Result<(), LoopEnd> {
        // Partitions known from the journal are assigned on the first refresh, with
        // any new ones; until then nothing is fetched.
        let mut assigned: BTreeMap<(String, i32), ()> = BTreeMap::new();
        let mut next_meta = Instant::now();
        let mut next_observe = Instant::now();
        let mut pending_state: Option<ChangeEvent> = None;
        let mut last_coverage: Option<Timestamp> = None;
        loop {
            let stopping = self.shutdown.is_fired();
            if !stopping && Instant::now() >= next_meta {
                self.refresh_metadata(&mut assigned)?;
                next_meta = Instant::now() + METADATA_EVERY;
            }
            if !stopping && Instant::now() >= next_observe {
                pending_state = self.observe()?.or(pending_state);
                next_observe = Instant::now() + OBSERVE_EVERY;
            }
            let mut events = if stopping {
                Vec::new()
            } else {
                self.poll_batch(next_observe.min(next_meta))
            };
            self.skip_gaps();
            if let Some(e) = pending_state.take() {
                // Observed before every record of the batch was fetched: first, so the
                // journal's time axis stays in order.
                events.insert(0, e);
            }
            let progress = Progress {
                checkpoint: Vec::new(),
                coverage: observe::coverage(&self.parts),
            };
            if !events.is_empty() || progress.coverage > last_coverage {
                last_coverage = last_coverage.max(progress.coverage);
                if tx.send((events, progress)).is_err() {
                    return Err(LoopEnd::AppenderGone);
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Polls records until the batch is full, `BATCH_WAIT` after its first record,
    /// or `deadline` (housekeeping) is reached.
    fn poll_batch(&mut self, deadline: Instant) -> Vec<ChangeEvent> {
        let mut events: Vec<ChangeEvent> = Vec::with_capacity(1024);
        let mut bytes = 0usize;
        let mut close_at = deadline;
        // Per partition in this batch: next offset (no allocation per record).
        let mut batch_next: Vec<(String, i32, i64)> = Vec::new();
        loop {
            let now = Instant::now();
            if events.len() >= BATCH_RECORDS
                || bytes >= BATCH_BYTES
                || now >= close_at
                || self.shutdown.is_fired()
            {
                self.flush_batch_offsets(&mut batch_next);
                // One capture time per batch, taken after its last record was fetched:
                // still "fetched by then", and one time-index entry per batch.
                let now = Timestamp::now().as_micros();
                events.iter_mut().for_each(|e| e.capture_time_us = now);
                return events;
            }
            let wait = (close_at - now).min(Duration::from_millis(100));
            match self.consumer.poll(wait) {
                None => {}
                Some(Err(e)) => {
                    // Transient fetch trouble is retried by librdkafka; say it once here.
                    tracing::warn!(source = %self.src.name, error = %e, "kafka fetch error");
                }
                Some(Ok(m)) => {
                    if events.is_empty() {
                        close_at = close_at.min(Instant::now() + BATCH_WAIT);
                    }
                    let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                    let slot = match batch_next
                        .iter()
                        .position(|(t, p, _)| *p == partition && t == topic)
                    {
                        Some(i) => i,
                        None => {
                            let start = self
                                .parts
                                .get(&(topic.to_string(), partition))
                                .and_then(|s| s.next);
                            batch_next.push((topic.to_string(), partition, start.unwrap_or(-1)));
                            batch_next.len() - 1
                        }
                    };
                    if offset < batch_next[slot].2 {
                        continue; // already journaled (cannot happen after an exact assign)
                    }
                    batch_next[slot].2 = offset + 1;
                    let record = record_of(&m);
                    bytes += record.key.as_ref().map_or(0, Vec::len)
                        + record.value.as_ref().map_or(0, Vec::len);
                    events.push(ChangeEvent {
                        source: String::new(),
                        position: Some(Position::kafka(topic, partition, offset)),
                        commit_time_us: None,
                        capture_time_us: 0, // stamped when the batch closes
                        txn: None,
                        payload: Some(Payload::Kafka(record)),
                    });
                }
            }
        }
    }

    /// Applies the batch's next offsets to the partition states.
    fn flush_batch_offsets(&mut self, batch_next: &mut Vec<(String, i32, i64)>) {
        for (t, p, next) in batch_next.drain(..) {
            if next >= 0 {
                self.parts.entry((t, p)).or_default().advance(next);
            }
        }
    }

    /// Moves `next` past offsets the consumer skipped without a record (transaction
    /// markers, compacted gaps), so coverage is not held back by them.
    fn skip_gaps(&mut self) {
        let Ok(pos) = self.consumer.position() else {
            return;
        };
        for el in pos.elements() {
            if let Offset::Offset(o) = el.offset() {
                if let Some(s) = self
                    .parts
                    .get_mut(&(el.topic().to_string(), el.partition()))
                {
                    if s.next.is_some() {
                        s.advance(o);
                    }
                }
            }
        }
    }

    /// Finds selected topics and partitions; assigns new ones; reads configs and
    /// group offsets.
    fn refresh_metadata(
        &mut self,
        assigned: &mut BTreeMap<(String, i32), ()>,
    ) -> Result<(), CaptureError> {
        let all = match self.src.conn.topics(&self.meta) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(source = %self.src.name, error = %e, "metadata refresh failed; retrying");
                return Ok(());
            }
        };
        let selected: BTreeMap<String, i32> = all
            .into_iter()
            .filter(|(t, _)| self.src.filter.matches(t))
            .collect();
        // Topics deleted (or no longer selected) and vanished partitions are let go:
        // what the journal holds of them stays restorable.
        let mut gone = TopicPartitionList::new();
        for key in assigned.keys() {
            if selected.get(&key.0).is_none_or(|&n| key.1 >= n) {
                let _ = gone.add_partition(&key.0, key.1);
            }
        }
        if gone.count() > 0 {
            tracing::warn!(source = %self.src.name, partitions = gone.count(), "kafka partitions disappeared; no longer captured");
            if let Err(e) = self.consumer.incremental_unassign(&gone) {
                tracing::warn!(source = %self.src.name, error = %e, "unassign failed");
            }
        }
        assigned.retain(|k, _| selected.get(&k.0).is_some_and(|&n| k.1 < n));
        self.parts
            .retain(|k, _| selected.get(&k.0).is_some_and(|&n| k.1 < n));
        self.observed.topics.retain(|t, _| selected.contains_key(t));
        let mut tpl = TopicPartitionList::new();
        for (topic, &n) in &selected {
            for p in 0..n {
                let key = (topic.clone(), p);
                if assigned.contains_key(&key) {
                    continue;
                }
                let state = self.parts.entry(key.clone()).or_default();
                let offset = match state.next {
                    Some(n) => Offset::Offset(n),
                    None => Offset::Beginning,
                };
                tpl.add_partition_offset(topic, p, offset)
                    .map_err(|e| self.err(self.src.conn.request_error("assign", e)))?;
                assigned.insert(key, ());
            }
        }
        if tpl.count() > 0 {
            tracing::info!(source = %self.src.name, partitions = tpl.count(), "assigning kafka partitions");
            self.consumer
                .incremental_assign(&tpl)
                .map_err(|e| self.err(self.src.conn.request_error("assign", e)))?;
        }
        let names: Vec<String> = selected.keys().cloned().collect();
        let configs = match self.src.conn.topic_configs(&self.admin, &names) {
            Ok(c) => c,
            Err(e) => {
                if !self.configs_warned {
                    tracing::warn!(source = %self.src.name, error = %e, "cannot read topic configs; journaling partition counts only");
                    self.configs_warned = true;
                }
                BTreeMap::new()
            }
        };
        for (topic, n) in selected {
            let meta = crate::event::KafkaTopicMeta {
                name: topic.clone(),
                partitions: n,
                configs: configs.get(&topic).cloned().unwrap_or_else(|| {
                    self.observed
                        .topics
                        .get(&topic)
                        .map(|m| m.configs.clone())
                        .unwrap_or_default()
                }),
            };
            self.observed.topics.insert(topic, meta);
        }
        self.read_group_offsets();
        Ok(())
    }

    fn read_group_offsets(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in self.parts.keys() {
            let _ = tpl.add_partition_offset(t, *p, Offset::Invalid);
        }
        if tpl.count() == 0 {
            return;
        }
        for (group, client) in &self.group_clients {
            match client.committed_offsets(tpl.clone(), REQUEST_TIMEOUT) {
                Ok(got) => {
                    for el in got.elements() {
                        let key = (group.clone(), el.topic().to_string(), el.partition());
                        match el.offset() {
                            Offset::Offset(o) => {
                                let meta = el.metadata().to_string();
                                self.observed.groups.insert(key, (o, meta));
                            }
                            _ => {
                                self.observed.groups.remove(&key);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(source = %self.src.name, %group, error = %e, "cannot read committed offsets; retrying")
                }
            }
        }
    }

    /// Observes every partition's watermarks; returns a state event to journal if
    /// the state changed or is due.
    fn observe(&mut self) -> Result<Option<ChangeEvent>, CaptureError> {
        let before = Timestamp::now().as_micros();
        let keys: Vec<(String, i32)> = self.parts.keys().cloned().collect();
        let mut marks = Vec::with_capacity(keys.len());
        for (t, p) in &keys {
            match self.src.conn.watermarks(&self.meta, t, *p) {
                Ok((low, high)) => {
                    let fetched = fetched_high_watermark(&self.consumer, t, *p);
                    // Until a fetch response has confirmed it, a non-empty partition's
                    // mark only informs status, not coverage (see fetched_high_watermark).
                    let settles = fetched.is_some() || high <= low;
                    let high = high.max(fetched.unwrap_or(-1));
                    marks.push(((t.clone(), *p), (low, high, settles)));
                }
                Err(e) => {
                    tracing::warn!(source = %self.src.name, error = %e, "watermark observation failed; retrying");
                    return Ok(None);
                }
            }
        }
        let after = Timestamp::now().as_micros();
        for (key, (low, high, settles)) in marks {
            if let Some(s) = self.parts.get_mut(&key) {
                // The broker dropped records the journal never had (retention ran
                // ahead of capture), or the topic was recreated: say so loudly.
                match s.next {
                    Some(next) if low > next => tracing::error!(
                        source = %self.src.name, topic = %key.0, partition = key.1, next, low,
                        "records were deleted by the broker before capture read them: the journal has a gap here"
                    ),
                    Some(next) if settles && high < next => tracing::error!(
                        source = %self.src.name, topic = %key.0, partition = key.1, next, high,
                        "the partition ends below what the journal holds: was the topic deleted and recreated? capture it under a new source name"
                    ),
                    _ => {}
                }
                if settles {
                    s.observe(before, low, high);
                } else {
                    s.low = low;
                    s.high = s.high.max(high);
                }
            }
        }
        let due = self.observed.last_journaled_at.is_none_or(|t| {
            Timestamp::now().as_micros() - t.as_micros() >= STATE_EVERY.as_micros() as i64
        });
        let Some(state) = self
            .observed
            .state_to_journal(&self.parts, before, after, due)
        else {
            return Ok(None);
        };
        self.observed.last_journaled_at = Some(Timestamp::from_micros(after));
        let pos = Position::kafka_state(self.state_seq);
        self.state_seq += 1;
        Ok(Some(ChangeEvent {
            source: String::new(),
            position: Some(pos),
            commit_time_us: None,
            // On the journal's axis an observation counts at its start (see
            // `restore::kafka`, "The cut rule").
            capture_time_us: before,
            txn: None,
            payload: Some(Payload::KafkaState(state)),
        }))
    }
}
