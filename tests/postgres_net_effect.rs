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
