//! MongoDB capture and restore against the SecantusDB STAND-IN (not mongod: none
//! can be installed here; see README, "MongoDB", for what this does and does not
//! prove). A workload of inserts, nested updates, `$unset`, array truncation,
//! replaces, deletes, transactions, collection create/drop/rename and index
//! changes runs while `tidemark run` is killed with SIGKILL three times; restores
//! at three moments must equal the source's digest at each moment, and the
//! journal must hold exactly the change events the server has (no gap, no
//! duplicate), in its order.

mod common;

use std::time::Duration;

use common::mongo::StandIn;
use common::run::{digest, Run};
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::Client;
use serde_json::Value;
use tidemark::time::Timestamp as Moment;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn config(url: &str) -> String {
    format!("[[source]]\nname = \"docs\"\nkind = \"mongodb\"\nurl = \"{url}\"\n")
}

async fn optime(c: &Client) -> Timestamp {
    c.database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .expect("hello")
        .get_timestamp("operationTime")
        .expect("operationTime")
}

/// Data that exists before capture starts: it reaches the journal by the image.
async fn before_capture(c: &Client) {
    let db = c.database("app");
    db.run_command(doc! {"create": "people", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["name"]}}})
        .await
        .expect("create people");
    db.run_command(doc! {"create": "audit"})
        .await
        .expect("create audit");
    db.run_command(doc! {"create": "log", "capped": true, "size": 65536, "max": 50})
        .await
        .expect("create capped");
    db.run_command(doc! {"createIndexes": "people", "indexes": [{"key": {"name": 1}, "name": "by_name"}, {"key": {"addr.zip": 1}, "name": "zip", "unique": true, "sparse": true}, {"key": {"age": -1, "name": 1}, "name": "age_name", "sparse": true}]})
        .await
        .expect("indexes");
    let people = db.collection::<Document>("people");
    for i in 0..40 {
        people
            .insert_one(doc! {"_id": i, "name": format!("p{i}"), "age": i % 7, "tags": ["a", "b", "c", "d"], "addr": {"city": "x", "zip": i}})
            .await
            .expect("insert");
    }
    c.database("other")
        .collection::<Document>("kv")
        .insert_one(doc! {"_id": "k", "v": 1.5})
        .await
        .expect("other");
}

/// Phase `n` of the workload (every kind of change at least once over the phases).
async fn workload(c: &Client, n: i32) {
    let db = c.database("app");
    let people = db.collection::<Document>("people");
    let base = 100 * n;
    for i in 0..10 {
        people
            .insert_one(doc! {"_id": base + i, "name": format!("n{n}-{i}"), "tags": [1, 2, 3, 4, 5], "m": {"a": {"b": i}}})
            .await
            .expect("insert");
    }
    // Nested $set, $unset, $push, $inc.
    people
        .update_one(doc! {"_id": base}, doc! {"$set": {"m.a.c": "deep", "m.z": [1, {"q": 2}]}, "$unset": {"m.a.b": ""}, "$inc": {"count": 1i64}})
        .await
        .expect("update nested");
    people
        .update_many(
            doc! {"_id": {"$lt": 10}},
            doc! {"$set": {"addr.city": format!("c{n}")}, "$push": {"tags": n}},
        )
        .await
        .expect("update many");
    // Array truncation (pipeline update).
    people
        .update_one(
            doc! {"_id": base + 1},
            vec![doc! {"$set": {"tags": {"$slice": ["$tags", 2]}}}],
        )
        .await
        .expect("truncate");
    people
        .replace_one(
            doc! {"_id": base + 2},
            doc! {"name": "replaced", "z": Bson::Null, "n": 1i64},
        )
        .await
        .expect("replace");
    people
        .delete_one(doc! {"_id": base + 3})
        .await
        .expect("delete");
    people
        .update_one(doc! {"_id": n}, doc! {"$unset": {"age": ""}})
        .await
        .expect("unset");
    // A transaction over two collections.
    let mut s = c.start_session().await.expect("session");
    s.start_transaction().await.expect("txn");
    people
        .insert_one(doc! {"_id": base + 50, "name": "in-txn"})
        .session(&mut s)
        .await
        .expect("txn insert");
    people
        .update_one(doc! {"_id": base + 4}, doc! {"$set": {"txn": n}})
        .session(&mut s)
        .await
        .expect("txn update");
    db.collection::<Document>("audit")
        .insert_one(doc! {"_id": n, "phase": n})
        .session(&mut s)
        .await
        .expect("txn audit");
    s.commit_transaction().await.expect("commit");
    // Capped collections take no transactional writes.
    db.collection::<Document>("log")
        .insert_one(doc! {"phase": n})
        .await
        .expect("log");
    match n {
        1 => {
            db.run_command(doc! {"create": "orders", "collation": {"locale": "fr", "strength": 2}})
                .await
                .expect("create orders");
            db.collection::<Document>("orders")
                .insert_one(doc! {"_id": 1, "item": "é"})
                .await
                .expect("order");
            // Plain: the stand-in's createIndexes events leave out index options
            // such as `unique` (mongod's carry the whole spec; README, "MongoDB").
            db.run_command(doc! {"createIndexes": "orders", "indexes": [{"key": {"item": 1}, "name": "item_1"}]})
                .await
                .expect("index orders");
        }
        2 => {
            db.run_command(doc! {"dropIndexes": "people", "index": "by_name"})
                .await
                .expect("drop index");
            c.database("admin")
                .run_command(doc! {"renameCollection": "app.orders", "to": "app.orders2024"})
                .await
                .expect("rename");
            db.collection::<Document>("scratch")
                .insert_one(doc! {"_id": 1})
                .await
                .expect("scratch");
        }
        _ => {
            db.collection::<Document>("scratch")
                .drop()
                .await
                .expect("drop scratch");
            c.database("other").drop().await.expect("drop db");
            db.run_command(doc! {"createIndexes": "people", "indexes": [{"key": {"m.a.c": 1}, "name": "deep"}]})
                .await
                .expect("index deep");
        }
    }
}

/// Every change event the server holds from `from` on, as (operationType, ns).
async fn server_events(c: &Client, from: Timestamp) -> Vec<(String, String)> {
    let mut cs = c
        .watch()
        .show_expanded_events(true)
        .start_at_operation_time(from)
        .max_await_time(Duration::from_millis(500))
        .await
        .expect("watch")
        .with_type::<Document>();
    let mut out = Vec::new();
    while let Some(ev) = cs.next_if_any().await.expect("next") {
        let ns = ev.get_document("ns").ok();
        let ns = format!(
            "{}.{}",
            ns.and_then(|n| n.get_str("db").ok()).unwrap_or(""),
            ns.and_then(|n| n.get_str("coll").ok()).unwrap_or("")
        );
        out.push((ev.get_str("operationType").unwrap_or("").to_string(), ns));
    }
    out
}

/// `tidemark digest URL --json`: the per-collection lines.
fn parts(url: &str) -> Vec<String> {
    let out = common::run::bin()
        .args(["digest", url, "--json"])
        .output()
        .expect("digest");
    let v: Value = serde_json::from_slice(&out.stdout).expect("digest json");
    v["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .map(|p| p.to_string())
        .collect()
}

/// An image stands for the source from the end of its read, rounded up to the
/// server's next second: waits until coverage is past that, so the next change
/// and the moment after it follow the image.
fn wait_past_image(run: &Run) {
    let past = Moment::from_micros(Moment::now().as_micros() + 2_000_000).to_rfc3339();
    run.wait_source(
        "docs",
        "coverage past the image",
        Duration::from_secs(90),
        |r| r["coverage"].as_str().is_some_and(|c| c > past.as_str()),
    );
}

fn restore_digest(run: &Run, at: &str, target: &str) -> String {
    let out = run.restore("docs", at, target, &["--force", "--json"]);
    assert!(
        out.status.success(),
        "restore at {at}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("restore json");
    v["digest"]["overall"].as_str().expect("digest").to_string()
}

#[test]
fn standin_mongodb_capture_survives_kill9_and_restores_three_moments_by_digest() {
    let Some(source) = StandIn::start(&[]) else {
        return;
    };
    let Some(target) = StandIn::start(&[]) else {
        return;
    };
    let rt = rt();
    let c = rt.block_on(source.client());
    rt.block_on(before_capture(&c));

    let mut run = Run::new(&config(&source.url()));
    run.start(&[]);
    wait_past_image(&run);
    let from = rt.block_on(optime(&c));

    rt.block_on(workload(&c, 1));
    let t1 = Moment::now();
    let d1 = digest(&source.url());
    let p1 = parts(&source.url());
    run.wait_covered("docs");

    // Killed while idle; phase 2 happens while capture is down.
    run.kill9();
    rt.block_on(workload(&c, 2));
    let t2 = Moment::now();
    let d2 = digest(&source.url());
    let p2 = parts(&source.url());
    run.start(&[]);
    run.wait_covered("docs");

    // Killed while it catches up with phase 3, and once more straight after a start.
    rt.block_on(workload(&c, 3));
    let t3 = Moment::now();
    let d3 = digest(&source.url());
    let p3 = parts(&source.url());
    run.kill9();
    run.start(&[]);
    run.kill9();
    run.start(&[]);
    run.wait_covered("docs");
    assert!(run.stop(), "run did not stop cleanly; log:\n{}", run.log());

    assert_ne!(d1, d2);
    assert_ne!(d2, d3);
    eprintln!("stand-in digests: t1 {d1}, t2 {d2}, t3 {d3}");
    for (t, d, p) in [(t1, &d1, &p1), (t2, &d2, &p2), (t3, &d3, &p3)] {
        let at = t.to_rfc3339();
        let got = restore_digest(&run, &at, &target.url());
        assert_eq!(
            &got,
            d,
            "restore at {at} differs from the source then:\nsource {p:#?}\ntarget {:#?}",
            parts(&target.url())
        );
        assert_eq!(
            &digest(&target.url()),
            d,
            "`tidemark digest` of the target at {at}"
        );
    }

    // Exactly the server's events since capture started: no gap, no duplicate.
    let expected = rt.block_on(server_events(&c, from));
    let out = run.cli(&["log", "--source", "docs", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("log json"))
        .collect();
    let journaled: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["payload"]["mongodb"]["operation"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                l["payload"]["mongodb"]["ns"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(journaled, expected, "journal vs the server's change stream");
    // Ordinals run 1, 2, 3, ... across the restarts.
    for (i, l) in lines.iter().enumerate() {
        let pos = l["position"].as_str().unwrap_or("");
        assert!(
            pos.starts_with(&format!("#{} ", i + 1)),
            "event {i}: position {pos}"
        );
    }
    // Transactions: three of three events each, the last marked as the commit.
    let txn: Vec<&Value> = lines.iter().filter(|l| !l["txn"].is_null()).collect();
    assert_eq!(txn.len(), 9, "transaction events");
    let commits = txn.iter().filter(|l| l["txn"]["commit"] == true).count();
    assert_eq!(commits, 3);
    for group in txn.chunks(3) {
        assert_eq!(group[0]["txn"]["id"], group[2]["txn"]["id"]);
        assert_eq!(group[2]["txn"]["commit"], true);
    }
}

/// The `docs` row of `status --json`.
fn oplog_status(run: &Run) -> Value {
    let out = run.cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("status json");
    v["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|r| r["name"] == "docs"))
        .cloned()
        .unwrap_or_else(|| panic!("no docs row: {v}"))
}

#[test]
fn standin_mongodb_oplog_pruned_past_the_journal_records_a_break_and_a_new_image() {
    // The stand-in keeps 60 oplog entries once told to prune; 286 is its answer to
    // a resume point pruned away (without the error labels mongod would add).
    let Some(source) = StandIn::start(&["--oplog-max-entries", "60"]) else {
        return;
    };
    let Some(target) = StandIn::start(&[]) else {
        return;
    };
    let rt = rt();
    let c = rt.block_on(source.client());
    let t = c.database("app").collection::<Document>("t");
    rt.block_on(async {
        for i in 0..5 {
            t.insert_one(doc! {"_id": i}).await.expect("insert");
        }
    });
    let mut run = Run::new(&config(&source.url()));
    run.start(&[]);
    wait_past_image(&run);
    rt.block_on(async { t.insert_one(doc! {"_id": 5, "before": "break"}).await })
        .expect("insert");
    let before = Moment::now();
    let d_before = digest(&source.url());
    run.wait_covered("docs");
    assert!(run.stop(), "stop; log:\n{}", run.log());
    // Oplog headroom: a few seconds of oplog behind the resume point, under the
    // default margin of an hour.
    let row = oplog_status(&run);
    let headroom = row["oplog_headroom_s"].as_i64().expect("headroom");
    assert!(headroom >= 0, "{row}");
    assert_eq!(row["oplog_holds_resume_point"], true, "{row}");
    assert!(row["oplog_window_s"].as_i64().is_some(), "{row}");
    assert!(
        row["oplog_warning"]
            .as_str()
            .is_some_and(|w| w.contains("oplog_warn_margin")),
        "{row}"
    );

    // While capture is down, far more changes than the oplog keeps.
    rt.block_on(async {
        for i in 100..300 {
            t.insert_one(doc! {"_id": i}).await.expect("insert");
        }
        // The stand-in's own prune command applies --oplog-max-entries now.
        let pruned = c
            .database("admin")
            .run_command(doc! {"secantusAdmin.pruneOplog": 1})
            .await
            .expect("secantusAdmin.pruneOplog");
        eprintln!("stand-in pruned its oplog: {pruned}");
    });
    let gap = Moment::now();
    // Pruned past the resume point: `status` says the history is gone.
    let row = oplog_status(&run);
    assert_eq!(row["oplog_holds_resume_point"], false, "{row}");
    assert!(
        row["oplog_warning"]
            .as_str()
            .is_some_and(|w| w.contains("no longer holds")),
        "{row}"
    );

    run.start(&[]);
    let row = run.wait_source(
        "docs",
        "a break and a second image",
        Duration::from_secs(90),
        |r| r["base_images"] == 2 && r["breaks"].as_array().is_some_and(|b| b.len() == 1),
    );
    eprintln!("stand-in: status after the prune: {}", row["breaks"]);
    assert!(run.log().contains("286"), "log:\n{}", run.log());
    wait_past_image(&run);
    rt.block_on(async { t.delete_one(doc! {"_id": 0}).await })
        .expect("delete");
    let after = Moment::now();
    let d_after = digest(&source.url());
    run.wait_covered("docs");
    assert!(run.stop());

    assert_eq!(
        restore_digest(&run, &before.to_rfc3339(), &target.url()),
        d_before,
        "restore before the break"
    );
    let out = run.restore("docs", &gap.to_rfc3339(), &target.url(), &["--force"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a restore into the gap must be refused"
    );
    assert!(err.contains("break") && err.contains("286"), "{err}");
    assert_eq!(
        restore_digest(&run, &after.to_rfc3339(), &target.url()),
        d_after,
        "restore after the new image"
    );
}
