//! Redis (and Valkey) capture: tidemark follows the primary as a replica.
//!
//! - `url`: the URL forms; `tls`: `rediss://`; `locate`: finding the primary
//!   (one server, an address list, Sentinel) at every (re)connect.
//! - `resp`: a blocking RESP2 client, the replication-stream parser.
//! - `rdb`: the streaming RDB parser (versions 9 to 12).
//! - `image`: the base-image chunk format `redis-kv-v1`.
//! - `replica`: handshake, full sync into a base image, the command stream.
//!
//! # Offsets and acknowledgement
//! Every command of the replication stream is journaled with
//! `Position::redis(replid, offset)`, where `offset` is the replication offset
//! *after* the command (the primary's byte count of the stream). A batch is
//! appended, and only after `append` returned is `REPLCONF ACK <offset>` sent with
//! the last appended offset: the primary never learns of an offset the journal
//! could lose. On restart tidemark sends `PSYNC <replid> <checkpoint+1>`; on
//! `+FULLRESYNC` it takes a new base image (the break in history: a restore after
//! it starts from it; one before it never replays commands of the new history).

// cluster: Redis Cluster capture, restore and digest (`redis+cluster://`).
pub mod cluster;
pub mod config;
pub mod digest;
pub mod image;
mod images;
pub mod locate;
pub mod marker;
mod probe;
pub mod rdb;
mod replica;
pub mod resp;
pub mod restore;
mod stream;
pub mod tls;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use crate::capture::{BoxFuture, CaptureContext, CaptureError, CaptureOptions, Fault, Source};
use crate::config::{ConfigError, SourceKind, Timeouts};
use crate::connectors::{
    Connector, ConnectorError, KindOption, KindOptions, OptionFor, SourceSettings,
};
use crate::journal::JournalError;
use crate::restore::{RestoreError, Target};

/// URL schemes of Redis.
/// (`redis+cluster` is a cluster: see [`cluster`]; `redis+sentinel` names
/// Sentinels: see [`locate`].)
pub const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis+sentinel",
    "rediss+sentinel",
    cluster::topology::SCHEME,
];

/// The Redis (and Valkey) connector.
pub struct Redis;

impl Connector for Redis {
    fn kind(&self) -> SourceKind {
        SourceKind::Redis
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
        // cluster: a redis+cluster:// url is a cluster source.
        if table
            .get("url")
            .and_then(|u| u.as_str())
            .is_some_and(cluster::is_cluster_url)
        {
            return Ok(Arc::new(cluster::ClusterSettings::parse(table, field)?));
        }
        Ok(Arc::new(config::RedisSettings::parse(table, field)?))
    }

    fn uses_images(&self) -> bool {
        true
    }

    fn scheduled_images(&self) -> bool {
        true
    }

    fn options(&self) -> &'static [KindOption] {
        &[
            KindOption {
                name: "apply-as",
                help: "Redis: `primary` (default: tidemark serves the target the replication protocol, so history applies with replica semantics) or `client` (replay as an ordinary client); by default a target that cannot follow tidemark is restored as a client, with a warning",
                command: OptionFor::Restore,
            },
            KindOption {
                name: "listen",
                help: "Redis: host[:port] of this machine on which tidemark serves the target's replication link (default: the local address of the connection to the target, any free port)",
                command: OptionFor::Restore,
            },
        ]
    }

    fn target(
        &self,
        url: &str,
        options: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<Box<dyn Target>, RestoreError> {
        if cluster::is_cluster_url(url) {
            // cluster: client replay only (a cluster node refuses REPLICAOF).
            if options.get("apply-as") == Some("primary") {
                return Err(RestoreError::Options(
                    "--apply-as primary: a Redis Cluster node cannot become tidemark's replica (REPLICAOF is refused in cluster mode); a cluster restore replays as a client".into(),
                ));
            }
            return Ok(Box::new(cluster::ClusterTarget::new(url, timeouts)?));
        }
        let mode = restore::ApplyAs::parse(options.get("apply-as"))?;
        Ok(Box::new(restore::RedisTarget::new(
            url,
            timeouts,
            mode,
            options.get("listen"),
        )?))
    }

    fn digest(
        &self,
        url: &str,
        _: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<crate::digest::Digest, ConnectorError> {
        if cluster::is_cluster_url(url) {
            // cluster: every node's keys, one part per primary.
            let u = cluster::ClusterUrl::parse(url).map_err(ConnectorError::from_display)?;
            return cluster::digest::digest(&u, None, timeouts)
                .map_err(ConnectorError::from_display);
        }
        digest::digest_with(url, timeouts)
            .map(|d| d.to_digest())
            .map_err(ConnectorError::from_display)
    }

    fn identity(&self, url: &str, timeouts: &Timeouts) -> Result<String, ConnectorError> {
        if cluster::is_cluster_url(url) {
            let u = cluster::ClusterUrl::parse(url).map_err(ConnectorError::from_display)?;
            return cluster::digest::identity(&u, timeouts).map_err(ConnectorError::from_display);
        }
        let locator = locate::Locator::parse(url).map_err(ConnectorError::from_display)?;
        let mut c = locator
            .connect(timeouts)
            .map_err(ConnectorError::from_display)?;
        let addr = c.addr().to_string();
        let info = c
            .call(&["INFO", "server"])
            .map_err(ConnectorError::from_display)?
            .text()
            .unwrap_or_default();
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|v| v.trim().to_string())
            .unwrap_or(addr);
        Ok(run_id)
    }
}

/// What can go wrong talking to Redis. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL cannot be used.
    #[error("bad Redis url `{url}`: {reason}")]
    Url {
        /// The URL, password masked.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// TLS failed (`rediss://`).
    #[error("TLS to Redis at {addr}: {error}")]
    Tls {
        /// host:port.
        addr: String,
        /// What failed.
        error: tls::TlsError,
    },
    /// No server of an address list or Sentinel is the primary right now.
    #[error(
        "no primary found among {among} ({tried}); a failover may be under way: capture retries"
    )]
    NoPrimary {
        /// Where tidemark looked.
        among: String,
        /// What each server or Sentinel answered.
        tried: String,
    },
    /// No Sentinel monitors a primary of the URL's name.
    #[error("the Sentinels {sentinels} monitor no primary named `{master}`; check the name at the end of the redis+sentinel:// url (`SENTINEL MASTERS` lists them)")]
    UnknownMaster {
        /// The name asked for.
        master: String,
        /// The Sentinels asked.
        sentinels: String,
    },
    /// No TCP connection.
    #[error("cannot connect to Redis at {addr}: {detail}; check the url's host and port and that the server is running")]
    Connect {
        /// host:port.
        addr: String,
        /// The system's reason.
        detail: String,
    },
    /// The connection failed after it was made.
    #[error("connection to Redis at {addr} failed: {detail}")]
    Io {
        /// host:port.
        addr: String,
        /// The system's reason.
        detail: String,
    },
    /// AUTH refused.
    #[error(
        "Redis at {addr} refused authentication: {detail}; check the user and password in the url"
    )]
    Auth {
        /// host:port.
        addr: String,
        /// The server's reply.
        detail: String,
    },
    /// The server refused a command.
    #[error("Redis at {addr} refused {command}: {detail}")]
    Server {
        /// host:port.
        addr: String,
        /// The command.
        command: String,
        /// The server's reply.
        detail: String,
    },
    /// The server said something tidemark does not understand.
    #[error("unexpected reply from Redis at {addr}: {detail}")]
    Protocol {
        /// host:port.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// The url points at a replica.
    #[error(
        "Redis at {addr} is a replica, not a primary; point the url at its primary ({primary})"
    )]
    NotPrimary {
        /// host:port.
        addr: String,
        /// The primary it follows, as it reports it.
        primary: String,
    },
    /// The RDB of a full sync cannot be read.
    #[error("Redis at {addr}: cannot read the full-sync RDB: {source}")]
    Rdb {
        /// host:port.
        addr: String,
        /// The parser's error (names key and type for unsupported values).
        #[source]
        source: rdb::RdbError,
    },
    /// A key holds a value tidemark cannot capture (module or unknown type).
    #[error("Redis at {addr}: key {key:?} holds a value of RDB type {type_id} ({type_name}), which tidemark cannot capture; capture stops rather than skip it: keep module data (RedisJSON, RedisBloom, ...) on a server tidemark does not follow")]
    UnsupportedValue {
        /// host:port.
        addr: String,
        /// The key (lossy UTF-8).
        key: String,
        /// RDB type byte.
        type_id: u8,
        /// Its name.
        type_name: &'static str,
    },
    /// The full sync used an RDB format this version cannot read.
    #[error("Redis at {addr} sent its full sync in an RDB format this version of tidemark cannot read (header {header:?}; Valkey 9 writes `VALKEY080`); capture a Redis 6.2-7.4 or Valkey 8 server, or upgrade tidemark")]
    UnsupportedRdbFormat {
        /// host:port.
        addr: String,
        /// The header found.
        header: String,
    },
    /// The server did not answer in time.
    #[error("Redis at {addr} did not answer in time (see [timeouts] in the configuration); check that the server is up and reachable")]
    Timeout {
        /// host:port.
        addr: String,
    },
    /// The replication link went silent.
    #[error("Redis at {addr}: nothing on the replication link for {}s (the primary pings every 10s by default; the link is half-open or the primary is gone); reconnecting", .after.as_secs())]
    Stalled {
        /// host:port.
        addr: String,
        /// How long it was silent.
        after: Duration,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Capture was asked to stop.
    #[error("stopped")]
    Stopped,
    /// cluster: a `redis+cluster://` node does not run in cluster mode.
    #[error("Redis at {addr} is not in cluster mode (cluster-enabled no); use a redis:// url for a single server")]
    NotCluster {
        /// host:port.
        addr: String,
    },
    /// cluster: the cluster, the journal or the data cannot be used as asked.
    #[error("Redis Cluster: {detail}")]
    ClusterMismatch {
        /// What is wrong and what to do.
        detail: String,
    },
}

impl RedisError {
    pub(crate) fn io(addr: &str, e: std::io::Error) -> RedisError {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return RedisError::Timeout {
                addr: addr.to_string(),
            };
        }
        RedisError::Io {
            addr: addr.to_string(),
            detail: tls::session_failure(&e)
                .map(|reason| format!("TLS: {reason}"))
                .unwrap_or_else(|| e.to_string()),
        }
    }

    /// True for failures worth a reconnect (the link, not the configuration).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RedisError::Io { .. }
                | RedisError::Connect { .. }
                | RedisError::Protocol { .. }
                | RedisError::Server { .. }
                | RedisError::Timeout { .. }
                | RedisError::Stalled { .. }
                | RedisError::NoPrimary { .. }
        ) || matches!(self, RedisError::Tls { error, .. } if error.is_transient())
    }
}

impl Fault for RedisError {
    fn is_transient(&self) -> bool {
        RedisError::is_transient(self)
    }
}

/// The capture of one Redis source.
pub struct RedisSource {
    name: String,
    locator: locate::Locator,
    timeouts: Timeouts,
    followed: Arc<locate::Followed>,
    images: crate::capture::images::ImagePolicy,
}

impl RedisSource {
    /// Checks the URL; connects to nothing. `followed` carries which primary the
    /// source follows from one capture attempt to the next.
    pub fn new(
        name: &str,
        url: &str,
        opts: &CaptureOptions,
        followed: Arc<locate::Followed>,
    ) -> Result<RedisSource, CaptureError> {
        let locator = locate::Locator::parse(url).map_err(|e| CaptureError::of(name, e))?;
        Ok(RedisSource {
            name: name.to_string(),
            locator,
            timeouts: opts.timeouts,
            followed,
            images: opts.images,
        })
    }
}

impl Source for RedisSource {
    /// Reaches the server, authenticates and checks it is a primary, before the
    /// journal is opened.
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        let (locator, timeouts) = (self.locator.clone(), self.timeouts);
        crate::capture::preflight_blocking(&self.name, move || {
            replica::preflight(&locator, &timeouts)
        })
    }

    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>> {
        Box::pin(async move {
            let name = self.name.clone();
            let joined = tokio::task::spawn_blocking(move || {
                replica::run(
                    &self.locator,
                    ctx,
                    &self.timeouts,
                    &self.followed,
                    Some(self.images),
                )
            })
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
