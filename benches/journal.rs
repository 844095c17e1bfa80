//! Journal benchmarks. Every figure is printed beside a baseline measured in the same
//! run (these machines are noisy; only ratios carry over).
//!
//! 1. Append throughput, 200-byte events in batches of 1,000, against a raw RocksDB
//!    `WriteBatch` of the same bytes with the same sync policy.
//! 2. Finding the position for a timestamp (and for a source position) in a journal of
//!    10M events, against a point read of one event.
//!
//! 3. Five sources appending at once (`sync = "always"`, one thread each), against
//!    five threads writing the same batches to raw RocksDB: the group commit.
//! 4. The journal's side of a restore to latest (plan, read the image, read and
//!    decode the events after it) with an image every `--interval` events, for
//!    histories of 1x, 5x and 10x the interval: flat when images bound the replay.
//!
//! 5. Appends with the key indexer following them, against appends alone; and in
//!    the 10M-event journal of 2, `history` of one key by the key index against
//!    the scan.
//!
//! Run: `cargo bench --profile dev --bench journal [-- --events N --lookup-events M --interval K]`
//! (`--history-only`: 5 and 2 only)
//! (the dev profile builds dependencies optimised; see ARCHITECTURE.md).

mod support;

use std::time::{Duration, Instant};

use prost::Message;
use rocksdb::{Options, WriteBatch, WriteOptions, DB};
use support::{arg, median};
use tidemark::config::{SourceKind, SyncPolicy};
use tidemark::event::{ChangeEvent, KafkaRecord, Payload};
use tidemark::journal::{Journal, JournalOptions, Progress};
use tidemark::position::Position;
use tidemark::time::Timestamp;

const EVENT_BYTES: usize = 200;
const BATCH: usize = 1000;

/// An event whose encoding is exactly `EVENT_BYTES` long.
fn event(offset: i64, time_us: i64) -> ChangeEvent {
    keyed_event(offset, time_us, None)
}

/// The key of event `offset` in the keyed benches: 100,000 distinct keys.
fn key_of(offset: i64) -> Vec<u8> {
    format!("key-{}", offset % 100_000).into_bytes()
}

/// [`event`] with a record key.
fn keyed_event(offset: i64, time_us: i64, key: Option<Vec<u8>>) -> ChangeEvent {
    let mut e = ChangeEvent {
        position: Some(Position::kafka("bench", 0, offset)),
        commit_time_us: Some(time_us),
        capture_time_us: time_us,
        payload: Some(Payload::Kafka(KafkaRecord {
            key,
            value: Some(Vec::new()),
            timestamp_ms: time_us / 1000,
            ..Default::default()
        })),
        ..Default::default()
    };
    let pad = EVENT_BYTES.saturating_sub(e.encoded_len() + 2);
    if let Some(Payload::Kafka(r)) = &mut e.payload {
        r.value = Some((0..pad).map(|i| (i * 31 + offset as usize) as u8).collect());
    }
    e
}

fn batches(n: u64) -> Vec<Vec<ChangeEvent>> {
    let t0 = Timestamp::now().as_micros();
    (0..n as i64)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|c| c.iter().map(|&i| event(i, t0 + i)).collect())
        .collect()
}

fn raw_append(dir: &std::path::Path, batches: &[Vec<Vec<u8>>], sync: bool) -> Duration {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_max_background_jobs(2);
    o.set_bytes_per_sync(1 << 20);
    o.set_enable_pipelined_write(true); // the journal's options, for a like-for-like baseline
    let db = DB::open(&o, dir).unwrap();
    let mut wo = WriteOptions::default();
    wo.set_sync(sync);
    let mut seq = 0u64;
    let start = Instant::now();
    for b in batches {
        let mut wb = WriteBatch::with_capacity_bytes(b.len() * 240);
        for v in b {
            seq += 1;
            wb.put(seq.to_be_bytes(), v);
        }
        db.write_opt(wb, &wo).unwrap();
    }
    start.elapsed()
}

fn journal_append(
    dir: &std::path::Path,
    batches: &[Vec<ChangeEvent>],
    sync: SyncPolicy,
) -> Duration {
    let j = Journal::open(
        dir,
        JournalOptions {
            sync,
            ..Default::default()
        },
    )
    .unwrap();
    let src = j.register_source("bench", SourceKind::Kafka).unwrap();
    let start = Instant::now();
    for b in batches {
        let last = b.last().and_then(|e| e.commit_time_us).unwrap_or(0);
        j.append(
            src,
            b,
            &Progress {
                coverage: Some(Timestamp::from_micros(last)),
                ..Default::default()
            },
        )
        .unwrap();
    }
    start.elapsed()
}

fn bench_append(n: u64) {
    let events = batches(n);
    let raw: Vec<Vec<Vec<u8>>> = events
        .iter()
        .map(|b| b.iter().map(|e| e.encode_to_vec()).collect())
        .collect();
    println!("## append: {n} events of {EVENT_BYTES} bytes in batches of {BATCH}");
    println!(
        "{:<8} {:>14} {:>14} {:>8}",
        "sync", "raw ev/s", "journal ev/s", "ratio"
    );
    for (name, policy) in [("always", SyncPolicy::Always), ("os", SyncPolicy::Os)] {
        let (mut rr, mut jr, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let r =
                n as f64 / raw_append(a.path(), &raw, policy == SyncPolicy::Always).as_secs_f64();
            let j = n as f64 / journal_append(b.path(), &events, policy).as_secs_f64();
            rr.push(r);
            jr.push(j);
            ratios.push(j / r);
        }
        println!(
            "{name:<8} {:>14.0} {:>14.0} {:>8.2}   (median of 3 interleaved rounds)",
            median(rr),
            median(jr),
            median(ratios)
        );
    }
}

fn raw_parallel(dir: &std::path::Path, per_source: &[Vec<Vec<Vec<u8>>>]) -> Duration {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_max_background_jobs(2);
    o.set_bytes_per_sync(1 << 20);
    o.set_enable_pipelined_write(true);
    let db = DB::open(&o, dir).unwrap();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (n, batches) in per_source.iter().enumerate() {
            let db = &db;
            s.spawn(move || {
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                let mut seq = 0u64;
                for b in batches {
                    let mut wb = WriteBatch::with_capacity_bytes(b.len() * 240);
                    for v in b {
                        seq += 1;
                        let mut k = (n as u32).to_be_bytes().to_vec();
                        k.extend_from_slice(&seq.to_be_bytes());
                        wb.put(k, v);
                    }
                    db.write_opt(wb, &wo).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn journal_parallel(
    dir: &std::path::Path,
    per_source: &[Vec<Vec<ChangeEvent>>],
) -> (Duration, (u64, u64)) {
    let j = Journal::open(dir, JournalOptions::default()).unwrap();
    let ids: Vec<_> = (0..per_source.len())
        .map(|n| {
            j.register_source(&format!("s{n}"), SourceKind::Kafka)
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for (batches, src) in per_source.iter().zip(ids) {
            let j = &j;
            s.spawn(move || {
                for b in batches {
                    j.append(src, b, &Progress::default()).unwrap();
                }
            });
        }
    });
    (start.elapsed(), j.group_commit_counts())
}

fn bench_five(n: u64) {
    let per: Vec<Vec<Vec<ChangeEvent>>> = (0..5).map(|_| batches(n / 5)).collect();
    let raw: Vec<Vec<Vec<Vec<u8>>>> = per
        .iter()
        .map(|s| {
            s.iter()
                .map(|b| b.iter().map(|e| e.encode_to_vec()).collect())
                .collect()
        })
        .collect();
    println!("\n## five sources at once: {n} events of {EVENT_BYTES} bytes, sync = always, one thread per source");
    let (mut rr, mut jr, mut ratios, mut per_write) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let r = n as f64 / raw_parallel(a.path(), &raw).as_secs_f64();
        let (took, (appends, writes)) = journal_parallel(b.path(), &per);
        let j = n as f64 / took.as_secs_f64();
        rr.push(r);
        jr.push(j);
        ratios.push(j / r);
        per_write.push(appends as f64 / writes.max(1) as f64);
    }
    println!(
        "raw RocksDB (5 writers) {:>10.0} ev/s   journal (5 sources) {:>10.0} ev/s   ratio {:.2}   appends per synced write {:.2}   (median of 3 interleaved rounds)",
        median(rr),
        median(jr),
        median(ratios),
        median(per_write)
    );
}

fn bench_restore_cost(interval: u64) {
    println!("\n## journal side of a restore to latest, an image every {interval} events (each image 8 chunks of 64 KiB)");
    println!(
        "{:<10} {:>12} {:>14} {:>12} {:>10}",
        "history", "events", "replayed", "time", "vs 1x"
    );
    let mut base = None;
    for mult in [1u64, 5, 10] {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(
            Journal::open(
                dir.path(),
                JournalOptions {
                    sync: SyncPolicy::Os,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let src = j.register_source("bench", SourceKind::Redis).unwrap();
        let t0 = 1_700_000_000_000_000i64;
        // Half an interval after the newest image: what a restore to latest replays.
        let total = interval * mult + interval / 2;
        let mut k = 0u64;
        while k < total {
            let b: Vec<ChangeEvent> = (k..k + BATCH as u64)
                .map(|i| {
                    let mut e = event(i as i64, t0 + i as i64);
                    e.position = Some(Position::redis("bench", i + 1));
                    e.payload = Some(Payload::Redis(tidemark::event::RedisCommand {
                        db: 0,
                        args: vec![b"SET".to_vec(), i.to_be_bytes().to_vec(), vec![7u8; 150]],
                    }));
                    e
                })
                .collect();
            k += b.len() as u64;
            j.append(
                src,
                &b,
                &Progress {
                    coverage: Some(Timestamp::from_micros(t0 + k as i64)),
                    ..Default::default()
                },
            )
            .unwrap();
            if k.is_multiple_of(interval) || k == BATCH as u64 {
                let mut w = j
                    .begin_image(
                        src,
                        Position::redis("bench", k),
                        Timestamp::from_micros(t0 + k as i64),
                        "bench",
                    )
                    .unwrap();
                for c in 0..8u8 {
                    w.put_chunk(&vec![c; 64 << 10]).unwrap();
                }
                w.finish(&Progress::default()).unwrap();
            }
        }
        j.flush().unwrap();
        let runs: Vec<Duration> = (0..5)
            .map(|_| {
                let start = Instant::now();
                let plan =
                    tidemark::restore::plan(&j, "bench", tidemark::time::TimeSpec::Latest).unwrap();
                let image = plan.image.clone().unwrap();
                let bytes: usize = j.image_chunks(&image).map(|c| c.unwrap().len()).sum();
                assert_eq!(bytes as u64, image.bytes);
                let replayed = j.events(src, plan.first_seq, plan.last_seq).count() as u64;
                assert_eq!(replayed, plan.events);
                start.elapsed()
            })
            .collect();
        let plan = tidemark::restore::plan(&j, "bench", tidemark::time::TimeSpec::Latest).unwrap();
        let t = median(runs.iter().map(|d| d.as_secs_f64()).collect());
        let b = *base.get_or_insert(t);
        println!(
            "{:<10} {total:>12} {:>14} {:>10.1}ms {:>9.2}x",
            format!("{mult}x"),
            plan.events,
            t * 1000.0,
            t / b
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn bench_lookup(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(
        dir.path(),
        JournalOptions {
            sync: SyncPolicy::Os,
            ..Default::default()
        },
    )
    .unwrap();
    let src = j.register_source("bench", SourceKind::Kafka).unwrap();
    let t0 = 1_700_000_000_000_000i64;
    let build = Instant::now();
    let mut i = 0i64;
    while (i as u64) < n {
        // Every event a distinct time (100 µs apart): the densest time index.
        let b: Vec<ChangeEvent> = (i..(i + BATCH as i64).min(n as i64))
            .map(|k| keyed_event(k, t0 + k * 100, Some(key_of(k))))
            .collect();
        i += b.len() as i64;
        j.append(src, &b, &Progress::default()).unwrap();
    }
    j.flush().unwrap();
    println!(
        "\n## lookup in a journal of {n} events (built in {:.1?}, {} MB on disk)",
        build.elapsed(),
        j.disk_size() >> 20
    );
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let samples = 20_000;
    let mut measure = |f: &mut dyn FnMut(u64)| {
        let mut d: Vec<Duration> = (0..samples)
            .map(|_| {
                let k = next();
                let s = Instant::now();
                f(k);
                s.elapsed()
            })
            .collect();
        d.sort();
        d
    };
    let point = measure(&mut |k| {
        let e = j.events(src, k + 1, k + 1).next().unwrap().unwrap();
        assert_eq!(e.seq, k + 1);
    });
    let by_time = measure(&mut |k| {
        let s = j
            .seq_at_time(src, Timestamp::from_micros(t0 + k as i64 * 100 + 50))
            .unwrap();
        assert_eq!(s, Some(k + 1));
    });
    let by_pos = measure(&mut |k| {
        let s = j
            .seq_at_position(src, &Position::kafka("bench", 0, k as i64))
            .unwrap();
        assert_eq!(s, Some(k + 1));
    });
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>16}",
        "operation", "p50", "p99", "max", "p50 vs point read"
    );
    let p50 = percentile(&point, 0.5).as_secs_f64();
    for (name, d) in [
        ("point read (baseline)", &point),
        ("seq at time", &by_time),
        ("seq at position", &by_pos),
    ] {
        println!(
            "{name:<22} {:>10.1?} {:>10.1?} {:>10.1?} {:>15.2}x",
            percentile(d, 0.5),
            percentile(d, 0.99),
            d[d.len() - 1],
            percentile(d, 0.5).as_secs_f64() / p50
        );
    }
    // `tidemark history`: every version of one key, by a scan of the whole journal,
    // against reading every event to nowhere.
    let s = Instant::now();
    let read = j.events(src, 1, u64::MAX).filter(|e| e.is_ok()).count();
    let plain = s.elapsed();
    let s = Instant::now();
    let versions =
        tidemark::app::history::history(&j, "bench", "no-such-key", None, 1, u64::MAX).unwrap();
    let history = s.elapsed();
    assert!(versions.is_empty() && read as u64 == n);
    println!(
        "history of one key over all {n} events: {history:.1?} (reading every event: {plain:.1?}; {:.2}x)",
        history.as_secs_f64() / plain.as_secs_f64()
    );
    bench_history_index(&j, n, history);
}

/// `history` by the key index against the scan (the baseline just measured), in
/// the same journal: the index built by the indexer from nothing, then the
/// versions of keys that each have `n / 100,000` of them.
fn bench_history_index(j: &Journal, n: u64, scan: Duration) {
    let src = j.source("bench").unwrap().id;
    let s = Instant::now();
    while !j.index_keys(src, 20_000).unwrap().caught_up {}
    let built = s.elapsed();
    j.flush().unwrap();
    let mut times = Vec::new();
    let mut versions = 0;
    for k in 0..20i64 {
        let key = String::from_utf8(key_of(k * 4999 + 7)).unwrap();
        let s = Instant::now();
        let (v, how) =
            tidemark::app::history::search(j, "bench", &key, None, 1, u64::MAX, true).unwrap();
        times.push(s.elapsed().as_secs_f64());
        assert_eq!(how.events_scanned, 0);
        versions = v.len();
    }
    let s = Instant::now();
    let (v, _) =
        tidemark::app::history::search(j, "bench", "key-7", None, 1, u64::MAX, false).unwrap();
    let scan_key = s.elapsed();
    assert_eq!(v.len() as u64, n / 100_000);
    let t = median(times);
    println!(
        "key index built from nothing over {n} events: {built:.1?} ({:.0} ev/s)",
        n as f64 / built.as_secs_f64()
    );
    println!(
        "history of one key ({versions} versions) by the key index: {:.1} ms (median of 20 keys) vs scan {scan:.1?} / {scan_key:.1?}: {:.0}x faster",
        t * 1000.0,
        scan.as_secs_f64().min(scan_key.as_secs_f64()) / t
    );
}

fn journal_append_indexed(
    dir: &std::path::Path,
    batches: &[Vec<ChangeEvent>],
    indexer: bool,
    pace: Option<Duration>,
) -> (Duration, Duration, Vec<Duration>) {
    let j = Journal::open(dir, JournalOptions::default()).unwrap();
    let src = j.register_source("bench", SourceKind::Kafka).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    let mut appended = Duration::ZERO;
    let mut acks = Vec::with_capacity(batches.len());
    std::thread::scope(|s| {
        if indexer {
            s.spawn(|| loop {
                // Read before the step: a step begun after the last append sees it.
                let finished = done.load(std::sync::atomic::Ordering::Acquire);
                let t = Instant::now();
                let caught_up = j.index_keys(src, 20_000).unwrap().caught_up;
                if !caught_up {
                    // As `run`'s indexer: pause as long as the step took.
                    std::thread::sleep(t.elapsed());
                } else {
                    if finished {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        for (i, b) in batches.iter().enumerate() {
            if let Some(p) = pace {
                let due = start + p * i as u32;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let t = Instant::now();
            j.append(src, b, &Progress::default()).unwrap();
            acks.push(t.elapsed());
        }
        appended = start.elapsed();
        done.store(true, std::sync::atomic::Ordering::Release);
    });
    if indexer {
        assert_eq!(j.keys_indexed_through(src).unwrap(), j.next_seq() - 1);
    }
    acks.sort();
    (appended, start.elapsed(), acks)
}

/// Capture's side of the key index: appends (`sync = always`, keyed events) with
/// the indexer following in another thread, against the same appends alone.
fn bench_index_overhead(n: u64) {
    let t0 = Timestamp::now().as_micros();
    let events: Vec<Vec<ChangeEvent>> = (0..n as i64)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|c| {
            c.iter()
                .map(|&i| keyed_event(i, t0 + i, Some(key_of(i))))
                .collect()
        })
        .collect();
    println!("\n## append with the key indexer following: {n} keyed events, sync = always, batches of {BATCH}");
    let (mut alone, mut with, mut ratios, mut lag) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (x, _, _) = journal_append_indexed(a.path(), &events, false, None);
        let (y, total, _) = journal_append_indexed(b.path(), &events, true, None);
        let (x, y) = (n as f64 / x.as_secs_f64(), n as f64 / y.as_secs_f64());
        alone.push(x);
        with.push(y);
        ratios.push(y / x);
        lag.push((total.as_secs_f64() - n as f64 / y) * 1000.0);
    }
    println!(
        "appends alone {:>10.0} ev/s   with the indexer {:>10.0} ev/s   ratio {:.2}   index caught up {:.0} ms after the last append   (median of 3 interleaved rounds)",
        median(alone),
        median(with),
        median(ratios),
        median(lag)
    );
    // At a steady 50,000 events/s (a batch of 1,000 every 20 ms): the time of each
    // append (the acknowledgement path), without and with the indexer.
    let pace = Duration::from_millis(20);
    let (mut p50, mut p99) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..3 {
        for (k, indexer) in [false, true].into_iter().enumerate() {
            let d = tempfile::tempdir().unwrap();
            let (_, _, acks) = journal_append_indexed(d.path(), &events, indexer, Some(pace));
            p50[k].push(percentile(&acks, 0.5).as_secs_f64() * 1000.0);
            p99[k].push(percentile(&acks, 0.99).as_secs_f64() * 1000.0);
        }
    }
    let [a50, b50] = p50.map(median);
    let [a99, b99] = p99.map(median);
    println!(
        "at 50,000 ev/s: append p50 {a50:.2} ms / p99 {a99:.2} ms alone, {b50:.2} ms / {b99:.2} ms with the indexer (ratios {:.2} / {:.2}; median of 3 rounds)",
        b50 / a50,
        b99 / a99
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches
    }
    if !std::env::args().any(|a| a == "--history-only") {
        bench_append(arg("--events", 200_000));
        bench_five(arg("--events", 200_000));
        bench_restore_cost(arg("--interval", 100_000));
    }
    bench_index_overhead(arg("--events", 200_000));
    if arg("--lookup-events", 10_000_000) > 0 {
        bench_lookup(arg("--lookup-events", 10_000_000));
    }
}
