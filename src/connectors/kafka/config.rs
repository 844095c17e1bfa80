//! The `kind = "kafka"` section of a `[[source]]` table.

use serde::Deserialize;

use super::client::Connection;
use crate::capture::{CaptureError, CaptureOptions, Source};
use crate::config::{self, invalid, ConfigError, Timeouts};
use crate::connectors::{Probe, SourceSettings};
use crate::journal::{Journal, SourceId};
use crate::redact::Secret;
use crate::time::Timestamp;

/// A Kafka source's settings. `Debug` masks the SASL password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic names, or regular expressions starting with `^`.
    pub topics: Vec<String>,
    /// Consumer groups whose committed offsets are protected.
    #[serde(default)]
    pub groups: Vec<String>,
    /// SASL settings.
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    /// Use TLS to the brokers.
    #[serde(default)]
    pub tls: bool,
}

/// Kafka SASL settings. `Debug` masks the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub mechanism: String,
    /// User name.
    pub username: String,
    /// Password (use `${ENV}`).
    pub password: Secret,
}

impl KafkaSettings {
    /// Parses and checks the section (`at` is `source[i]`).
    pub fn parse(table: toml::Table, at: &str) -> Result<KafkaSettings, ConfigError> {
        let mut s: KafkaSettings = config::section(table, at)?;
        let f = |k: &str| format!("{at}.{k}");
        for (j, b) in s.brokers.iter_mut().enumerate() {
            *b = config::expand_env(b, &f(&format!("brokers[{j}]")))?;
        }
        if let Some(sasl) = &mut s.sasl {
            *sasl.password.expose_mut() =
                config::expand_env(sasl.password.expose(), &f("sasl.password"))?;
        }
        if s.brokers.is_empty() {
            return Err(invalid(
                f("brokers"),
                "is empty; list at least one broker as host:port",
            ));
        }
        for (j, b) in s.brokers.iter().enumerate() {
            let ok = b.rsplit_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !h.contains(['@', '/']) && p.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(invalid(
                    f(&format!("brokers[{j}]")),
                    format!(
                        "`{}` is not host:port (a port from 1 to 65535)",
                        crate::redact::redact_url(b)
                    ),
                ));
            }
        }
        if s.topics.is_empty() {
            return Err(invalid(
                f("topics"),
                "is empty; list topic names or regular expressions starting with ^",
            ));
        }
        for (j, t) in s.topics.iter().enumerate() {
            if t.is_empty() {
                return Err(invalid(f(&format!("topics[{j}]")), "is empty"));
            }
            if t.starts_with('^') {
                if let Err(e) = regex::Regex::new(t) {
                    return Err(invalid(
                        f(&format!("topics[{j}]")),
                        format!("`{t}` is not a valid regular expression: {e}"),
                    ));
                }
            }
        }
        if let Some(sasl) = &s.sasl {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&sasl.mechanism.as_str()) {
                return Err(invalid(
                    f("sasl.mechanism"),
                    format!(
                        "`{}` is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                        sasl.mechanism
                    ),
                ));
            }
        }
        Ok(s)
    }

    /// How to reach the cluster.
    pub fn connection(&self) -> Connection {
        Connection::new(&self.brokers, self.sasl.clone(), self.tls)
    }
}

impl SourceSettings for KafkaSettings {
    fn capture(&self, name: &str, _: &CaptureOptions) -> Result<Box<dyn Source>, CaptureError> {
        Ok(Box::new(super::capture::KafkaSource::new(
            name,
            self.connection(),
            &self.topics,
            &self.groups,
        )?))
    }

    fn marker_problem(&self) -> Option<String> {
        super::marker::problem(&self.topics)
    }

    fn marker(
        &self,
        timeouts: &crate::config::Timeouts,
    ) -> Result<Box<dyn crate::connectors::MarkWriter>, crate::connectors::ConnectorError> {
        super::marker::connect(&self.connection(), timeouts)
    }

    fn is_marker(&self, event: &crate::event::ChangeEvent, id: &str) -> bool {
        super::marker::is_marker(event, id)
    }

    fn url(&self) -> Option<String> {
        // Identity checks need a plaintext URL; a SASL/TLS cluster is compared by
        // its broker list alone.
        Some(format!("kafka://{}", self.brokers.join(",")))
    }

    fn probe(&self, journal: &Journal, id: SourceId, _: &Timeouts) -> Option<Probe> {
        let rows = match super::status::partition_rows(journal, id, Timestamp::now()) {
            Ok(r) => r,
            Err(e) => {
                let mut fields = serde_json::Map::new();
                fields.insert("partitions_error".into(), serde_json::json!(e.to_string()));
                return Some(Probe {
                    fields,
                    ..Default::default()
                });
            }
        };
        let lines = rows
            .iter()
            .map(|p| {
                let risk = match p["seconds_until_loss"].as_i64() {
                    Some(s) => format!("  retention may delete uncaptured records in {s}s"),
                    None => String::new(),
                };
                format!(
                    "    {}/{} high-water mark {} journaled up to {} lag {} (observed {}){risk}",
                    p["topic"].as_str().unwrap_or("?"),
                    p["partition"],
                    p["high_watermark"],
                    p["journaled_next"],
                    p["lag"],
                    p["observed_at"].as_str().unwrap_or("-"),
                )
            })
            .collect();
        let mut fields = serde_json::Map::new();
        fields.insert("partitions".into(), serde_json::json!(rows));
        Some(Probe {
            fields,
            suffix: String::new(),
            lines,
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
