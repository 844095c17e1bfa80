//! `tidemark verify` / `Journal::scrub`: a flipped byte in an event, in an index
//! entry and in a base image chunk is found, named, and tied to the restores it
//! breaks; an intact journal scrubs clean.

mod common;

use std::sync::Arc;

use tidemark::config::SourceKind;
use tidemark::event::{ChangeEvent, Payload, RedisCommand};
use tidemark::journal::{flip_byte_for_test, Journal, JournalOptions, Progress, TestRecord};
use tidemark::position::Position;
use tidemark::time::Timestamp;

/// A journal with 300 events of source `cache` in three batches, a base image
/// after the first batch (4 chunks), and a second source `other`.
fn journal(dir: &std::path::Path) -> Arc<Journal> {
    let j = Arc::new(Journal::open(&dir.join("journal"), JournalOptions::default()).unwrap());
    let src = j.register_source("cache", SourceKind::Redis).unwrap();
    let other = j.register_source("other", SourceKind::Redis).unwrap();
    let batch = |from: u64| -> Vec<ChangeEvent> {
        (from..from + 100)
            .map(|i| ChangeEvent {
                position: Some(Position::redis("r", i)),
                capture_time_us: 1_000_000 + i as i64 * 1000,
                payload: Some(Payload::Redis(RedisCommand {
                    db: 0,
                    args: vec![
                        b"SET".to_vec(),
                        format!("k{i}").into_bytes(),
                        vec![b'v'; 50],
                    ],
                })),
                ..Default::default()
            })
            .collect()
    };
    j.append(src, &batch(1), &Progress::default()).unwrap();
    let mut w = j
        .begin_image(
            src,
            Position::redis("r", 100),
            Timestamp::from_micros(1_100_000),
            "test",
        )
        .unwrap();
    for c in 0..4u8 {
        w.put_chunk(&[c; 1000]).unwrap();
    }
    w.finish(&Progress::default()).unwrap();
    j.append(src, &batch(101), &Progress::default()).unwrap();
    j.append(other, &batch(1), &Progress::default()).unwrap();
    j.append(src, &batch(201), &Progress::default()).unwrap();
    j
}

#[test]
fn an_intact_journal_scrubs_clean() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(dir.path());
    let r = j.scrub().unwrap();
    assert!(r.damage.is_empty(), "{:#?}", r.damage);
    assert_eq!(r.events, 400);
    assert_eq!((r.images, r.chunks), (1, 4));
    assert!(r.index_entries >= 4 + 4, "{r:?}");
}

#[test]
fn a_flipped_byte_in_an_event_is_found_with_the_moments_it_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(dir.path());
    let src = j.source("cache").unwrap().id;
    // Sequence 150 is the 50th event of the second batch of `cache`: after the image.
    flip_byte_for_test(&j, TestRecord::Event(src, 150), 30).unwrap();
    let r = j.scrub().unwrap();
    assert_eq!(r.damage.len(), 1, "{:#?}", r.damage);
    let d = &r.damage[0];
    assert_eq!(d.source.as_deref(), Some("cache"));
    assert!(
        d.record.contains("events/") && d.record.contains("150"),
        "{d:?}"
    );
    assert!(d.record.contains("checksum"), "{d:?}");
    assert!(d.affects.contains("every restore of `cache`"), "{d:?}");
    // The other source is untouched and not named.
    assert!(r
        .damage
        .iter()
        .all(|d| d.source.as_deref() != Some("other")));
}

#[test]
fn a_flipped_byte_in_a_position_index_entry_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(dir.path());
    let src = j.source("cache").unwrap().id;
    // The entry of the second batch; byte 7 is the low byte of its first sequence.
    flip_byte_for_test(&j, TestRecord::PositionEntry(src, 1), 7).unwrap();
    let r = j.scrub().unwrap();
    assert_eq!(r.damage.len(), 1, "{:#?}", r.damage);
    let d = &r.damage[0];
    assert_eq!(d.source.as_deref(), Some("cache"));
    assert!(d.record.starts_with("by_position/"), "{d:?}");
    assert!(d.affects.contains("source position"), "{d:?}");
}

#[test]
fn a_flipped_byte_in_an_image_chunk_is_found_and_the_cli_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let image = {
        let j = journal(dir.path());
        let src = j.source("cache").unwrap().id;
        let image = j.images(src).unwrap()[0].id;
        flip_byte_for_test(&j, TestRecord::Chunk(image, 2), 500).unwrap();
        let r = j.scrub().unwrap();
        assert_eq!(r.damage.len(), 1, "{:#?}", r.damage);
        let d = &r.damage[0];
        assert!(
            d.record.contains(&format!("image_chunks/{image}:2")),
            "{d:?}"
        );
        assert!(d.affects.contains(&format!("base image #{image}")), "{d:?}");
        image
    };
    let config = dir.path().join("tidemark.toml");
    std::fs::write(
        &config,
        format!(
            "[journal]\npath = {:?}\n\n[[source]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n",
            dir.path().join("journal")
        ),
    )
    .unwrap();
    let out = common::run::bin()
        .arg("-c")
        .arg(&config)
        .arg("verify")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "verify passed a damaged journal: {stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "DAMAGED [cache] journal record image_chunks/{image}:2"
        )),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("1 damaged record"), "{stderr}");
}
