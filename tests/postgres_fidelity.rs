//! PostgreSQL fidelity against a real PostgreSQL (started by the harness): bytes
//! that are not UTF-8, sequences at the moment restored, and a restore the target
//! refuses part-way.

mod common;

use std::time::{Duration, Instant};

use common::pgcapture::{restore_into, try_restore, Capture};
use common::run::{bin, digest, pg_source, Run};
use common::Postgres;
use tidemark::connectors::postgres::digest::digest_url;
use tidemark::event::{Payload, PgOp};
use tidemark::journal::Journal;

/// Every byte value a `SQL_ASCII` text can hold (all but NUL), as SQL.
fn high_bytes(from: u8) -> String {
    let hex: String = (from..=255u8).map(|b| format!("{b:02x}")).collect();
    format!("convert_from('\\x{hex}'::bytea, 'SQL_ASCII')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_ascii_database_with_bytes_above_0x7f_restores_byte_exact() {
    let pg = Postgres::start();
    let create = |db: &str| {
        format!("CREATE DATABASE {db} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    };
    pg.psql("postgres", &create("app"));
    // In the base image: bytes 0x01-0xFF in a key and in values, a keyless table.
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE t (k text PRIMARY KEY, v text, n int);
             CREATE TABLE keyless (v varchar, a text[]);
             INSERT INTO t VALUES ({}, {}, 1), ('ascii', {}, 2);
             INSERT INTO keyless VALUES ({}, ARRAY[{}, 'x'])",
            high_bytes(0x80),
            high_bytes(1),
            high_bytes(0xf0),
            high_bytes(0xc0),
            high_bytes(0xe0)
        ),
    );
    let cap = Capture::start(&pg.url("app")).await;
    // Streamed: inserts, updates found by a non-UTF-8 key, deletes of keyless rows
    // matched on non-UTF-8 values, and a truncated "multibyte character".
    pg.psql(
        "app",
        &format!(
            "INSERT INTO t VALUES ({}, 'plain', 3), (convert_from('\\xe381'::bytea, 'SQL_ASCII'), 'cut', 4);
             UPDATE t SET v = v || {}, n = n + 10 WHERE k = {};
             INSERT INTO keyless VALUES ({}, NULL), ('ascii', NULL);
             DELETE FROM keyless WHERE v = {};
             UPDATE keyless SET v = {} WHERE v = 'ascii'",
            high_bytes(0xa0),
            high_bytes(0xfe),
            high_bytes(0x80),
            high_bytes(0x90),
            high_bytes(0xc0),
            high_bytes(0xb0)
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
    for q in [
        "SELECT string_agg(encode(convert_to(k, 'SQL_ASCII'), 'hex') || ':' || encode(convert_to(v, 'SQL_ASCII'), 'hex') || ':' || n, ',' ORDER BY k) FROM t",
        "SELECT string_agg(encode(convert_to(v, 'SQL_ASCII'), 'hex') || ':' || coalesce(a::text, '-'), ',' ORDER BY v) FROM keyless",
    ] {
        let source = pg.psql("app", q);
        assert!(source.contains("f0f1f2"), "the source lacks the bytes: {source}");
        assert_eq!(pg.psql("restored", q), source, "{q}");
    }
}

/// The sequence values the journal holds, as the `setval` statements capture wrote.
fn sequence_events(journal: &Journal) -> Vec<String> {
    let id = journal.source("app").unwrap().id;
    journal
        .events(id, 1, u64::MAX)
        .filter_map(|e| e.ok())
        .filter_map(|e| match e.event.payload {
            Some(Payload::Postgres(c)) if c.op == PgOp::Sequence as i32 => Some(c.ddl),
            _ => None,
        })
        .collect()
}

/// Waits until capture has journaled a sampled value `value` of sequence `name`.
async fn wait_sequence(journal: &Journal, name: &str, value: i64) {
    let want = format!("setval(to_regclass('{name}'), {value}, true)");
    let start = Instant::now();
    while !sequence_events(journal).iter().any(|s| s.contains(&want)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never journaled {want}: {:?}",
            sequence_events(journal)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_restore_at_their_value_at_the_moment() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    // One sequence shared by two tables, one advanced without inserting, one owned
    // by an identity column.
    pg.psql(
        "app",
        "CREATE SEQUENCE shared; CREATE SEQUENCE counter START 100;
         CREATE TABLE a (id bigint PRIMARY KEY DEFAULT nextval('shared'));
         CREATE TABLE b (id bigint PRIMARY KEY DEFAULT nextval('shared'));
         CREATE TABLE c (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
         INSERT INTO a DEFAULT VALUES; INSERT INTO b DEFAULT VALUES; INSERT INTO c (v) VALUES ('x')",
    );
    let cap = Capture::start(&pg.url("app")).await;
    let values = "SELECT string_agg(sequencename || '=' || last_value, ',' ORDER BY sequencename) FROM pg_sequences";
    pg.psql(
        "app",
        "INSERT INTO a DEFAULT VALUES; INSERT INTO b DEFAULT VALUES; SELECT nextval('counter') FROM generate_series(1, 5)",
    );
    wait_sequence(&cap.journal, "public.counter", 104).await;
    let first = cap.moment().await;
    let at_first = pg.psql("app", values);
    assert_eq!(at_first, "c_id_seq=1,counter=104,shared=4");
    pg.psql(
        "app",
        "SELECT nextval('shared') FROM generate_series(1, 10); SELECT nextval('counter'); INSERT INTO c (v) VALUES ('y'), ('z')",
    );
    wait_sequence(&cap.journal, "public.shared", 14).await;
    wait_sequence(&cap.journal, "public.counter", 105).await;
    let second = cap.moment().await;
    let at_second = pg.psql("app", values);
    assert_eq!(at_second, "c_id_seq=3,counter=105,shared=14");
    let journal = cap.stop().await;
    restore_into(&pg, &journal, first, "r_first").await;
    assert_eq!(pg.psql("r_first", values), at_first);
    restore_into(&pg, &journal, second, "r_second").await;
    assert_eq!(pg.psql("r_second", values), at_second);
    // The restored sequences hand out what the source's would have next.
    assert_eq!(pg.psql("r_second", "SELECT nextval('shared')"), "15");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_statement_names_its_transaction_and_leaves_the_state_before_it() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (0, 'image')",
    );
    let cap = Capture::start(&pg.url("app")).await;
    pg.psql("postgres", "CREATE ROLE auditor");
    pg.psql("app", "INSERT INTO t VALUES (1, 'before')");
    pg.psql(
        "app",
        "BEGIN; CREATE TABLE audit (a int); GRANT SELECT ON audit TO auditor; INSERT INTO t VALUES (2, 'with the grant'); COMMIT",
    );
    pg.psql("app", "INSERT INTO t VALUES (3, 'after')");
    let end = cap.moment().await;
    let journal = cap.stop().await;
    // The target's cluster lacks the role the history grants to.
    pg.psql("app", "DROP OWNED BY auditor");
    pg.psql("postgres", "DROP ROLE auditor");
    pg.psql("postgres", "CREATE DATABASE restored");
    let e = try_restore(&journal, end, &pg.url("restored"))
        .await
        .unwrap_err()
        .to_string();
    for part in [
        "role \"auditor\" does not exist",
        "GRANT SELECT ON audit TO auditor",
        "LSN",
        "up to and including the transaction committed at",
        "1 transactions replayed",
        "--force",
    ] {
        assert!(e.contains(part), "the error lacks {part:?}: {e}");
    }
    // Exactly the transactions before the refused one are in the target.
    assert_eq!(
        pg.psql(
            "restored",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"
        ),
        "0,1"
    );
    assert_eq!(
        pg.psql(
            "restored",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'audit'"
        ),
        "0"
    );
}

#[test]
fn resync_after_a_lost_slot_records_a_break_and_restores_on_both_sides() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let mut run = Run::new(&pg_source("app", &pg.url("app")));
    run.start(&[]);
    run.wait_covered("app");
    pg.psql("app", "INSERT INTO t VALUES (2)");
    let before = tidemark::time::Timestamp::now().to_rfc3339();
    run.wait_covered("app");
    let digest_before = digest(&pg.url("app"));
    assert!(run.stop(), "{}", run.log());
    // Behind tidemark's back: the slot is dropped and a change is made that no
    // slot will ever send.
    pg.psql("app", "SELECT pg_drop_replication_slot('tidemark_app')");
    pg.psql("app", "INSERT INTO t VALUES (3)");
    run.start(&[]);
    let row = run.wait_source("app", "stopped on an error", Duration::from_secs(60), |r| {
        r["state"] == "stopped" && r["supervision"]["error"].is_string()
    });
    let error = row["supervision"]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        error.contains("tidemark resync app"),
        "{row}\n{}",
        run.log()
    );
    run.stop();
    let in_the_gap = tidemark::time::Timestamp::now().to_rfc3339();
    let out = run.cli(&["resync", "app"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run.source("app").unwrap()["resync_pending"], true);
    pg.psql("app", "INSERT INTO t VALUES (4)");
    run.start(&[]);
    run.wait_covered("app");
    let after = tidemark::time::Timestamp::now().to_rfc3339();
    run.wait_covered("app");
    let digest_after = digest(&pg.url("app"));
    assert!(run.stop(), "{}", run.log());
    let row = run.source("app").unwrap();
    assert_eq!(row["resync_pending"], false);
    assert_eq!(row["breaks"].as_array().map(Vec::len), Some(1), "{row}");
    assert_eq!(row["base_images"], 2);
    let status = String::from_utf8_lossy(&run.cli(&["status"]).stdout).to_string();
    assert!(status.contains("break in the history"), "{status}");
    let restore = |at: &str, db: &str| {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        run.restore("app", at, &pg.url(db), &[])
    };
    let out = restore(&before, "r_before");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(digest(&pg.url("r_before")), digest_before);
    let out = restore(&after, "r_after");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(digest(&pg.url("r_after")), digest_after);
    let out = restore(&in_the_gap, "r_gap");
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("break in its history"), "{e}");
    assert_eq!(
        pg.psql(
            "r_gap",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_100_mb_round_trips() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE docs (id int PRIMARY KEY, body text, n int)",
    );
    let cap = Capture::start(&pg.url("app")).await;
    // 110 MiB of text that TOAST cannot compress much: logical decoding sends it whole.
    pg.psql(
        "app",
        "INSERT INTO docs SELECT 1, string_agg(md5(g::text || random()::text), ''), 0 FROM generate_series(1, 110 * 1024 * 1024 / 32) g",
    );
    pg.psql("app", "UPDATE docs SET n = 1");
    let end = cap.moment().await;
    let expected = digest_url(&pg.url("app")).await.unwrap();
    assert_eq!(
        pg.psql("app", "SELECT length(body) FROM docs"),
        (110 * 1024 * 1024).to_string()
    );
    let journal = cap.stop().await;
    assert_eq!(restore_into(&pg, &journal, end, "restored").await, expected);
}

#[test]
fn tables_restores_a_subset_that_digests_like_the_same_subset_of_the_source() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE keep (id int PRIMARY KEY, v text);
         CREATE TABLE skip (id int PRIMARY KEY, keep_id int REFERENCES keep);
         CREATE VIEW on_skip AS SELECT * FROM skip;
         CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY);
         INSERT INTO keep VALUES (1, 'a'); INSERT INTO skip VALUES (1, 1); INSERT INTO events VALUES (1, '2025-05-05')",
    );
    let mut run = Run::new(&pg_source("app", &pg.url("app")));
    run.start(&[]);
    run.wait_covered("app");
    pg.psql(
        "app",
        "INSERT INTO keep VALUES (2, 'b'); INSERT INTO skip VALUES (2, 2); INSERT INTO sales.orders VALUES (7);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         INSERT INTO events VALUES (2, '2026-06-06')",
    );
    run.wait_covered("app");
    assert!(run.stop(), "{}", run.log());
    let subset = "public.keep,sales.*,events";
    let source_digest = bin()
        .args(["digest", &pg.url("app"), "--tables", subset])
        .output()
        .unwrap();
    assert!(
        source_digest.status.success(),
        "{}",
        String::from_utf8_lossy(&source_digest.stderr)
    );
    let source_digest = String::from_utf8_lossy(&source_digest.stdout).to_string();
    pg.psql("postgres", "CREATE DATABASE part");
    let out = run.restore("app", "latest", &pg.url("part"), &["--tables", subset]);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("public.skip"),
        "the report names what was dropped: {report}"
    );
    assert_eq!(
        pg.psql("part", "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY schemaname, tablename) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"),
        "public.events,public.events_2025,public.events_2026,public.keep,sales.orders"
    );
    let target_digest = bin().args(["digest", &pg.url("part")]).output().unwrap();
    let target_digest = String::from_utf8_lossy(&target_digest.stdout).to_string();
    let overall = |d: &str| d.lines().last().unwrap_or_default().to_string();
    assert_eq!(
        overall(&target_digest),
        overall(&source_digest),
        "{target_digest}\n{source_digest}"
    );
    assert_eq!(pg.psql("part", "SELECT count(*) FROM events"), "2");
    // A malformed list is refused by name before anything is touched.
    let out = run.restore("app", "latest", &pg.url("part"), &["--tables", "a.b.c"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tables"));
}

#[test]
fn schema_map_restores_beside_the_live_source_and_force_replaces_only_its_schemas() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE t (id serial PRIMARY KEY, m mood, v text);
         CREATE TABLE u (id int PRIMARY KEY, t_id int REFERENCES t);
         CREATE VIEW tv AS SELECT id, v FROM t;
         CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY);
         INSERT INTO t (m, v) VALUES ('ok', 'one'); INSERT INTO u VALUES (1, 1)",
    );
    let mut run = Run::new(&pg_source("app", &pg.url("app")));
    run.start(&[]);
    run.wait_covered("app");
    pg.psql(
        "app",
        "INSERT INTO t (m, v) VALUES ('sad', 'two'); INSERT INTO sales.orders VALUES (1)",
    );
    let then = tidemark::time::Timestamp::now().to_rfc3339();
    run.wait_covered("app");
    let digest_then = bin()
        .args(["digest", &pg.url("app"), "--tables", "public.*"])
        .output()
        .unwrap();
    let digest_then = String::from_utf8_lossy(&digest_then.stdout).to_string();
    let overall_then = digest_then.lines().last().unwrap().to_string();
    pg.psql(
        "app",
        "DELETE FROM u; DELETE FROM t; INSERT INTO t (m, v) VALUES ('ok', 'after')",
    );
    run.wait_covered("app");
    assert!(run.stop(), "{}", run.log());
    let restore = |extra: &[&str]| {
        let mut args = vec!["--schema-map", "public=public_then", "--into-live-source"];
        args.extend_from_slice(extra);
        run.restore("app", &then, &pg.url("app"), &args)
    };
    let out = restore(&[]);
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(overall_then.split_whitespace().last().unwrap()),
        "the restore's digest, named as in the source, equals the source's then: {report}\n{digest_then}"
    );
    // Beside the live tables, which are untouched.
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(v, ',' ORDER BY id) FROM public_then.t"
        ),
        "one,two"
    );
    assert_eq!(
        pg.psql("app", "SELECT string_agg(v, ',' ORDER BY id) FROM public.t"),
        "after"
    );
    assert_eq!(pg.psql("app", "SELECT count(*) FROM public_then.u"), "1");
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(v, ',') FROM public_then.tv WHERE id = 2"
        ),
        "two"
    );
    assert_eq!(
        pg.psql("app", "SELECT nextval('public_then.t_id_seq')"),
        "3"
    );
    assert_eq!(pg.psql("app", "SELECT count(*) FROM pg_namespace WHERE nspname = 'sales_then' OR nspname LIKE 'tidemark_scratch%'"), "0");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'tidemark_scratch%'"
        ),
        "0"
    );
    // Again: the new schema exists, so it is refused, and --force replaces it alone.
    let out = restore(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("public_then"));
    pg.psql(
        "app",
        "INSERT INTO public_then.t (m, v) VALUES ('ok', 'stray')",
    );
    let out = restore(&["--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(v, ',' ORDER BY id) FROM public_then.t"
        ),
        "one,two"
    );
    assert_eq!(
        pg.psql("app", "SELECT string_agg(v, ',' ORDER BY id) FROM public.t"),
        "after"
    );
    assert_eq!(pg.psql("app", "SELECT count(*) FROM sales.orders"), "1");
}

#[test]
fn several_databases_are_one_section_with_a_slot_and_coverage_each() {
    let pg = Postgres::start();
    for db in ["orders", "billing"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        pg.psql(
            db,
            &format!(
                "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, '{db}')"
            ),
        );
    }
    let mut run = Run::new(&format!(
        "{}databases = [\"orders\", \"billing\"]\n",
        pg_source("app", &pg.url("postgres"))
    ));
    let out = run.cli(&["config", "validate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run.start(&[]);
    run.wait_covered("app.orders");
    run.wait_covered("app.billing");
    pg.psql("orders", "INSERT INTO t VALUES (2, 'second order')");
    pg.psql("billing", "UPDATE t SET v = 'paid'");
    run.wait_covered("app.orders");
    run.wait_covered("app.billing");
    assert!(run.stop(), "{}", run.log());
    let slots = pg.psql("postgres", "SELECT string_agg(slot_name || ':' || database, ',' ORDER BY slot_name) FROM pg_replication_slots");
    assert_eq!(
        slots,
        "tidemark_app_billing:billing,tidemark_app_orders:orders"
    );
    // Without a place for each database, the group restore says how.
    let target = pg.url("{database}_restored");
    let out = run.restore("app", "latest", &pg.url("x"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("app.orders"));
    for db in ["orders", "billing"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}_restored"));
    }
    let out = run.restore("app", "latest", &target, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for db in ["orders", "billing"] {
        assert_eq!(
            digest(&pg.url(&format!("{db}_restored"))),
            digest(&pg.url(db)),
            "{db}"
        );
    }
    // One database alone.
    pg.psql("postgres", "CREATE DATABASE just_billing");
    let out = run.restore("app.billing", "latest", &pg.url("just_billing"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.psql("just_billing", "SELECT v FROM t"), "paid");
}

#[test]
fn databases_star_captures_every_database_but_templates() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE one");
    pg.psql("postgres", "CREATE DATABASE two");
    pg.psql("postgres", "CREATE DATABASE tmpl IS_TEMPLATE true");
    for db in ["one", "two"] {
        pg.psql(
            db,
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
        );
    }
    let mut run = Run::new(&format!(
        "{}databases = [\"*\"]\n",
        pg_source("all", &pg.url("postgres"))
    ));
    // Validation does not connect: it cannot know the databases yet.
    assert!(run.cli(&["config", "validate"]).status.success());
    run.start(&[]);
    for db in ["all.one", "all.two", "all.postgres"] {
        run.wait_covered(db);
    }
    assert!(run.stop(), "{}", run.log());
    let names: Vec<String> = run.status().unwrap()["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains("tmpl") || n.contains("template")),
        "{names:?}"
    );
    for db in ["one", "two"] {
        pg.psql("postgres", &format!("CREATE DATABASE {db}_r"));
    }
    let out = run.restore("all.two", "latest", &pg.url("two_r"), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pg.psql("two_r", "SELECT count(*) FROM t"), "1");
}
