//! MongoDB: a deployment's collections captured through one change stream,
//! restored and digested.
//!
//! - [`config`]: the `[[source]]` section; [`client`]: connecting, errors, which
//!   namespaces are captured;
//! - [`capture`]: the base image and the change stream; [`image`]: how an image
//!   meets the stream, and its chunk format; [`token`]: resume tokens and cluster
//!   times;
//! - [`restore`]: the restore target; [`apply`]: applying one event; [`digest`]:
//!   per-collection digests.
//!
//! Tested against a stand-in only (the SecantusDB server; no `mongod` can be
//! installed on the build machines): see README, "MongoDB".

pub mod apply;
pub mod capture;
pub mod client;
pub mod config;
pub mod digest;
pub mod headroom;
pub mod image;
pub mod marker;
pub mod restore;
pub mod token;

use std::sync::Arc;

use crate::config::{ConfigError, SourceKind, Timeouts};
use crate::connectors::{Connector, ConnectorError, KindOptions, SourceSettings};
use crate::restore::{RestoreError, Target};

/// URL schemes of this kind.
pub const SCHEMES: &[&str] = &["mongodb", "mongodb+srv"];

/// The MongoDB connector.
pub struct Mongodb;

impl Connector for Mongodb {
    fn kind(&self) -> SourceKind {
        SourceKind::Mongodb
    }

    fn schemes(&self) -> &'static [&'static str] {
        SCHEMES
    }

    fn parse_source(
        &self,
        _name: &str,
        table: toml::Table,
        field: &str,
    ) -> Result<Arc<dyn SourceSettings>, ConfigError> {
        Ok(Arc::new(config::MongoSettings::parse(table, field)?))
    }

    /// A restore loads the newest base image, then replays the events after it.
    fn uses_images(&self) -> bool {
        true
    }

    fn target(
        &self,
        url: &str,
        _: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<Box<dyn Target>, RestoreError> {
        Ok(Box::new(restore::MongoTarget::new(url, timeouts)?))
    }

    fn digest(
        &self,
        url: &str,
        _: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<crate::digest::Digest, ConnectorError> {
        let (url, timeouts) = (url.to_string(), *timeouts);
        client::block_on(async move {
            let conn = client::Conn::open(&url, &timeouts).await?;
            digest::digest(&conn).await
        })
        .map_err(ConnectorError::from_display)
    }

    /// The replica set's name and its members, as the server reports them.
    fn identity(&self, url: &str, timeouts: &Timeouts) -> Result<String, ConnectorError> {
        let (url, timeouts) = (url.to_string(), *timeouts);
        client::block_on(async move {
            let conn = client::Conn::open(&url, &timeouts).await?;
            let hello = conn
                .command("admin", mongodb::bson::doc! {"hello": 1}, "hello")
                .await?;
            let set = hello.get_str("setName").unwrap_or_default().to_string();
            let mut hosts: Vec<String> = hello
                .get_array("hosts")
                .map(|a| {
                    a.iter()
                        .filter_map(|h| h.as_str().map(str::to_lowercase))
                        .collect()
                })
                .unwrap_or_default();
            hosts.sort();
            Ok::<_, client::MongoError>(format!("{set}/{}", hosts.join(",")))
        })
        .map_err(ConnectorError::from_display)
    }
}
