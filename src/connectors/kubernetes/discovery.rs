//! Which resources a source captures: named in config, or discovered from the API
//! server (legacy discovery, `/api/v1` and `/apis/<group>/<version>`, preferred version
//! first; 1.20 has no aggregated discovery) minus the default exclusions.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::client::{Kube, KubeError};
use super::config::KubeSettings;

/// A resource: group (empty for the core group), version and plural name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// API group; empty for the core group.
    pub group: String,
    /// Version (`v1`).
    pub version: String,
    /// Plural resource name (`deployments`).
    pub plural: String,
}

impl Gvr {
    /// Parses `group/version/plural` or `version/plural` (core group).
    pub fn parse(s: &str) -> Result<Gvr, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || {
            format!("`{s}` is not group/version/plural (e.g. apps/v1/deployments) or v1/plural for the core group")
        };
        match parts.as_slice() {
            [v, p] if !v.is_empty() && !p.is_empty() => Ok(Gvr {
                group: String::new(),
                version: v.to_string(),
                plural: p.to_string(),
            }),
            [g, v, p] if !g.is_empty() && !v.is_empty() && !p.is_empty() => Ok(Gvr {
                group: g.to_string(),
                version: v.to_string(),
                plural: p.to_string(),
            }),
            _ => Err(bad()),
        }
    }

    /// True for core-group resource `plural`.
    pub fn is_core(&self, plural: &str) -> bool {
        self.group.is_empty() && self.plural == plural
    }

    /// The object's `apiVersion` (`apps/v1`, `v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

impl fmt::Display for Gvr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.plural)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.plural)
        }
    }
}

/// A resource the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Which.
    pub gvr: Gvr,
    /// Its objects' `kind`.
    pub kind: String,
    /// Namespaced (else cluster-scoped).
    pub namespaced: bool,
}

/// `(group, plural)` excluded by default, and the `include` entry that keeps it.
const EXCLUDED: &[(&str, &str, &str)] = &[
    ("", "events", "events"),
    ("events.k8s.io", "events", "events"),
    ("coordination.k8s.io", "leases", "leases"),
    ("", "endpoints", "endpoints"),
    ("discovery.k8s.io", "endpointslices", "endpointslices"),
    ("apps", "replicasets", "replicasets"),
    ("apps", "controllerrevisions", "controllerrevisions"),
];

/// Whether `gvr` is excluded by default (and not included back by `settings`).
pub fn excluded(gvr: &Gvr, include: &dyn Fn(&str) -> bool) -> bool {
    EXCLUDED
        .iter()
        .any(|(g, p, inc)| gvr.group == *g && gvr.plural == *p && !include(inc))
}

/// Whether object `obj` of `gvr` is left out by the per-object default exclusions:
/// Pods a controller owns (their controller is captured) and service-account token
/// Secrets (the token controller makes them).
pub fn object_excluded(gvr: &Gvr, obj: &Value, include: &dyn Fn(&str) -> bool) -> bool {
    if gvr.is_core("pods") && !include("owned-pods") {
        let owned = obj["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|o| o.iter().any(|r| r["controller"].as_bool() == Some(true)));
        return owned;
    }
    if gvr.is_core("secrets") && !include("token-secrets") {
        return obj["type"].as_str() == Some("kubernetes.io/service-account-token");
    }
    false
}

fn serves_list_watch(r: &Value) -> bool {
    let verbs: Vec<&str> = r["verbs"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    verbs.contains(&"list") && verbs.contains(&"watch")
}

fn resources_of(doc: &Value, group: &str, version: &str) -> Vec<Resource> {
    doc["resources"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|r| r["name"].as_str().is_some_and(|n| !n.contains('/')))
                .filter(|r| serves_list_watch(r))
                .map(|r| Resource {
                    gvr: Gvr {
                        group: group.to_string(),
                        version: version.to_string(),
                        plural: r["name"].as_str().unwrap_or_default().to_string(),
                    },
                    kind: r["kind"].as_str().unwrap_or_default().to_string(),
                    namespaced: r["namespaced"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A group's versions from `/apis`: the preferred one first, then the others in the
/// server's order.
fn versions_of(group: &Value) -> Vec<String> {
    let mut out: Vec<String> = group["preferredVersion"]["groupVersion"]
        .as_str()
        .map(str::to_string)
        .into_iter()
        .collect();
    for v in group["versions"].as_array().into_iter().flatten() {
        if let Some(gv) = v["groupVersion"].as_str() {
            if !out.iter().any(|o| o == gv) {
                out.push(gv.to_string());
            }
        }
    }
    out
}

/// Adds `found` to `out`, leaving out resources of the group already there (from a
/// more preferred version).
fn add_new(out: &mut Vec<Resource>, found: Vec<Resource>) {
    for r in found {
        if !out
            .iter()
            .any(|o| o.gvr.group == r.gvr.group && o.gvr.plural == r.gvr.plural)
        {
            out.push(r);
        }
    }
}

/// Every resource the server serves with list and watch: each at its group's
/// preferred version, and those a group serves only in another version (on 1.20,
/// CronJobs exist only in `batch/v1beta1` while `batch` prefers `v1`) at the first
/// version that has them.
pub async fn served(kube: &Kube, timeout: Duration) -> Result<Vec<Resource>, KubeError> {
    let mut out = resources_of(&kube.get("/api/v1", timeout).await?, "", "v1");
    let groups = kube.get("/apis", timeout).await?;
    for g in groups["groups"].as_array().cloned().unwrap_or_default() {
        let name = g["name"].as_str().unwrap_or_default();
        for gv in versions_of(&g) {
            let version = gv.rsplit('/').next().unwrap_or_default();
            match kube.get(&format!("/apis/{gv}"), timeout).await {
                Ok(doc) => add_new(&mut out, resources_of(&doc, name, version)),
                // An aggregated API whose backend is down: skip it, as kubectl does.
                Err(KubeError::Api { code: 503, .. }) => {
                    tracing::warn!(group = %gv, "API group unavailable; not captured until it is")
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// The resources `settings` captures: its `resources` (namespaced) and
/// `cluster_resources`, or, when `resources` is empty, every namespaced resource the
/// server serves minus the default exclusions. A named resource the server does not
/// serve is an error naming it.
pub async fn select(
    kube: &Kube,
    settings: &KubeSettings,
    timeout: Duration,
) -> Result<Vec<Resource>, KubeError> {
    let served = served(kube, timeout).await?;
    let include = |w: &str| settings.includes(w);
    let find = |g: &super::discovery::Gvr| -> Result<Resource, KubeError> {
        served
            .iter()
            .find(|r| &r.gvr == g)
            .cloned()
            .ok_or_else(|| KubeError::Protocol {
                what: kube.cluster.clone(),
                problem: format!("the API server does not serve {g} (with list and watch); check the name with `kubectl api-resources`, or remove it from the source's resources"),
            })
    };
    let mut out: Vec<Resource> = if settings.resources.is_empty() {
        served
            .iter()
            .filter(|r| r.namespaced && !excluded(&r.gvr, &include))
            .cloned()
            .collect()
    } else {
        settings
            .resources
            .iter()
            .map(find)
            .collect::<Result<_, _>>()?
    };
    for g in &settings.cluster_resources {
        out.push(find(g)?);
    }
    out.sort_by(|a, b| a.gvr.cmp(&b.gvr));
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_only_in_other_versions_are_found() {
        let group = serde_json::json!({"name": "batch",
            "versions": [{"groupVersion": "batch/v1", "version": "v1"},
                         {"groupVersion": "batch/v1beta1", "version": "v1beta1"}],
            "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"}});
        assert_eq!(versions_of(&group), ["batch/v1", "batch/v1beta1"]);
        let doc = |names: &[&str]| {
            serde_json::json!({"resources": names.iter().map(|n| serde_json::json!(
                {"name": n, "kind": "K", "namespaced": true, "verbs": ["list", "watch"]})).collect::<Vec<_>>()})
        };
        let mut out = resources_of(&doc(&["jobs", "jobs/status"]), "batch", "v1");
        add_new(
            &mut out,
            resources_of(&doc(&["jobs", "cronjobs"]), "batch", "v1beta1"),
        );
        let got: Vec<String> = out.iter().map(|r| r.gvr.to_string()).collect();
        assert_eq!(got, ["batch/v1/jobs", "batch/v1beta1/cronjobs"]);
    }

    #[test]
    fn parses_and_prints_resources() {
        let g = Gvr::parse("apps/v1/deployments").unwrap();
        assert_eq!(g.to_string(), "apps/v1/deployments");
        assert_eq!(g.api_version(), "apps/v1");
        let c = Gvr::parse("v1/configmaps").unwrap();
        assert!(c.group.is_empty() && c.to_string() == "v1/configmaps");
        assert!(Gvr::parse("deployments").is_err());
        assert!(Gvr::parse("a//b").is_err());
    }

    #[test]
    fn default_exclusions() {
        let none = |_: &str| false;
        assert!(excluded(&Gvr::parse("v1/events").unwrap(), &none));
        assert!(!excluded(&Gvr::parse("v1/events").unwrap(), &|w: &str| w == "events"));
        assert!(!excluded(
            &Gvr::parse("apps/v1/deployments").unwrap(),
            &none
        ));
        let pods = Gvr::parse("v1/pods").unwrap();
        let owned = serde_json::json!({"metadata": {"ownerReferences": [{"controller": true}]}});
        assert!(object_excluded(&pods, &owned, &none));
        assert!(!object_excluded(
            &pods,
            &serde_json::json!({"metadata": {}}),
            &none
        ));
        let tok = serde_json::json!({"type": "kubernetes.io/service-account-token"});
        assert!(object_excluded(
            &Gvr::parse("v1/secrets").unwrap(),
            &tok,
            &none
        ));
    }
}
