//! Kafka benchmarks against a real tansu broker, each figure beside a baseline
//! measured in the same run on the same records (only ratios carry over between
//! machines).
//!
//! 1. Capture: `tidemark`'s Kafka source (fetch, encode, durable journal appends with
//!    `sync = "always"`) against a plain rdkafka consumer reading the same topic
//!    to nowhere. Goal: ratio >= 0.8.
//! 2. Restore: `connectors::kafka::restore::restore` (journal read, cut, produce, flush) against
//!    a plain rdkafka producer sending the same records from memory.
//!
//! Run: `TIDEMARK_TANSU=... cargo bench --profile dev --bench kafka [-- --records N --bytes B]`

#[path = "../tests/common/mod.rs"]
mod common;

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use support::{arg, cpu_secs, median};
use tidemark::capture;
use tidemark::config::{SourceConfig, SyncPolicy};
use tidemark::connectors::kafka::restore::KafkaRestoreOptions;
use tidemark::journal::{Journal, JournalOptions};
use tidemark::time::TimeSpec;

const PARTITIONS: i32 = 3;

fn producer(addr: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer")
}

/// Produces `records` of `value_bytes` (plus a 12-byte key) round-robin over the
/// partitions, from memory; returns the seconds it took (send to flushed).
fn produce(addr: &str, topic: &str, keys: &[Vec<u8>], value: &[u8]) -> f64 {
    produce_with(addr, topic, keys, value, false)
}

/// As [`produce`]; `idempotent` as tidemark's restore producer is.
fn produce_with(addr: &str, topic: &str, keys: &[Vec<u8>], value: &[u8], idempotent: bool) -> f64 {
    let start = Instant::now(); // from client creation, as tidemark's restore is
    let p: BaseProducer = if idempotent {
        ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("enable.idempotence", "true")
            .create()
            .expect("producer")
    } else {
        producer(addr)
    };
    for (i, k) in keys.iter().enumerate() {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(i as i32 % PARTITIONS)
            .key(k.as_slice())
            .payload(value)
            .timestamp(1_700_000_000_000 + i as i64);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(300)).expect("flush");
    start.elapsed().as_secs_f64()
}

/// A plain consumer reading every partition from the start until `n` records.
/// Timed from client creation, as tidemark's capture is (connect, metadata, ...).
fn plain_consume(addr: &str, topic: &str, n: u64) -> f64 {
    let start = Instant::now();
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "262144")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut got = 0u64;
    let mut sink = 0usize;
    while got < n {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            use rdkafka::message::Message;
            sink = sink.wrapping_add(m.payload().map_or(0, <[u8]>::len));
            got += 1;
        }
    }
    std::hint::black_box(sink);
    start.elapsed().as_secs_f64()
}

/// tidemark's capture of `topic` into a fresh journal until `n` records are durable.
fn tidemark_capture(
    addr: &str,
    topic: &str,
    n: u64,
    loaded: tidemark::time::Timestamp,
    dir: &std::path::Path,
) -> (f64, Arc<Journal>) {
    let journal = Arc::new(
        Journal::open(
            &dir.join("journal"),
            JournalOptions {
                sync: SyncPolicy::Always,
                ..Default::default()
            },
        )
        .expect("journal"),
    );
    let cfg = SourceConfig::parse_one(
        "bench",
        "kafka",
        toml::from_str(&format!(
            "brokers = [{:?}]\ntopics = [{topic:?}]",
            addr.to_string()
        ))
        .expect("settings"),
    )
    .expect("config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (trigger, run) = capture::start(&journal, &cfg).expect("start");
    let start = Instant::now();
    let task = rt.spawn(run);
    let records = |j: &Journal| {
        // The state events of the reserved stream are not records.
        j.source("bench").map(|s| s.stats.event_count).unwrap_or(0)
    };
    // +1: the first state event is appended before any record.
    while records(&journal) < n + 1 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = start.elapsed().as_secs_f64();
    // Untimed: let coverage pass the moment every record was journaled, for the
    // restore to `latest` (an observation after it has every mark).
    let done = tidemark::time::Timestamp::now().max(loaded);
    while journal
        .source("bench")
        .ok()
        .and_then(|s| s.stats.coverage_us)
        < Some(done.as_micros())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    trigger.fire();
    rt.block_on(task).expect("join").expect("capture");
    (secs, journal)
}

fn main() {
    let n = arg("--records", 200_000);
    let value_bytes = arg("--bytes", 200) as usize;
    let rounds = arg("--rounds", 3).max(1) as usize;
    let Some(broker) = common::Tansu::start("kafka bench") else {
        return;
    };
    let addr = broker.addr();
    broker.create_topic("bench", PARTITIONS as u32);
    for r in 0..rounds {
        for t in ["restored", "baseline_out", "baseline_idem"] {
            broker.create_topic(&format!("{t}{r}"), PARTITIONS as u32);
        }
    }
    let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("key-{i:08}").into_bytes()).collect();
    let value: Vec<u8> = (0..value_bytes).map(|i| (i * 7) as u8).collect();
    let seed = produce(&addr, "bench", &keys, &value);
    let loaded = tidemark::time::Timestamp::now();
    let mb = (n as f64) * (value_bytes + 12) as f64 / 1e6;
    println!("kafka bench: {n} records of {value_bytes}+12 bytes over {PARTITIONS} partitions ({mb:.1} MB); loading took {seed:.2}s; median of {rounds} interleaved rounds");
    let rate = |s: f64| (n as f64 / s, mb / s);

    // 1. Capture, each round into a fresh journal.
    let (mut base, mut ours, mut cpu_base, mut cpu_ours) = (vec![], vec![], vec![], vec![]);
    let mut journals = Vec::new();
    for round in 0..rounds {
        // Alternate which goes first, so neither always meets a freshly busy broker.
        let run_base = |base: &mut Vec<f64>, cpu: &mut Vec<f64>| {
            let c0 = cpu_secs();
            base.push(plain_consume(&addr, "bench", n));
            cpu.push(cpu_secs() - c0);
        };
        if round % 2 == 0 {
            run_base(&mut base, &mut cpu_base);
        }
        let c0 = cpu_secs();
        let dir = tempfile::tempdir().unwrap();
        let (secs, journal) = tidemark_capture(&addr, "bench", n, loaded, dir.path());
        cpu_ours.push(cpu_secs() - c0);
        ours.push(secs);
        journals.push((dir, journal));
        if round % 2 == 1 {
            run_base(&mut base, &mut cpu_base);
        }
    }
    let (br, bm) = rate(median(base));
    let (or, om) = rate(median(ours));
    println!("capture  baseline (plain consumer to nowhere): {br:>10.0} records/s {bm:>7.1} MB/s");
    println!("capture  tidemark (journal, sync=always):      {or:>10.0} records/s {om:>7.1} MB/s  ratio {:.2} (goal >= 0.8)", or / br);
    println!(
        "capture  client CPU: baseline {:.2}s, tidemark {:.2}s (incl. an untimed wait for coverage); the broker shares the same cores",
        median(cpu_base),
        median(cpu_ours)
    );

    // 2. Restore to the newest covered moment (after every record was captured).
    let (mut base, mut idem, mut ours, mut restored) = (vec![], vec![], vec![], 0);
    let (mut cpu_base, mut cpu_ours) = (vec![], vec![]);
    let journal = &journals[journals.len() - 1].1;
    for r in 0..rounds {
        idem.push(produce_with(
            &addr,
            &format!("baseline_idem{r}"),
            &keys,
            &value,
            true,
        ));
        let c0 = cpu_secs();
        base.push(produce(&addr, &format!("baseline_out{r}"), &keys, &value));
        let c1 = cpu_secs();
        let plan = tidemark::restore::plan(journal, "bench", TimeSpec::Latest).expect("plan");
        let opts = KafkaRestoreOptions {
            target: format!("kafka://{addr}"),
            topic_map: [("bench".to_string(), format!("restored{r}"))].into(),
            force: false,
        };
        let start = Instant::now();
        let summary = tidemark::connectors::kafka::restore::restore(
            journal,
            &plan,
            &opts,
            &mut tidemark::restore::driver::NoProgress,
        )
        .expect("restore");
        ours.push(start.elapsed().as_secs_f64());
        cpu_base.push(c1 - c0);
        cpu_ours.push(cpu_secs() - c1);
        restored = summary.records;
    }
    let (br, bm) = rate(median(base));
    let (ir, im) = rate(median(idem));
    let (or, om) = rate(median(ours));
    println!("restore  baseline (plain producer from memory): {br:>10.0} records/s {bm:>7.1} MB/s");
    println!("restore  baseline (same, idempotent producer):  {ir:>10.0} records/s {im:>7.1} MB/s");
    println!(
        "restore  tidemark (journal -> cut -> produce):  {or:>10.0} records/s {om:>7.1} MB/s  ratio {:.2} (vs idempotent {:.2}; {restored} records restored)",
        or / br,
        or / ir,
    );
    println!(
        "restore  client CPU: baseline {:.2}s, tidemark {:.2}s",
        median(cpu_base),
        median(cpu_ours)
    );
}
