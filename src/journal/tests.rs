use std::sync::Arc;

use super::*;
use crate::event::{KafkaRecord, Payload, RedisCommand};
use crate::journal::ImageBound;
use crate::time::Timestamp;

fn open(dir: &Path) -> Journal {
    Journal::open(dir, JournalOptions::default()).unwrap()
}

fn redis_event(offset: u64, time_us: i64, arg: &str) -> ChangeEvent {
    ChangeEvent {
        position: Some(Position::redis("r1", offset)),
        commit_time_us: Some(time_us),
        capture_time_us: time_us + 5,
        payload: Some(Payload::Redis(RedisCommand {
            db: 0,
            args: vec![b"SET".to_vec(), arg.as_bytes().to_vec()],
        })),
        ..Default::default()
    }
}

fn kafka_event(partition: i32, offset: i64, time_us: i64) -> ChangeEvent {
    ChangeEvent {
        position: Some(Position::kafka("t", partition, offset)),
        commit_time_us: Some(time_us),
        payload: Some(Payload::Kafka(KafkaRecord::default())),
        ..Default::default()
    }
}

#[test]
fn append_assigns_contiguous_sequences_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let a = j.register_source("a", SourceKind::Redis).unwrap();
    let b = j.register_source("b", SourceKind::Kafka).unwrap();
    let r1 = j
        .append(
            a,
            &[redis_event(10, 100, "x"), redis_event(20, 200, "y")],
            &Progress::default(),
        )
        .unwrap();
    let r2 = j
        .append(b, &[kafka_event(0, 0, 150)], &Progress::default())
        .unwrap();
    let r3 = j
        .append(a, &[redis_event(30, 300, "z")], &Progress::default())
        .unwrap();
    assert_eq!(
        (r1.first_seq, r1.count, r2.first_seq, r3.first_seq),
        (1, 2, 3, 4)
    );
    let got: Vec<_> = j.events(a, 1, u64::MAX).map(|e| e.unwrap()).collect();
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 4]);
    assert_eq!(got[0].event.source, "a");
    assert_eq!(
        got[2].event,
        ChangeEvent {
            source: "a".into(),
            ..redis_event(30, 300, "z")
        }
    );
    let global: Vec<_> = j.log_from(2).map(|e| e.unwrap().seq).collect();
    assert_eq!(global, [2, 3, 4]);
    assert_eq!(j.verify().unwrap(), 4);
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = open(dir.path());
        let a = j.register_source("a", SourceKind::Redis).unwrap();
        let p = Progress {
            coverage: Some(Timestamp::from_micros(250)),
            ..Default::default()
        };
        j.append(
            a,
            &[redis_event(10, 100, "x"), redis_event(20, 200, "y")],
            &p,
        )
        .unwrap();
    }
    let j = open(dir.path());
    let a = j.register_source("a", SourceKind::Redis).unwrap();
    assert_eq!(j.next_seq(), 3);
    let info = j.source("a").unwrap();
    assert_eq!(info.stats.event_count, 2);
    assert_eq!(info.stats.coverage_us, Some(250));
    assert_eq!(
        j.checkpoints(a).unwrap()[0].position,
        Position::redis("r1", 20)
    );
    let e = j
        .register_source("a", SourceKind::Kafka)
        .unwrap_err()
        .to_string();
    assert!(e.contains("journaled as kind redis"), "{e}");
}

#[test]
fn invalid_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let a = j.register_source("a", SourceKind::Redis).unwrap();
    let mut bad = redis_event(20, 200, "y");
    bad.position = Some(Position::postgres(5));
    let e = j
        .append(a, &[redis_event(10, 100, "x"), bad], &Progress::default())
        .unwrap_err();
    assert!(e.to_string().contains("not a redis position"), "{e}");
    let mut none = redis_event(20, 200, "y");
    none.position = None;
    assert!(j.append(a, &[none], &Progress::default()).is_err());
    assert_eq!(j.next_seq(), 1);
    assert_eq!(j.events(a, 0, u64::MAX).count(), 0);
    assert!(j.checkpoints(a).unwrap().is_empty());
    // The sequence is not consumed by failed appends.
    assert_eq!(
        j.append(a, &[redis_event(10, 100, "x")], &Progress::default())
            .unwrap()
            .first_seq,
        1
    );
}

#[test]
fn checkpoint_per_stream_defaults_to_last_event_and_can_be_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let k = j.register_source("k", SourceKind::Kafka).unwrap();
    j.append(
        k,
        &[
            kafka_event(0, 5, 1),
            kafka_event(1, 7, 2),
            kafka_event(0, 6, 3),
        ],
        &Progress::default(),
    )
    .unwrap();
    let mut cps: Vec<_> = j
        .checkpoints(k)
        .unwrap()
        .into_iter()
        .map(|c| c.position.to_string())
        .collect();
    cps.sort();
    assert_eq!(cps, ["t/0@6", "t/1@7"]);
    let p = Progress {
        checkpoint: vec![Position::kafka("t", 1, 9)],
        coverage: Some(Timestamp::from_micros(10)),
    };
    j.append(k, &[], &p).unwrap();
    let cps: Vec<_> = j
        .checkpoints(k)
        .unwrap()
        .into_iter()
        .map(|c| c.position.to_string())
        .collect();
    assert!(cps.contains(&"t/1@9".to_string()), "{cps:?}");
    assert_eq!(
        j.source("k").unwrap().stats.coverage_us,
        Some(10),
        "heartbeat advances coverage"
    );
    // Coverage never moves back.
    j.append(
        k,
        &[],
        &Progress {
            coverage: Some(Timestamp::from_micros(3)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(j.source("k").unwrap().stats.coverage_us, Some(10));
}

#[test]
fn time_index_finds_the_cut_with_clock_steps_back() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let a = j.register_source("a", SourceKind::Redis).unwrap();
    let b = j.register_source("b", SourceKind::Redis).unwrap();
    // Times 100, 100, 200, 150 (clock step back), 300; another source interleaves.
    j.append(
        a,
        &[redis_event(1, 100, "1"), redis_event(2, 100, "2")],
        &Progress::default(),
    )
    .unwrap(); // 1,2
    j.append(b, &[redis_event(1, 120, "b")], &Progress::default())
        .unwrap(); // 3
    j.append(
        a,
        &[redis_event(3, 200, "3"), redis_event(4, 150, "4")],
        &Progress::default(),
    )
    .unwrap(); // 4,5
    j.append(a, &[redis_event(5, 300, "5")], &Progress::default())
        .unwrap(); // 6
    let at = |t| j.seq_at_time(a, Timestamp::from_micros(t)).unwrap();
    assert_eq!(at(99), None);
    assert_eq!(at(100), Some(2));
    assert_eq!(at(149), Some(2));
    assert_eq!(
        at(150),
        Some(2),
        "event 5 (time 150) comes after 200 on the axis"
    );
    assert_eq!(at(200), Some(5));
    assert_eq!(at(299), Some(5));
    assert_eq!(at(300), Some(6));
    assert_eq!(at(i64::MAX), Some(6));
    assert_eq!(
        j.seq_at_time(b, Timestamp::from_micros(1000)).unwrap(),
        Some(3)
    );
}

#[test]
fn position_index_finds_at_or_before_within_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let k = j.register_source("k", SourceKind::Kafka).unwrap();
    j.append(
        k,
        &[
            kafka_event(0, 10, 1),
            kafka_event(1, 10, 1),
            kafka_event(0, 20, 2),
        ],
        &Progress::default(),
    )
    .unwrap();
    let at = |p, o| j.seq_at_position(k, &Position::kafka("t", p, o)).unwrap();
    assert_eq!(at(0, 9), None);
    assert_eq!(at(0, 10), Some(1));
    assert_eq!(at(0, 15), Some(1));
    assert_eq!(at(0, 25), Some(3));
    assert_eq!(at(1, 100), Some(2));
    assert_eq!(at(2, 100), None, "other streams never answer");
    assert_eq!(
        j.seq_at_position(k, &Position::kafka("u", 0, 100)).unwrap(),
        None
    );
}

#[test]
fn base_images_are_found_by_time_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(open(dir.path()));
    let a = j.register_source("a", SourceKind::Redis).unwrap();
    let mut w = j
        .begin_image(
            a,
            Position::redis("r1", 0),
            Timestamp::from_micros(50),
            "test",
        )
        .unwrap();
    w.put_chunk(b"one").unwrap();
    w.put_chunk(b"two").unwrap();
    let first = w.finish(&Progress::default()).unwrap();
    assert_eq!((first.after_seq, first.chunks, first.bytes), (0, 2, 6));
    j.append(
        a,
        &[redis_event(10, 100, "x"), redis_event(20, 200, "y")],
        &Progress::default(),
    )
    .unwrap();
    let mut w = j
        .begin_image(
            a,
            Position::redis("r1", 20),
            Timestamp::from_micros(200),
            "test",
        )
        .unwrap();
    w.put_chunk(&vec![7u8; 10 << 20]).unwrap(); // over the buffer threshold
    w.put_chunk(b"tail").unwrap();
    let second = w.finish(&Progress::default()).unwrap();
    assert_eq!(second.after_seq, 2);
    let find = |b| j.image_at_or_before(a, b).unwrap().map(|m| m.id);
    assert_eq!(find(ImageBound::Time(Timestamp::from_micros(49))), None);
    assert_eq!(
        find(ImageBound::Time(Timestamp::from_micros(199))),
        Some(first.id)
    );
    assert_eq!(
        find(ImageBound::Time(Timestamp::from_micros(200))),
        Some(second.id)
    );
    assert_eq!(find(ImageBound::Seq(1)), Some(first.id));
    assert_eq!(find(ImageBound::Seq(2)), Some(second.id));
    let chunks: Vec<_> = j.image_chunks(&second).map(|c| c.unwrap()).collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1], b"tail");
    assert_eq!(j.source("a").unwrap().stats.images, 2);
    assert_eq!(
        j.checkpoints(a).unwrap()[0].position,
        Position::redis("r1", 20)
    );
}

#[test]
fn unfinished_image_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Arc::new(open(dir.path()));
        let a = j.register_source("a", SourceKind::Redis).unwrap();
        // Dropping an unfinished writer discards its chunks at once.
        let mut w = j
            .begin_image(
                a,
                Position::redis("r1", 0),
                Timestamp::from_micros(50),
                "test",
            )
            .unwrap();
        w.put_chunk(&vec![1u8; 9 << 20]).unwrap(); // past the buffer: written to the store
        drop(w);
        // A process that dies mid-image leaves chunks without metadata behind.
        j.db.put_cf(
            j.cf(keys::CF_CHUNKS),
            keys::chunk(77, 0),
            record::seal(b"orphan"),
        )
        .unwrap();
    }
    let j = Arc::new(open(dir.path()));
    let a = j.register_source("a", SourceKind::Redis).unwrap();
    assert!(j.images(a).unwrap().is_empty());
    let mut it = j.db.raw_iterator_cf(j.cf(keys::CF_CHUNKS));
    it.seek_to_first();
    assert!(!it.valid(), "orphan chunks must be removed at open");
    drop(it);
    // A new image does not reuse the orphan's id.
    let w = j
        .begin_image(
            a,
            Position::redis("r1", 0),
            Timestamp::from_micros(60),
            "test",
        )
        .unwrap();
    assert_eq!(w.finish(&Progress::default()).unwrap().id, 78);
}

#[test]
fn checksum_mismatch_is_reported_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let a = j.register_source("a", SourceKind::Redis).unwrap();
    j.append(a, &[redis_event(10, 100, "x")], &Progress::default())
        .unwrap();
    let cf = j.cf(keys::CF_EVENTS);
    let mut v = j.db.get_cf(cf, keys::event(a, 1)).unwrap().unwrap();
    let last = v.len() - 1;
    v[last] ^= 0x20;
    j.db.put_cf(cf, keys::event(a, 1), v).unwrap();
    let e = j.events(a, 1, 1).next().unwrap().unwrap_err().to_string();
    assert!(e.contains("events/a:1") && e.contains("checksum"), "{e}");
    assert!(j.verify().is_err());
}

#[test]
fn newer_format_is_refused_and_foreign_dirs_are_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .force_format_version_for_test(FORMAT_VERSION + 1)
        .unwrap();
    for e in [
        Journal::open(dir.path(), JournalOptions::default()).err(),
        Journal::open_read_only(dir.path()).err(),
    ] {
        let e = e.expect("must refuse").to_string();
        assert!(
            e.contains("format version 2") && e.contains("upgrade tidemark"),
            "{e}"
        );
    }
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    let e = Journal::open(foreign.path(), JournalOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a tidemark journal"), "{e}");
    assert_eq!(std::fs::read_dir(foreign.path()).unwrap().count(), 1);
}

#[test]
fn second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _j = open(dir.path());
    let e = Journal::open(dir.path(), JournalOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("in use by another tidemark process"), "{e}");
    // Readers are fine while a writer holds it.
    assert!(Journal::open_read_only(dir.path()).is_ok());
}

#[test]
fn retention_keeps_what_the_window_needs() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(open(dir.path()));
    let a = j.register_source("a", SourceKind::Redis).unwrap();
    let k = j.register_source("k", SourceKind::Kafka).unwrap();
    let sec = 1_000_000i64;
    let image = |t: i64, off: u64| {
        let mut w = j
            .begin_image(
                a,
                Position::redis("r1", off),
                Timestamp::from_micros(t * sec),
                "test",
            )
            .unwrap();
        w.put_chunk(format!("state@{t}").as_bytes()).unwrap();
        w.finish(&Progress::default()).unwrap()
    };
    let i0 = image(0, 0);
    j.append(
        a,
        &[redis_event(1, 10 * sec, "a"), redis_event(2, 20 * sec, "b")],
        &Progress::default(),
    )
    .unwrap();
    let i1 = image(30, 2);
    j.append(
        a,
        &[redis_event(3, 40 * sec, "c"), redis_event(4, 50 * sec, "d")],
        &Progress::default(),
    )
    .unwrap();
    let i2 = image(60, 4);
    j.append(a, &[redis_event(5, 70 * sec, "e")], &Progress::default())
        .unwrap();
    j.append(k, &[kafka_event(0, 0, sec)], &Progress::default())
        .unwrap();
    let now = Timestamp::from_micros(100 * sec);
    // Window 55s: horizon 45s. Newest image at or before it is i1 (30s).
    let window = std::time::Duration::from_secs(55);
    let dry = j.prune(now, window, true).unwrap();
    assert_eq!(dry[0].events_dropped, 2);
    assert_eq!(
        j.count_events(a, 0, u64::MAX).unwrap(),
        5,
        "dry run changes nothing"
    );
    let report = j.prune(now, window, false).unwrap();
    assert_eq!(
        report[0],
        PruneReport {
            source: "a".into(),
            kept_image: Some(i1.id),
            events_dropped: 2,
            images_dropped: 1
        }
    );
    assert_eq!(
        report[1].kept_image, None,
        "a source without images keeps everything"
    );
    let ids: Vec<_> = j.images(a).unwrap().iter().map(|m| m.id).collect();
    assert_eq!(ids, [i1.id, i2.id]);
    assert!(j.image_chunks(&i0).next().unwrap().is_err());
    let left: Vec<_> = j.events(a, 0, u64::MAX).map(|e| e.unwrap().seq).collect();
    assert_eq!(left, [3, 4, 5]);
    let info = j.source("a").unwrap();
    assert_eq!(
        (info.stats.event_count, info.stats.floor_us),
        (3, Some(30 * sec))
    );
    // Every moment inside the window still resolves: image + the events after it.
    for t in [45, 50, 59, 60, 99] {
        let ts = Timestamp::from_micros(t * sec);
        let img = j
            .image_at_or_before(a, ImageBound::Time(ts))
            .unwrap()
            .unwrap();
        let cut = j.seq_at_time(a, ts).unwrap().unwrap();
        assert!(cut >= img.after_seq, "t={t}");
        assert_eq!(
            j.count_events(a, img.after_seq + 1, cut).unwrap(),
            cut - img.after_seq,
            "t={t}"
        );
    }
    assert_eq!(
        j.seq_at_position(a, &Position::redis("r1", 2)).unwrap(),
        None,
        "pruned positions are gone"
    );
    assert_eq!(
        j.seq_at_position(a, &Position::redis("r1", 3)).unwrap(),
        Some(3)
    );
    assert_eq!(j.verify().unwrap(), 4);
    drop(j);
    let j = open(dir.path());
    assert_eq!(j.source("a").unwrap().stats.event_count, 3);
}

#[test]
fn concurrent_appends_of_many_sources_share_writes_and_stay_gapless() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    {
        let j = Journal::open(&path, JournalOptions::default()).unwrap();
        let ids: Vec<_> = (0..5)
            .map(|n| {
                j.register_source(&format!("s{n}"), SourceKind::Redis)
                    .unwrap()
            })
            .collect();
        std::thread::scope(|s| {
            for (n, src) in ids.iter().enumerate() {
                let j = &j;
                s.spawn(move || {
                    for b in 0..200u64 {
                        let events: Vec<ChangeEvent> = (0..10)
                            .map(|i| ChangeEvent {
                                position: Some(Position::redis(format!("r{n}"), b * 10 + i + 1)),
                                capture_time_us: (b * 10 + i) as i64,
                                ..Default::default()
                            })
                            .collect();
                        let a = j.append(*src, &events, &Progress::default()).unwrap();
                        assert_eq!(a.count, 10);
                    }
                });
            }
        });
        let (appends, writes) = j.group_commit_counts();
        assert_eq!(appends, 1000);
        assert!(writes <= appends);
        for src in &ids {
            let info = j.sources().into_iter().find(|s| s.id == *src).unwrap();
            assert_eq!(info.stats.event_count, 2000);
        }
        assert_eq!(j.next_seq(), 10_001);
        assert_eq!(j.verify().unwrap(), 10_000);
    }
    // Reopened: the same, every source's events in its own order.
    let j = Journal::open(&path, JournalOptions::default()).unwrap();
    assert_eq!(j.verify().unwrap(), 10_000);
    for n in 0..5 {
        let info = j.source(&format!("s{n}")).unwrap();
        let offsets: Vec<u64> = j
            .events(info.id, 1, u64::MAX)
            .map(|e| match e.unwrap().event.position.unwrap().kind.unwrap() {
                crate::position::PositionKind::Redis(p) => p.offset,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(offsets, (1..=2000).collect::<Vec<_>>());
    }
}
