//! `[[application]]`: a name for several sources that are recovered as one, and the
//! named target profiles they are restored into.
//!
//! ```toml
//! [[application]]
//! name = "shop"
//! sources = ["shop-db", "shop-cache", "shop-events"]
//! points = "every 30s"          # optional: a recovery point on a schedule (`run`)
//! keep_points = "7d"            # optional: default, the journal's retention (else forever)
//! checks = ["./check-orders.sh"] # `rehearse` runs these against the restored targets
//!
//! [application.profile.staging.shop-db]
//! target = "postgres://restore@staging/shop"
//! force = true                  # the profile's targets may hold data
//! [application.profile.staging.shop-events]
//! target = "kafka://staging:9092"
//! topic-map = "orders=orders-staging"   # any restore option of the source's kind
//! ```
//!
//! Every reference is checked without connecting: each source named exists (a
//! section with members, PostgreSQL `databases`, stands for all of them), each
//! profile names only the application's sources, each target URL is of its
//! source's kind, each option is one the kind's `restore` declares.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{expand_env, invalid, Config, ConfigError};
use crate::connectors::{self, KindOptions, OptionFor};
use crate::redact::redact_url;

/// One `[[application]]` table, validated.
#[derive(Clone)]
pub struct Application {
    /// Unique among applications.
    pub name: String,
    /// Its sources, in the order given, sections with members expanded.
    pub sources: Vec<String>,
    /// Take a recovery point this often while `run` captures (`points = "every 30s"`).
    pub points: Option<Duration>,
    /// Drop recovery points older than this (default: the journal's retention).
    pub keep_points: Option<Duration>,
    /// Commands `rehearse` runs against the restored targets.
    pub checks: Vec<String>,
    /// `run` rehearses this often (`rehearse = "daily"`) into `rehearse_profile`.
    pub rehearse: Option<(Duration, String)>,
    /// Named restore target profiles.
    pub profiles: BTreeMap<String, Profile>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("name", &self.name)
            .field("sources", &self.sources)
            .field("points", &self.points)
            .field("keep_points", &self.keep_points)
            .field("checks", &self.checks.len())
            .field("rehearse", &self.rehearse)
            .field("profiles", &self.profiles)
            .finish()
    }
}

/// `[application.profile.NAME]`: where each source of the application goes.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// By source name. A source without an entry is not restored by this profile
    /// (a restore with it says so).
    pub targets: BTreeMap<String, ProfileTarget>,
}

/// One source's target in a profile. `Debug` masks the URL's password.
#[derive(Clone)]
pub struct ProfileTarget {
    /// A URL of the source's kind (`${ENV}` expanded).
    pub url: String,
    /// The target may hold data (`restore --force`).
    pub force: bool,
    /// The kind's own restore options (`topic-map`, `namespace-map`, ...).
    pub options: KindOptions,
}

impl std::fmt::Debug for ProfileTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileTarget")
            .field("url", &redact_url(&self.url))
            .field("force", &self.force)
            .field("options", &self.options.0)
            .finish()
    }
}

/// Parses every `[[application]]` table against the sources already parsed.
pub(super) fn parse_applications(
    tables: Vec<toml::Table>,
    cfg: &Config,
) -> Result<Vec<Application>, ConfigError> {
    let mut apps: Vec<Application> = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        let at = format!("application[{i}]");
        let app = parse_one(table, &at, cfg)?;
        if apps.iter().any(|a| a.name == app.name) {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "`{}` is used by an earlier application; names must be unique",
                    app.name
                ),
            ));
        }
        apps.push(app);
    }
    Ok(apps)
}

fn parse_one(mut table: toml::Table, at: &str, cfg: &Config) -> Result<Application, ConfigError> {
    let name = match table.remove("name") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err(invalid(format!("{at}.name"), "must be a string")),
        None => return Err(invalid(at, "missing field `name`")),
    };
    super::validate_name(&name).map_err(|p| invalid(format!("{at}.name"), p))?;
    let listed = strings(table.remove("sources"), &format!("{at}.sources"))?.ok_or_else(|| {
        invalid(
            at,
            "missing field `sources`: list the application's sources",
        )
    })?;
    if listed.is_empty() {
        return Err(invalid(
            format!("{at}.sources"),
            "is empty; name at least one configured source",
        ));
    }
    let mut sources = Vec::new();
    for s in &listed {
        let members: Vec<String> = match cfg.group(s) {
            Some(m) => m.to_vec(),
            None if cfg.source(s).is_some() => vec![s.clone()],
            // A section whose members are found on the server: known by name only.
            None if cfg.undiscovered.iter().any(|u| u.name == *s) => {
                return Err(invalid(
                    format!("{at}.sources"),
                    format!("`{s}` finds its databases on the server (databases = [\"*\"]); an application needs its sources listed: give `databases` by name"),
                ))
            }
            None => {
                return Err(invalid(
                    format!("{at}.sources"),
                    format!(
                        "no source named `{s}` (configured: {})",
                        cfg.sources
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        };
        for m in members {
            if sources.contains(&m) {
                return Err(invalid(
                    format!("{at}.sources"),
                    format!("`{m}` is listed twice"),
                ));
            }
            sources.push(m);
        }
    }
    let points = match table.remove("points") {
        None => None,
        Some(toml::Value::String(v)) if matches!(v.trim(), "off" | "never") => None,
        Some(toml::Value::String(v)) => Some(every(&v, &format!("{at}.points"))?),
        Some(_) => {
            return Err(invalid(
                format!("{at}.points"),
                "must be a string such as \"every 30s\"",
            ))
        }
    };
    let keep_points = match table.remove("keep_points") {
        None => None,
        Some(toml::Value::String(v)) => Some(
            crate::time::parse_duration(&v)
                .map_err(|e| invalid(format!("{at}.keep_points"), e.to_string()))?,
        ),
        Some(_) => {
            return Err(invalid(
                format!("{at}.keep_points"),
                "must be a string such as \"7d\"",
            ))
        }
    };
    let checks = strings(table.remove("checks"), &format!("{at}.checks"))?.unwrap_or_default();
    let rehearse_every = match table.remove("rehearse") {
        None => None,
        Some(toml::Value::String(v)) => match v.trim() {
            "off" | "never" => None,
            "hourly" => Some(Duration::from_secs(3600)),
            "daily" => Some(Duration::from_secs(86400)),
            "weekly" => Some(Duration::from_secs(7 * 86400)),
            other => Some(every(other, &format!("{at}.rehearse"))?),
        },
        Some(_) => {
            return Err(invalid(
                format!("{at}.rehearse"),
                "must be a string such as \"daily\" or \"every 6h\"",
            ))
        }
    };
    let rehearse_profile = match table.remove("rehearse_profile") {
        None => None,
        Some(toml::Value::String(p)) => Some(p),
        Some(_) => {
            return Err(invalid(
                format!("{at}.rehearse_profile"),
                "must be a profile name",
            ))
        }
    };
    let mut profiles = BTreeMap::new();
    match table.remove("profile") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (pname, body) in t {
                let pat = format!("{at}.profile.{pname}");
                super::validate_name(&pname).map_err(|p| invalid(&pat, p))?;
                let toml::Value::Table(body) = body else {
                    return Err(invalid(
                        &pat,
                        "must be a table of the application's sources",
                    ));
                };
                profiles.insert(pname, parse_profile(body, &pat, &sources, cfg)?);
            }
        }
        Some(_) => {
            return Err(invalid(
                format!("{at}.profile"),
                "must be tables: [application.profile.NAME.SOURCE]",
            ))
        }
    }
    if let Some(key) = table.keys().next() {
        return Err(invalid(
            at,
            format!("unknown field `{key}`, expected one of `name`, `sources`, `points`, `keep_points`, `checks`, `rehearse`, `rehearse_profile`, `profile`"),
        ));
    }
    let rehearse = match (rehearse_every, rehearse_profile) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(invalid(
                format!("{at}.rehearse"),
                "needs `rehearse_profile`: the sandbox profile to rehearse into",
            ))
        }
        (Some(every), Some(p)) if profiles.contains_key(&p) => Some((every, p)),
        (Some(_), Some(p)) => {
            return Err(invalid(
                format!("{at}.rehearse_profile"),
                format!("`{p}` is not one of the application's profiles (add [application.profile.{p}.SOURCE] tables)"),
            ))
        }
    };
    Ok(Application {
        name,
        sources,
        points,
        keep_points,
        checks,
        rehearse,
        profiles,
    })
}

fn parse_profile(
    body: toml::Table,
    at: &str,
    sources: &[String],
    cfg: &Config,
) -> Result<Profile, ConfigError> {
    let mut targets = BTreeMap::new();
    for (source, value) in body {
        let sat = format!("{at}.{source}");
        // A section with members (PostgreSQL `databases`) stands for each of them,
        // `{database}` in its target replaced by the member's database.
        let members: Vec<(String, String)> = match cfg.group(&source) {
            Some(m) => m
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        n.strip_prefix(&format!("{source}."))
                            .unwrap_or(n)
                            .to_string(),
                    )
                })
                .collect(),
            None => vec![(source.clone(), String::new())],
        };
        let Some(sc) = cfg.source(&members[0].0) else {
            return Err(invalid(
                &sat,
                format!("`{source}` is not a configured source"),
            ));
        };
        if let Some((m, _)) = members.iter().find(|(m, _)| !sources.contains(m)) {
            return Err(invalid(
                &sat,
                format!(
                    "`{m}` is not one of the application's sources ({})",
                    sources.join(", ")
                ),
            ));
        }
        if members.len() > 1 && !value.to_string().contains("{database}") {
            return Err(invalid(
                &sat,
                format!("`{source}` stands for {} sources: its target needs `{{database}}` where each one's database goes", members.len()),
            ));
        }
        let mut t = match value {
            toml::Value::String(url) => {
                let mut t = toml::Table::new();
                t.insert("target".into(), toml::Value::String(url));
                t
            }
            toml::Value::Table(t) => t,
            _ => return Err(invalid(&sat, "must be a URL or a table with `target`")),
        };
        let url = match t.remove("target") {
            Some(toml::Value::String(u)) => expand_env(&u, &format!("{sat}.target"))?,
            _ => {
                return Err(invalid(
                    &sat,
                    "missing field `target` (a URL of the source's kind)",
                ))
            }
        };
        let connector = connectors::for_kind(sc.kind)
            .ok_or_else(|| invalid(&sat, format!("no connector for {} in this build", sc.kind)))?;
        super::check_scheme(&url, connector.schemes()).map_err(|p| {
            invalid(
                format!("{sat}.target"),
                format!("{p}: source `{source}` is a {} source", sc.kind),
            )
        })?;
        let force = match t.remove("force") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(invalid(format!("{sat}.force"), "must be true or false")),
        };
        let mut options = KindOptions::default();
        for (k, v) in t {
            let toml::Value::String(v) = v else {
                return Err(invalid(format!("{sat}.{k}"), "must be a string"));
            };
            options.0.insert(k, v);
        }
        connectors::check_options(connector, &options, OptionFor::Restore).map_err(|p| {
            invalid(
                &sat,
                p.replace("--", "")
                    .replace("; remove it", "; remove the key"),
            )
        })?;
        for (name, db) in members {
            let url = url.replace("{database}", &db);
            let t = ProfileTarget {
                url,
                force,
                options: options.clone(),
            };
            targets.insert(name, t);
        }
    }
    Ok(Profile { targets })
}

/// `"every 30s"` (or just `"30s"`): at least a second.
fn every(v: &str, field: &str) -> Result<Duration, ConfigError> {
    let d = v.trim().strip_prefix("every").unwrap_or(v).trim();
    match humantime::parse_duration(d) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        _ => Err(invalid(
            field,
            format!("`{v}` is not a schedule; write e.g. \"every 30s\", \"every 5m\" or \"off\""),
        )),
    }
}

/// An optional array of strings.
fn strings(v: Option<toml::Value>, field: &str) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let toml::Value::Array(items) = v else {
        return Err(invalid(field, "must be an array of strings"));
    };
    items
        .into_iter()
        .map(|i| match i {
            toml::Value::String(s) => Ok(s),
            _ => Err(invalid(field, "must be an array of strings")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl Config {
    /// The application named `name`, or an error listing the configured ones.
    pub fn application(&self, name: &str) -> Result<&Application, String> {
        self.applications
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| {
                if self.applications.is_empty() {
                    format!("no application named `{name}`: the configuration has no [[application]] table")
                } else {
                    format!(
                        "no application named `{name}` (configured: {})",
                        self.applications
                            .iter()
                            .map(|a| a.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            })
    }
}
