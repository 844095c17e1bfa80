//! Redis base images on a schedule: a second replica link takes each image while
//! the main link goes on streaming; each is placed at its `+FULLRESYNC` offset of
//! the same replication history. Under a write load, with a short retention
//! window: every moment inside the window restores equal to the source, moments
//! before it are refused naming the floor, and what the journal holds levels off.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::bin_client::Client;
use common::tidemark::Tidemark;
use common::{redis70, Redis};
use tidemark::connectors::redis::digest::digest_url;
use tidemark::journal::Journal;
use tidemark::position::PositionKind;

#[test]
fn scheduled_images_from_a_second_link_restore_exactly_under_load() {
    let Some(bin) = redis70() else { return };
    let primary = Redis::start_bin(&bin, &["--repl-ping-replica-period", "1"]);
    let mut tm = Tidemark::new(&primary.url());
    let cfg = std::fs::read_to_string(&tm.config).unwrap();
    std::fs::write(
        &tm.config,
        format!("{cfg}image_interval = \"2s\"\nimage_after_bytes = \"off\"\n"),
    )
    .unwrap();
    tm.start();
    tm.wait_caught_up(&mut primary.client());
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, pause, port) = (Arc::clone(&stop), Arc::clone(&pause), primary.port);
        std::thread::spawn(move || {
            let mut c = Client::connect(port).expect("connect");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if pause.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                n += 1;
                c.cmd(&["INCR", "counter"]);
                c.cmd(&["SET", &format!("k{}", n % 500), &n.to_string()]);
                c.cmd(&["HSET", "h", &format!("f{}", n % 50), &n.to_string()]);
                if n.is_multiple_of(7) {
                    c.cmd(&["DEL", &format!("k{}", (n / 7) % 500)]);
                }
            }
        })
    };
    // Rounds of load; after each, with writes paused, a moment and the digest at it.
    let mut moments = Vec::new();
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(1500));
        pause.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        let at = tm.wait_caught_up(&mut primary.client());
        moments.push((at, digest_url(&primary.url()).expect("digest")));
        pause.store(false, Ordering::Relaxed);
        let out = tm.cli(&["status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status");
        let s = &doc["sources"][0];
        println!(
            "round {round}: {} events, {} bytes held, {} images, newest {}",
            s["events"], s["bytes_held"], s["base_images"], s["newest_image"]
        );
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    tm.wait_caught_up(&mut primary.client());
    tm.stop();
    // Images of one replication history, taken while capture went on.
    {
        let j = Journal::open_read_only(&tm.journal).unwrap();
        let src = j.source("cache").unwrap();
        let images = j.images(src.id).unwrap();
        let replids: std::collections::BTreeSet<String> = images
            .iter()
            .filter_map(|m| match m.position.as_ref()?.kind.as_ref()? {
                PositionKind::Redis(p) => Some(p.replid.clone()),
                _ => None,
            })
            .collect();
        assert!(images.len() >= 4, "scheduled images: {images:?}");
        assert_eq!(replids.len(), 1, "one history: {images:?}");
        assert!(images
            .windows(2)
            .all(|w| w[0].after_seq < w[1].after_seq && w[0].time_us <= w[1].time_us));
    }
    // Retention through the API (config allows no window under 1m), with its
    // horizon half a second after the third moment: whatever the machine's speed,
    // the last three moments are inside the window.
    let j = Journal::open(&tm.journal, Default::default()).unwrap();
    let horizon = tidemark::time::Timestamp::from_micros(moments[2].0.as_micros() + 500_000);
    j.prune(horizon, Duration::ZERO, false).unwrap();
    let info = j.source("cache").unwrap();
    let floor = info.stats.floor_us.expect("a floor after prune");
    assert!(
        info.stats.event_count < info.stats.last_seq,
        "prune dropped nothing"
    );
    drop(j);
    let mut restored = 0;
    for (i, (at, expected)) in moments.iter().enumerate() {
        let target = Redis::start_bin(&bin, &[]);
        let out = tm.cli(&[
            "restore",
            "--source",
            "cache",
            "--at",
            &at.to_rfc3339(),
            "--target",
            &target.url(),
        ]);
        if at.as_micros() < floor {
            assert!(
                !out.status.success(),
                "moment {i} before the floor restored"
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("retention"), "moment {i}: {err}");
            continue;
        }
        assert!(
            out.status.success(),
            "moment {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            &digest_url(&target.url()).unwrap(),
            expected,
            "moment {i} at {at}"
        );
        restored += 1;
    }
    assert!(restored >= 3, "moments inside the window: {restored}");
}
