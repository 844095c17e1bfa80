//! End-to-end logical replication against a real PostgreSQL 15.

mod common;

use std::time::Duration;

use common::pgcluster::{ClusterOptions, PgCluster};
use tidemark::connectors::postgres::repl::pgoutput::{
    self, ColumnValue, Message, OldTuple, ReplicaIdentity,
};
use tidemark::connectors::postgres::repl::{
    Lsn, ReplicationConnection, ReplicationMessage, ReplicationOptions, ReplicationStream,
    SnapshotAction, StandbyStatusUpdate,
};

fn t(s: &str) -> ColumnValue {
    ColumnValue::Text(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

/// Reads frames until `commits` Commit messages were decoded, answering
/// keepalives that request a reply. Returns the decoded messages.
async fn collect(stream: &mut ReplicationStream, commits: usize) -> Vec<Message> {
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < commits {
        let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("timed out waiting for replication data")
            .expect("stream error")
            .expect("stream ended");
        match frame {
            ReplicationMessage::XLogData(x) => {
                let m = pgoutput::decode(&x.data).expect("decode");
                if matches!(m, Message::Commit(_)) {
                    seen += 1;
                }
                out.push(m);
            }
            ReplicationMessage::Keepalive(k) => {
                if k.reply_requested {
                    let last = stream.last_flush_sent();
                    stream
                        .send_status_update(StandbyStatusUpdate::new(k.wal_end, last, last))
                        .await
                        .expect("status update");
                }
            }
        }
    }
    out
}

async fn confirmed_flush(admin: &tokio_postgres::Client, slot: &str) -> Option<Lsn> {
    let row = admin
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("query slot");
    row.get::<_, Option<String>>(0)
        .map(|s| s.parse().expect("lsn"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_replication_cycle() {
    let pg = PgCluster::start(ClusterOptions {
        extra_conf: vec!["wal_sender_timeout = '4s'".into()],
        ..Default::default()
    })
    .await;
    let admin = pg.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
             CREATE TABLE logs (msg text, n int);
             ALTER TABLE logs REPLICA IDENTITY FULL;
             INSERT INTO items VALUES (0, 'seed', 1);
             CREATE PUBLICATION tm_pub FOR TABLE items, logs;",
        )
        .await
        .expect("setup");
    let items_oid: u32 = admin
        .query_one("SELECT 'items'::regclass::oid", &[])
        .await
        .expect("oid")
        .get(0);
    let logs_oid: u32 = admin
        .query_one("SELECT 'logs'::regclass::oid", &[])
        .await
        .expect("oid")
        .get(0);

    let mut conn = ReplicationConnection::connect(&pg.config("postgres", None))
        .await
        .expect("connect");
    assert!(conn
        .parameter("server_version")
        .unwrap_or("")
        .starts_with("15"));
    let ident = conn.identify_system().await.expect("identify");
    assert_eq!(ident.dbname.as_deref(), Some("postgres"));
    assert!(ident.timeline >= 1);

    let slot = conn
        .create_replication_slot("tm_slot", false, SnapshotAction::Export)
        .await
        .expect("create slot");
    assert_eq!(slot.slot_name, "tm_slot");
    assert_eq!(slot.output_plugin.as_deref(), Some("pgoutput"));
    assert!(slot.consistent_point >= ident.xlogpos);
    let snapshot = slot.snapshot_name.clone().expect("snapshot exported");

    // A change committed after the slot was created: invisible in the
    // exported snapshot, delivered by streaming.
    admin
        .batch_execute("INSERT INTO items VALUES (100, 'after-slot', 7)")
        .await
        .expect("insert after slot");
    let snap_client = pg.admin().await;
    snap_client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .expect("import snapshot");
    let ids: Vec<i32> = snap_client
        .query("SELECT id FROM items ORDER BY id", &[])
        .await
        .expect("snapshot read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![0]);
    snap_client.batch_execute("COMMIT").await.expect("commit");

    // Ordinary SQL on the replication connection (after the snapshot was used).
    let res = conn
        .simple_query("SELECT 1 AS one, NULL::text AS nothing")
        .await
        .expect("select");
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].columns, vec!["one", "nothing"]);
    assert_eq!(res[0].rows, vec![vec![Some("1".to_string()), None]]);
    assert_eq!(res[0].command_tag, "SELECT 1");
    // A failing statement leaves the connection usable.
    let err = conn
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.server_error().map(|e| e.code.as_str()), Some("42P01"));
    assert!(conn.simple_query("SELECT 2").await.is_ok());

    admin
        .batch_execute(
            "BEGIN;
             INSERT INTO items VALUES (1, 'apple', 5), (2, 'pear', NULL);
             UPDATE items SET qty = 6 WHERE id = 1;
             UPDATE items SET id = 3 WHERE id = 2;
             DELETE FROM items WHERE id = 1;
             INSERT INTO logs VALUES ('hello', 1);
             UPDATE logs SET n = 2;
             DELETE FROM logs;
             SELECT pg_logical_emit_message(true, 'tidemark.ddl', 'ALTER TABLE items ADD COLUMN note text');
             TRUNCATE logs;
             COMMIT;",
        )
        .await
        .expect("workload");

    let opts = ReplicationOptions::new(["tm_pub"]);
    let mut stream = conn
        .start_replication("tm_slot", Lsn::ZERO, &opts)
        .await
        .expect("start replication");
    let msgs = collect(&mut stream, 2).await;

    // Transaction 1: the single insert after slot creation.
    let Message::Begin(b1) = &msgs[0] else {
        panic!("expected Begin, got {:?}", msgs[0])
    };
    let Message::Relation(rel) = &msgs[1] else {
        panic!("expected Relation, got {:?}", msgs[1])
    };
    assert_eq!(
        (rel.oid, rel.namespace.as_str(), rel.name.as_str()),
        (items_oid, "public", "items")
    );
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    let cols: Vec<(&str, u32, bool)> = rel
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.is_key()))
        .collect();
    assert_eq!(
        cols,
        vec![("id", 23, true), ("name", 25, false), ("qty", 23, false)]
    );
    let Message::Insert(ins) = &msgs[2] else {
        panic!("expected Insert, got {:?}", msgs[2])
    };
    assert_eq!(ins.relation_oid, items_oid);
    assert_eq!(ins.new, vec![t("100"), t("after-slot"), t("7")]);
    let Message::Commit(c1) = &msgs[3] else {
        panic!("expected Commit, got {:?}", msgs[3])
    };
    assert_eq!(b1.final_lsn, c1.commit_lsn);
    assert!(c1.end_lsn > c1.commit_lsn);

    // Transaction 2: the multi-statement workload, in WAL order.
    let rest = &msgs[4..];
    let kinds: Vec<&str> = rest
        .iter()
        .map(|m| match m {
            Message::Begin(_) => "B",
            Message::Commit(_) => "C",
            Message::Relation(_) => "R",
            Message::Insert(_) => "I",
            Message::Update(_) => "U",
            Message::Delete(_) => "D",
            Message::Truncate(_) => "T",
            Message::LogicalMessage(_) => "M",
            _ => "?",
        })
        .collect();
    assert_eq!(
        kinds,
        vec!["B", "I", "I", "U", "U", "D", "R", "I", "U", "D", "M", "R", "T", "C"]
    );
    let Message::Begin(b2) = &rest[0] else {
        unreachable!()
    };
    let Message::Insert(i1) = &rest[1] else {
        unreachable!()
    };
    assert_eq!(i1.new, vec![t("1"), t("apple"), t("5")]);
    let Message::Insert(i2) = &rest[2] else {
        unreachable!()
    };
    assert_eq!(i2.new, vec![t("2"), t("pear"), ColumnValue::Null]);
    let Message::Update(u1) = &rest[3] else {
        unreachable!()
    };
    assert_eq!(u1.old, None);
    assert_eq!(u1.new, vec![t("1"), t("apple"), t("6")]);
    let Message::Update(u2) = &rest[4] else {
        unreachable!()
    };
    assert_eq!(
        u2.old,
        Some(OldTuple::Key(vec![
            t("2"),
            ColumnValue::Null,
            ColumnValue::Null
        ]))
    );
    assert_eq!(u2.new, vec![t("3"), t("pear"), ColumnValue::Null]);
    let Message::Delete(d1) = &rest[5] else {
        unreachable!()
    };
    assert_eq!(d1.relation_oid, items_oid);
    assert_eq!(
        d1.old,
        OldTuple::Key(vec![t("1"), ColumnValue::Null, ColumnValue::Null])
    );
    let Message::Relation(rl) = &rest[6] else {
        unreachable!()
    };
    assert_eq!((rl.oid, rl.name.as_str()), (logs_oid, "logs"));
    assert_eq!(rl.replica_identity, ReplicaIdentity::Full);
    assert!(rl.columns.iter().all(|c| c.is_key()));
    let Message::Insert(i3) = &rest[7] else {
        unreachable!()
    };
    assert_eq!(i3.new, vec![t("hello"), t("1")]);
    let Message::Update(u3) = &rest[8] else {
        unreachable!()
    };
    assert_eq!(u3.old, Some(OldTuple::Full(vec![t("hello"), t("1")])));
    assert_eq!(u3.new, vec![t("hello"), t("2")]);
    let Message::Delete(d2) = &rest[9] else {
        unreachable!()
    };
    assert_eq!(d2.old, OldTuple::Full(vec![t("hello"), t("2")]));
    let Message::LogicalMessage(lm) = &rest[10] else {
        unreachable!()
    };
    assert!(lm.transactional());
    assert_eq!(lm.prefix, "tidemark.ddl");
    assert_eq!(&lm.content[..], b"ALTER TABLE items ADD COLUMN note text");
    // TRUNCATE assigns a new relfilenode, which invalidates pgoutput's
    // relation cache, so the Relation message is sent again.
    let Message::Relation(rl2) = &rest[11] else {
        unreachable!()
    };
    assert_eq!(rl2, rl);
    let Message::Truncate(tr) = &rest[12] else {
        unreachable!()
    };
    assert_eq!(tr.relation_oids, vec![logs_oid]);
    assert!(!tr.cascade() && !tr.restart_identity());
    let Message::Commit(c2) = &rest[13] else {
        unreachable!()
    };
    assert_eq!(b2.final_lsn, c2.commit_lsn);
    assert!(c2.commit_lsn > c1.end_lsn);

    // Acknowledge everything through the end of transaction 2.
    let before = confirmed_flush(&admin, "tm_slot").await.expect("slot lsn");
    assert!(before < c2.end_lsn);
    stream
        .send_status_update(StandbyStatusUpdate::new(c2.end_lsn, c2.end_lsn, c2.end_lsn))
        .await
        .expect("status update");
    assert_eq!(stream.last_flush_sent(), c2.end_lsn);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if confirmed_flush(&admin, "tm_slot").await.expect("slot lsn") >= c2.end_lsn {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "confirmed_flush_lsn did not advance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A lower flush LSN is never reported (the slot must not move back).
    stream
        .send_status_update(StandbyStatusUpdate::new(c1.end_lsn, c1.end_lsn, c1.end_lsn))
        .await
        .expect("status update");
    assert_eq!(stream.last_flush_sent(), c2.end_lsn);

    // Keepalives: with wal_sender_timeout = 4s the server asks for a reply
    // after ~2s of silence; answering keeps the connection alive past the
    // timeout.
    let mut keepalives = 0;
    let mut requested = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(6) || requested == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no reply-requested keepalive"
        );
        let frame = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("keepalive timeout")
            .expect("stream error")
            .expect("stream ended");
        if let ReplicationMessage::Keepalive(k) = frame {
            keepalives += 1;
            assert!(k.wal_end >= c2.end_lsn);
            assert!(k.server_time.0 > 0);
            if k.reply_requested {
                requested += 1;
                stream
                    .send_status_update(StandbyStatusUpdate::new(k.wal_end, c2.end_lsn, c2.end_lsn))
                    .await
                    .expect("reply");
            }
        }
    }
    assert!(keepalives >= 1 && requested >= 1);

    // Clean stop returns an idle connection.
    let mut conn = tokio::time::timeout(Duration::from_secs(20), stream.stop())
        .await
        .expect("stop timed out")
        .expect("stop");
    let res = conn
        .simple_query("SELECT 3 AS three")
        .await
        .expect("query after stop");
    assert_eq!(res[0].get(0, "three"), Some("3"));

    // The same connection cannot stream twice (server limitation).
    let err = conn
        .start_replication("tm_slot", Lsn::ZERO, &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            tidemark::connectors::postgres::repl::Error::InvalidArgument(_)
        ),
        "{err:?}"
    );

    // A new connection resumes after the acknowledged position: only new
    // work arrives.
    admin
        .batch_execute("INSERT INTO items VALUES (200, 'resumed', 0)")
        .await
        .expect("insert");
    let conn = ReplicationConnection::connect(&pg.config("postgres", None))
        .await
        .expect("reconnect");
    let mut stream = conn
        .start_replication("tm_slot", Lsn::ZERO, &opts)
        .await
        .expect("restart replication");
    let msgs = collect(&mut stream, 1).await;
    let inserts: Vec<&Vec<ColumnValue>> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Insert(i) => Some(&i.new),
            _ => None,
        })
        .collect();
    assert_eq!(inserts, vec![&vec![t("200"), t("resumed"), t("0")]]);
    let mut conn = tokio::time::timeout(Duration::from_secs(20), stream.stop())
        .await
        .expect("stop timed out")
        .expect("stop");

    conn.drop_replication_slot("tm_slot", false)
        .await
        .expect("drop slot");
    assert!(confirmed_flush_gone(&admin).await);
    conn.close().await;
}

async fn confirmed_flush_gone(admin: &tokio_postgres::Client) -> bool {
    admin
        .query("SELECT 1 FROM pg_replication_slots", &[])
        .await
        .expect("query")
        .is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_replication_errors_are_reported() {
    let pg = PgCluster::start(ClusterOptions::default()).await;
    let conn = ReplicationConnection::connect(&pg.config("postgres", None))
        .await
        .expect("connect");
    let err = conn
        .start_replication("missing_slot", Lsn::ZERO, &ReplicationOptions::new(["p"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.server_error().map(|e| e.code.as_str()),
        Some("42704"),
        "{err}"
    );

    let mut conn = ReplicationConnection::connect(&pg.config("postgres", None))
        .await
        .expect("connect");
    assert!(matches!(
        conn.create_replication_slot("Bad-Name", true, SnapshotAction::NoExport)
            .await,
        Err(tidemark::connectors::postgres::repl::Error::InvalidArgument(_))
    ));
    let tmp = conn
        .create_replication_slot("tmp_slot", true, SnapshotAction::NoExport)
        .await
        .expect("temporary slot");
    assert_eq!(tmp.snapshot_name, None);
    let dup = conn
        .create_replication_slot("tmp_slot", true, SnapshotAction::NoExport)
        .await
        .unwrap_err();
    assert_eq!(
        dup.server_error().map(|e| e.code.as_str()),
        Some("42710"),
        "{dup}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_v2_streaming_and_binary() {
    let pg = PgCluster::start(ClusterOptions {
        extra_conf: vec!["logical_decoding_work_mem = '64kB'".into()],
        ..Default::default()
    })
    .await;
    let admin = pg.admin().await;
    admin
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);
             CREATE PUBLICATION big_pub FOR TABLE big;",
        )
        .await
        .expect("setup");
    let mut conn = ReplicationConnection::connect(&pg.config("postgres", None))
        .await
        .expect("connect");
    conn.create_replication_slot("big_slot", true, SnapshotAction::NoExport)
        .await
        .expect("slot");
    admin
        .batch_execute("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 3000) g")
        .await
        .expect("big insert");

    let mut opts = ReplicationOptions::new(["big_pub"]);
    opts.proto_version = 2;
    opts.streaming = true;
    opts.binary = true;
    let mut stream = conn
        .start_replication("big_slot", Lsn::ZERO, &opts)
        .await
        .expect("start");
    let mut decoder = pgoutput::Decoder::new(2);
    let mut starts = 0;
    let mut inserts = 0;
    let mut stream_xid = None;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("timeout")
            .expect("stream")
            .expect("ended");
        let ReplicationMessage::XLogData(x) = frame else {
            continue;
        };
        match decoder.decode(&x.data).expect("decode") {
            Message::StreamStart { xid, first_segment } => {
                assert_eq!(first_segment, starts == 0);
                assert!(stream_xid.is_none_or(|s| s == xid));
                stream_xid = Some(xid);
                starts += 1;
            }
            Message::Insert(i) => {
                assert_eq!(i.xid, stream_xid, "streamed insert carries the xid");
                inserts += 1;
                // Binary int4 is 4 big-endian bytes.
                let ColumnValue::Binary(id) = &i.new[0] else {
                    panic!("not binary: {:?}", i.new[0])
                };
                assert_eq!(id.len(), 4);
                assert_eq!(
                    u32::from_be_bytes([id[0], id[1], id[2], id[3]]) as usize,
                    inserts
                );
            }
            Message::StreamCommit(c) => {
                assert_eq!(Some(c.xid), stream_xid);
                assert!(c.end_lsn > c.commit_lsn);
                break;
            }
            Message::Begin(_) | Message::Commit(_) => panic!("transaction was not streamed"),
            _ => {}
        }
    }
    assert!(starts >= 2, "expected several stream blocks, got {starts}");
    assert_eq!(inserts, 3000);
    assert!(!decoder.in_stream());
    tokio::time::timeout(Duration::from_secs(20), stream.stop())
        .await
        .expect("stop timeout")
        .expect("stop");
}
