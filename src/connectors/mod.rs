//! Connectors: everything about one kind of source in one folder, `connectors/<kind>/`:
//! its client and protocol code, capture, restore target, digest, identity probe and
//! config section. The layers around them are kind-agnostic and reach a kind only
//! through the [`Connector`] and [`SourceSettings`] contracts below and the
//! [`registry`].
//!
//! # Adding a kind
//! One new folder with a `Connector` implementation, and one line in [`registry`].
//! The only other places that name a kind are the on-disk tag tables (the event
//! payload and position oneofs, and [`SourceKind`]), which are never renumbered.

pub mod kafka;
pub mod kubernetes;
pub mod mongodb;
pub mod postgres;
pub mod redis;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::capture::{CaptureError, CaptureOptions, Source};
use crate::config::{ConfigError, SourceKind, Timeouts};
use crate::digest::Digest;
use crate::journal::{Journal, SourceId};
use crate::restore::{RestoreError, Target};

/// Every connector of this build, one line per kind.
pub fn registry() -> &'static [&'static dyn Connector] {
    &[
        &postgres::Postgres,
        &redis::Redis,
        &kafka::Kafka,
        &mongodb::Mongodb,
        &kubernetes::Kubernetes,
    ]
}

/// The connector of `kind`, if this build has one.
pub fn for_kind(kind: SourceKind) -> Option<&'static dyn Connector> {
    registry().iter().copied().find(|c| c.kind() == kind)
}

/// The connector whose URL scheme `url` uses.
pub fn for_url(url: &str) -> Option<&'static dyn Connector> {
    let scheme = url.split_once("://")?.0;
    registry()
        .iter()
        .copied()
        .find(|c| c.schemes().contains(&scheme))
}

/// Every scheme of every connector, for error messages: `postgres://, redis://, ...`.
pub fn known_schemes() -> String {
    registry()
        .iter()
        .flat_map(|c| c.schemes())
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which command a kind-specific option belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionFor {
    /// `tidemark restore`.
    Restore,
    /// `tidemark digest`.
    Digest,
}

/// A command-line option a connector adds to a generic command (`--topic-map` on
/// `restore`). Its value reaches the connector in [`KindOptions`]; giving it for a
/// source of another kind is refused by name.
#[derive(Debug, Clone, Copy)]
pub struct KindOption {
    /// The long flag without dashes, e.g. `topic-map`.
    pub name: &'static str,
    /// One line of help, shown by `--help`.
    pub help: &'static str,
    /// The command it applies to.
    pub command: OptionFor,
}

/// Kind-specific option values given on the command line, by flag name.
#[derive(Debug, Clone, Default)]
pub struct KindOptions(pub BTreeMap<String, String>);

impl KindOptions {
    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Every option in `options` must be one `connector` declares for `command`; the
/// error names the kinds it belongs to.
pub fn check_options(
    connector: &dyn Connector,
    options: &KindOptions,
    command: OptionFor,
) -> Result<(), String> {
    for name in options.0.keys() {
        let declared = |c: &dyn Connector| {
            c.options()
                .iter()
                .any(|o| o.name == name && o.command == command)
        };
        if !declared(connector) {
            let owners: Vec<String> = registry()
                .iter()
                .filter(|c| declared(**c))
                .map(|c| c.kind().to_string())
                .collect();
            return Err(format!(
                "--{name} applies to {} only, not to {}; remove it",
                owners.join(" and "),
                connector.kind()
            ));
        }
    }
    Ok(())
}

/// What a connector provides. Implementations are stateless values (one `static`
/// per kind); everything they build connects to nothing until it is used.
pub trait Connector: Sync {
    /// The kind, as journaled with every source of it.
    fn kind(&self) -> SourceKind;

    /// URL schemes of this kind's live URLs (`digest`, restore targets); the first is
    /// the one named in messages.
    fn schemes(&self) -> &'static [&'static str];

    /// Parses this kind's keys of source `name`'s `[[source]]` table (`name` and
    /// `kind` already taken out), expands `${ENV}` in its secret-bearing fields, and
    /// validates everything that can be known without connecting. `field` prefixes
    /// field paths in errors (`source[1]`). Unknown keys are errors.
    fn parse_source(
        &self,
        name: &str,
        table: toml::Table,
        field: &str,
    ) -> Result<Arc<dyn SourceSettings>, ConfigError>;

    /// Whether a restore of this kind starts from a base image (else it replays the
    /// journal from its start).
    fn uses_images(&self) -> bool;

    /// Kind-specific flags of `restore` and `digest`.
    fn options(&self) -> &'static [KindOption] {
        &[]
    }

    /// A restore target for `url`, connecting to nothing yet.
    fn target(
        &self,
        url: &str,
        options: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<Box<dyn Target>, RestoreError>;

    /// The digest of the live data at `url`, computed exactly as a restore target of
    /// this kind reports its own (so the two compare). Blocking.
    fn digest(
        &self,
        url: &str,
        options: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<Digest, ConnectorError>;

    /// Whether capture takes base images on a schedule (`image_interval`,
    /// `image_after_bytes`, `tidemark image take`) while it goes on. Kinds without
    /// it have their first image only (or none: Kafka).
    fn scheduled_images(&self) -> bool {
        false
    }

    /// Whether `tidemark resync` can end a source's history with a break and start
    /// a new one (a connector that supports it reads [`crate::journal::RESYNC_NOTE`]
    /// when its capture starts). Kinds that resynchronise by themselves (Redis full
    /// resyncs, Kafka) do not need it.
    fn resyncs(&self) -> bool {
        false
    }

    /// A stable identity of the server and database at `url` (PostgreSQL: system
    /// identifier and database; Redis: run id; Kafka: cluster id), so a restore can
    /// refuse to write into a database it captures. Blocking, bounded by `timeouts`.
    fn identity(&self, url: &str, timeouts: &Timeouts) -> Result<String, ConnectorError>;
}

/// The members of a section that stands for several sources: each one's name
/// suffix and settings.
pub type Members = Vec<(String, Arc<dyn SourceSettings>)>;

/// One configured source of some kind: what the config section said, validated.
/// `Debug` never shows a secret.
pub trait SourceSettings: fmt::Debug + Send + Sync {
    /// Builds the capture of source `name`; connects to nothing.
    fn capture(&self, name: &str, opts: &CaptureOptions) -> Result<Box<dyn Source>, CaptureError>;

    /// Whether this source takes scheduled images when its kind does
    /// ([`Connector::scheduled_images`]); a Redis Cluster source does not (its shards
    /// image through their own full syncs).
    fn scheduled_images(&self) -> bool {
        true
    }

    /// Server-side resources this source takes that no other source may share
    /// (a replication slot on one server): `config validate` refuses two sources
    /// claiming the same one.
    fn claims(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }

    /// The live URL of what is captured, for identity checks; `None` if it has no
    /// single URL.
    fn url(&self) -> Option<String>;

    /// A section that stands for several sources (PostgreSQL `databases = [...]`):
    /// each member's name suffix and settings. The configuration captures each as a
    /// source of its own, named `<name>.<suffix>`, and `restore --source <name>`
    /// restores them all. Empty: the section is one source.
    fn members(&self) -> Members {
        Vec::new()
    }

    /// Whether the members are found on the server ([`SourceSettings::discover`])
    /// rather than listed in the section (PostgreSQL `databases = ["*"]`).
    fn discovers_members(&self) -> bool {
        false
    }

    /// Asks the server for the members (commands that capture or restore call it;
    /// `config validate` does not connect). Blocking, bounded by `timeouts`.
    fn discover(&self, _timeouts: &Timeouts) -> Result<Members, ConnectorError> {
        Ok(self.members())
    }

    /// Kind-specific figures for `status` (how far the journal trails the server),
    /// bounded by `timeouts`; `None` when the kind has none.
    fn probe(&self, _journal: &Journal, _id: SourceId, _timeouts: &Timeouts) -> Option<Probe> {
        None
    }

    /// What `log` adds to one of this source's events, as a text suffix and JSON
    /// (a Kubernetes Helm release record decoded with the source's key); `None`
    /// when there is nothing to add.
    fn describe_event(
        &self,
        _event: &crate::event::ChangeEvent,
    ) -> Option<(String, serde_json::Value)> {
        None
    }

    /// Why this source cannot take recovery-point markers, found without
    /// connecting (a Kafka source that does not capture the marker topic); `None`
    /// when it can. `config validate` asks this of every application's sources.
    fn marker_problem(&self) -> Option<String> {
        Some("this kind of source cannot take recovery-point markers in this version".into())
    }

    /// Connects what writes this source's recovery-point markers (connection,
    /// marker topic, producer), so that the timed write that follows is the write
    /// alone. Blocking, bounded by `timeouts`. See [`crate::app::marker`].
    fn marker(&self, _timeouts: &Timeouts) -> Result<Box<dyn MarkWriter>, ConnectorError> {
        Err(ConnectorError(self.marker_problem().unwrap_or_else(|| {
            "cannot take recovery-point markers".into()
        })))
    }

    /// Whether `event`, one of this source's journaled events, is the marker `id`
    /// that its [`MarkWriter`] wrote.
    fn is_marker(&self, _event: &crate::event::ChangeEvent, _id: &str) -> bool {
        false
    }

    /// For callers that know the concrete kind (tests, the demo).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// Writes recovery-point markers into one source's own log (see
/// [`crate::app::marker`] for each kind's marker).
pub trait MarkWriter: Send {
    /// Writes marker `id` so that the source's capture journals it in order with
    /// the data around it, and returns once the source has committed it: the
    /// commit lies inside the call, which the caller times. The application's
    /// writers are never paused. Blocking.
    fn write(&mut self, id: &str) -> Result<(), ConnectorError>;
}

/// What a source's [`SourceSettings::probe`] adds to `status`.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// Keys merged into the source's row of `status --json`.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Text for `status`: a suffix of the source's line, then lines under it.
    pub suffix: String,
    /// Lines shown under the source's line.
    pub lines: Vec<String>,
}

/// A connector's failure outside capture (digest, identity), already phrased for
/// the operator with secrets masked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectorError(pub String);

impl ConnectorError {
    /// From any error whose `Display` is operator-facing and secret-free.
    pub fn from_display(e: impl fmt::Display) -> ConnectorError {
        ConnectorError(e.to_string())
    }
}
