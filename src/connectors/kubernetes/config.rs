//! The `kind = "kubernetes"` section of a `[[source]]` table, and the
//! `kubernetes://` URL of restore targets and `digest`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::discovery::Gvr;
use crate::capture::{CaptureError, CaptureOptions, Source};
use crate::config::{self, invalid, ConfigError, Timeouts};
use crate::connectors::{Probe, SourceSettings};
use crate::crypto::SealKey;
use crate::journal::{Journal, SourceId};

/// Where a cluster is: a kubeconfig file and one of its contexts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    /// The kubeconfig file (`$KUBECONFIG`, else `~/.kube/config`, when not given).
    pub kubeconfig: PathBuf,
    /// The context; `None`: the file's current context.
    pub context: Option<String>,
}

impl ClusterRef {
    /// The default kubeconfig file: `$KUBECONFIG` (its first entry), else `~/.kube/config`.
    pub fn default_kubeconfig() -> PathBuf {
        if let Some(first) = std::env::var_os("KUBECONFIG")
            .and_then(|v| std::env::split_paths(&v).next())
            .filter(|p| !p.as_os_str().is_empty())
        {
            return first;
        }
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(".kube").join("config")
    }

    /// For messages: `kubeconfig /path (context x)`.
    pub fn describe(&self) -> String {
        match &self.context {
            Some(c) => format!("kubeconfig {} (context {c})", self.kubeconfig.display()),
            None => format!("kubeconfig {}", self.kubeconfig.display()),
        }
    }
}

/// A parsed `kubernetes://` URL:
/// - `kubernetes:///abs/path/kubeconfig`: that file, its current context;
/// - `kubernetes://NAME`: context `NAME` of the default kubeconfig;
///
/// with an optional query: `context=NAME`, `namespaces=a,b` (the namespaces a
/// digest covers), `cluster=group/version/plural,...` (cluster-scoped resources
/// it covers).
#[derive(Debug, Clone)]
pub struct KubeUrl {
    /// The cluster.
    pub cluster: ClusterRef,
    /// Namespaces (digest scope); empty: all.
    pub namespaces: Vec<String>,
    /// Cluster-scoped resources (digest scope).
    pub cluster_resources: Vec<Gvr>,
}

impl KubeUrl {
    /// Parses `url`; errors say what form is expected.
    pub fn parse(url: &str) -> Result<KubeUrl, String> {
        let rest = url
            .strip_prefix("kubernetes://")
            .ok_or_else(|| format!("`{url}` is not a kubernetes:// URL"))?;
        let (body, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut cluster = if body.starts_with('/') {
            ClusterRef {
                kubeconfig: PathBuf::from(body),
                context: None,
            }
        } else if body.is_empty() {
            ClusterRef {
                kubeconfig: ClusterRef::default_kubeconfig(),
                context: None,
            }
        } else {
            ClusterRef {
                kubeconfig: ClusterRef::default_kubeconfig(),
                context: Some(body.to_string()),
            }
        };
        let mut out = KubeUrl {
            cluster: cluster.clone(),
            namespaces: Vec::new(),
            cluster_resources: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let list = || v.split(',').filter(|s| !s.is_empty()).map(str::to_string);
            match k {
                "context" => cluster.context = Some(v.to_string()),
                "namespaces" => out.namespaces = list().collect(),
                "cluster" => {
                    out.cluster_resources =
                        list().map(|g| Gvr::parse(&g)).collect::<Result<_, _>>()?
                }
                _ => {
                    return Err(format!(
                    "`{url}`: unknown query parameter `{k}`; use context=, namespaces= or cluster="
                ))
                }
            }
        }
        out.cluster = cluster;
        Ok(out)
    }
}

/// Which default exclusions an `include` entry turns off.
pub const INCLUDABLE: &[&str] = &[
    "events",
    "leases",
    "endpoints",
    "endpointslices",
    "replicasets",
    "controllerrevisions",
    "owned-pods",
    "token-secrets",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    kubeconfig: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    label_selector: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    cluster_resources: Vec<String>,
    #[serde(default)]
    secrets_key_file: Option<String>,
    #[serde(default)]
    secrets_key_env: Option<String>,
    #[serde(default)]
    discovery_interval: Option<String>,
    #[serde(default)]
    coverage_interval: Option<String>,
}

/// A Kubernetes source's settings, validated. `Debug` shows the key's id only.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// The cluster.
    pub cluster: ClusterRef,
    /// Namespaces captured; empty: all.
    pub namespaces: Vec<String>,
    /// A label selector applied to every list and watch.
    pub label_selector: Option<String>,
    /// Namespaced resources captured; empty: discovered (minus the exclusions).
    pub resources: Vec<Gvr>,
    /// Default exclusions turned off (see [`INCLUDABLE`]).
    pub include: Vec<String>,
    /// Cluster-scoped resources captured (none by default).
    pub cluster_resources: Vec<Gvr>,
    /// The key sealing Secrets' data; `None` only when no Secrets are captured.
    pub key: Option<Arc<SealKey>>,
    /// How often the resource list is discovered again (new CRDs).
    pub discovery_interval: Duration,
    /// How often each resource is compared with the server to advance coverage.
    pub coverage_interval: Duration,
}

impl KubeSettings {
    /// Parses and checks the section (`at` is `source[i]`); reads the key.
    pub fn parse(table: toml::Table, at: &str) -> Result<KubeSettings, ConfigError> {
        let raw: Raw = config::section(table, at)?;
        let f = |k: &str| format!("{at}.{k}");
        let kubeconfig = match &raw.kubeconfig {
            Some(p) => PathBuf::from(config::expand_env(p, &f("kubeconfig"))?),
            None => ClusterRef::default_kubeconfig(),
        };
        let gvrs = |list: &[String], field: &str| -> Result<Vec<Gvr>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, s)| Gvr::parse(s).map_err(|e| invalid(f(&format!("{field}[{i}]")), e)))
                .collect()
        };
        let resources = gvrs(&raw.resources, "resources")?;
        let cluster_resources = gvrs(&raw.cluster_resources, "cluster_resources")?;
        for (i, inc) in raw.include.iter().enumerate() {
            if !INCLUDABLE.contains(&inc.as_str()) {
                return Err(invalid(
                    f(&format!("include[{i}]")),
                    format!(
                        "`{inc}` is not a default exclusion; use one of {}",
                        INCLUDABLE.join(", ")
                    ),
                ));
            }
        }
        for (i, ns) in raw.namespaces.iter().enumerate() {
            if ns.is_empty() || ns.contains('/') {
                return Err(invalid(
                    f(&format!("namespaces[{i}]")),
                    format!("`{ns}` is not a namespace name"),
                ));
            }
        }
        let key = match (&raw.secrets_key_file, &raw.secrets_key_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    f("secrets_key_file"),
                    "and secrets_key_env are both set; keep one",
                ))
            }
            (Some(file), None) => {
                let path = config::expand_env(file, &f("secrets_key_file"))?;
                Some(Arc::new(
                    SealKey::from_file(std::path::Path::new(&path))
                        .map_err(|e| invalid(f("secrets_key_file"), e.to_string()))?,
                ))
            }
            (None, Some(var)) => Some(Arc::new(
                SealKey::from_env(var).map_err(|e| invalid(f("secrets_key_env"), e.to_string()))?,
            )),
            (None, None) => None,
        };
        let captures_secrets =
            resources.is_empty() || resources.iter().any(|g| g.is_core("secrets"));
        if key.is_none() && captures_secrets {
            return Err(invalid(
                f("secrets_key_file"),
                "is missing: Secrets are captured, and their data is only ever journaled encrypted (AES-256-GCM); set secrets_key_file (a file holding 32 bytes as 64 hex digits: `openssl rand -hex 32 > key`) or secrets_key_env (the name of a variable holding it), or list `resources` without v1/secrets",
            ));
        }
        let duration = |v: &Option<String>, field: &str, default: u64| match v {
            None => Ok(Duration::from_secs(default)),
            Some(s) => crate::time::parse_duration(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    invalid(
                        f(field),
                        format!("`{s}` is not a duration above 0 (e.g. `30s`)"),
                    )
                }),
        };
        Ok(KubeSettings {
            cluster: ClusterRef {
                kubeconfig,
                context: raw.context,
            },
            namespaces: raw.namespaces,
            label_selector: raw.label_selector.filter(|s| !s.is_empty()),
            resources,
            include: raw.include,
            cluster_resources,
            key,
            discovery_interval: duration(&raw.discovery_interval, "discovery_interval", 30)?,
            coverage_interval: duration(&raw.coverage_interval, "coverage_interval", 1)?,
        })
    }

    /// Whether default exclusion `what` is turned off.
    pub fn includes(&self, what: &str) -> bool {
        self.include.iter().any(|i| i == what)
    }
}

impl SourceSettings for KubeSettings {
    fn capture(&self, name: &str, opts: &CaptureOptions) -> Result<Box<dyn Source>, CaptureError> {
        Ok(Box::new(super::capture::KubeSource::new(
            name,
            Arc::new(self.clone()),
            opts.timeouts,
        )))
    }

    fn marker_problem(&self) -> Option<String> {
        super::marker::problem(self)
    }

    fn marker(
        &self,
        timeouts: &crate::config::Timeouts,
    ) -> Result<Box<dyn crate::connectors::MarkWriter>, crate::connectors::ConnectorError> {
        super::marker::connect(self, timeouts)
    }

    fn is_marker(&self, event: &crate::event::ChangeEvent, id: &str) -> bool {
        super::marker::is_marker(event, id)
    }

    fn url(&self) -> Option<String> {
        let mut q = Vec::new();
        if let Some(c) = &self.cluster.context {
            q.push(format!("context={c}"));
        }
        if !self.namespaces.is_empty() {
            q.push(format!("namespaces={}", self.namespaces.join(",")));
        }
        let mut u = format!("kubernetes://{}", self.cluster.kubeconfig.display());
        if !q.is_empty() {
            u.push('?');
            u.push_str(&q.join("&"));
        }
        Some(u)
    }

    fn probe(&self, journal: &Journal, id: SourceId, _: &Timeouts) -> Option<Probe> {
        super::helm::probe(journal, id, self.key.as_deref())
    }

    fn describe_event(
        &self,
        event: &crate::event::ChangeEvent,
    ) -> Option<(String, serde_json::Value)> {
        match &event.payload {
            Some(crate::event::Payload::Kubernetes(k)) => {
                super::helm::describe(k, self.key.as_deref())
            }
            _ => None,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
