//! Crash safety: a child process appends in a loop and is killed with SIGKILL at
//! random moments, 24 times. After every kill the journal must reopen with no partial
//! batch, checkpoints equal to the newest journaled positions, sequence numbers and
//! source offsets without gaps or duplicates, and every acknowledged append present.
//!
//! The child is this same test binary, re-run with `--ignored --exact child_appender`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tidemark::config::SourceKind;
use tidemark::event::{ChangeEvent, KafkaRecord, Payload, RedisCommand};
use tidemark::journal::{Journal, JournalOptions, Progress};
use tidemark::position::{Position, PositionKind};
use tidemark::time::Timestamp;

const DIR_ENV: &str = "TIDEMARK_KILL9_DIR";
const PARTITIONS: i32 = 3;

/// A small deterministic generator (xorshift), seeded per run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn redis_offset(p: &Position) -> u64 {
    match &p.kind {
        Some(PositionKind::Redis(r)) => r.offset,
        other => panic!("not a redis position: {other:?}"),
    }
}

fn kafka_parts(p: &Position) -> (i32, i64) {
    match &p.kind {
        Some(PositionKind::Kafka(k)) => (k.partition, k.offset),
        other => panic!("not a kafka position: {other:?}"),
    }
}

/// Runs in the child: resume from the checkpoints and append forever.
#[test]
#[ignore = "child process of kill9_never_loses_or_tears_a_batch; does nothing when run alone"]
fn child_appender() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("TIDEMARK_KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let j =
        Arc::new(Journal::open(Path::new(&dir), JournalOptions::default()).expect("open journal"));
    let r = j.register_source("cache", SourceKind::Redis).unwrap();
    let k = j.register_source("events", SourceKind::Kafka).unwrap();
    // Resume exactly after the checkpoints.
    let mut offset = j
        .checkpoints(r)
        .unwrap()
        .first()
        .map_or(0, |c| redis_offset(&c.position));
    let mut next_kafka = [0i64; PARTITIONS as usize];
    for c in j.checkpoints(k).unwrap() {
        let (p, o) = kafka_parts(&c.position);
        next_kafka[p as usize] = o + 1;
    }
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut round = 0u64;
    loop {
        round += 1;
        let now = Timestamp::now().as_micros();
        let n = 1 + rng.below(400);
        let events: Vec<ChangeEvent> = (0..n)
            .map(|_| {
                offset += 1;
                ChangeEvent {
                    position: Some(Position::redis("replid-1", offset)),
                    commit_time_us: Some(now),
                    capture_time_us: now,
                    payload: Some(Payload::Redis(RedisCommand {
                        db: 0,
                        args: vec![b"SET".to_vec(), offset.to_string().into_bytes()],
                    })),
                    ..Default::default()
                }
            })
            .collect();
        let a = j
            .append(
                r,
                &events,
                &Progress {
                    coverage: Some(Timestamp::from_micros(now)),
                    ..Default::default()
                },
            )
            .unwrap();
        println!("acked {} {}", a.first_seq + a.count - 1, offset);
        let part = rng.below(PARTITIONS as u64) as usize;
        let m = 1 + rng.below(50);
        let records: Vec<ChangeEvent> = (0..m)
            .map(|_| {
                let o = next_kafka[part];
                next_kafka[part] += 1;
                ChangeEvent {
                    position: Some(Position::kafka("t", part as i32, o)),
                    capture_time_us: now,
                    payload: Some(Payload::Kafka(KafkaRecord {
                        value: Some(vec![7; 64]),
                        ..Default::default()
                    })),
                    ..Default::default()
                }
            })
            .collect();
        j.append(k, &records, &Progress::default()).unwrap();
        if round.is_multiple_of(25) {
            let mut w = j
                .begin_image(
                    r,
                    Position::redis("replid-1", offset),
                    Timestamp::from_micros(now),
                    "test",
                )
                .unwrap();
            for c in 0..4u8 {
                w.put_chunk(&vec![c; 3 << 20]).unwrap();
            }
            w.finish(&Progress::default()).unwrap();
        }
    }
}

#[test]
fn kill9_never_loses_or_tears_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut kills = 0;
    let mut last_acked_seq = 0u64;
    for round in 0..24u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_appender",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env("TIDEMARK_KILL9_SEED", (round + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait until the child is appending, then let it run a random while.
        let mut acked = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("acked ") {
                acked = Some(rest.to_string());
                break;
            }
        }
        assert!(acked.is_some(), "child never appended (round {round})");
        let run_for = Duration::from_millis(20 + rng.below(400));
        let reader = std::thread::spawn(move || {
            let mut last = acked;
            for line in lines.map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("acked ") {
                    last = Some(rest.to_string());
                }
            }
            last
        });
        std::thread::sleep(run_for);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let last = reader.join().unwrap().unwrap();
        let (seq, _offset) = last.split_once(' ').unwrap();
        last_acked_seq = last_acked_seq.max(seq.parse().unwrap());

        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        let checked = j.verify().unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            j.next_seq() > last_acked_seq,
            "round {round}: acknowledged seq {last_acked_seq} lost (next {})",
            j.next_seq()
        );
        check_sources(&j, round);
        assert_eq!(
            checked,
            j.next_seq() - 1,
            "round {round}: every sequence number present once"
        );
    }
    assert!(kills >= 20);
}

/// Offsets of each stream run 1.. (Redis) or 0.. (Kafka) without gap or duplicate,
/// and each checkpoint names the newest journaled position of its stream.
fn check_sources(j: &Journal, round: u64) {
    let r = j.source("cache").unwrap();
    let mut expect = 1;
    for e in j.events(r.id, 0, u64::MAX) {
        let e = e.unwrap();
        assert_eq!(
            redis_offset(e.event.position.as_ref().unwrap()),
            expect,
            "round {round}: redis offsets"
        );
        expect += 1;
    }
    let cps = j.checkpoints(r.id).unwrap();
    assert_eq!(cps.len(), 1);
    assert_eq!(
        redis_offset(&cps[0].position),
        expect - 1,
        "round {round}: redis checkpoint"
    );
    for img in j.images(r.id).unwrap() {
        assert_eq!(
            j.image_chunks(&img).filter(|c| c.is_ok()).count(),
            4,
            "round {round}: image chunks"
        );
    }
    let Ok(k) = j.source("events") else { return };
    let mut next = [0i64; PARTITIONS as usize];
    for e in j.events(k.id, 0, u64::MAX) {
        let (p, o) = kafka_parts(e.unwrap().event.position.as_ref().unwrap());
        assert_eq!(
            o, next[p as usize],
            "round {round}: kafka partition {p} offsets"
        );
        next[p as usize] += 1;
    }
    for c in j.checkpoints(k.id).unwrap() {
        let (p, o) = kafka_parts(&c.position);
        assert_eq!(
            o,
            next[p as usize] - 1,
            "round {round}: kafka checkpoint of partition {p}"
        );
    }
}
