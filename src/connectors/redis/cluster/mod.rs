//! Redis Cluster: capture every primary as a replica, restore into a cluster of
//! any shape, digest a cluster.
//!
//! - `topology`: the `redis+cluster://` URL, key slots (CRC16, hash tags), the slot
//!   map (`CLUSTER SLOTS`, migrating slots from `CLUSTER NODES`).
//! - `capture`: one replica link per primary (the single-server session of
//!   `replica.rs` on a part's view of the journal), the map journaled and re-read.
//! - `route`: keys of commands (the target's `COMMAND` table), per-node pipelines,
//!   slot routing.
//! - `restore`: per-shard images and replay, routed by slot into the target.
//! - `digest`: the per-key digest over every node, per shard.
//!
//! A cluster source is configured with `kind = "redis"` and a
//! `redis+cluster://host:port[,host:port...]` URL; restore and digest take the same
//! form. The hooks outside this folder are marked `cluster:` (the connector's
//! dispatch in `redis/mod.rs`, the part views of `capture::SourceJournal`, image
//! parts in the journal and the restore plan).

mod capture;
pub mod digest;
pub mod restore;
mod route;
pub mod topology;

use serde::Deserialize;

use crate::capture::{BoxFuture, CaptureContext, CaptureError, CaptureOptions, Source};
use crate::config::{self, invalid, ConfigError, Timeouts};
use crate::connectors::SourceSettings;
use crate::digest::Digest;
use crate::journal::Journal;
use crate::redact::SecretUrl;
use crate::restore::{Applied, ProgressSink, Rerun, RestoreError, RestorePlan, Target};
pub use topology::{is_cluster_url, ClusterUrl};

use super::RedisError;

/// A Redis Cluster source's settings (`kind = "redis"`, a `redis+cluster://` URL).
/// `Debug` masks the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// `redis+cluster://[user:password@]host:port[,host:port...]`.
    pub url: SecretUrl,
}

impl ClusterSettings {
    /// Parses and checks the section (`at` is `source[i]`); connects to nothing.
    pub fn parse(table: toml::Table, at: &str) -> Result<ClusterSettings, ConfigError> {
        let mut s: ClusterSettings = config::section(table, at)?;
        let field = format!("{at}.url");
        *s.url.expose_mut() = config::expand_env(s.url.expose(), &field)?;
        ClusterUrl::parse(s.url.expose()).map_err(|e| invalid(&field, e.to_string()))?;
        Ok(s)
    }
}

impl SourceSettings for ClusterSettings {
    fn scheduled_images(&self) -> bool {
        false
    }

    fn capture(&self, name: &str, opts: &CaptureOptions) -> Result<Box<dyn Source>, CaptureError> {
        let url = ClusterUrl::parse(self.url.expose()).map_err(|e| CaptureError::of(name, e))?;
        Ok(Box::new(ClusterSource {
            name: name.to_string(),
            url,
            timeouts: opts.timeouts,
        }))
    }

    fn url(&self) -> Option<String> {
        Some(self.url.expose().to_string())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The capture of a Redis Cluster source: see `capture.rs` for what is followed.
pub struct ClusterSource {
    name: String,
    url: ClusterUrl,
    timeouts: Timeouts,
}

impl Source for ClusterSource {
    /// Reads the slot map and checks every primary (reachable, credentials, a
    /// primary), changing nothing.
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        let (url, timeouts) = (self.url.clone(), self.timeouts);
        crate::capture::preflight_blocking(&self.name, move || {
            let map = topology::discover(&url, &[], &timeouts)?;
            for s in &map.shards {
                let node = super::locate::Locator::One(url.node(&s.host, s.port));
                super::replica::preflight(&node, &timeouts)?;
            }
            Ok::<(), RedisError>(())
        })
    }

    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>> {
        Box::pin(async move {
            let name = self.name.clone();
            let joined =
                tokio::task::spawn_blocking(move || capture::run(&self.url, ctx, &self.timeouts))
                    .await;
            match joined {
                Ok(Ok(())) => Ok(()),
                Ok(Err(RedisError::Journal(e))) => Err(CaptureError::Journal(e)),
                Ok(Err(e)) => Err(CaptureError::of(&name, e)),
                Err(e) => Err(CaptureError::config(
                    &name,
                    format!("capture thread failed: {e}"),
                )),
            }
        })
    }
}

/// A Redis Cluster as a restore target: every key goes to the primary owning its
/// slot (any number of primaries). Re-running a failed restore with `--force`
/// empties every primary and starts over.
pub struct ClusterTarget {
    url: ClusterUrl,
    timeouts: Timeouts,
    /// The source's slot map at the moment, once applied: the digest's parts.
    source_map: Option<topology::SlotMap>,
}

impl ClusterTarget {
    /// A target for `url` (connects to nothing yet).
    pub fn new(url: &str, timeouts: &Timeouts) -> Result<ClusterTarget, RestoreError> {
        Ok(ClusterTarget {
            url: ClusterUrl::parse(url)?,
            timeouts: *timeouts,
            source_map: None,
        })
    }
}

impl Target for ClusterTarget {
    fn describe(&self) -> String {
        self.url.to_string()
    }

    fn occupied(&mut self, _: &Journal, _: &RestorePlan) -> Result<Option<String>, RestoreError> {
        let n = restore::keys_held(&self.url, &self.timeouts)?;
        Ok((n > 0).then(|| format!("{n} keys")))
    }

    fn force_effect(&self) -> &'static str {
        restore::FORCE_EFFECT
    }

    fn rerun(&self) -> Rerun {
        Rerun::StartOverWithForce
    }

    fn preview(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
    ) -> Result<Vec<String>, RestoreError> {
        restore::preview(journal, plan)
    }

    fn apply(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        force: bool,
        progress: &mut dyn ProgressSink,
    ) -> Result<Applied, RestoreError> {
        let s = restore::restore(journal, plan, &self.url, &self.timeouts, force, progress)?;
        self.source_map = s.source_map.clone();
        Ok(restore::applied(&s, plan))
    }

    fn digest(&mut self) -> Result<Digest, RestoreError> {
        Ok(digest::digest(
            &self.url,
            self.source_map.as_ref(),
            &self.timeouts,
        )?)
    }
}
