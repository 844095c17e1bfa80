//! Net-effect restore against a real PostgreSQL: restoring a journal by the net
//! effect of its history gives exactly what replaying every change gives, and what
//! the source held (pgbench load, unchanged TOAST values on rows from the image and
//! from the history, keys that move, deletes and re-inserts, composite keys, keyless
//! tables with identical rows).

mod common;

use common::pgcapture::Capture;
use common::Postgres;
use tidemark::connectors::postgres::digest::digest_url;
use tidemark::connectors::postgres::restore::{restore, PgRestoreOptions};
use tidemark::restore::driver::NoProgress;
use tidemark::time::TimeSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_effect_equals_replaying_every_change() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.pgbench(&["-i", "-q", "-s", "1", "app"]);
    pg.psql(
        "app",
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs SELECT g, repeat(md5(g::text), 1000), 0 FROM generate_series(1, 20) g;
         CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (a, b));
         INSERT INTO pairs SELECT g % 5, 'k' || g, g FROM generate_series(1, 50) g;
         CREATE TABLE bag (x int, y text);
         INSERT INTO bag VALUES (1, 'same'), (1, 'same')",
    );
    let cap = Capture::start(&pg.url("app")).await;
    tokio::task::block_in_place(|| pg.pgbench(&["-T", "2", "-c", "2", "-n", "app"]));
    pg.psql(
        "app",
        "UPDATE docs SET n = n + 1 WHERE id <= 10;
         INSERT INTO docs SELECT g, repeat(md5(g::text), 1000), 0 FROM generate_series(21, 25) g;
         UPDATE docs SET n = 7 WHERE id > 20;
         UPDATE docs SET id = id + 100 WHERE id IN (1, 21);
         UPDATE docs SET n = 9 WHERE id = 101;
         DELETE FROM docs WHERE id = 2; INSERT INTO docs VALUES (2, 'short now', 2);
         DELETE FROM docs WHERE id = 3;
         UPDATE pairs SET v = -v WHERE a = 1; DELETE FROM pairs WHERE a = 2;
         UPDATE pairs SET b = b || '!' WHERE a = 3;
         INSERT INTO bag VALUES (1, 'same'), (2, 'other'); DELETE FROM bag WHERE x = 2",
    );
    tokio::task::block_in_place(|| pg.pgbench(&["-T", "1", "-c", "2", "-n", "app"]));
    let end = cap.moment().await;
    let expected = digest_url(&pg.url("app")).await.unwrap();
    let journal = cap.stop().await;
    let plan = tidemark::restore::plan(&journal, "app", TimeSpec::At(end)).unwrap();
    assert!(plan.events > 1000, "a history to collapse: {}", plan.events);
    let mut digests = Vec::new();
    for (db, every_change) in [("by_net_effect", false), ("by_every_change", true)] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        let conn = tidemark::connectors::postgres::conn::ConnInfo::parse(&pg.url(db)).unwrap();
        let opts = PgRestoreOptions {
            every_change,
            ..Default::default()
        };
        let s = restore(&journal, &plan, &conn, &opts, false, &mut NoProgress)
            .await
            .unwrap();
        if !every_change {
            assert!(s.net_rows > 0, "nothing was loaded as net effect");
        }
        digests.push(digest_url(&pg.url(db)).await.unwrap());
    }
    assert_eq!(digests[0], digests[1], "net effect and every change differ");
    assert_eq!(digests[0], expected, "the restore differs from the source");
    let q = "SELECT string_agg(id || ':' || n || ':' || length(body), ',' ORDER BY id) FROM docs";
    assert_eq!(pg.psql("by_net_effect", q), pg.psql("app", q));
    assert_eq!(pg.psql("by_net_effect", "SELECT count(*) FROM bag"), "3");
}

/// Restores `plan` into a new database `db` by net effect (or every change), with
/// `net_memory` bytes of net state in memory; returns the summary and the digest.
async fn restore_by(
    pg: &Postgres,
    journal: &tidemark::journal::Journal,
    plan: &tidemark::restore::RestorePlan,
    db: &str,
    every_change: bool,
    net_memory: usize,
) -> (
    tidemark::connectors::postgres::restore::PgRestoreSummary,
    tidemark::digest::Digest,
) {
    pg.psql("postgres", &format!("CREATE DATABASE {db}"));
    let conn = tidemark::connectors::postgres::conn::ConnInfo::parse(&pg.url(db)).unwrap();
    let opts = PgRestoreOptions {
        every_change,
        net_memory,
        ..Default::default()
    };
    let s = restore(journal, plan, &conn, &opts, false, &mut NoProgress)
        .await
        .unwrap_or_else(|e| panic!("restore into {db}: {e}"));
    (s, digest_url(&pg.url(db)).await.unwrap())
}

/// A history with every shape the net effect must get right, restored by both
/// methods to several moments (one of them with the net state forced to spill to
/// disk): every digest equals the source's at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_methods_agree_at_every_moment_of_a_varied_history() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL, note text);
         INSERT INTO acct SELECT g, 0, 'n' || g FROM generate_series(1, 200) g;
         CREATE TABLE churn (k text PRIMARY KEY, v int);
         INSERT INTO churn VALUES ('a', 1), ('b', 2), ('tab\there', 3), ('back\\slash', 4);
         CREATE TABLE bag (x int, y text);
         ALTER TABLE bag REPLICA IDENTITY FULL;
         INSERT INTO bag VALUES (1, 'same'), (1, 'same'), (2, 'other');
         CREATE TABLE parent (id int PRIMARY KEY, name text);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id), v int);
         INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 20) g;
         INSERT INTO child SELECT g, 1 + g % 20, g FROM generate_series(1, 60) g;",
    );
    let cap = Capture::start(&pg.url("app")).await;
    let mut moments = Vec::new();
    // Each statement is a transaction of its own (psql -c makes one of several).
    // 1: the same keys updated many times, deletes and re-inserts of one key,
    // duplicates in a keyless table, parents and children replaced.
    for sql in [
        "DO $$ BEGIN FOR i IN 1..30 LOOP UPDATE acct SET v = v + i WHERE id % 10 = i % 10; END LOOP; END $$",
        "DELETE FROM churn WHERE k = 'a'",
        "INSERT INTO churn VALUES ('a', 10)",
        "DELETE FROM churn WHERE k = 'a'",
        "INSERT INTO churn VALUES ('a', 11)",
        "UPDATE churn SET v = v * 100 WHERE k IN ('tab\there', 'back\\slash')",
        "UPDATE churn SET k = 'moved' WHERE k = 'b'",
        "INSERT INTO bag VALUES (1, 'same'), (3, 'new'), (3, 'new')",
        "DELETE FROM child WHERE parent_id = 5",
        "DELETE FROM parent WHERE id = 5",
        "INSERT INTO parent VALUES (5, 'p5 again'), (21, 'p21')",
        "INSERT INTO child VALUES (100, 5, 1), (101, 21, 2)",
        "UPDATE child SET parent_id = 21 WHERE id BETWEEN 1 AND 10",
        // One transaction changing one key many times.
        "UPDATE acct SET v = v + 1 WHERE id = 1; UPDATE acct SET v = v + 1 WHERE id = 1;
         DELETE FROM acct WHERE id = 2; INSERT INTO acct VALUES (2, 2, 'two');
         UPDATE acct SET id = 2000 WHERE id = 3",
    ] {
        pg.psql("app", sql);
    }
    moments.push((
        cap.moment().await,
        digest_url(&pg.url("app")).await.unwrap(),
    ));
    // 2: DDL mid-range, then changes in the new shape; a keyless delete of one of
    // identical rows.
    for sql in [
        "UPDATE acct SET v = -1 WHERE id <= 5",
        "ALTER TABLE acct ADD COLUMN extra text DEFAULT 'd'",
        "UPDATE acct SET extra = 'x' || id, v = v + 1 WHERE id % 3 = 0",
        "INSERT INTO acct VALUES (1000, 1, 'late', 'e')",
        "DELETE FROM bag WHERE ctid = (SELECT ctid FROM bag WHERE x = 1 LIMIT 1)",
        "INSERT INTO bag VALUES (4, 'after delete')",
        "UPDATE churn SET v = v + 1",
    ] {
        pg.psql("app", sql);
    }
    moments.push((
        cap.moment().await,
        digest_url(&pg.url("app")).await.unwrap(),
    ));
    // 3: truncates (one with rows after it), more churn.
    for sql in [
        "UPDATE acct SET v = v + 1000 WHERE id > 150",
        "TRUNCATE churn",
        "INSERT INTO churn VALUES ('a', 1), ('z', 26)",
        "UPDATE churn SET v = 2 WHERE k = 'a'",
        "TRUNCATE bag",
        "INSERT INTO bag VALUES (9, 'nine'), (9, 'nine')",
        "DELETE FROM acct WHERE id BETWEEN 100 AND 120",
        "INSERT INTO acct (id, v) VALUES (110, 5)",
    ] {
        pg.psql("app", sql);
    }
    moments.push((
        cap.moment().await,
        digest_url(&pg.url("app")).await.unwrap(),
    ));
    let journal = cap.stop().await;
    for (i, (at, expected)) in moments.iter().enumerate() {
        let plan = tidemark::restore::plan(&journal, "app", TimeSpec::At(*at)).unwrap();
        let big = tidemark::connectors::postgres::net_store::DEFAULT_MEMORY_LIMIT;
        let (net, by_net) = restore_by(&pg, &journal, &plan, &format!("net_{i}"), false, big).await;
        let (_, by_every) =
            restore_by(&pg, &journal, &plan, &format!("every_{i}"), true, big).await;
        assert!(net.net_rows > 0, "moment {i}: nothing loaded as net effect");
        assert_eq!(
            by_net, by_every,
            "moment {i}: net effect and every change differ"
        );
        assert_eq!(
            &by_net, expected,
            "moment {i}: the restore differs from the source"
        );
        // A tiny memory limit: the state spills to disk, the result is the same.
        let (spilled, by_spill) =
            restore_by(&pg, &journal, &plan, &format!("spill_{i}"), false, 512).await;
        assert!(
            spilled.notes.iter().any(|n| n.contains("spilled")),
            "moment {i}: no spill with a 512-byte limit: {:?}",
            spilled.notes
        );
        assert_eq!(
            &by_spill, expected,
            "moment {i}: the spilled restore differs"
        );
    }
    // The foreign keys hold in the restored database (post-data validated them).
    assert_eq!(
        pg.psql("net_2", "SELECT count(*) FROM child c LEFT JOIN parent p ON p.id = c.parent_id WHERE p.id IS NULL"),
        "0"
    );
}

/// pgbench history restored with the net state forced to disk gives the digest of
/// the restore that kept it in memory, and of the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_state_spilled_to_disk_gives_the_same_digest() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.pgbench(&["-i", "-q", "-s", "1", "app"]);
    let cap = Capture::start(&pg.url("app")).await;
    tokio::task::block_in_place(|| pg.pgbench(&["-T", "2", "-c", "2", "-n", "app"]));
    let end = cap.moment().await;
    let expected = digest_url(&pg.url("app")).await.unwrap();
    let journal = cap.stop().await;
    let plan = tidemark::restore::plan(&journal, "app", TimeSpec::At(end)).unwrap();
    let big = tidemark::connectors::postgres::net_store::DEFAULT_MEMORY_LIMIT;
    let (in_memory, d1) = restore_by(&pg, &journal, &plan, "in_memory", false, big).await;
    let (on_disk, d2) = restore_by(&pg, &journal, &plan, "on_disk", false, 4096).await;
    assert!(!in_memory.notes.iter().any(|n| n.contains("spilled")));
    assert!(
        on_disk.notes.iter().any(|n| n.contains("spilled")),
        "{:?}",
        on_disk.notes
    );
    assert_eq!(in_memory.net_rows, on_disk.net_rows);
    assert_eq!(d1, expected);
    assert_eq!(d2, expected);
}
