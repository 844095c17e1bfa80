//! The configuration file: one TOML document naming the journal and the sources.
//!
//! Loading is strict: unknown keys are errors (named with their line), `${ENV}`
//! references in secret-bearing fields are expanded after parsing, and everything
//! that can be checked without connecting is checked, naming the offending field
//! (`source[1].url`). Nothing is written while loading.
//!
//! This module knows no kind of source: each `[[source]]` table is handed, by its
//! `kind`, to that kind's connector ([`crate::connectors`]), which parses and
//! validates its own keys.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::capture::images::ImagePolicy;
use crate::capture::CaptureOptions;
use crate::connectors::{self, SourceSettings};

pub use crate::redact::redact_url;

mod application;
pub use application::{Application, Profile, ProfileTarget};

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where and how the journal is kept.
    pub journal: JournalConfig,
    /// Connection timeouts for every source and target.
    pub timeouts: Timeouts,
    /// The sources to capture, in `[[source]]` tables (a section with members, as
    /// PostgreSQL's `databases`, gives one source per member).
    pub sources: Vec<SourceConfig>,
    /// Sections that stand for several sources: name and member source names.
    pub groups: Vec<(String, Vec<String>)>,
    /// Sections whose members are found on the server ([`Config::discover`]).
    pub undiscovered: Vec<SourceConfig>,
    /// The members [`Config::discover`] found.
    pub discovered: Vec<String>,
    /// `[[application]]` tables: sources recovered as one.
    pub applications: Vec<Application>,
}

/// The file as TOML shapes it, before each source goes to its connector.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    journal: JournalConfig,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default, rename = "source")]
    sources: Vec<toml::Spanned<toml::Table>>,
    #[serde(default, rename = "application")]
    applications: Vec<toml::Spanned<toml::Table>>,
}

/// `[journal]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Directory of the journal. A relative path is taken from the config file's directory.
    pub path: PathBuf,
    /// When an append is durable: `always` (fsync the write-ahead log before an append
    /// returns; the default) or `os` (hand it to the OS: survives a tidemark crash, not
    /// a machine crash).
    #[serde(default)]
    pub sync: SyncPolicy,
    /// Block compression: `lz4` (default) or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Keep events for this long (e.g. `7d`), plus the base images needed to restore to
    /// any moment inside the window. Absent: keep everything.
    #[serde(default)]
    pub retention: Option<String>,
}

/// When an append counts as durable. See [`JournalConfig::sync`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// fsync the write-ahead log before `append` returns.
    #[default]
    Always,
    /// Write the log to the OS page cache only.
    Os,
}

/// Block compression of the journal's tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4.
    #[default]
    Lz4,
    /// No compression.
    None,
}

/// `[timeouts]`: how long tidemark waits on a server before it calls the server
/// unreachable. They apply to every connection of every kind: capture, restore,
/// `digest` and `status` probes. A server that accepts TCP and never answers is
/// detected within `connect`; one that stops answering mid-stream within `stall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting, including TLS and authentication (default 10s).
    #[serde(deserialize_with = "de_duration")]
    pub connect: Duration,
    /// One request waiting for its answer (default 30s).
    #[serde(deserialize_with = "de_duration")]
    pub read: Duration,
    /// A replication stream with neither data nor keepalive for this long is
    /// reconnected (default 30s).
    #[serde(deserialize_with = "de_duration")]
    pub stall: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(30),
            stall: Duration::from_secs(30),
        }
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = crate::time::parse_duration(&s).map_err(serde::de::Error::custom)?;
    if v.is_zero() {
        return Err(serde::de::Error::custom("must be more than 0s"));
    }
    Ok(v)
}

/// The five kinds of source tidemark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// PostgreSQL, by logical replication.
    Postgres,
    /// Redis or Valkey, as a replica.
    Redis,
    /// Kafka topics and consumer-group offsets.
    Kafka,
    /// MongoDB change streams.
    Mongodb,
    /// Kubernetes objects, by watch.
    Kubernetes,
}

impl SourceKind {
    /// The name used in config files and on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Postgres => "postgres",
            SourceKind::Redis => "redis",
            SourceKind::Kafka => "kafka",
            SourceKind::Mongodb => "mongodb",
            SourceKind::Kubernetes => "kubernetes",
        }
    }

    /// Every kind, in on-disk tag order.
    pub const ALL: [SourceKind; 5] = [
        SourceKind::Postgres,
        SourceKind::Redis,
        SourceKind::Kafka,
        SourceKind::Mongodb,
        SourceKind::Kubernetes,
    ];

    /// Parses the name used in config files and on disk.
    pub fn parse(s: &str) -> Option<Self> {
        SourceKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[source]]` table: a name, a kind, and that kind's settings (parsed and
/// validated by its connector). `Debug` never shows a secret.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique in the file; the source's name in the journal.
    pub name: String,
    /// Which connector captures it.
    pub kind: SourceKind,
    /// The kind's own settings.
    pub settings: Arc<dyn SourceSettings>,
    /// When it takes base images after its first (`image_interval`,
    /// `image_after_bytes`).
    pub images: ImagePolicy,
}

impl SourceConfig {
    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The source's kind.
    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    /// `base` with this source's own capture settings (its image schedule).
    pub fn capture_options(&self, base: &CaptureOptions) -> CaptureOptions {
        CaptureOptions {
            images: self.images,
            ..base.clone()
        }
    }

    /// One source from its kind's keys (for the demo, tests and benchmarks).
    pub fn parse_one(
        name: &str,
        kind: &str,
        mut table: toml::Table,
    ) -> Result<SourceConfig, ConfigError> {
        table.insert("name".into(), toml::Value::String(name.into()));
        table.insert("kind".into(), toml::Value::String(kind.into()));
        parse_source(table, "source")
    }
}

/// Why a configuration cannot be used. Every message names the file or field and
/// what to do; none contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}; check the path given with -c")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not a `source`: it would print twice).
        error: std::io::Error,
    },
    /// The TOML is malformed or has unknown/missing keys.
    #[error("config file {path}, line {line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A kind this build cannot capture.
    #[error("config field {field}: source `{name}`: capture of {kind} sources is not available in this version of tidemark (see README, \"Status\"); remove the source or upgrade")]
    NotAvailable {
        /// Path of the field.
        field: String,
        /// The source's name.
        name: String,
        /// The kind.
        kind: SourceKind,
    },
    /// A value is well-formed TOML but unusable.
    #[error("config field {field}: {problem}")]
    Invalid {
        /// Path of the field, e.g. `source[1].url`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// Builds a [`ConfigError::Invalid`].
pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Deserializes a connector's section into `T` (which should deny unknown
/// fields). Errors are [`ConfigError::Invalid`] at `field`; the loader turns them
/// into the line of the offending key.
pub fn section<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    field: &str,
) -> Result<T, ConfigError> {
    T::deserialize(toml::Value::Table(table))
        .map_err(|e| invalid(field, e.message().replace('\n', " ")))
}

impl Config {
    /// Reads, parses, expands `${ENV}` references and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut cfg = Config::parse(&text, path)?;
        if cfg.journal.path.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.journal.path = base.join(&cfg.journal.path);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text: each source is parsed, `${ENV}`-expanded and checked by
    /// its connector. Cross-source checks are [`Config::validate`]'s.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(s.start)).unwrap_or(1),
            message: e.message().replace('\n', " "),
        })?;
        let mut sources = Vec::with_capacity(raw.sources.len());
        let mut groups = Vec::new();
        let mut undiscovered = Vec::new();
        for (i, spanned) in raw.sources.into_iter().enumerate() {
            let span = spanned.span();
            let at = format!("source[{i}]");
            let source = parse_source(spanned.into_inner(), &at).map_err(|e| match e {
                // A key's problem is reported at the key's own line.
                ConfigError::Invalid { field, problem } if field == at => {
                    let body = &text[span.start.min(text.len())..span.end.min(text.len())];
                    let line = key_in_message(&problem)
                        .and_then(|k| line_of_key(body, k))
                        .map_or(line_of(span.start), |l| line_of(span.start) + l);
                    ConfigError::Parse {
                        path: path.to_path_buf(),
                        line,
                        message: format!("{at}: {problem}"),
                    }
                }
                other => other,
            })?;
            if source.settings.discovers_members() {
                undiscovered.push(source);
                continue;
            }
            let members = source.settings.members();
            if members.is_empty() {
                sources.push(source);
                continue;
            }
            groups.push(add_members(&mut sources, &source, members, &at)?);
        }
        let mut cfg = Config {
            journal: raw.journal,
            timeouts: raw.timeouts,
            sources,
            groups,
            undiscovered,
            discovered: Vec::new(),
            applications: Vec::new(),
        };
        let tables = raw
            .applications
            .into_iter()
            .map(|t| t.into_inner())
            .collect();
        cfg.applications = application::parse_applications(tables, &cfg)?;
        Ok(cfg)
    }

    /// The retention window, if configured.
    pub fn retention(&self) -> Result<Option<Duration>, ConfigError> {
        self.journal
            .retention
            .as_deref()
            .map(|r| crate::time::parse_duration(r).map_err(|e| invalid("journal.retention", e)))
            .transpose()
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name() == name)
    }

    /// The source named `name`, or an error listing the configured ones.
    pub fn configured(&self, name: &str) -> Result<&SourceConfig, String> {
        self.source(name).ok_or_else(|| {
            format!(
                "no source named `{name}` in the configuration (configured: {})",
                self.sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }

    /// Asks the servers of sections whose members are discovered (PostgreSQL
    /// `databases = ["*"]`) for them, and adds them as sources.
    pub fn discover(&mut self) -> Result<(), ConfigError> {
        for section in std::mem::take(&mut self.undiscovered) {
            let members = section
                .settings
                .discover(&self.timeouts)
                .map_err(|e| invalid(format!("source `{}`", section.name), e.0))?;
            let at = format!("source `{}`", section.name);
            let group = add_members(&mut self.sources, &section, members, &at)?;
            self.discovered.extend(group.1.iter().cloned());
            self.groups.push(group);
        }
        Ok(())
    }

    /// Whether source `name` is a member found by [`Config::discover`].
    pub fn is_discovered(&self, name: &str) -> bool {
        self.discovered.iter().any(|n| n == name)
    }

    /// The member sources of a section with members (see
    /// [`crate::connectors::SourceSettings::members`]).
    pub fn group(&self, name: &str) -> Option<&[String]> {
        self.groups
            .iter()
            .find(|(g, _)| g == name)
            .map(|(_, m)| m.as_slice())
    }

    /// Checks what spans sources and the journal, without connecting to anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.journal.path.as_os_str().is_empty() {
            return Err(invalid(
                "journal.path",
                "is empty; give the directory for the journal",
            ));
        }
        if let Some(w) = self.retention()? {
            if w < Duration::from_secs(60) {
                return Err(invalid("journal.retention", "must be at least 1m"));
            }
        }
        if self.sources.is_empty() && self.undiscovered.is_empty() {
            return Err(invalid(
                "source",
                "no [[source]] table; add at least one source to capture",
            ));
        }
        let mut names = HashSet::new();
        let mut claims: HashMap<String, &str> = HashMap::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = |f: &str| format!("source[{i}].{f}");
            if !names.insert(s.name()) {
                return Err(invalid(
                    at("name"),
                    format!(
                        "`{}` is used by an earlier source; names must be unique",
                        s.name()
                    ),
                ));
            }
            for claim in s.settings.claims(s.name()) {
                if let Some(other) = claims.insert(claim.clone(), s.name()) {
                    return Err(invalid(
                        at("name"),
                        format!("source `{}` and source `{other}` would share {claim}; give one of them another name (or an explicit, distinct setting)", s.name()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Hands one `[[source]]` table to its kind's connector.
fn parse_source(mut table: toml::Table, at: &str) -> Result<SourceConfig, ConfigError> {
    let take_str = |table: &mut toml::Table, key: &str| -> Result<String, ConfigError> {
        match table.remove(key) {
            Some(toml::Value::String(s)) => Ok(s),
            Some(_) => Err(invalid(format!("{at}.{key}"), "must be a string")),
            None => Err(invalid(at, format!("missing field `{key}`"))),
        }
    };
    let name = take_str(&mut table, "name")?;
    validate_name(&name).map_err(|p| invalid(format!("{at}.name"), p))?;
    let kind_name = take_str(&mut table, "kind")?;
    let known = || {
        SourceKind::ALL
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(kind) = SourceKind::parse(&kind_name) else {
        return Err(invalid(
            format!("{at}.kind"),
            format!("unknown variant `{kind_name}`, expected one of {}", known()),
        ));
    };
    let Some(connector) = connectors::for_kind(kind) else {
        return Err(ConfigError::NotAvailable {
            field: format!("{at}.kind"),
            name,
            kind,
        });
    };
    let images = parse_image_policy(&mut table, at)?;
    let settings = connector.parse_source(&name, table, at)?;
    Ok(SourceConfig {
        name,
        kind,
        settings,
        images,
    })
}

/// Takes `image_interval` and `image_after_bytes` out of a `[[source]]` table.
fn parse_image_policy(table: &mut toml::Table, at: &str) -> Result<ImagePolicy, ConfigError> {
    let mut policy = ImagePolicy::default();
    let off = |v: &str| matches!(v.trim(), "off" | "never" | "none");
    match table.remove("image_interval") {
        None => {}
        Some(toml::Value::String(v)) if off(&v) => policy.interval = None,
        Some(toml::Value::String(v)) => match humantime::parse_duration(v.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => policy.interval = Some(d),
            _ => {
                return Err(invalid(
                    format!("{at}.image_interval"),
                    format!(
                    "`{v}` is not a duration of at least 1s; write e.g. \"6h\", \"30m\" or \"off\""
                ),
                ))
            }
        },
        Some(_) => {
            return Err(invalid(
                format!("{at}.image_interval"),
                "must be a string such as \"6h\" or \"off\"",
            ))
        }
    }
    match table.remove("image_after_bytes") {
        None => {}
        Some(toml::Value::String(v)) if off(&v) => policy.after_bytes = None,
        Some(toml::Value::Integer(n)) if n > 0 => policy.after_bytes = Some(n as u64),
        Some(toml::Value::String(v)) => match crate::capture::images::parse_bytes(&v) {
            Some(n) if n > 0 => policy.after_bytes = Some(n),
            _ => {
                return Err(invalid(
                    format!("{at}.image_after_bytes"),
                    format!("`{v}` is not a size; write e.g. \"10GiB\", \"500MB\" or \"off\""),
                ))
            }
        },
        Some(_) => {
            return Err(invalid(
                format!("{at}.image_after_bytes"),
                "must be a size such as \"10GiB\" or \"off\"",
            ))
        }
    }
    Ok(policy)
}

/// Adds a section's members as sources named `<section>.<suffix>`; returns the group.
fn add_members(
    sources: &mut Vec<SourceConfig>,
    section: &SourceConfig,
    members: connectors::Members,
    at: &str,
) -> Result<(String, Vec<String>), ConfigError> {
    let mut names = Vec::with_capacity(members.len());
    for (suffix, settings) in members {
        let name = format!("{}.{suffix}", section.name);
        validate_name(&name).map_err(|p| invalid(format!("{at}.databases"), p))?;
        if sources.iter().any(|s| s.name == name) {
            return Err(invalid(
                format!("{at}.databases"),
                format!("source `{name}` is configured twice"),
            ));
        }
        names.push(name.clone());
        sources.push(SourceConfig {
            name,
            kind: section.kind,
            settings,
            images: section.images,
        });
    }
    Ok((section.name.clone(), names))
}

/// The first backticked word of a serde message (`unknown field `port``).
fn key_in_message(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// 0-based line within `body` where `key = ...` is set.
fn line_of_key(body: &str, key: &str) -> Option<usize> {
    body.lines().position(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "`{name}` may use only ASCII letters a-z and A-Z, digits 0-9, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

/// Checks that `url` uses one of `schemes` (and has something after `://`).
pub fn check_scheme(url: &str, schemes: &[&str]) -> Result<(), String> {
    let ok = url
        .split_once("://")
        .is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a {} URL",
            redact_url(url),
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ))
    }
}

/// Replaces `${NAME}` with the value of the environment variable `NAME`.
pub fn expand_env(value: &str, field: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(invalid(field, "has `${` without a closing `}`"));
        };
        let var = &after[..end];
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid(
                field,
                format!("`${{{var}}}` is not a valid environment variable reference"),
            ));
        }
        match std::env::var(var) {
            Ok(v) => out.push_str(&v),
            Err(_) => {
                return Err(invalid(
                    field,
                    format!(
                        "refers to ${{{var}}}, which is not set; export {var} or edit the field"
                    ),
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
