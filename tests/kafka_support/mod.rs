//! Helpers for the Kafka tests: a producer, group offsets, `tidemark` as a child
//! process, and reading its status and digests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tidemark::time::{TimeSpec, Timestamp};

/// A producer on `addr`.
pub fn producer(addr: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// One record to produce.
pub struct Rec<'a> {
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    pub timestamp: i64,
}

/// Produces `recs` to `topic` and waits for every delivery.
pub fn produce(p: &BaseProducer, topic: &str, recs: &[Rec<'_>]) {
    for r in recs {
        let mut hs = OwnedHeaders::new();
        for (k, v) in r.headers {
            hs = hs.insert(Header { key: k, value: *v });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(r.partition)
            .timestamp(r.timestamp)
            .headers(hs);
        if let Some(k) = r.key {
            rec = rec.key(k);
        }
        if let Some(v) = r.value {
            rec = rec.payload(v);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// `n` simple records spread over `partitions`, keys and values derived from `tag`.
pub fn simple(p: &BaseProducer, topic: &str, partitions: i32, tag: &str, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("{tag}-k{i}")).collect();
    let vals: Vec<String> = (0..n).map(|i| format!("{tag}-value-{i}")).collect();
    let recs: Vec<Rec<'_>> = (0..n)
        .map(|i| Rec {
            partition: (i as i32) % partitions,
            key: Some(keys[i].as_bytes()),
            value: Some(vals[i].as_bytes()),
            headers: &[("src", Some(b"test"))],
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect();
    produce(p, topic, &recs);
}

/// Commits `offsets` for `group` on `addr`.
pub fn commit_group(addr: &str, group: &str, offsets: &[(&str, i32, i64)]) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (t, p, o) in offsets {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
}

/// The committed offsets of `group` on `topic` partitions `0..n` (-1: none).
pub fn committed(addr: &str, group: &str, topic: &str, n: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    (0..n)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Writes a config with one Kafka source named `events`.
pub fn kafka_config(dir: &Path, brokers: &str, topics: &[&str], groups: &[&str]) -> PathBuf {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let body = format!(
        "[journal]\npath = \"{}\"\nsync = \"always\"\n\n[[source]]\nname = \"events\"\nkind = \"kafka\"\nbrokers = [\"{brokers}\"]\ntopics = [{}]\ngroups = [{}]\n",
        dir.join("journal").display(),
        list(topics),
        list(groups)
    );
    let p = dir.join("tidemark.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// Runs `tidemark ARGS` to completion.
pub fn tidemark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env_remove("TIDEMARK_CONFIG")
        .output()
        .unwrap()
}

/// `tidemark run` as a child process; killed on drop.
pub struct Runner {
    child: Child,
    pub log: PathBuf,
}

impl Runner {
    pub fn start(cfg: &Path, log: PathBuf) -> Runner {
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .arg("-c")
            .arg(cfg)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Runner { child, log }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "tidemark run failed: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `status --json` of the source `events`.
pub fn status(cfg: &Path) -> Option<Value> {
    let out = tidemark(&["-c", cfg.to_str().unwrap(), "status", "--json"]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["sources"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "events")
        .cloned()
}

/// Waits until the source's coverage is at or after `t`; returns the coverage.
pub fn wait_coverage(cfg: &Path, t: Timestamp, runner_log: &Path) -> Timestamp {
    let start = Instant::now();
    loop {
        if let Some(s) = status(cfg) {
            if let Some(c) = s["coverage"].as_str() {
                if let Ok(TimeSpec::At(c)) = TimeSpec::parse(c, Timestamp::now()) {
                    if c >= t {
                        return c;
                    }
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "coverage never reached {t}; tidemark log:\n{}",
            std::fs::read_to_string(runner_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Per-partition `(records, sha256)` from `tidemark digest --json`.
pub fn digest(url: &str, topics: &[&str]) -> BTreeMap<(String, i32), (u64, String)> {
    let list = topics.join(",");
    let mut args = vec!["digest", url, "--json"];
    if !topics.is_empty() {
        args.push("--topics");
        args.push(&list);
    }
    let out = tidemark(&args);
    assert!(
        out.status.success(),
        "digest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["unit"], "records", "{v}");
    v["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (topic, partition) = p["name"].as_str().unwrap().rsplit_once('/').unwrap();
            (
                (topic.to_string(), partition.parse().unwrap()),
                (
                    p["rows"].as_u64().unwrap(),
                    p["digest"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// `digests` with topic names mapped by `f` (to compare a restore under other names).
pub fn renamed(
    d: &BTreeMap<(String, i32), (u64, String)>,
    f: impl Fn(&str) -> String,
) -> BTreeMap<(String, i32), (u64, String)> {
    d.iter()
        .map(|((t, p), v)| ((f(t), *p), v.clone()))
        .collect()
}

/// The configs the broker reports for `topic`, by name.
pub fn topic_configs(addr: &str, topic: &str) -> BTreeMap<String, String> {
    let conn =
        tidemark::connectors::kafka::Connection::from_url(&format!("kafka://{addr}")).unwrap();
    let admin = conn.admin().unwrap();
    conn.topic_configs(&admin, &[topic.to_string()])
        .unwrap()
        .remove(topic)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}
