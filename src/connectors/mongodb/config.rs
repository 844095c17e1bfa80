//! The `kind = "mongodb"` section of a `[[source]]` table.

use serde::Deserialize;

use super::client::{Selection, SYSTEM_DBS};
use crate::capture::{CaptureError, CaptureOptions, Source};
use crate::config::{self, invalid, ConfigError};
use crate::connectors::SourceSettings;
use crate::redact::SecretUrl;

/// A MongoDB source's settings. `Debug` masks the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoSettings {
    /// `mongodb://[user:password@]host:port[,host:port]/?replicaSet=NAME` or
    /// `mongodb+srv://host`.
    pub url: SecretUrl,
    /// Capture only these databases (with `collections`: either matches).
    #[serde(default)]
    pub databases: Vec<String>,
    /// Capture only these collections, `db.coll`.
    #[serde(default)]
    pub collections: Vec<String>,
    /// `status` warns when less oplog than this lies behind the journal's resume
    /// point (default 1 h; see [`super::headroom`]).
    #[serde(default)]
    pub oplog_warn_margin: Option<String>,
    /// `oplog_warn_margin`, parsed.
    #[serde(skip)]
    pub warn_margin: std::time::Duration,
}

impl MongoSettings {
    /// Parses and checks the section (`at` is `source[i]`); connects to nothing.
    pub fn parse(table: toml::Table, at: &str) -> Result<MongoSettings, ConfigError> {
        let mut s: MongoSettings = config::section(table, at)?;
        s.warn_margin = match &s.oplog_warn_margin {
            None => super::headroom::DEFAULT_MARGIN,
            Some(m) => crate::time::parse_duration(m)
                .map_err(|e| invalid(format!("{at}.oplog_warn_margin"), e))?,
        };
        let field = format!("{at}.url");
        *s.url.expose_mut() = config::expand_env(s.url.expose(), &field)?;
        config::check_scheme(s.url.expose(), super::SCHEMES).map_err(|p| invalid(&field, p))?;
        for (j, d) in s.databases.iter().enumerate() {
            let f = format!("{at}.databases[{j}]");
            if d.is_empty() || d.contains(['.', '/', ' ', '$']) {
                return Err(invalid(f, format!("`{d}` is not a database name")));
            }
            if SYSTEM_DBS.contains(&d.as_str()) {
                return Err(invalid(
                    f,
                    format!("`{d}` is a system database; tidemark captures user databases only"),
                ));
            }
        }
        for (j, c) in s.collections.iter().enumerate() {
            let ok = c
                .split_once('.')
                .is_some_and(|(d, n)| !d.is_empty() && !n.is_empty() && !SYSTEM_DBS.contains(&d));
            if !ok {
                return Err(invalid(
                    format!("{at}.collections[{j}]"),
                    format!("`{c}` is not `database.collection` in a user database"),
                ));
            }
        }
        Ok(s)
    }

    /// The namespaces captured.
    pub fn selection(&self) -> Selection {
        Selection {
            databases: self.databases.clone(),
            collections: self.collections.clone(),
        }
    }
}

impl SourceSettings for MongoSettings {
    fn capture(&self, name: &str, opts: &CaptureOptions) -> Result<Box<dyn Source>, CaptureError> {
        Ok(Box::new(super::capture::MongoSource::new(
            name,
            self.url.expose(),
            self.selection(),
            opts.timeouts,
        )))
    }

    fn marker_problem(&self) -> Option<String> {
        super::marker::problem(&self.selection())
    }

    fn marker(
        &self,
        timeouts: &crate::config::Timeouts,
    ) -> Result<Box<dyn crate::connectors::MarkWriter>, crate::connectors::ConnectorError> {
        super::marker::connect(self.url.expose(), timeouts)
    }

    fn is_marker(&self, event: &crate::event::ChangeEvent, id: &str) -> bool {
        super::marker::is_marker(event, id)
    }

    fn url(&self) -> Option<String> {
        Some(self.url.expose().to_string())
    }

    fn probe(
        &self,
        journal: &crate::journal::Journal,
        id: crate::journal::SourceId,
        timeouts: &crate::config::Timeouts,
    ) -> Option<crate::connectors::Probe> {
        Some(super::headroom::probe(
            self.url.expose(),
            journal,
            id,
            self.warn_margin,
            timeouts,
        ))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MongoSettings, ConfigError> {
        MongoSettings::parse(toml::from_str(text).unwrap(), "source[0]")
    }

    #[test]
    fn checks_filters_and_masks_the_password() {
        let s = parse("url = \"mongodb://u:hunter2@h:1/?replicaSet=rs\"\ndatabases = [\"app\"]\ncollections = [\"b.c\"]").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let e = parse("url = \"mongodb://h\"\ndatabases = [\"admin\"]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("source[0].databases[0]") && e.contains("system"),
            "{e}"
        );
        let e = parse("url = \"mongodb://h\"\ncollections = [\"nodot\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("source[0].collections[0]"), "{e}");
        let e = parse("url = \"redis://h\"").unwrap_err().to_string();
        assert!(e.contains("source[0].url"), "{e}");
        let e = parse("url = \"mongodb://h\"\nfilter = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("filter"), "{e}");
    }
}
