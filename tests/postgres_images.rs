//! Base images on a schedule and retention against a real PostgreSQL under
//! pgbench load: images are taken while capture goes on (a temporary slot's
//! exported snapshot, placed among the stream's events), every moment inside the
//! retention window restores equal to the source, a restore from an image taken
//! under load equals one from the image before it replayed forward, moments before
//! the window are refused naming the floor, and what the journal holds levels off.

mod common;

use std::time::Duration;

use common::pgcapture::{try_restore, Capture};
use common::Postgres;
use tidemark::connectors::postgres::conn::ConnInfo;
use tidemark::connectors::postgres::digest::digest_url;
use tidemark::connectors::postgres::restore::restore;
use tidemark::restore::driver::NoProgress;
use tidemark::restore::RestoreError;
use tidemark::time::{TimeSpec, Timestamp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_images_under_load_restore_exactly_and_retention_bounds_the_journal() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.pgbench(&["-i", "-q", "-s", "1", "app"]);
    let cap = Capture::start_with(
        &pg.url("app"),
        "image_interval = \"3s\"\nimage_after_bytes = \"off\"",
    )
    .await;
    let window = Duration::from_secs(7);
    // Rounds of load; after each, a moment and the source's digest at it.
    let mut moments = Vec::new();
    let mut curve = Vec::new();
    for round in 0..6 {
        tokio::task::block_in_place(|| pg.pgbench(&["-T", "2", "-c", "2", "-n", "app"]));
        let at = cap.moment().await;
        moments.push((at, digest_url(&pg.url("app")).await.unwrap()));
        let j = &cap.journal;
        let id = j.source("app").unwrap().id;
        let pruned = j.prune(Timestamp::now(), window, false).unwrap();
        let s = j.source("app").unwrap().stats;
        curve.push((
            round,
            s.event_count,
            s.bytes,
            j.images(id).unwrap().len(),
            j.source_bytes(id).unwrap(),
        ));
        println!(
            "round {round}: {} events held of {} bytes appended in all, {} images, ~{} bytes on disk; pruned {:?}",
            s.event_count, s.bytes, j.images(id).unwrap().len(), j.source_bytes(id).unwrap(), pruned
        );
    }
    let journal = cap.stop().await;
    let info = journal.source("app").unwrap();
    let images = journal.images(info.id).unwrap();
    // Images were taken while the load ran (not only the first), and retention
    // dropped old ones: the journal holds a bounded number.
    assert!(
        images.iter().any(|m| m.id > 1 && m.sealed_us > 0),
        "no scheduled image was taken: {images:?}"
    );
    assert!(images.len() <= 5, "retention kept {} images", images.len());
    let floor = Timestamp::from_micros(info.stats.floor_us.expect("retention set a floor"));
    let total_events: u64 = info.stats.last_seq;
    assert!(
        info.stats.event_count < total_events / 2,
        "retention dropped too little: {} of {total_events} held",
        info.stats.event_count
    );
    // The events held level off: the last round holds no more than twice what the
    // third held (the load is the same each round).
    assert!(
        curve[5].1 <= curve[2].1 * 2 + 5000,
        "held events keep growing: {curve:?}"
    );
    // Every moment at or after the floor restores equal to the source.
    let mut restored = 0;
    for (i, (at, expected)) in moments.iter().enumerate() {
        let db = format!("r{i}");
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        if *at < floor {
            match tidemark::restore::plan(&journal, "app", TimeSpec::At(*at)) {
                Err(e @ RestoreError::BeforeFloor { floor: f, .. }) => {
                    assert_eq!(f, floor);
                    assert!(e.to_string().contains(&floor.to_string()), "{e}");
                }
                other => panic!("moment {at} before the floor {floor}: {other:?}"),
            }
            continue;
        }
        try_restore(&journal, *at, &pg.url(&db)).await.unwrap();
        assert_eq!(
            &digest_url(&pg.url(&db)).await.unwrap(),
            expected,
            "moment {i} at {at}"
        );
        restored += 1;
    }
    assert!(
        restored >= 2,
        "too few moments inside the window: {restored}"
    );
    // The newest moment from its own (scheduled) image, and from the image before
    // it with the longer replay: the same.
    let (at, expected) = moments.last().unwrap();
    let plan = tidemark::restore::plan(&journal, "app", TimeSpec::At(*at)).unwrap();
    let newest = plan.image.clone().unwrap();
    let older = images
        .iter()
        .rev()
        .find(|m| m.id < newest.id)
        .expect("an older image is kept");
    assert!(
        newest.sealed_us > 0 && newest.id > 1,
        "the restore starts from a scheduled image"
    );
    let mut from_older = plan.clone();
    from_older.image = Some(older.clone());
    from_older.first_seq = older.after_seq + 1;
    from_older.events = journal
        .count_events(info.id, from_older.first_seq, plan.last_seq)
        .unwrap();
    assert!(
        from_older.events > plan.events,
        "the older image replays more"
    );
    pg.psql("postgres", "CREATE DATABASE from_older");
    let conn = ConnInfo::parse(&pg.url("from_older")).unwrap();
    restore(
        &journal,
        &from_older,
        &conn,
        &Default::default(),
        false,
        &mut NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(&digest_url(&pg.url("from_older")).await.unwrap(), expected);
    println!("curve (round, events held, bytes appended, images, bytes on disk): {curve:?}");
}
