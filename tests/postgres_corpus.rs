//! A broad corpus of what real PostgreSQL databases hold, against a real PostgreSQL:
//! every built-in type family (arrays of composites, ranges and multiranges, `"char"`,
//! `money`, `NaN` and infinities, time zones, bytea with every byte value), 1,100
//! columns, quoted non-ASCII names in another schema, partitions (attach, detach,
//! default), inheritance, generated and identity columns, domains, enums that grow,
//! renames, drop and re-create, column type changes, `TRUNCATE ... CASCADE RESTART
//! IDENTITY`, `CREATE TABLE ... (LIKE ...)`, DDL in a `DO` block and a function, a
//! trigger that writes rows of its own, and image rows whose foreign keys point at a
//! table loaded after theirs.
//!
//! `tidemark run` is SIGKILLed between the phases of the workload and once in the
//! middle of one. Restores at three moments must equal the source then: every
//! table's digest, and the schema (`pg_dump --schema-only`, normalised).

mod common;

use std::io::Write;
use std::process::Stdio;

use common::run::{digest, pg_source, Run};
use common::Postgres;

/// Phase 0, in the base image.
const IMAGE: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TYPE pair AS (a int, b text);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN short_text AS text NOT NULL CHECK (length(VALUE) < 100);
CREATE TABLE types (
  id int PRIMARY KEY,
  i2 smallint, i4 int, i8 bigint, n numeric, n2 numeric(12,4), f4 real, f8 double precision, m money,
  b bool, ch "char", c char(3), vc varchar(10), t text, nm name, by bytea,
  d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval,
  u uuid, j json, jb jsonb, x xml, ip inet, cd cidr, mac macaddr, mac8 macaddr8,
  bt bit(4), vb varbit, pt point, ln line, ls lseg, bx box, pth path, pg polygon, ci circle,
  tsv tsvector, tsq tsquery, lsn pg_lsn, o oid,
  r4 int4range, r8 int8range, nr numrange, tsr tsrange, tstzr tstzrange, dr daterange,
  mr4 int4multirange, mnr nummultirange, mdr datemultirange,
  ai int[], a2 int[][], at text[], ap pair[], amood mood[], ar int4range[], ajb jsonb[],
  cp pair, mo mood, pi posint, st short_text
);
CREATE TABLE events (id bigint, at date, payload text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE TABLE animals (id int PRIMARY KEY, name text);
CREATE TABLE dogs (breed text) INHERITS (animals);
CREATE TABLE gen (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED);
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id serial PRIMARY KEY, parent_id int REFERENCES parent);
CREATE FUNCTION make_table(name text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, v text)', name); END $$;
CREATE TABLE audit (id serial PRIMARY KEY, what text);
CREATE FUNCTION audit_gen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit (what) VALUES (TG_OP || ' ' || NEW.a); RETURN NEW; END $$;
CREATE TRIGGER gen_audit AFTER INSERT OR UPDATE ON gen FOR EACH ROW EXECUTE FUNCTION audit_gen();
INSERT INTO gen (a) VALUES (0);
INSERT INTO parent VALUES (100); INSERT INTO child (parent_id) VALUES (100);
"#;

/// A row of `types` with values at the edges of each type.
fn types_row(id: u32) -> String {
    format!(
        r#"INSERT INTO types VALUES ({id},
  -32768, 2147483647, -9223372036854775808, 'NaN', 12345678.1234, 'Infinity', '-Infinity', '-92233720368547758.08',
  true, 'z', 'ab', 'a''b"c\d', E'tab\there, newline\nthere, "quotes", emoji 😀, nul-free \\x01', 'name',
  (SELECT decode(string_agg(lpad(to_hex(g), 2, '0'), ''), 'hex') FROM generate_series(0, 255) g),
  'infinity', '24:00:00', '23:59:59.999999-14:59', '-infinity', '2026-06-01 12:00:00.000001+14', '-178000000 years 1 mon -1 day -00:00:00.000001',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"a": "\u0000 kept in json", "b": [1.0e10, 1E-7]}}', '{{"k": {{"nested": [null, true, -0.0]}}}}',
  '<r a="1">x &amp; y<![CDATA[<z>]]></r>', '2001:db8::1/64', '10.0.0.0/8', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
  B'1010', B'', '(1e-300,-1e300)', '{{1,-1,0}}', '[(0,0),(1,1)]', '(1,1),(0,0)', '[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(1,0))', '<(0,0),1.5>',
  'a fat:2 cat:1A', 'fat & (rat | !cat)', '16/B374D848', 4294967295,
  '[1,10)', '(,)', '[-Infinity,Infinity]', '["2026-01-01","2026-02-01")', 'empty', '[2026-01-01,infinity)',
  '{{[1,3), [5,7)}}', '{{}}', '{{[2026-01-01,2026-01-05)}}',
  '{{1,NULL,3}}', '{{{{1,2}},{{3,4}}}}', '{{"a b","",NULL,"c,d","\""}}', ARRAY[ROW(1, 'x')::pair, ROW(NULL, NULL)::pair, NULL],
  '{{sad,ok}}', ARRAY['[1,2)'::int4range, 'empty'], ARRAY['{{"a":1}}'::jsonb, 'null'],
  ROW(-1, 'comp "quoted"'), 'ok', 7, 'short')"#
    )
}

/// 1,100 columns: wider than most tools expect, under PostgreSQL's 1,600.
fn wide_table() -> String {
    let cols: Vec<String> = (1..=1100).map(|i| format!("c{i} int")).collect();
    let vals: Vec<String> = (1..=1100).map(|i| i.to_string()).collect();
    format!(
        "CREATE TABLE wide (id int PRIMARY KEY, {}); INSERT INTO wide VALUES (1, {})",
        cols.join(", "),
        vals.join(", ")
    )
}

/// Phase 1, streamed: rows, quoted names in a new schema, LIKE, partitions.
const PHASE1: &str = r#"
INSERT INTO events VALUES (1, '2025-03-01', 'a'), (2, '2030-01-01', 'in default');
INSERT INTO animals VALUES (1, 'cat'); INSERT INTO dogs VALUES (2, 'rex', 'collie');
INSERT INTO gen (a) VALUES (1), (2); UPDATE gen SET a = 10 WHERE id = 1;
INSERT INTO parent VALUES (1), (2); INSERT INTO child (parent_id) VALUES (1), (2), (2);
CREATE SCHEMA "Sales Ü";
CREATE TABLE "Sales Ü"."Order ""Items"" ø" ("Line No" int PRIMARY KEY, "Ünït Price" numeric, "note;" text);
INSERT INTO "Sales Ü"."Order ""Items"" ø" VALUES (1, 9.99, 'semi;colon'), (2, NULL, '');
CREATE TABLE types_copy (LIKE types INCLUDING ALL);
INSERT INTO types_copy SELECT * FROM types;
CREATE TABLE events_2026 (LIKE events INCLUDING DEFAULTS);
ALTER TABLE events ATTACH PARTITION events_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events VALUES (3, '2026-05-05', 'attached');
"#;

/// Phase 2, streamed: enums that grow, domains, renames, type changes, DDL in a
/// DO block and a function, drop and re-create.
const PHASE2: &str = r#"
ALTER TYPE mood ADD VALUE 'happy';
UPDATE types SET mo = 'happy', amood = '{happy,sad}' WHERE id = 2;
ALTER TABLE animals RENAME TO beasts;
ALTER TABLE beasts RENAME COLUMN name TO label;
UPDATE beasts SET label = 'lion' WHERE id = 1;
ALTER TABLE types_copy ALTER COLUMN i4 TYPE bigint;
UPDATE types_copy SET i4 = 9999999999 WHERE id = 1;
-- kill
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 'from_block') THEN
    CREATE TABLE from_block (id int PRIMARY KEY, v text);
    CREATE INDEX from_block_v ON from_block (v);
  END IF;
END $$;
INSERT INTO from_block VALUES (1, 'made in a DO block');
SELECT make_table('from_function');
INSERT INTO from_function VALUES (1, 'made by a function');
ALTER TABLE events DETACH PARTITION events_2025;
INSERT INTO events_2025 VALUES (9, '2025-09-09', 'detached');
DROP TABLE wide;
CREATE TABLE wide (id int PRIMARY KEY, only_one text);
INSERT INTO wide VALUES (1, 're-created');
CREATE TABLE keyless_later (a int, b text);
INSERT INTO keyless_later VALUES (1, 'x'), (1, 'x'), (2, 'y');
DELETE FROM keyless_later WHERE b = 'y';
"#;

/// Phase 3, streamed: truncate with cascade and restart, deletes, more rows.
const PHASE3: &str = r#"
TRUNCATE parent RESTART IDENTITY CASCADE;
INSERT INTO parent VALUES (5); INSERT INTO child (parent_id) VALUES (5);
DELETE FROM types WHERE id = 1;
UPDATE "Sales Ü"."Order ""Items"" ø" SET "Ünït Price" = 0 WHERE "Line No" = 2;
UPDATE keyless_later SET b = 'z';
"#;

/// The schema as `pg_dump --schema-only` prints it, without tidemark's own objects,
/// comments, session settings and blank lines.
fn schema(pg: &Postgres, db: &str) -> String {
    let out = pg
        .tool("pg_dump")
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--no-publications",
            "--no-subscriptions",
            "--exclude-schema=tidemark",
            "-d",
            db,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8(out.stdout).unwrap();
    let mut keep = Vec::new();
    let mut skipping = false;
    for line in dump.lines() {
        if line.starts_with("-- Name: ") {
            skipping = line.contains("Type: EVENT TRIGGER");
        }
        let noise = line.is_empty()
            || line.starts_with("--")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict");
        if !skipping && !noise {
            keep.push(line);
        }
    }
    keep.join("\n")
}

#[test]
fn a_broad_corpus_restores_exactly_at_three_moments_despite_kills() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql("app", IMAGE);
    pg.psql("app", &types_row(1));
    pg.psql("app", &wide_table());
    let mut run = Run::new(&pg_source("app", &pg.url("app")));
    run.start(&[]);
    run.wait_covered("app");
    let mut moments = Vec::new();
    for (i, phase) in [PHASE1, PHASE2, PHASE3].iter().enumerate() {
        if i == 0 {
            script(&pg, &types_row(2));
        }
        // Killed in the middle of phase 2, between phases always.
        match phase.split_once("-- kill\n") {
            Some((head, tail)) => {
                script(&pg, head);
                run.kill9();
                run.start(&[]);
                script(&pg, tail);
            }
            None => script(&pg, phase),
        }
        let t = tidemark::time::Timestamp::now().to_rfc3339();
        run.wait_covered("app");
        moments.push((t, digest(&pg.url("app")), schema(&pg, "app")));
        run.kill9();
        run.start(&[]);
    }
    run.wait_covered("app");
    assert!(run.stop(), "run failed; log:\n{}", run.log());
    for (i, (t, want_digest, want_schema)) in moments.iter().enumerate() {
        let db = format!("restored_{i}");
        pg.psql("postgres", &format!("CREATE DATABASE {db}"));
        let out = run.restore("app", t, &pg.url(&db), &[]);
        assert!(
            out.status.success(),
            "restore at moment {i} ({t}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if &digest(&pg.url(&db)) != want_digest {
            let lines = |url: &str| {
                let out = common::run::bin().args(["digest", url]).output().unwrap();
                String::from_utf8_lossy(&out.stdout).to_string()
            };
            panic!(
                "digest at moment {i} ({t}) differs; restored:\n{}\n(the source then: {want_digest}; now:\n{})",
                lines(&pg.url(&db)),
                lines(&pg.url("app"))
            );
        }
        let got_schema = schema(&pg, &db);
        if &got_schema != want_schema {
            let diff: Vec<String> = want_schema
                .lines()
                .filter(|l| !got_schema.lines().any(|g| g == *l))
                .map(|l| format!("- {l}"))
                .chain(
                    got_schema
                        .lines()
                        .filter(|l| !want_schema.lines().any(|w| w == *l))
                        .map(|l| format!("+ {l}")),
                )
                .collect();
            panic!("schema at moment {i} ({t}) differs:\n{}", diff.join("\n"));
        }
    }
    // Spot checks beyond the digest.
    let q = "SELECT by = (SELECT decode(string_agg(lpad(to_hex(g), 2, '0'), ''), 'hex') FROM generate_series(0, 255) g), f4::text, m::text, ch::text, tstz::text, ap::text, mr4::text FROM types ORDER BY id";
    let row = pg.psql("restored_0", q);
    assert!(row.starts_with("t|Infinity|"), "{row}");
    assert_eq!(pg.psql("restored_1", q), row);
    assert_eq!(
        pg.psql(
            "restored_1",
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('from_block', 'from_function')"
        ),
        "2"
    );
    assert_eq!(
        pg.psql(
            "restored_2",
            "SELECT string_agg(id || ':' || parent_id, ',') FROM child"
        ),
        "1:5"
    );
}

/// Runs `sql` through psql's standard input: each statement its own transaction,
/// as an application or a migration file would send them.
fn script(pg: &Postgres, sql: &str) {
    let mut child = pg
        .tool("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
