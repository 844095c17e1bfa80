//! Applications against real servers: a PostgreSQL database, a Redis cache, a
//! Kafka topic (tansu), a MongoDB collection (on the SecantusDB stand-in, not
//! mongod) and the application's definition in Kubernetes (a real kube-apiserver)
//! captured as one application. A writer makes orders: for each, a row, then a
//! document, then a cache entry, then an event, all with the order id; between
//! the moments the test edits a ConfigMap and scales a Deployment. At five
//! moments (three marked recovery points, two unmarked moments), with a kill -9
//! of `tidemark run` between them, `restore --app` rebuilds all five in a second
//! set of servers (Kubernetes: another namespace), and each target's digest
//! equals its source's at that moment. A point taken while the writer runs
//! restores causally consistent: no document, cache entry or event without its
//! row. A restore whose cache target is down leaves the Kubernetes workloads
//! held at zero replicas.

mod common;
mod kafka_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kube::KubeServer;
use common::mongo::StandIn;
use common::run::Run;
use common::{Postgres, Redis, RespClient, Tansu};
use mongodb::bson::{doc, Bson, Document};
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::{json, Value};
use tidemark::time::{TimeSpec, Timestamp};

/// The rehearsal's check: the restored cache holds keys.
const CHECKS: &str = r#"checks = ['test "$(redis-cli -u "$TIDEMARK_TARGET_CACHE" DBSIZE)" -gt 0']"#;

/// Milliseconds between the three writes of one order.
const GAP_MS: u64 = 100;

fn json(out: &std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The Kubernetes namespace of the application, in the source cluster.
const NS: &str = "/api/v1/namespaces";

/// The digest of namespace `ns` on `server`, as `tidemark digest` computes it.
fn kube_digest(server: &KubeServer, ns: &str) -> tidemark::digest::Digest {
    let url = server.url(&format!("namespaces={ns}"));
    tidemark::connectors::for_url(&url)
        .unwrap()
        .digest(
            &url,
            &tidemark::connectors::KindOptions::default(),
            &Default::default(),
        )
        .unwrap()
}

/// Namespace `shop` of `d` as if it were `to`.
fn renamed(d: &tidemark::digest::Digest, to: &str) -> String {
    d.clone()
        .renamed(|n| n.replace("/shop/", &format!("/{to}/")))
        .overall
}

/// The application's definition before capture: a namespace, a ConfigMap, a
/// Deployment.
fn definition(s: &KubeServer) {
    s.create(
        NS,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    s.create(
        &format!("{NS}/shop/configmaps"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"round": "none"}}),
    );
    let template = json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "registry.example/web:1.0"}]}});
    s.create(
        "/apis/apps/v1/namespaces/shop/deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}}),
    );
}

/// `spec.replicas` and the held-replicas annotation of Deployment `web` in `ns`.
fn web_replicas(s: &KubeServer, ns: &str) -> (i64, Option<String>) {
    let d = s
        .get(&format!("/apis/apps/v1/namespaces/{ns}/deployments/web"))
        .unwrap_or_else(|e| panic!("deployment web in {ns}: {e}"));
    (
        d["spec"]["replicas"].as_i64().unwrap(),
        d["metadata"]["annotations"]["tidemark.io/held-replicas"]
            .as_str()
            .map(str::to_string),
    )
}

/// The `_id`s of collection shop.orders at `url`.
fn doc_ids(rt: &tokio::runtime::Runtime, url: &str) -> BTreeSet<u64> {
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(url).await.expect("mongo");
        c.database("shop")
            .collection::<Document>("orders")
            .distinct("_id", doc! {})
            .await
            .expect("distinct")
            .into_iter()
            .filter_map(|b| match b {
                Bson::Int64(n) => Some(n as u64),
                _ => None,
            })
            .collect()
    })
}

fn mongo_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn digest(url: &str) -> String {
    let out = kafka_support::tidemark(&["digest", url, "--json"]);
    json(&out, "digest")["overall"]
        .as_str()
        .expect("overall digest")
        .to_string()
}

/// Per-partition digests of topic `topic`, keyed by partition only.
fn topic_digest(url: &str, topic: &str) -> Vec<(i32, u64, String)> {
    kafka_support::digest(url, &[topic])
        .into_iter()
        .map(|((_, p), (n, d))| (p, n, d))
        .collect()
}

struct Writer {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    orders: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(pg_url: String, mongo_url: String, redis_port: u16, brokers: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let pause = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let orders = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, pause, paused, orders) = (
                Arc::clone(&stop),
                Arc::clone(&pause),
                Arc::clone(&paused),
                Arc::clone(&orders),
            );
            std::thread::spawn(move || {
                let rt = mongo_rt();
                let client = rt.block_on(async {
                    let (c, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
                        .await
                        .expect("connect");
                    tokio::spawn(conn);
                    c
                });
                let docs = rt.block_on(async {
                    mongodb::Client::with_uri_str(&mongo_url)
                        .await
                        .expect("mongo")
                        .database("shop")
                        .collection::<Document>("orders")
                });
                let mut cache = RespClient::connect(redis_port).expect("redis");
                let producer = kafka_support::producer(&brokers);
                let gap = Duration::from_millis(GAP_MS);
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    if pause.load(Ordering::Relaxed) {
                        paused.store(true, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    paused.store(false, Ordering::Relaxed);
                    n += 1;
                    let id = n.to_string();
                    rt.block_on(client.execute(
                        "INSERT INTO orders (id, amount) VALUES ($1, $2)",
                        &[&n, &((n % 97) as i32)],
                    ))
                    .expect("insert");
                    if n % 5 == 0 {
                        rt.block_on(client.execute(
                            "UPDATE orders SET amount = amount + 1 WHERE id = $1",
                            &[&(n - 3)],
                        ))
                        .expect("update");
                    }
                    std::thread::sleep(gap);
                    rt.block_on(async {
                        docs.insert_one(doc! {"_id": n, "amount": (n % 97) as i32})
                            .await
                    })
                    .expect("insert document");
                    std::thread::sleep(gap);
                    cache
                        .cmd(&["SET", &format!("order:{id}"), &format!("amount={}", n % 97)])
                        .expect("SET");
                    std::thread::sleep(gap);
                    let mut rec: BaseRecord<'_, str, str> = BaseRecord::to("orders")
                        .partition((n % 2) as i32)
                        .key(id.as_str())
                        .payload("placed");
                    loop {
                        match producer.send(rec) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                rec = back;
                                producer.poll(Duration::from_millis(10));
                            }
                        }
                    }
                    producer.flush(Duration::from_secs(30)).expect("flush");
                    orders.store(n as u64, Ordering::Relaxed);
                    std::thread::sleep(gap);
                }
                paused.store(true, Ordering::Relaxed);
            })
        };
        Writer {
            stop,
            pause,
            paused,
            orders,
            handle: Some(handle),
        }
    }

    /// Pauses after the order in progress; returns once no write is under way.
    fn pause(&self) {
        self.pause.store(true, Ordering::Relaxed);
        let start = Instant::now();
        while !self.paused.load(Ordering::Relaxed) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "writer did not pause"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
        self.pause.store(false, Ordering::Relaxed);
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        self.orders.load(Ordering::Relaxed)
    }
}

/// Waits until every source's coverage is at or after `t`.
fn wait_covered(run: &Run, t: Timestamp) {
    let start = Instant::now();
    loop {
        let out = run.cli(&["status", "--json"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let covered = v["sources"].as_array().is_some_and(|s| {
                s.len() == 5
                    && s.iter().all(|s| {
                        s["coverage"].as_str().is_some_and(|c| {
                            matches!(TimeSpec::parse(c, Timestamp::now()), Ok(TimeSpec::At(c)) if c >= t)
                        })
                    })
            });
            if covered {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "coverage never reached {t}; log:\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What one moment should restore to.
struct Moment {
    /// `--point ID` or `--at T`.
    args: Vec<String>,
    db: String,
    cache: String,
    events: Vec<(i32, u64, String)>,
    docs: String,
    definition: tidemark::digest::Digest,
    /// Deployment `web`'s replicas then.
    replicas: i64,
    /// Orders made by then.
    orders: u64,
}

#[test]
fn application_restores_every_source_to_one_cut_through_kill9() {
    let Some(kafka) = Tansu::start("application") else {
        return;
    };
    let Some(kafka2) = Tansu::start("application") else {
        return;
    };
    kafka.create_topic("orders", 2);
    kafka.create_topic("tidemark.points", 1);
    let pg = Postgres::start();
    pg.0.psql("postgres", "CREATE DATABASE shop");
    pg.0.psql(
        "shop",
        "CREATE TABLE orders (id bigint PRIMARY KEY, amount int NOT NULL)",
    );
    let Some(mongo) = StandIn::start(&[]) else {
        return;
    };
    let Some(mongo2) = StandIn::start(&[]) else {
        return;
    };
    let Some(kube) = KubeServer::start(&[]) else {
        return;
    };
    definition(&kube);
    let redis = Redis::start_with(&["--repl-ping-replica-period", "1"]);
    let pg2 = Postgres::start();
    let redis2 = Redis::start();
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("secrets.key");
    std::fs::write(&key_file, "5e".repeat(32)).unwrap();
    let mut profiles: Vec<String> = (0..7).map(|i| format!("r{i}")).collect();
    // The cache target of profile `bad` is down: nothing listens on port 1.
    profiles.push("bad".into());
    let mut body = format!(
        "[[source]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"{}\"\n\n\
         [[source]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"{}\"\n\n\
         [[source]]\nname = \"events\"\nkind = \"kafka\"\nbrokers = [\"{}\"]\ntopics = [\"orders\", \"tidemark.points\"]\n\n\
         [[source]]\nname = \"docs\"\nkind = \"mongodb\"\nurl = \"{}\"\n\n\
         [[source]]\nname = \"k8s\"\nkind = \"kubernetes\"\nkubeconfig = \"{}\"\nnamespaces = [\"shop\"]\nsecrets_key_file = \"{}\"\ndiscovery_interval = \"1s\"\ncoverage_interval = \"1s\"\n\n\
         [[application]]\nname = \"shop\"\nsources = [\"db\", \"cache\", \"events\", \"docs\", \"k8s\"]\n{CHECKS}\n\n",
        pg.0.url("shop"),
        redis.url(),
        kafka.addr(),
        mongo.url(),
        kube.kubeconfig().display(),
        key_file.display()
    );
    for p in &profiles {
        pg2.0.psql("postgres", &format!("CREATE DATABASE {p}"));
        let cache = if p == "bad" {
            "redis://127.0.0.1:1".to_string()
        } else {
            redis2.url()
        };
        body.push_str(&format!(
            "[application.profile.{p}.db]\ntarget = \"{}\"\n\
             [application.profile.{p}.cache]\ntarget = \"{cache}\"\nforce = true\n\
             [application.profile.{p}.events]\ntarget = \"{}\"\ntopic-map = \"orders=orders-{p},tidemark.points=points-{p}\"\n\
             [application.profile.{p}.docs]\ntarget = \"{}\"\nforce = true\n\
             [application.profile.{p}.k8s]\ntarget = \"{}\"\nnamespace-map = \"shop=shop-{p}\"\n\n",
            pg2.0.url(p),
            kafka2.url(),
            mongo2.url(),
            kube.url("")
        ));
    }
    let mut run = Run::new(&body);
    let out = run.cli(&["config", "validate"]);
    assert!(
        out.status.success(),
        "validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    run.start(&[]);
    wait_covered(&run, Timestamp::now());

    let writer = Writer::start(pg.0.url("shop"), mongo.url(), redis.port, kafka.addr());
    let mut moments: Vec<Moment> = Vec::new();
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(1000));
        // The definition changes under load too: a setting, a scale.
        let replicas = round + 2;
        kube.patch(
            &format!("{NS}/shop/configmaps/settings"),
            json!({"data": {"round": round.to_string()}}),
        );
        kube.patch(
            "/apis/apps/v1/namespaces/shop/deployments/web",
            json!({"spec": {"replicas": replicas}}),
        );
        std::thread::sleep(Duration::from_millis(500));
        if round == 3 {
            // kill -9 between the moments: capture resumes where it was.
            run.kill9();
            run.start(&[]);
        }
        writer.pause();
        let orders = writer.orders.load(Ordering::Relaxed);
        let quiet = Timestamp::now();
        wait_covered(&run, quiet);
        let args = if round % 2 == 0 {
            let v = json(
                &run.cli(&[
                    "point",
                    "create",
                    "shop",
                    "--label",
                    &format!("m{round}"),
                    "--json",
                ]),
                "point create",
            );
            let worst = v["sources"]
                .as_object()
                .unwrap()
                .values()
                .map(|c| c["uncertainty_us"].as_i64().unwrap())
                .max()
                .unwrap();
            println!("round {round}: point {} (±{worst} µs)", v["id"]);
            vec!["--point".to_string(), v["id"].as_str().unwrap().to_string()]
        } else {
            let t = Timestamp::now();
            println!("round {round}: unmarked moment {t}");
            vec!["--at".to_string(), t.to_rfc3339()]
        };
        // The sources' state at the moment (after the point's markers: a cut is
        // just after them, and MongoDB's and Kubernetes' markers are data).
        let db = digest(&pg.0.url("shop"));
        let cache = digest(&redis.url());
        let events = topic_digest(&kafka.url(), "orders");
        let docs = digest(&mongo.url());
        let definition = kube_digest(&kube, "shop");
        // The moment's state holds for a while after it (past any offset).
        std::thread::sleep(Duration::from_millis(700));
        writer.resume();
        moments.push(Moment {
            args,
            db,
            cache,
            events,
            docs,
            definition,
            replicas,
            orders,
        });
    }
    // A point under load: the writer goes on.
    std::thread::sleep(Duration::from_millis(1000));
    let live = json(
        &run.cli(&["point", "create", "shop", "--label", "under-load", "--json"]),
        "point create under load",
    );
    std::thread::sleep(Duration::from_millis(1000));
    let orders = writer.finish();
    assert!(orders > 10, "the writer made only {orders} orders");
    wait_covered(&run, Timestamp::now());
    run.stop();

    let list = json(&run.cli(&["point", "list", "shop", "--json"]), "point list");
    assert_eq!(
        list.as_array().unwrap().len(),
        4,
        "three marked points and one under load"
    );

    // A dry run plans every source and touches nothing.
    let out = run.cli(&[
        "restore",
        "--app",
        "shop",
        "--profile",
        "r6",
        "--point",
        "m0",
        "--dry-run",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dry run: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [
        "`db`",
        "`cache`",
        "`events`",
        "`docs`",
        "`k8s`",
        "dry run: nothing was touched",
    ] {
        assert!(text.contains(s), "dry run output lacks {s}: {text}");
    }
    assert_eq!(
        pg2.0
            .psql(
                "r6",
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            .trim(),
        "0",
        "a dry run created tables"
    );

    for (i, m) in moments.iter().enumerate() {
        let p = &profiles[i];
        let mut args = vec!["restore", "--app", "shop", "--profile", p, "--json"];
        args.extend(m.args.iter().map(String::as_str));
        let report = json(&run.cli(&args), "restore --app");
        assert_eq!(report["ok"], true, "{report}");
        for s in report["sources"].as_array().unwrap() {
            assert_eq!(s["state"], "restored", "{s}");
            println!(
                "moment {i}: {} cut at {} {}",
                s["source"], s["cut"]["at"], s["cut"]["uncertainty_us"]
            );
        }
        assert_eq!(digest(&pg2.0.url(p)), m.db, "moment {i}: database");
        assert_eq!(digest(&redis2.url()), m.cache, "moment {i}: cache");
        assert_eq!(
            topic_digest(&kafka2.url(), &format!("orders-{p}")),
            m.events,
            "moment {i}: events"
        );
        assert_eq!(digest(&mongo2.url()), m.docs, "moment {i}: documents");
        let ns = format!("shop-{p}");
        assert_eq!(
            kube_digest(&kube, &ns).overall,
            renamed(&m.definition, &ns),
            "moment {i}: definition"
        );
        // Held at zero while the data restored, then released to the moment's count.
        assert_eq!(web_replicas(&kube, &ns), (m.replicas, None), "moment {i}");
    }

    // A restore whose cache target is down: the cache fails, the other data
    // restores stop or finish, and the definition is restored with its workloads
    // held at zero replicas, the count at the moment in an annotation.
    let out = run.cli(&[
        "restore",
        "--app",
        "shop",
        "--profile",
        "bad",
        "--json",
        "--point",
        "m0",
    ]);
    assert!(
        !out.status.success(),
        "a restore with a target down succeeded"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "restore --app (bad): not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(report["ok"], false, "{report}");
    for s in report["sources"].as_array().unwrap() {
        let want: &[&str] = match s["source"].as_str().unwrap() {
            "cache" => &["failed"],
            "k8s" => &["held"],
            _ => &["restored", "stopped"],
        };
        assert!(
            want.contains(&s["state"].as_str().unwrap()),
            "{}: {s}",
            s["source"]
        );
    }
    let held = web_replicas(&kube, "shop-bad");
    assert_eq!(
        held,
        (0, Some(moments[0].replicas.to_string())),
        "held workload"
    );

    // `diff` between the first point and the unmarked moment after it lists
    // exactly the orders made between them.
    let (o0, o1) = (moments[0].orders, moments[1].orders);
    let mut args = vec!["diff", "--app", "shop", "--json", "--from", "m0", "--to"];
    args.push(&moments[1].args[1]);
    let d = json(&run.cli(&args), "diff");
    let by = |name: &str| {
        d["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == name)
            .cloned()
            .unwrap()
    };
    let made = o1 - o0;
    let updates = (o0 + 1..=o1).filter(|n| n % 5 == 0).count() as u64;
    let orders = &by("db")["changes"]["table public.orders"];
    assert_eq!(orders["actions"]["insert"], made, "{d}");
    assert_eq!(
        orders["actions"]["update"].as_u64().unwrap_or(0),
        updates,
        "{d}"
    );
    assert_eq!(
        by("cache")["changes"]["db 0 string"]["actions"]["written"],
        made,
        "{d}"
    );
    let records: u64 = (0..2)
        .map(|p| {
            by("events")["changes"][format!("partition orders/{p}")]["actions"]["record"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(records, made, "{d}");
    assert_eq!(
        by("docs")["changes"]["collection shop.orders"]["actions"]["insert"],
        made,
        "{d}"
    );
    // `history` of order 2: inserted, then updated by order 5.
    let h = json(
        &run.cli(&["history", "--source", "db", "--key", "2", "--json"]),
        "history",
    );
    let actions: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["insert", "update"], "{h}");
    let h = json(
        &run.cli(&["history", "--source", "cache", "--key", "order:2", "--json"]),
        "history",
    );
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");

    // The point under load: every cache entry and every event has its row, when
    // the writes of one order are further apart than the point's uncertainty.
    let worst = live["sources"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["uncertainty_us"].as_i64().unwrap())
        .max()
        .unwrap();
    let report = json(
        &run.cli(&[
            "restore",
            "--app",
            "shop",
            "--profile",
            "r5",
            "--json",
            "--point",
            live["id"].as_str().unwrap(),
        ]),
        "restore --app under load",
    );
    assert_eq!(report["ok"], true, "{report}");
    let rows: BTreeSet<u64> = pg2
        .0
        .psql("r5", "SELECT id FROM orders")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let restored_docs = doc_ids(&mongo_rt(), &mongo2.url());
    let mut c2 = redis2.client();
    let cached: BTreeSet<u64> = c2
        .cmd(&["KEYS", "order:*"])
        .unwrap()
        .lines()
        .filter_map(|k| k.strip_prefix("order:")?.parse().ok())
        .collect();
    let events: u64 = topic_digest(&kafka2.url(), "orders-r5")
        .iter()
        .map(|(_, n, _)| n)
        .sum();
    println!(
        "under load: {} rows, {} documents, {} cache entries, {events} events, uncertainty ±{worst} µs (writes {GAP_MS} ms apart)",
        rows.len(),
        restored_docs.len(),
        cached.len()
    );
    assert!(!rows.is_empty(), "the point under load restored no rows");
    if worst < (GAP_MS * 1000) as i64 {
        let orphans: Vec<&u64> = cached.difference(&rows).collect();
        assert!(
            orphans.is_empty(),
            "cache entries without their row: {orphans:?}"
        );
        let orphans: Vec<&u64> = restored_docs.difference(&rows).collect();
        assert!(
            orphans.is_empty(),
            "documents without their row: {orphans:?}"
        );
        let orphans: Vec<&u64> = cached.difference(&restored_docs).collect();
        assert!(
            orphans.is_empty(),
            "cache entries without their document: {orphans:?}"
        );
        assert!(
            cached.len() as u64 >= events,
            "more events ({events}) than cache entries ({}): an event without its cache entry",
            cached.len()
        );
        assert!(rows.len() >= cached.len(), "more cache entries than rows");
    } else {
        println!("uncertainty above the gap between writes: the causal check does not apply");
    }

    // A rehearsal into the sandbox profile: restored, checked, recorded, torn down.
    let r = json(
        &run.cli(&[
            "rehearse",
            "--app",
            "shop",
            "--profile",
            "r6",
            "--point",
            "m2",
            "--json",
        ]),
        "rehearse",
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["checks"][0]["ok"], true, "{r}");
    for s in r["sources"].as_array().unwrap() {
        let t = s["teardown"].as_str().unwrap_or("");
        assert!(!t.is_empty() && !t.starts_with("not torn down"), "{s}");
    }
    assert_eq!(
        pg2.0
            .psql(
                "r6",
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            .trim(),
        "0",
        "the sandbox database was not torn down"
    );
    assert_eq!(
        c2.cmd(&["DBSIZE"]).unwrap().trim(),
        "0",
        "the sandbox cache was not flushed"
    );
    let out = kafka_support::tidemark(&["digest", &kafka2.url(), "--topics", "orders-r6"]);
    assert!(
        !out.status.success(),
        "topic orders-r6 still exists after the teardown"
    );
    assert!(
        doc_ids(&mongo_rt(), &mongo2.url()).is_empty(),
        "the sandbox documents were not dropped"
    );
    assert!(
        kube.get("/apis/apps/v1/namespaces/shop-r6/deployments/web")
            .is_err(),
        "the sandbox Deployment was not deleted"
    );
    let st = json(&run.cli(&["status", "--json"]), "status");
    assert_eq!(
        st["applications"][0]["last_successful_rehearsal"]["id"], r["id"],
        "{st}"
    );
}
