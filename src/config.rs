//! The configuration file: one TOML document naming the journal and the sources.
//!
//! Loading is strict: unknown keys are errors, `${ENV}` references in secret-bearing
//! fields (`url`, `brokers`, `password`) are expanded after parsing, and
//! [`Config::validate`] checks everything that can be checked without connecting,
//! naming the offending field (`source[1].url`). Nothing is written while loading.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how the journal is kept.
    pub journal: JournalConfig,
    /// The sources to capture, in `[[source]]` tables.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
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

    /// Parses the name used in config files and on disk.
    pub fn parse(s: &str) -> Option<Self> {
        [
            SourceKind::Postgres,
            SourceKind::Redis,
            SourceKind::Kafka,
            SourceKind::Mongodb,
            SourceKind::Kubernetes,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[source]]` table; `kind` selects the variant and its keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// `kind = "postgres"`.
    Postgres {
        /// Source name, unique in the file.
        name: String,
        /// `postgres://user:password@host:port/database`.
        url: String,
        /// Replication slot to use (created if missing). Default `tidemark_<name>`.
        #[serde(default)]
        slot: Option<String>,
        /// Publication to use (created if missing, for all tables). Default `tidemark`.
        #[serde(default)]
        publication: Option<String>,
        /// Restrict capture to these tables (`schema.table`).
        #[serde(default)]
        tables: Vec<String>,
    },
    /// `kind = "redis"`.
    Redis {
        /// Source name, unique in the file.
        name: String,
        /// `redis://[user:password@]host:port` or `rediss://...`.
        url: String,
    },
    /// `kind = "kafka"`.
    Kafka {
        /// Source name, unique in the file.
        name: String,
        /// Bootstrap brokers, `host:port`.
        brokers: Vec<String>,
        /// Topic names, or regular expressions starting with `^`.
        topics: Vec<String>,
        /// Consumer groups whose committed offsets are protected.
        #[serde(default)]
        groups: Vec<String>,
        /// SASL settings.
        #[serde(default)]
        sasl: Option<SaslConfig>,
        /// Use TLS to the brokers.
        #[serde(default)]
        tls: bool,
    },
    /// `kind = "mongodb"`.
    Mongodb {
        /// Source name, unique in the file.
        name: String,
        /// `mongodb://...` or `mongodb+srv://...`.
        url: String,
    },
    /// `kind = "kubernetes"`.
    Kubernetes {
        /// Source name, unique in the file.
        name: String,
        /// Path of a kubeconfig file; default: in-cluster or `$KUBECONFIG`.
        #[serde(default)]
        kubeconfig: Option<PathBuf>,
        /// Namespaces to watch; empty: all.
        #[serde(default)]
        namespaces: Vec<String>,
        /// Resource types to watch, e.g. `apps/v1/deployments`; empty: the defaults.
        #[serde(default)]
        resources: Vec<String>,
    },
}

/// Kafka SASL settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    pub mechanism: String,
    /// User name.
    pub username: String,
    /// Password (use `${ENV}`).
    pub password: String,
}

impl SourceConfig {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Postgres { name, .. }
            | SourceConfig::Redis { name, .. }
            | SourceConfig::Kafka { name, .. }
            | SourceConfig::Mongodb { name, .. }
            | SourceConfig::Kubernetes { name, .. } => name,
        }
    }

    /// The source's kind.
    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::Postgres { .. } => SourceKind::Postgres,
            SourceConfig::Redis { .. } => SourceKind::Redis,
            SourceConfig::Kafka { .. } => SourceKind::Kafka,
            SourceConfig::Mongodb { .. } => SourceKind::Mongodb,
            SourceConfig::Kubernetes { .. } => SourceKind::Kubernetes,
        }
    }
}

/// Why a configuration cannot be used. Every message names the file or field and
/// what to do; none contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; check the path given with -c")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
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
    /// A value is well-formed TOML but unusable.
    #[error("config field {field}: {problem}")]
    Invalid {
        /// Path of the field, e.g. `source[1].url`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Reads, parses, expands `${ENV}` references and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Config::parse(&text, path)?;
        if cfg.journal.path.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.journal.path = base.join(&cfg.journal.path);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text (and expands `${ENV}`), without validating.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message: e.message().replace('\n', " "),
            }
        })?;
        cfg.expand_env()?;
        Ok(cfg)
    }

    fn expand_env(&mut self) -> Result<(), ConfigError> {
        for (i, s) in self.sources.iter_mut().enumerate() {
            match s {
                SourceConfig::Postgres { url, .. }
                | SourceConfig::Redis { url, .. }
                | SourceConfig::Mongodb { url, .. } => {
                    *url = expand(url, &format!("source[{i}].url"))?;
                }
                SourceConfig::Kafka { brokers, sasl, .. } => {
                    for (j, b) in brokers.iter_mut().enumerate() {
                        *b = expand(b, &format!("source[{i}].brokers[{j}]"))?;
                    }
                    if let Some(sasl) = sasl {
                        sasl.password =
                            expand(&sasl.password, &format!("source[{i}].sasl.password"))?;
                    }
                }
                SourceConfig::Kubernetes { .. } => {}
            }
        }
        Ok(())
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

    /// Checks everything that can be checked without connecting to anything.
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
        if self.sources.is_empty() {
            return Err(invalid(
                "source",
                "no [[source]] table; add at least one source to capture",
            ));
        }
        let mut names = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let at = |f: &str| format!("source[{i}].{f}");
            validate_name(s.name()).map_err(|p| invalid(at("name"), p))?;
            if !names.insert(s.name()) {
                return Err(invalid(
                    at("name"),
                    format!(
                        "`{}` is used by an earlier source; names must be unique",
                        s.name()
                    ),
                ));
            }
            match s {
                SourceConfig::Postgres {
                    url,
                    slot,
                    publication,
                    tables,
                    ..
                } => {
                    check_scheme(url, &["postgres", "postgresql"])
                        .map_err(|p| invalid(at("url"), p))?;
                    if let Some(slot) = slot {
                        let ok = !slot.is_empty()
                            && slot.len() <= 63
                            && slot
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                        if !ok {
                            return Err(invalid(
                                at("slot"),
                                "slot names use only a-z, 0-9 and _, at most 63 characters",
                            ));
                        }
                    }
                    if publication.as_deref() == Some("") {
                        return Err(invalid(
                            at("publication"),
                            "is empty; remove it for the default or name a publication",
                        ));
                    }
                    for (j, t) in tables.iter().enumerate() {
                        if t.is_empty()
                            || t.split('.').count() > 2
                            || t.split('.').any(str::is_empty)
                        {
                            return Err(invalid(
                                at(&format!("tables[{j}]")),
                                format!("`{t}` is not `schema.table` or `table`"),
                            ));
                        }
                    }
                }
                SourceConfig::Redis { url, .. } => {
                    check_scheme(url, &["redis", "rediss"]).map_err(|p| invalid(at("url"), p))?;
                }
                SourceConfig::Mongodb { url, .. } => {
                    check_scheme(url, &["mongodb", "mongodb+srv"])
                        .map_err(|p| invalid(at("url"), p))?;
                }
                SourceConfig::Kafka {
                    brokers,
                    topics,
                    sasl,
                    ..
                } => {
                    if brokers.is_empty() {
                        return Err(invalid(
                            at("brokers"),
                            "is empty; list at least one broker as host:port",
                        ));
                    }
                    for (j, b) in brokers.iter().enumerate() {
                        let ok = b
                            .rsplit_once(':')
                            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                        if !ok {
                            return Err(invalid(
                                at(&format!("brokers[{j}]")),
                                format!("`{b}` is not host:port"),
                            ));
                        }
                    }
                    if topics.is_empty() {
                        return Err(invalid(
                            at("topics"),
                            "is empty; list topic names or regular expressions starting with ^",
                        ));
                    }
                    for (j, t) in topics.iter().enumerate() {
                        if t.is_empty() {
                            return Err(invalid(at(&format!("topics[{j}]")), "is empty"));
                        }
                        if t.starts_with('^') {
                            if let Err(e) = regex::Regex::new(t) {
                                return Err(invalid(
                                    at(&format!("topics[{j}]")),
                                    format!("`{t}` is not a valid regular expression: {e}"),
                                ));
                            }
                        }
                    }
                    if let Some(sasl) = sasl {
                        if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
                            .contains(&sasl.mechanism.as_str())
                        {
                            return Err(invalid(
                                at("sasl.mechanism"),
                                format!(
                                    "`{}` is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                                    sasl.mechanism
                                ),
                            ));
                        }
                    }
                }
                SourceConfig::Kubernetes { resources, .. } => {
                    for (j, r) in resources.iter().enumerate() {
                        if r.is_empty() || r.split('/').any(str::is_empty) {
                            return Err(invalid(at(&format!("resources[{j}]")), format!("`{r}` is not a resource like `configmaps` or `apps/v1/deployments`")));
                        }
                    }
                }
            }
        }
        Ok(())
    }
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
            "`{name}` may use only letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

fn check_scheme(url: &str, schemes: &[&str]) -> Result<(), String> {
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
fn expand(value: &str, field: &str) -> Result<String, ConfigError> {
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

/// A URL with any password replaced by `***`, safe for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
