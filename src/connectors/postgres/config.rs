//! The `kind = "postgres"` section of a `[[source]]` table.

use serde::Deserialize;

use super::conn::ConnInfo;
use crate::capture::{CaptureError, CaptureOptions, Source};
use crate::config::{self, invalid, ConfigError};
use crate::connectors::SourceSettings;
use crate::redact::SecretUrl;

/// A PostgreSQL source's settings. `Debug` masks the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// `postgres://user:password@host:port/database`, optionally with libpq's
    /// `?sslmode=...&sslrootcert=...&sslcert=...&sslkey=...`.
    pub url: SecretUrl,
    /// Replication slot (created if missing). Default `tidemark_<name>`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Publication (created if missing, for all tables). Default `tidemark`.
    #[serde(default)]
    pub publication: Option<String>,
    /// Restrict capture to these tables (`schema.table`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// What to do when the history cannot go on (slot or publication dropped, WAL
    /// consumed elsewhere): unset, stop and wait for `tidemark resync`; `"auto"`,
    /// record a break and start a new history at once.
    #[serde(default)]
    pub resync: Option<Resync>,
    /// Several databases of the server as one section: each is captured as a source
    /// of its own, `<name>.<database>`, with its own slot (`tidemark_<name>_<database>`),
    /// base image and coverage; the URL's database is not used.
    #[serde(default)]
    pub databases: Vec<String>,
}

/// The `resync` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resync {
    /// Start a new history by itself.
    Auto,
}

/// The longest name PostgreSQL accepts for a slot (NAMEDATALEN - 1).
const MAX_SLOT: usize = 63;

impl PostgresSettings {
    /// Parses and checks the section (`at` is `source[i]`).
    pub fn parse(
        name: &str,
        table: toml::Table,
        at: &str,
    ) -> Result<PostgresSettings, ConfigError> {
        let mut s: PostgresSettings = config::section(table, at)?;
        let f = |k: &str| format!("{at}.{k}");
        *s.url.expose_mut() = config::expand_env(s.url.expose(), &f("url"))?;
        config::check_scheme(s.url.expose(), super::SCHEMES).map_err(|p| invalid(f("url"), p))?;
        let conn = ConnInfo::parse(s.url.expose()).map_err(|e| invalid(f("url"), e.to_string()))?;
        if conn.host.is_empty() {
            return Err(invalid(
                f("url"),
                "names no host; use postgres://user:password@host:port/database",
            ));
        }
        if conn.tls().mode() != super::tls::SslMode::Disable {
            // The certificate files are read now, so a typo fails validation.
            conn.tls()
                .connector()
                .map_err(|e| invalid(f("url"), e.to_string()))?;
        }
        if !s.databases.is_empty() {
            if s.slot.is_some() {
                return Err(invalid(
                    f("slot"),
                    "cannot be set with `databases`: each database needs a slot of its own (tidemark_<name>_<database>)",
                ));
            }
            let all = s.databases.iter().any(|d| d == "*");
            if all && s.databases.len() > 1 {
                return Err(invalid(
                    f("databases"),
                    "`*` (every database but templates) stands alone: list databases, or give [\"*\"]",
                ));
            }
            for (j, db) in s.databases.iter().enumerate().filter(|_| !all) {
                if db.is_empty() || s.databases[..j].contains(db) {
                    return Err(invalid(
                        f(&format!("databases[{j}]")),
                        format!("`{db}` is empty or listed twice"),
                    ));
                }
                check_slot(&default_slot(&format!("{name}.{db}"))).map_err(|p| {
                    invalid(
                        f(&format!("databases[{j}]")),
                        format!("the slot for database `{db}` is unusable: {p}; shorten the source's name"),
                    )
                })?;
            }
        }
        match &s.slot {
            Some(slot) => check_slot(slot).map_err(|p| invalid(f("slot"), p))?,
            None => check_slot(&default_slot(name)).map_err(|p| {
                invalid(
                    f("name"),
                    format!("the default slot `tidemark_<name>` is unusable: {p}; shorten the name or set `slot`"),
                )
            })?,
        }
        if s.publication.as_deref() == Some("") {
            return Err(invalid(
                f("publication"),
                "is empty; remove it for the default or name a publication",
            ));
        }
        for (j, t) in s.tables.iter().enumerate() {
            if t.is_empty() || t.split('.').count() > 2 || t.split('.').any(str::is_empty) {
                return Err(invalid(
                    f(&format!("tables[{j}]")),
                    format!("`{t}` is not `schema.table` or `table`"),
                ));
            }
        }
        Ok(s)
    }

    /// The slot of source `name`: the configured one or `tidemark_<name>`.
    pub fn slot_name(&self, name: &str) -> String {
        self.slot.clone().unwrap_or_else(|| default_slot(name))
    }

    /// The publication: the configured one or `tidemark`.
    pub fn publication_name(&self) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| "tidemark".into())
    }
}

/// `tidemark_<name>` with the name lower-cased and anything but a-z, 0-9 made `_`.
pub fn default_slot(name: &str) -> String {
    format!(
        "tidemark_{}",
        name.to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
    )
}

/// `url` naming database `db` instead of its own (the query kept; `db` escaped).
pub fn with_database(url: &str, db: &str) -> String {
    let escaped: String = db
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    // The authority ends at the first `/` after the last `@` (a password may hold `/`).
    let start = base.find("://").map_or(0, |i| i + 3);
    let host_at = base[start..].rfind('@').map_or(start, |i| start + i + 1);
    let path_at = base[host_at..]
        .find('/')
        .map_or(base.len(), |i| host_at + i);
    format!("{}/{escaped}{query}", &base[..path_at])
}

fn check_slot(slot: &str) -> Result<(), String> {
    let ok = !slot.is_empty()
        && slot.len() <= MAX_SLOT
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{slot}` is not a slot name: use only a-z, 0-9 and _, at most {MAX_SLOT} characters"
        ))
    }
}

impl SourceSettings for PostgresSettings {
    fn capture(&self, name: &str, opts: &CaptureOptions) -> Result<Box<dyn Source>, CaptureError> {
        Ok(Box::new(super::capture::PostgresSource::new(
            name, self, opts,
        )?))
    }

    fn claims(&self, name: &str) -> Vec<String> {
        let server = ConnInfo::parse(self.url.expose())
            .map(|c| format!("{}:{}", c.host.to_ascii_lowercase(), c.port))
            .unwrap_or_default();
        vec![format!(
            "replication slot `{}` on {server}",
            self.slot_name(name)
        )]
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

    fn discovers_members(&self) -> bool {
        self.databases == ["*"]
    }

    fn discover(
        &self,
        timeouts: &crate::config::Timeouts,
    ) -> Result<crate::connectors::Members, crate::connectors::ConnectorError> {
        if !self.discovers_members() {
            return Ok(self.members());
        }
        let conn = ConnInfo::parse(self.url.expose())
            .map_err(crate::connectors::ConnectorError::from_display)?
            .with_timeouts(timeouts);
        let names: Vec<String> = super::block_on(async {
            let client = conn.connect().await?;
            let rows = client
                .query(
                    "SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
                    &[],
                )
                .await
                .map_err(|e| super::PgError::query(&conn.display, &e))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })?;
        let (usable, skipped): (Vec<String>, Vec<String>) = names.into_iter().partition(|d| {
            d.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && d.len() <= 40
        });
        if !skipped.is_empty() {
            tracing::warn!(databases = ?skipped, "databases = [\"*\"]: these databases' names cannot name a source (use a-z, A-Z, 0-9, _ and -, at most 40 characters) and are not captured; list them under another section");
        }
        let mut listed = self.clone();
        listed.databases = usable;
        Ok(listed.members())
    }

    fn members(&self) -> crate::connectors::Members {
        if self.discovers_members() {
            return Vec::new();
        }
        self.databases
            .iter()
            .map(|db| {
                let mut member = self.clone();
                member.databases.clear();
                *member.url.expose_mut() = with_database(self.url.expose(), db);
                (
                    db.clone(),
                    std::sync::Arc::new(member) as std::sync::Arc<dyn SourceSettings>,
                )
            })
            .collect()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://u:p/w@h:5/app?sslmode=require", "orders db"),
            "postgres://u:p/w@h:5/orders%20db?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
