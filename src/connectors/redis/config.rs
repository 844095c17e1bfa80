//! The `kind = "redis"` section of a `[[source]]` table.

use std::sync::Arc;

use serde::Deserialize;

use super::locate::{Followed, Locator};
use crate::capture::{CaptureError, CaptureOptions, Source};
use crate::config::{self, invalid, ConfigError, Timeouts};
use crate::connectors::{Probe, SourceSettings};
use crate::journal::{Journal, SourceId};
use crate::redact::SecretUrl;

/// A Redis source's settings. `Debug` masks the passwords.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis[s]://[user:password@]host:port[?tls]`, several hosts
    /// (`redis://a:6379,b:6379`: the primary among them), or
    /// `redis[s]+sentinel://host:port[,host:port]/mastername`.
    pub url: SecretUrl,
    /// Which primary capture follows, shared by its attempts (not configured).
    #[serde(skip)]
    followed: Arc<Followed>,
}

impl RedisSettings {
    /// Parses and checks the section (`at` is `source[i]`): the URL's form and
    /// parameters, and that its TLS files are readable PEM (connects to nothing).
    pub fn parse(table: toml::Table, at: &str) -> Result<RedisSettings, ConfigError> {
        let mut s: RedisSettings = config::section(table, at)?;
        let field = format!("{at}.url");
        *s.url.expose_mut() = config::expand_env(s.url.expose(), &field)?;
        config::check_scheme(s.url.expose(), super::SCHEMES).map_err(|p| invalid(&field, p))?;
        let locator = Locator::parse(s.url.expose()).map_err(|e| invalid(&field, e.to_string()))?;
        let mut checked = Vec::new();
        for tls in locator.urls().into_iter().filter_map(|u| u.tls.as_ref()) {
            if !checked.contains(&tls) {
                tls.connector()
                    .map_err(|e| invalid(&field, e.to_string()))?;
                checked.push(tls);
            }
        }
        Ok(s)
    }
}

impl SourceSettings for RedisSettings {
    fn capture(&self, name: &str, opts: &CaptureOptions) -> Result<Box<dyn Source>, CaptureError> {
        Ok(Box::new(super::RedisSource::new(
            name,
            self.url.expose(),
            opts,
            Arc::clone(&self.followed),
        )?))
    }

    fn marker_problem(&self) -> Option<String> {
        None
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

    fn probe(&self, journal: &Journal, id: SourceId, timeouts: &Timeouts) -> Option<Probe> {
        let x = super::probe::lag(self.url.expose(), journal, id, timeouts);
        let suffix = if x["lag_bytes"].is_u64() {
            format!(
                "  trails primary by {} bytes ({:.1}% of repl-backlog-size)",
                x["lag_bytes"],
                x["lag_backlog_ratio"].as_f64().unwrap_or(0.0) * 100.0
            )
        } else if let Some(e) = x["error"].as_str() {
            format!("  primary: {e}")
        } else {
            String::new()
        };
        let health = journal
            .health(id)
            .ok()
            .flatten()
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or(serde_json::Value::Null);
        let mut fields = serde_json::Map::new();
        fields.insert("redis".into(), x);
        Some(Probe {
            fields,
            suffix,
            lines: super::locate::status_lines(&health),
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
