//! A Kafka cluster as a restore target.
//!
//! Target topics that already hold records make the target occupied; with
//! `--force` the restored records are appended after them. So a failed restore is
//! not re-run with `--force` (the partial records would stay in front): delete
//! the partially written target topics first ([`Rerun::CleanUpFirst`]).

use std::collections::BTreeMap;

use super::{
    check_topic_map, cut, parse_topic_map, restore, KafkaRestoreOptions, KafkaRestoreSummary,
};
use crate::config::redact_url;
use crate::connectors::kafka::Connection;
use crate::connectors::KindOptions;
use crate::digest::{Digest, PartDigest};
use crate::journal::Journal;
use crate::restore::{Applied, ProgressSink, Rerun, RestoreError, RestorePlan, Target};

/// The `--topic-map` option.
pub const TOPIC_MAP: &str = "topic-map";

/// Restores into the cluster at a `kafka://` URL.
pub struct KafkaTarget {
    url: String,
    conn: Connection,
    topic_map: BTreeMap<String, String>,
    /// Target topics written by `apply`, for the digest.
    written: Vec<String>,
}

impl KafkaTarget {
    /// A target for `url` with the `--topic-map` of `options`; connects to nothing.
    pub fn new(url: &str, options: &KindOptions) -> Result<KafkaTarget, RestoreError> {
        let conn = Connection::from_url(url).map_err(|e| RestoreError::Target(e.to_string()))?;
        let topic_map = parse_topic_map(options.get(TOPIC_MAP).unwrap_or(""))
            .map_err(|e| RestoreError::Options(e.to_string()))?;
        Ok(KafkaTarget {
            url: url.to_string(),
            conn,
            topic_map,
            written: Vec::new(),
        })
    }

    fn name(&self, topic: &str) -> String {
        self.topic_map
            .get(topic)
            .cloned()
            .unwrap_or_else(|| topic.to_string())
    }
}

fn failed(e: impl std::fmt::Display) -> RestoreError {
    RestoreError::Target(e.to_string())
}

impl Target for KafkaTarget {
    fn describe(&self) -> String {
        redact_url(&self.url)
    }

    fn occupied(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
    ) -> Result<Option<String>, RestoreError> {
        let c = cut(journal, plan, false).map_err(failed)?;
        check_topic_map(&c, &self.topic_map).map_err(|e| RestoreError::Options(e.to_string()))?;
        let meta = self.conn.query_client(None).map_err(failed)?;
        let existing = self.conn.topics(&meta).map_err(failed)?;
        let mut holds = Vec::new();
        for source_topic in c.topics.keys() {
            let t = self.name(source_topic);
            let Some(&n) = existing.get(&t) else { continue };
            let mut records = 0;
            for p in 0..n {
                let (low, high) = self.conn.watermarks(&meta, &t, p).map_err(failed)?;
                records += (high - low).max(0);
            }
            if records > 0 {
                holds.push(format!("`{t}`: {records}"));
            }
        }
        Ok((!holds.is_empty()).then(|| format!("records in its topics ({})", holds.join(", "))))
    }

    fn force_effect(&self) -> &'static str {
        "append the restored records after the records already in the target topics (or map the topics elsewhere with --topic-map)"
    }

    fn teardown(&mut self, journal: &Journal, plan: &RestorePlan) -> Result<String, RestoreError> {
        let c = cut(journal, plan, false).map_err(failed)?;
        let meta = self.conn.query_client(None).map_err(failed)?;
        let existing = self.conn.topics(&meta).map_err(failed)?;
        let names: Vec<String> = c
            .topics
            .keys()
            .map(|t| self.name(t))
            .filter(|t| existing.contains_key(t))
            .collect();
        if names.is_empty() {
            return Ok("no restored topic to delete".into());
        }
        let admin = self.conn.admin().map_err(failed)?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let opts = rdkafka::admin::AdminOptions::new()
            .request_timeout(Some(std::time::Duration::from_secs(30)));
        let results =
            crate::connectors::kafka::client::futures_block_on(admin.delete_topics(&refs, &opts))
                .map_err(|e| failed(self.conn.request_error("DeleteTopics", e)))?;
        for r in results {
            if let Err((t, code)) = r {
                return Err(failed(
                    self.conn.request_error(&format!("DeleteTopics {t}"), code),
                ));
            }
        }
        Ok(format!("deleted topics {}", names.join(", ")))
    }

    fn rerun(&self) -> Rerun {
        Rerun::CleanUpFirst
    }

    fn preview(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
    ) -> Result<Vec<String>, RestoreError> {
        let c = cut(journal, plan, true).map_err(failed)?;
        let mut lines = Vec::new();
        for (t, m) in &c.topics {
            let configs: Vec<String> = m
                .configs
                .iter()
                .filter(|e| super::copies_config(e))
                .map(|e| format!("{}={}", e.name, e.value))
                .collect();
            lines.push(format!(
                "  topic {t} -> {} ({} partitions; configs: {})",
                self.name(t),
                m.partitions,
                if configs.is_empty() {
                    "-".to_string()
                } else {
                    configs.join(", ")
                }
            ));
        }
        for ((t, p), end) in &c.end {
            let n = c.records.get(&(t.clone(), *p)).copied().unwrap_or(0);
            lines.push(format!("  {t}/{p}: {n} records below offset {end}"));
        }
        for g in &c.groups {
            lines.push(format!(
                "  group {}: {}/{} committed offset {}",
                g.group, g.topic, g.partition, g.offset
            ));
        }
        Ok(lines)
    }

    fn apply(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        force: bool,
        progress: &mut dyn ProgressSink,
    ) -> Result<Applied, RestoreError> {
        let opts = KafkaRestoreOptions {
            target: self.url.clone(),
            topic_map: self.topic_map.clone(),
            force,
        };
        let s: KafkaRestoreSummary =
            restore(journal, plan, &opts, progress).map_err(|e| match e {
                super::KafkaRestoreError::Journal(j) => RestoreError::Journal(j),
                super::KafkaRestoreError::Stopped(why) => RestoreError::Stopped(why),
                super::KafkaRestoreError::BadTopicMap(_)
                | super::KafkaRestoreError::UnknownTopic { .. } => {
                    RestoreError::Options(e.to_string())
                }
                other => failed(other),
            })?;
        self.written = s.created.iter().chain(&s.reused).cloned().collect();
        let mut notes: Vec<String> = s
            .created
            .iter()
            .map(|t| format!("created topic {t}"))
            .collect();
        notes.extend(
            s.reused
                .iter()
                .map(|t| format!("wrote into existing topic {t}")),
        );
        notes.extend(s.groups.iter().map(|(g, t, p, from, to)| {
            format!("group {g}: {t}/{p} committed offset {to} (source offset {from})")
        }));
        Ok(Applied {
            counts: vec![
                ("records".into(), s.records),
                ("partitions".into(), s.digests.len() as u64),
            ],
            final_position: None,
            notes,
        })
    }

    fn digest(&mut self) -> Result<Digest, RestoreError> {
        let digests = if self.written.is_empty() {
            Default::default()
        } else {
            super::super::digest::digest_cluster(&self.conn, &self.written).map_err(failed)?
        };
        Ok(to_digest(&digests))
    }
}

/// Per-partition digests in the common shape.
pub fn to_digest(digests: &super::super::digest::Digests) -> Digest {
    Digest::from_parts(
        "records",
        digests
            .iter()
            .map(|((t, p), d)| PartDigest {
                name: format!("{t}/{p}"),
                rows: d.records(),
                digest: d.hex(),
            })
            .collect(),
    )
}
