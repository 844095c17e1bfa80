//! Parts of a source (Redis Cluster shards) in the journal: each part resumes from
//! its own checkpoints and images, coverage is the minimum over the parts, a
//! restore plan and retention work per part.

use std::sync::Arc;

use super::*;
use crate::config::SourceKind;
use crate::event::{Payload, RedisCommand};
use crate::journal::{ImageBound, JournalOptions};

fn cmd(replid: &str, offset: u64, time_us: i64) -> ChangeEvent {
    ChangeEvent {
        position: Some(Position::redis(replid, offset)),
        capture_time_us: time_us,
        payload: Some(Payload::Redis(RedisCommand {
            db: 0,
            args: vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()],
        })),
        ..Default::default()
    }
}

fn progress(t: i64) -> Progress {
    Progress {
        checkpoint: Vec::new(),
        coverage: Some(Timestamp::from_micros(t)),
    }
}

#[test]
fn parts_resume_alone_and_cover_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    {
        let j = Arc::new(Journal::open(&path, JournalOptions::default()).unwrap());
        let id = j.register_source("c", SourceKind::Redis).unwrap();
        let whole = SourceJournal::new(Arc::clone(&j), id, "c".into());
        let cov = Arc::new(PartCoverage::default());
        let a = whole.part("A", &cov).unwrap();
        let b = whole.part("B", &cov).unwrap();
        let w = a
            .begin_image(Position::redis("ra", 10), Timestamp::from_micros(100), "f")
            .unwrap();
        let ia = w.finish(&progress(100)).unwrap();
        assert_eq!(ia.part, "A");
        // B has reported nothing: the source is not covered yet.
        assert_eq!(j.source("c").unwrap().stats.coverage_us, None);
        let w = b
            .begin_image(Position::redis("rb", 5), Timestamp::from_micros(150), "f")
            .unwrap();
        w.finish(&progress(150)).unwrap();
        assert_eq!(j.source("c").unwrap().stats.coverage_us, Some(100));
        a.append_blocking(&[cmd("ra", 20, 300)], &progress(300))
            .unwrap();
        b.append_blocking(&[cmd("rb", 9, 200)], &progress(200))
            .unwrap();
        assert_eq!(j.source("c").unwrap().stats.coverage_us, Some(200));
        // Each part sees its own checkpoint and image only.
        let cps = |v: &SourceJournal| -> Vec<String> {
            v.checkpoints()
                .unwrap()
                .iter()
                .map(|c| c.position.to_string())
                .collect()
        };
        assert_eq!(cps(&a), ["ra:20"]);
        assert_eq!(cps(&b), ["rb:9"]);
        assert_eq!(whole.checkpoints().unwrap().len(), 2);
        assert_eq!(b.latest_image().unwrap().unwrap().part, "B");
        assert!(a
            .clone()
            .without_checkpoints()
            .checkpoints()
            .unwrap()
            .is_empty());
    }
    // After a reopen (a crash), the streams are still attributed to their parts.
    let j = Arc::new(Journal::open(&path, JournalOptions::default()).unwrap());
    let id = j.source("c").unwrap().id;
    let whole = SourceJournal::new(Arc::clone(&j), id, "c".into());
    let cov = Arc::new(PartCoverage::default());
    let a = whole.part("A", &cov).unwrap();
    assert_eq!(a.checkpoints().unwrap().len(), 1);
    assert_eq!(a.checkpoints().unwrap()[0].position.to_string(), "ra:20");
    // A full resync of B: a new image of B; A's newest image is still its old one.
    let b = whole.part("B", &cov).unwrap();
    let w = b
        .begin_image(Position::redis("rb2", 1), Timestamp::from_micros(400), "f")
        .unwrap();
    w.finish(&progress(400)).unwrap();
    let parts = j
        .part_images_at_or_before(id, ImageBound::Time(Timestamp::from_micros(1000)))
        .unwrap();
    let got: Vec<(String, i64)> = parts.iter().map(|m| (m.part.clone(), m.time_us)).collect();
    assert_eq!(got, [("A".to_string(), 100), ("B".to_string(), 400)]);
    let plan = crate::restore::plan(&j, "c", crate::time::TimeSpec::Latest).unwrap();
    assert_eq!(plan.parts.len(), 2);
    assert_eq!(plan.image.as_ref().map(|m| m.part.as_str()), Some("A"));
    assert_eq!(plan.first_seq, parts[0].after_seq + 1);
}

#[test]
fn retention_keeps_every_parts_window() {
    let dir = tempfile::tempdir().unwrap();
    let j = Arc::new(Journal::open(&dir.path().join("j"), JournalOptions::default()).unwrap());
    let id = j.register_source("c", SourceKind::Redis).unwrap();
    let whole = SourceJournal::new(Arc::clone(&j), id, "c".into());
    let cov = Arc::new(PartCoverage::default());
    let (a, b) = (
        whole.part("A", &cov).unwrap(),
        whole.part("B", &cov).unwrap(),
    );
    let sec = 1_000_000;
    let image = |v: &SourceJournal, r: &str, t: i64| {
        v.begin_image(Position::redis(r, 0), Timestamp::from_micros(t), "f")
            .unwrap()
            .finish(&progress(t))
            .unwrap()
    };
    image(&a, "a1", sec);
    image(&b, "b1", 2 * sec);
    a.append_blocking(&[cmd("a1", 1, 3 * sec)], &progress(3 * sec))
        .unwrap();
    b.append_blocking(&[cmd("b1", 1, 3 * sec)], &progress(3 * sec))
        .unwrap();
    image(&a, "a2", 4 * sec); // A re-imaged; B's old image still starts B
    a.append_blocking(&[cmd("a2", 1, 5 * sec)], &progress(5 * sec))
        .unwrap();
    b.append_blocking(&[cmd("b1", 2, 5 * sec)], &progress(5 * sec))
        .unwrap();
    // Window: keep from 4.5 s on. A keeps a2; B keeps b1 and every event after it.
    let now = Timestamp::from_micros(10 * sec);
    let r = j
        .prune(now, std::time::Duration::from_micros(5_500_000), false)
        .unwrap();
    assert_eq!(r[0].images_dropped, 1, "A's first image only");
    let images: Vec<String> = j
        .images(id)
        .unwrap()
        .iter()
        .map(|m| m.part.clone())
        .collect();
    assert_eq!(images, ["B", "A"]);
    // B's event after its image survives (A's older events may go).
    let left: Vec<String> = j
        .events(id, 1, u64::MAX)
        .map(|e| e.unwrap().event.position.unwrap().to_string())
        .collect();
    assert!(left.contains(&"b1:1".to_string()), "{left:?}");
    let plan = crate::restore::plan(&j, "c", crate::time::TimeSpec::Latest).unwrap();
    assert_eq!(plan.parts.len(), 2);
}
