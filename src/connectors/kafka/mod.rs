//! Kafka: topics and consumer-group offsets, captured, restored and digested.
//!
//! - [`client`]: how to reach a cluster, topic selection, metadata;
//! - [`config`]: the `[[source]]` section;
//! - [`capture`]: the capture loop; [`status`]: per-partition lag;
//! - [`restore`]: the restore target; [`digest`]: per-partition digests.

pub mod capture;
pub mod client;
pub mod config;
pub mod digest;
pub mod marker;
pub mod restore;
pub mod status;

use std::sync::Arc;

pub use client::*;

use crate::config::{ConfigError, SourceKind, Timeouts};
use crate::connectors::{
    Connector, ConnectorError, KindOption, KindOptions, OptionFor, SourceSettings,
};
use crate::restore::{RestoreError, Target};

/// The `--topics` option of `digest`.
pub const TOPICS: &str = "topics";

/// The Kafka connector.
pub struct Kafka;

impl Connector for Kafka {
    fn kind(&self) -> SourceKind {
        SourceKind::Kafka
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["kafka"]
    }

    fn parse_source(
        &self,
        _name: &str,
        table: toml::Table,
        field: &str,
    ) -> Result<Arc<dyn SourceSettings>, ConfigError> {
        Ok(Arc::new(config::KafkaSettings::parse(table, field)?))
    }

    /// A Kafka restore replays the journal from its start (records are the history).
    fn uses_images(&self) -> bool {
        false
    }

    fn options(&self) -> &'static [KindOption] {
        &[
            KindOption {
                name: restore::target::TOPIC_MAP,
                help: "Kafka: restore source topics under other names, `a=b,c=d`",
                command: OptionFor::Restore,
            },
            KindOption {
                name: TOPICS,
                help: "Kafka: only these topics (names or ^regex), comma-separated",
                command: OptionFor::Digest,
            },
        ]
    }

    fn target(
        &self,
        url: &str,
        options: &KindOptions,
        _: &Timeouts,
    ) -> Result<Box<dyn Target>, RestoreError> {
        Ok(Box::new(restore::target::KafkaTarget::new(url, options)?))
    }

    fn digest(
        &self,
        url: &str,
        options: &KindOptions,
        _: &Timeouts,
    ) -> Result<crate::digest::Digest, ConnectorError> {
        let conn = Connection::from_url(url).map_err(ConnectorError::from_display)?;
        let topics: Vec<String> = options
            .get(TOPICS)
            .map(|t| {
                t.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let digests =
            digest::digest_cluster(&conn, &topics).map_err(ConnectorError::from_display)?;
        Ok(restore::target::to_digest(&digests))
    }

    fn identity(&self, url: &str, _: &Timeouts) -> Result<String, ConnectorError> {
        let conn = Connection::from_url(url).map_err(ConnectorError::from_display)?;
        let client = conn
            .query_client(None)
            .map_err(ConnectorError::from_display)?;
        use rdkafka::consumer::Consumer;
        // The cluster id alone is not enough: some brokers (tansu) report the same
        // default id for every cluster. The brokers the cluster advertises are.
        let md = conn
            .metadata(&client)
            .map_err(ConnectorError::from_display)?;
        let id = client
            .client()
            .fetch_cluster_id(CONNECT_TIMEOUT)
            .unwrap_or_default();
        let mut brokers: Vec<String> = md
            .brokers()
            .iter()
            .map(|b| format!("{}:{}", b.host().to_ascii_lowercase(), b.port()))
            .collect();
        brokers.sort();
        Ok(format!("{id}/{}", brokers.join(",")))
    }
}
