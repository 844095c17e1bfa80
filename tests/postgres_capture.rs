//! PostgreSQL capture and point-in-time restore against a real PostgreSQL 15
//! (started by the harness): pgbench restored at several moments, every built-in type,
//! DDL mid-stream, a large transaction, TOAST, truncate, and a source restart.

mod common;

use common::pgcapture::{restore_into, try_restore, Capture};
use common::Postgres;
use tidemark::connectors::postgres::digest::digest_url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_restored_at_several_moments_equals_the_source_then() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.pgbench(&["-i", "-q", "-s", "1", "app"]);
    let cap = Capture::start(&pg.url("app")).await;
    let mut moments = Vec::new();
    for _ in 0..3 {
        tokio::task::block_in_place(|| pg.pgbench(&["-T", "2", "-c", "2", "-n", "app"]));
        let t = cap.moment().await;
        moments.push((t, digest_url(&pg.url("app")).await.unwrap()));
    }
    let journal = cap.stop().await;
    assert_ne!(moments[0].1, moments[2].1, "the workload changed nothing");
    for (i, (t, expected)) in moments.iter().enumerate() {
        let got = restore_into(&pg, &journal, *t, &format!("restored_{i}")).await;
        assert_eq!(
            &got, expected,
            "restore at moment {i} ({t}) differs from the source then"
        );
    }
    assert!(journal.verify().unwrap() > 1000);
}

const TYPES_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE everything (
  id serial PRIMARY KEY, n numeric, n2 numeric(30,10), f4 real, f8 double precision, i2 smallint, i8 bigint,
  b boolean, t text, vc varchar(20), ch char(5), by bytea, u uuid, j json, jb jsonb,
  ts timestamp, tstz timestamptz, d date, tm time, tmtz timetz, iv interval,
  arr int[], tarr text[], narr numeric[], m mood, p posint, r int4range, tsr tstzrange,
  ip inet, cidr_ cidr, mac macaddr, bits bit varying(16), x xml, pt point, money_ money
);
CREATE TABLE keyless (a int, b text);
"#;

const TYPES_ROW: &str = r#"INSERT INTO everything (n, n2, f4, f8, i2, i8, b, t, vc, ch, by, u, j, jb, ts, tstz, d, tm, tmtz, iv, arr, tarr, narr, m, p, r, tsr, ip, cidr_, mac, bits, x, pt, money_) VALUES
 (123456789012345678901234567890.123456789, 1.5, 3.14159, 'NaN', -32768, 9223372036854775807, true, 'it''s "quoted" \ back', 'short', 'ab', '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50, "x"]}', '{"b": {"c": null}}',
  '2026-11-30 10:00:00.123456', '2026-11-30 10:00:00.5+05:30', '2026-02-28', '23:59:59.999999', '12:00:00+02', '1 year 2 mons 3 days 04:05:06.7',
  '{1,NULL,3}', '{"a b","",NULL,"c,d"}', '{1.10,2.200}', 'happy', 7, '[1,10)', '[2026-01-01 00:00+00,2026-02-01 00:00+00)',
  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', B'1011', '<a>x</a>', '(1.5,-2)', 12.34),
 (NULL, NULL, '-Infinity', 1e-300, 0, 0, false, '', '', '', '', NULL, 'null', '[]', 'infinity', '-infinity', 'epoch', '00:00', '00:00+00', '0',
  '{}', '{}', '{}', 'sad', 1, 'empty', '(,)', '::1', '::/0', '00:00:00:00:00:00', B'', '', '(0,0)', 0)"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_ddl_toast_truncate_and_big_transactions_round_trip() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", TYPES_DDL);
    pg.psql("app", TYPES_ROW); // in the base image
    pg.psql(
        "app",
        "INSERT INTO keyless VALUES (1, 'dup'), (1, 'dup'), (2, NULL)",
    );
    let cap = Capture::start(&pg.url("app")).await;
    assert_eq!(
        pg.psql(
            "app",
            "SELECT relreplident FROM pg_class WHERE relname = 'keyless'"
        ),
        "f",
        "keyless tables get REPLICA IDENTITY FULL"
    );
    pg.psql("app", TYPES_ROW); // streamed
    pg.psql("app", "UPDATE everything SET t = t || '!', jb = jb || '{\"z\": 1}' WHERE id = 2; DELETE FROM everything WHERE id = 1");
    pg.psql("app", "UPDATE keyless SET b = 'one' WHERE a = 1 AND ctid = (SELECT min(ctid) FROM keyless WHERE a = 1); DELETE FROM keyless WHERE a = 2");
    // TOAST: a large value, then an update that leaves it unchanged.
    pg.psql("app", "CREATE TABLE docs (id int PRIMARY KEY, body text, n int); ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL");
    pg.psql(
        "app",
        "INSERT INTO docs SELECT g, repeat(md5(g::text), 4000), 0 FROM generate_series(1, 5) g",
    );
    pg.psql("app", "UPDATE docs SET n = n + 1");
    let before_ddl = cap.moment().await;
    let digest_before_ddl = digest_url(&pg.url("app")).await.unwrap();
    // DDL mid-stream, in transactions with data.
    pg.psql("app", "BEGIN; ALTER TABLE docs ADD COLUMN tag text DEFAULT 'new'; UPDATE docs SET tag = 'x' WHERE id = 1; COMMIT");
    pg.psql("app", "ALTER TABLE docs DROP COLUMN n");
    pg.psql("app", "ALTER TABLE docs ALTER COLUMN id TYPE bigint");
    pg.psql(
        "app",
        "CREATE TABLE later (k text PRIMARY KEY, v jsonb); INSERT INTO later VALUES ('a', '[1]')",
    );
    // A large transaction (several journal batches) and a truncate.
    pg.psql("app", "INSERT INTO later SELECT 'k' || g, jsonb_build_object('g', g) FROM generate_series(1, 5000) g");
    pg.psql(
        "app",
        "BEGIN; TRUNCATE keyless; INSERT INTO keyless VALUES (9, 'after truncate'); COMMIT",
    );
    let end = cap.moment().await;
    let digest_end = digest_url(&pg.url("app")).await.unwrap();
    let journal = cap.stop().await;
    assert_eq!(
        restore_into(&pg, &journal, before_ddl, "r_before").await,
        digest_before_ddl
    );
    assert_eq!(restore_into(&pg, &journal, end, "r_end").await, digest_end);
    // Spot-check exact values, beyond the digest.
    let q = "SELECT n::text, f8::text, t, by::text, tstz::text, tarr::text, r::text FROM everything ORDER BY id";
    assert_eq!(pg.psql("r_end", q), pg.psql("app", q));
    assert_eq!(pg.psql("r_end", "SELECT count(*) FROM later"), "5001");
    assert_eq!(pg.psql("r_end", "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'docs'"), "id:bigint,body:text,tag:text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_survives_a_source_restart() {
    let mut pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    let cap = Capture::start(&pg.url("app")).await;
    pg.psql(
        "app",
        "INSERT INTO t SELECT g, 'before' FROM generate_series(1, 100) g",
    );
    cap.moment().await;
    tokio::task::block_in_place(|| pg.restart()).unwrap();
    pg.psql(
        "app",
        "INSERT INTO t SELECT g, 'after' FROM generate_series(101, 200) g",
    );
    let end = cap.moment().await;
    let expected = digest_url(&pg.url("app")).await.unwrap();
    let journal = cap.stop().await;
    assert_eq!(restore_into(&pg, &journal, end, "restored").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_from_queries_restore_with_their_rows_once() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 50) g");
    let cap = Capture::start(&pg.url("app")).await;
    pg.psql("app", "CREATE SCHEMA \"odd schema\"");
    // Rows from random(): replaying the query would give other rows; the journal's count.
    pg.psql("app", "CREATE TABLE \"odd schema\".\"Copy 1\" AS SELECT id, v, random() AS r FROM t WHERE id <= 30");
    pg.psql(
        "app",
        "SELECT id, upper(v) AS v INTO t_into FROM t WHERE id > 40",
    );
    pg.psql(
        "app",
        "CREATE TABLE empty_copy AS SELECT * FROM t WITH NO DATA",
    );
    pg.psql("app", "BEGIN; INSERT INTO t VALUES (51, 'x'); CREATE TABLE t_tx AS TABLE t; UPDATE t_tx SET v = 'changed' WHERE id = 51; COMMIT");
    let end = cap.moment().await;
    let expected = digest_url(&pg.url("app")).await.unwrap();
    let journal = cap.stop().await;
    assert_eq!(restore_into(&pg, &journal, end, "restored").await, expected);
    assert_eq!(
        pg.psql("restored", "SELECT count(*) FROM \"odd schema\".\"Copy 1\""),
        "30"
    );
    assert_eq!(
        pg.psql("restored", "SELECT v FROM t_tx WHERE id = 51"),
        "changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_ddl_function_is_updated_without_journaling_it() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    // What an older version installed: a function that knows only CREATE TABLE.
    pg.psql("app", "CREATE SCHEMA tidemark; CREATE FUNCTION tidemark.capture_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM 1; END $$; CREATE EVENT TRIGGER tidemark_ddl ON ddl_command_end EXECUTE FUNCTION tidemark.capture_ddl()");
    let cap = Capture::start(&pg.url("app")).await;
    let src = pg.psql(
        "app",
        "SELECT prosrc FROM pg_proc WHERE proname = 'capture_ddl'",
    );
    assert!(src.contains("'CREATE TABLE AS'"), "not updated: {src}");
    // Keyless tables made from queries get REPLICA IDENTITY FULL: the application's
    // UPDATEs on them keep working.
    pg.psql("app", "CREATE TABLE made AS SELECT g AS id FROM generate_series(1, 5) g; UPDATE made SET id = id + 10");
    assert_eq!(
        pg.psql(
            "app",
            "SELECT relreplident FROM pg_class WHERE relname = 'made'"
        ),
        "f"
    );
    let end = cap.moment().await;
    let expected = digest_url(&pg.url("app")).await.unwrap();
    let journal = cap.stop().await;
    let id = journal.source("app").unwrap().id;
    let replaced = journal
        .events(id, 1, u64::MAX)
        .filter_map(|e| e.ok())
        .filter_map(|e| match e.event.payload {
            Some(tidemark::event::Payload::Postgres(c)) => Some(c.ddl),
            _ => None,
        })
        .any(|ddl| ddl.contains("capture_ddl"));
    assert!(!replaced, "the function's replacement was journaled as DDL");
    assert_eq!(restore_into(&pg, &journal, end, "restored").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latin1_database_restores_byte_exact() {
    restores_byte_exact_in("LATIN1", &["café", "naïve", "über"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_euc_jp_database_restores_byte_exact() {
    restores_byte_exact_in("EUC_JP", &["日本語", "ｶﾀｶﾅ", "漢字"]).await;
}

/// A database in `encoding` holding `words` (non-ASCII), captured, changed, and
/// restored into a database of the same encoding: same digest, same bytes.
async fn restores_byte_exact_in(encoding: &str, words: &[&str]) {
    let pg = Postgres::start();
    let create = |db: &str| {
        format!("CREATE DATABASE {db} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    };
    pg.psql("postgres", &create("app"));
    // The words travel as UTF-8 bytes and the server converts them into its own
    // encoding (the SQL text itself stays ASCII, whatever psql's client encoding).
    let w = |s: &str| {
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        format!("convert_from('\\x{hex}'::bytea, 'UTF8')")
    };
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, {}), (2, {})",
            w(words[0]),
            w(words[1])
        ),
    );
    let cap = Capture::start(&pg.url("app")).await;
    pg.psql(
        "app",
        &format!(
            "INSERT INTO t VALUES (3, {}); UPDATE t SET v = v || {} WHERE id = 1",
            w(words[2]),
            w(words[2])
        ),
    );
    let end = cap.moment().await;
    let expected = digest_url(&pg.url("app")).await.unwrap();
    let journal = cap.stop().await;
    pg.psql("postgres", &create("restored"));
    try_restore(&journal, end, &pg.url("restored"))
        .await
        .unwrap();
    assert_eq!(digest_url(&pg.url("restored")).await.unwrap(), expected);
    let bytes = format!(
        "SELECT string_agg(encode(convert_to(v, '{encoding}'), 'hex'), ',' ORDER BY id) FROM t"
    );
    assert_eq!(pg.psql("restored", &bytes), pg.psql("app", &bytes));
    // A target of another encoding is refused by name.
    pg.psql(
        "postgres",
        "CREATE DATABASE utf8_target ENCODING 'UTF8' TEMPLATE template0",
    );
    let e = try_restore(&journal, end, &pg.url("utf8_target"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(encoding) && e.contains("UTF8"), "{e}");
}
