//! A byte flipped in a journal file on disk is caught on read, never returned as data.

use std::path::{Path, PathBuf};

use tidemark::config::{Compression, SourceKind};
use tidemark::event::{ChangeEvent, Payload, RedisCommand};
use tidemark::journal::{Journal, JournalOptions, Progress};
use tidemark::position::Position;

const NEEDLE: &[u8] = b"NEEDLE-0123456789-NEEDLE";

fn table_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect()
}

#[test]
fn flipped_byte_in_a_table_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let opts = JournalOptions {
        compression: Compression::None,
        ..Default::default()
    };
    {
        let j = Journal::open(dir.path(), opts).unwrap();
        let src = j.register_source("cache", SourceKind::Redis).unwrap();
        let events: Vec<ChangeEvent> = (1..=100u64)
            .map(|i| ChangeEvent {
                position: Some(Position::redis("r", i)),
                capture_time_us: i as i64,
                payload: Some(Payload::Redis(RedisCommand {
                    db: 0,
                    args: vec![b"SET".to_vec(), NEEDLE.to_vec()],
                })),
                ..Default::default()
            })
            .collect();
        j.append(src, &events, &Progress::default()).unwrap();
        j.flush().unwrap(); // into table files, out of the write-ahead log
        assert_eq!(j.verify().unwrap(), 100);
    }
    // Flip one byte inside the 50th copy of the payload.
    let mut flipped = false;
    for f in table_files(dir.path()) {
        let mut bytes = std::fs::read(&f).unwrap();
        let hits: Vec<usize> = bytes
            .windows(NEEDLE.len())
            .enumerate()
            .filter(|(_, w)| *w == NEEDLE)
            .map(|(i, _)| i)
            .collect();
        if hits.len() == 100 {
            bytes[hits[49] + 7] ^= 0x01;
            std::fs::write(&f, bytes).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "the events' table file was not found");

    let j = Journal::open_read_only(dir.path()).unwrap();
    let src = j.source("cache").unwrap().id;
    let results: Vec<_> = j.events(src, 0, u64::MAX).collect();
    let errors: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    assert!(!errors.is_empty(), "the flipped byte went unnoticed");
    assert!(errors[0].contains("damaged"), "{}", errors[0]);
    for r in results.iter().flatten() {
        let Some(Payload::Redis(c)) = &r.event.payload else {
            panic!()
        };
        assert_eq!(c.args[1], NEEDLE, "a corrupted value was returned as data");
    }
    let e = j.verify().unwrap_err().to_string();
    assert!(e.contains("damaged"), "{e}");
}
