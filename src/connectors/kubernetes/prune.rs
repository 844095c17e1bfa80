//! The deletions a restore makes: `--existing recreate` (delete an object the
//! target has, wait until it is gone, create the journal's version) and
//! `--prune true` (delete what the restored namespaces hold that the journal does
//! not hold at the moment).
//!
//! Guarantees:
//! - Recreate never deletes a Namespace (that would delete everything in it) or a
//!   CustomResourceDefinition (that would delete all its custom resources): those
//!   are applied over, as `--existing update` does.
//! - A recreated object is gone before its new version is created; an object that
//!   stays (finalizers nobody removes) stops the restore with its name and
//!   finalizers after a minute.
//! - Prune deletes only in namespaces the restore targets (the mapped namespaces of
//!   the journal's objects), never cluster-scoped objects, and only objects of the
//!   resources the source captures (its streams in the journal), matching its
//!   label selector, that its capture would not leave out (Pods a controller owns,
//!   service-account token Secrets, unless included) and that no controller owns
//!   (their owner's deletion takes them).
//! - Prune runs after every object is applied (a failed restore deletes nothing)
//!   and deletes in reverse dependency order, leaving dependents to the garbage
//!   collector (propagation `Background`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{collection_path, Kube, KubeError};
use super::discovery::{object_excluded, served, Gvr};
use super::object::apply_rank;
use crate::connectors::KindOptions;
use crate::journal::{Journal, JournalError, SourceId};
use crate::position::PositionKind;

/// `--prune true|false`.
pub const PRUNE: &str = "prune";

/// How long a recreated object may take to go away.
const GONE_WITHIN: Duration = Duration::from_secs(60);

/// An object: resource, namespace, name.
pub type Key = (Gvr, String, String);

/// Whether `--prune` is on (`true` or `false`; default off).
pub fn prune_option(options: &KindOptions) -> Result<bool, String> {
    match options.get(PRUNE) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!(
            "--prune `{other}`: use true (delete what the journal does not hold at the moment, in the restored namespaces) or false"
        )),
    }
}

/// Whether `--existing recreate` deletes an existing object of `gvr` (else it is
/// applied over).
pub fn recreates(gvr: &Gvr) -> bool {
    !(gvr.is_core("namespaces")
        || (gvr.group == "apiextensions.k8s.io" && gvr.plural == "customresourcedefinitions"))
}

/// What the source's capture covers, for prune to match.
#[derive(Debug, Clone, Default)]
pub struct CaptureScope {
    /// The source's label selector.
    pub selector: Option<String>,
    /// Default exclusions the source turned off (`owned-pods`, `token-secrets`).
    pub include: Vec<String>,
}

/// The resources the source captures: one per stream checkpoint in the journal.
pub fn captured_resources(journal: &Journal, src: SourceId) -> Result<BTreeSet<Gvr>, JournalError> {
    let mut out = BTreeSet::new();
    for c in journal.checkpoints(src)? {
        if let Some(PositionKind::Kubernetes(p)) = c.position.kind {
            let resource = p.resource.split('@').next().unwrap_or_default();
            if let Ok(gvr) = Gvr::parse(resource) {
                out.insert(gvr);
            }
        }
    }
    Ok(out)
}

/// Deletes the object at `path` and waits until the server no longer has it.
pub async fn delete_and_wait(kube: &Kube, path: &str, timeout: Duration) -> Result<(), KubeError> {
    kube.delete(path, timeout).await?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let obj = match kube.get(path, timeout).await {
            Err(e) if e.is_not_found() => return Ok(()),
            other => other?,
        };
        if start.elapsed() > GONE_WITHIN {
            return Err(KubeError::Protocol {
                what: format!("{} {path}", kube.cluster),
                problem: format!(
                    "--existing recreate: still there {GONE_WITHIN:?} after its deletion (finalizers {}): let whatever holds it go (a Pod using a PVC, a stopped controller), or restore with --existing update",
                    obj["metadata"]["finalizers"]
                ),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

fn controller_owned(obj: &Value) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| o.iter().any(|r| r["controller"].as_bool() == Some(true)))
}

/// The objects prune deletes: in `namespaces`, of the namespaced `resources`,
/// matching `scope`, not in `keep`; in deletion order (reverse dependency order).
pub async fn candidates(
    kube: &Kube,
    resources: &BTreeSet<Gvr>,
    namespaces: &BTreeSet<String>,
    keep: &BTreeSet<Key>,
    scope: &CaptureScope,
    timeout: Duration,
) -> Result<Vec<Key>, KubeError> {
    let namespaced: BTreeMap<(String, String), bool> = served(kube, timeout)
        .await?
        .into_iter()
        .map(|r| ((r.gvr.group, r.gvr.plural), r.namespaced))
        .collect();
    let include = |name: &str| scope.include.iter().any(|i| i == name);
    let mut out = Vec::new();
    for gvr in resources {
        if namespaced.get(&(gvr.group.clone(), gvr.plural.clone())) != Some(&true) {
            continue;
        }
        for ns in namespaces {
            let path = collection_path(gvr, Some(ns));
            let items = match kube.list(&path, scope.selector.as_deref(), timeout).await {
                Ok((items, _)) => items,
                // A version the target does not serve: nothing of it there.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            for obj in items {
                if object_excluded(gvr, &obj, &include) || controller_owned(&obj) {
                    continue;
                }
                let name = obj["metadata"]["name"].as_str().unwrap_or_default();
                let key = (gvr.clone(), ns.clone(), name.to_string());
                if !keep.contains(&key) {
                    out.push(key);
                }
            }
        }
    }
    out.sort_by(|a, b| {
        (apply_rank(&b.0), &b.0, &b.1, &b.2).cmp(&(apply_rank(&a.0), &a.0, &a.1, &a.2))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_option_and_recreate_exemptions() {
        let o = |v: &str| KindOptions([(PRUNE.to_string(), v.to_string())].into());
        assert!(!prune_option(&KindOptions::default()).unwrap());
        assert!(prune_option(&o("true")).unwrap());
        assert!(!prune_option(&o("false")).unwrap());
        assert!(prune_option(&o("yes")).unwrap_err().contains("use true"));
        assert!(recreates(&Gvr::parse("apps/v1/deployments").unwrap()));
        assert!(!recreates(&Gvr::parse("v1/namespaces").unwrap()));
        assert!(!recreates(
            &Gvr::parse("apiextensions.k8s.io/v1/customresourcedefinitions").unwrap()
        ));
        assert!(controller_owned(
            &serde_json::json!({"metadata": {"ownerReferences": [{"controller": true}]}})
        ));
    }
}
