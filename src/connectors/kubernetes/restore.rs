//! The Kubernetes restore target: the journal's objects at the moment, in their
//! restorable form (server-owned fields stripped, namespaces mapped), applied in
//! dependency order with server-side apply under field manager `tidemark`.
//!
//! - The state at T is replayed from the journal (every event up to the plan's last
//!   sequence number: the newest version of each object that exists then).
//! - Custom resources wait until their CRD is `Established`.
//! - Helm release records are restored as they are (labels included), so the
//!   release history, with its one `deployed` revision, is the source's.
//! - Held (an application restore, see [`Target::hold`]): every object with an
//!   integer `spec.replicas` (Deployments, StatefulSets, ReplicaSets,
//!   ReplicationControllers, custom resources with a scale subresource) is applied
//!   with zero replicas and its count at the moment in the annotation
//!   [`HELD_ANNOTATION`]; the release applies it as it was (the annotation goes
//!   with it, server-side apply removes what tidemark alone set). A
//!   HorizontalPodAutoscaler restored with it may scale a held workload up: hold
//!   those by restoring them in a later step if that matters.
//! - Transforms ([`super::transform`]: storage classes, images, replicas, labels,
//!   annotations, JSON patches) apply to every object before anything is applied;
//!   `--existing recreate` and `--prune true` delete through [`super::prune`].
//! - Ends with the digest of the target over the restored namespaces and the
//!   restored cluster-scoped objects, and compares it with the journal's.
//! - Teardown deletes every object the restore of the plan applies, in reverse
//!   order (namespaces last; a namespace's own deletion completes only where a
//!   controller manager runs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{object_path, Kube, KubeError};
use super::config::{KubeSettings, KubeUrl};
use super::digest::{self, part, Scope};
use super::discovery::Gvr;
use super::object::{apply_rank, open_object, restorable, state_at, Transform};
use super::prune::{self, CaptureScope};
use super::transform::Transforms;
use crate::config::Timeouts;
use crate::connectors::{KindOptions, SourceSettings};
use crate::crypto::SealKey;
use crate::digest::Digest;
use crate::journal::Journal;
use crate::restore::{Applied, ProgressSink, Rerun, RestoreError, RestorePlan, Target};

/// `--namespace-map a=b,c=d`.
pub const NAMESPACE_MAP: &str = "namespace-map";
/// `--existing skip|update|recreate`.
pub const EXISTING: &str = "existing";
/// `--keep-node-ports true`: restore Services' allocated nodePorts as they were.
pub const KEEP_NODE_PORTS: &str = "keep-node-ports";

/// On a held workload: its replica count at the moment.
pub const HELD_ANNOTATION: &str = "tidemark.io/held-replicas";

/// What to do with an object the target already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Leave it as it is.
    Skip,
    /// Server-side apply over it (the default).
    Update,
    /// Delete it and create the journal's version, where the two differ
    /// (namespaces and CRDs are applied over: see [`prune::recreates`]).
    Recreate,
}

/// One object to restore.
struct Planned {
    gvr: Gvr,
    namespace: Option<String>,
    name: String,
    form: Value,
    /// The transforms changed it.
    transformed: bool,
}

/// Restores into the cluster of a `kubernetes://` URL.
pub struct KubeTarget {
    url: KubeUrl,
    transform: Transform,
    existing: Existing,
    /// Storage classes, images, replicas, labels, annotations, JSON patches.
    transforms: Transforms,
    /// `--prune true`: delete what the journal does not hold, after applying.
    prune: bool,
    /// The source's label selector and inclusions, which prune matches.
    capture: CaptureScope,
    timeouts: Timeouts,
    key: Option<Arc<SealKey>>,
    rt: tokio::runtime::Runtime,
    kube: Option<Kube>,
    /// What the digest covers, once planned.
    scope: Option<Scope>,
    /// Apply workloads at zero replicas ([`Target::hold`]).
    hold: bool,
    /// Held workloads: path and form at the moment, for the release.
    held: Vec<(String, Value)>,
}

/// `form` at zero replicas with its count in [`HELD_ANNOTATION`], if it has
/// replicas to hold.
fn held_form(form: &Value) -> Option<Value> {
    let n = form["spec"]["replicas"].as_u64().filter(|&n| n > 0)?;
    let mut f = form.clone();
    f["spec"]["replicas"] = json!(0);
    let meta = f["metadata"].as_object_mut()?;
    let notes = meta.entry("annotations").or_insert_with(|| json!({}));
    notes[HELD_ANNOTATION] = json!(n.to_string());
    Some(f)
}

fn parse_map(text: &str) -> Result<BTreeMap<String, String>, RestoreError> {
    let mut map = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let Some((a, b)) = pair
            .split_once('=')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        else {
            return Err(RestoreError::Options(format!(
                "--namespace-map: `{pair}` is not source=target (e.g. --namespace-map shop=shop-restored)"
            )));
        };
        map.insert(a.to_string(), b.to_string());
    }
    Ok(map)
}

impl KubeTarget {
    /// A target for `url` with the restore options; connects to nothing yet.
    pub fn new(
        url: &str,
        options: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<KubeTarget, RestoreError> {
        let url = KubeUrl::parse(url).map_err(RestoreError::Options)?;
        let namespace_map = parse_map(options.get(NAMESPACE_MAP).unwrap_or_default())?;
        let existing = match options.get(EXISTING) {
            None | Some("update") => Existing::Update,
            Some("skip") => Existing::Skip,
            Some("recreate") => Existing::Recreate,
            Some(other) => {
                return Err(RestoreError::Options(format!(
                    "--existing `{other}`: use skip, update or recreate"
                )))
            }
        };
        let transforms =
            Transforms::from_options(options).map_err(|e| RestoreError::Options(e.to_string()))?;
        let prune = prune::prune_option(options).map_err(RestoreError::Options)?;
        let keep_node_ports = match options.get(KEEP_NODE_PORTS) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(RestoreError::Options(format!(
                    "--keep-node-ports `{other}`: use true (restore each Service's nodePorts as they were; the target must have them free) or false (the target allocates new ones)"
                )))
            }
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RestoreError::Target(format!("cannot start the async runtime: {e}")))?;
        Ok(KubeTarget {
            url,
            transform: Transform {
                namespace_map,
                keep_node_ports,
            },
            existing,
            transforms,
            prune,
            capture: CaptureScope::default(),
            timeouts: *timeouts,
            key: None,
            rt,
            kube: None,
            scope: None,
            hold: false,
            held: Vec::new(),
        })
    }

    fn kube(&mut self) -> Result<Kube, RestoreError> {
        if let Some(k) = &self.kube {
            return Ok(k.clone());
        }
        let k = self
            .rt
            .block_on(Kube::connect(&self.url.cluster, &self.timeouts))
            .map_err(|e| RestoreError::Target(e.to_string()))?;
        self.kube = Some(k.clone());
        Ok(k)
    }

    /// The objects at the plan's moment, in restorable form and apply order, and
    /// the digest scope they make.
    fn planned(
        &self,
        journal: &Journal,
        plan: &RestorePlan,
    ) -> Result<(Vec<Planned>, Scope), RestoreError> {
        let state = state_at(journal, plan.source.id, plan.last_seq)?;
        let mut out = Vec::new();
        let mut scope = Scope::default();
        for ev in state.values() {
            let gvr = Gvr::parse(&ev.resource).map_err(RestoreError::Apply)?;
            let obj = open_object(ev, self.key.as_deref())
                .map_err(|e| RestoreError::Refused(e.to_string()))?;
            let plain = restorable(&gvr, &obj, &self.transform);
            let form = self
                .transforms
                .apply(&gvr, plain.clone())
                .map_err(|e| RestoreError::Refused(e.to_string()))?;
            let transformed = form != plain;
            let namespace = form["metadata"]["namespace"].as_str().map(str::to_string);
            let name = form["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match &namespace {
                Some(ns) => {
                    scope.namespaces.insert(ns.clone());
                }
                None => {
                    scope
                        .cluster
                        .entry(gvr.clone())
                        .or_insert_with(|| Some(BTreeSet::new()))
                        .get_or_insert_with(BTreeSet::new)
                        .insert(name.clone());
                }
            }
            out.push(Planned {
                gvr,
                namespace,
                name,
                form,
                transformed,
            });
        }
        out.sort_by(|a, b| {
            (apply_rank(&a.gvr), &a.gvr, &a.namespace, &a.name).cmp(&(
                apply_rank(&b.gvr),
                &b.gvr,
                &b.namespace,
                &b.name,
            ))
        });
        Ok((out, scope))
    }

    async fn exists(
        kube: &Kube,
        p: &Planned,
        timeout: Duration,
    ) -> Result<Option<Value>, KubeError> {
        match kube
            .get(
                &object_path(&p.gvr, p.namespace.as_deref(), &p.name),
                timeout,
            )
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn wait_established(kube: &Kube, name: &str, timeout: Duration) -> Result<(), KubeError> {
        let gvr = Gvr::parse("apiextensions.k8s.io/v1/customresourcedefinitions")
            .unwrap_or_else(|_| unreachable!());
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let crd = kube.get(&object_path(&gvr, None, name), timeout).await?;
            let established = crd["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            if established {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(KubeError::Protocol {
                    what: format!("{} CRD {name}", kube.cluster),
                    problem: format!("not Established within {timeout:?}; its custom resources cannot be restored"),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// What `--prune true` deletes once `objects` (of `scope`) are applied.
    fn prunable(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        objects: &[Planned],
        scope: &Scope,
    ) -> Result<Vec<prune::Key>, RestoreError> {
        let resources = prune::captured_resources(journal, plan.source.id)?;
        let keep = objects
            .iter()
            .filter_map(|p| Some((p.gvr.clone(), p.namespace.clone()?, p.name.clone())))
            .collect();
        let kube = self.kube()?;
        self.rt
            .block_on(prune::candidates(
                &kube,
                &resources,
                &scope.namespaces,
                &keep,
                &self.capture,
                self.timeouts.read,
            ))
            .map_err(|e| RestoreError::Target(format!("finding what to prune: {e}")))
    }
}

impl Target for KubeTarget {
    fn describe(&self) -> String {
        self.url.cluster.describe()
    }

    fn configure(&mut self, settings: &dyn SourceSettings) {
        if let Some(s) = settings.as_any().downcast_ref::<KubeSettings>() {
            self.key = s.key.clone();
            self.capture = CaptureScope {
                selector: s.label_selector.clone(),
                include: s.include.clone(),
            };
        }
    }

    fn occupied(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
    ) -> Result<Option<String>, RestoreError> {
        let (objects, _) = self.planned(journal, plan)?;
        let kube = self.kube()?;
        let timeout = self.timeouts.read;
        let mut present = 0;
        for p in &objects {
            if self
                .rt
                .block_on(KubeTarget::exists(&kube, p, timeout))
                .map_err(|e| RestoreError::Target(e.to_string()))?
                .is_some()
            {
                present += 1;
            }
        }
        Ok((present > 0).then(|| format!("{present} of the {} objects to restore", objects.len())))
    }

    fn force_effect(&self) -> &'static str {
        match self.existing {
            Existing::Update => {
                "apply the journal's version over them (server-side apply, field manager tidemark)"
            }
            Existing::Skip => "leave them as they are (--existing skip) and restore the others",
            Existing::Recreate => {
                "delete those that differ from the journal's version and create it (--existing recreate)"
            }
        }
    }

    fn rerun(&self) -> Rerun {
        Rerun::StartOverWithForce
    }

    fn preview(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
    ) -> Result<Vec<String>, RestoreError> {
        let (objects, scope) = self.planned(journal, plan)?;
        let kube = self.kube()?;
        let timeout = self.timeouts.read;
        let mut lines = Vec::new();
        for p in &objects {
            let ns = p.namespace.as_deref().unwrap_or_default();
            let live = self
                .rt
                .block_on(KubeTarget::exists(&kube, p, timeout))
                .map_err(|e| RestoreError::Target(e.to_string()))?;
            let what = format!("{}/{ns}/{}", p.gvr, p.name);
            match live {
                None => lines.push(format!("create {what}")),
                Some(obj) => {
                    let now = restorable(&p.gvr, &obj, &Transform::default());
                    let changed = changed_fields(&now, &p.form);
                    if changed.is_empty() {
                        lines.push(format!("unchanged {what}"));
                    } else if self.existing == Existing::Skip {
                        lines.push(format!("skip {what} (differs in {})", changed.join(", ")));
                    } else if self.existing == Existing::Recreate && prune::recreates(&p.gvr) {
                        lines.push(format!("recreate {what}: {}", changed.join(", ")));
                    } else {
                        lines.push(format!("update {what}: {}", changed.join(", ")));
                    }
                }
            }
        }
        if self.prune {
            for (gvr, ns, name) in self.prunable(journal, plan, &objects, &scope)? {
                lines.push(format!("delete (prune) {gvr}/{ns}/{name}"));
            }
        }
        Ok(lines)
    }

    fn apply(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        _force: bool,
        progress: &mut dyn ProgressSink,
    ) -> Result<Applied, RestoreError> {
        let (objects, scope) = self.planned(journal, plan)?;
        let kube = self.kube()?;
        let timeout = self.timeouts.read;
        let existing = self.existing;
        let mut recreated = 0u64;
        let total = objects.len() as u64;
        let expected = Digest::from_parts(
            "objects",
            objects.iter().map(|p| part(&p.gvr, &p.form)).collect(),
        );
        let ns_gvr = Gvr::parse("v1/namespaces").map_err(RestoreError::Apply)?;
        let restored_namespaces: BTreeSet<&str> = objects
            .iter()
            .filter(|p| p.gvr == ns_gvr)
            .map(|p| p.name.as_str())
            .collect();
        let (mut applied, mut skipped, mut made_ns) = (0u64, 0u64, 0u64);
        let hold = self.hold;
        let mut held: Vec<(String, Value)> = Vec::new();
        let mut stopped: Option<RestoreError> = None;
        let result: Result<(), KubeError> = self.rt.block_on(async {
            // Target namespaces the journal does not hold as objects are made first.
            for ns in scope
                .namespaces
                .iter()
                .filter(|n| !restored_namespaces.contains(n.as_str()))
            {
                let path = object_path(&ns_gvr, None, ns);
                if kube.get(&path, timeout).await.is_err() {
                    let obj =
                        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                    kube.apply(&path, &obj, timeout).await?;
                    made_ns += 1;
                }
            }
            let mut crds: Vec<String> = Vec::new();
            for (i, p) in objects.iter().enumerate() {
                if apply_rank(&p.gvr) > 0 {
                    for name in crds.drain(..) {
                        KubeTarget::wait_established(&kube, &name, Duration::from_secs(60)).await?;
                    }
                }
                if existing != Existing::Update {
                    if let Some(live) = KubeTarget::exists(&kube, p, timeout).await? {
                        if existing == Existing::Skip {
                            skipped += 1;
                            continue;
                        }
                        if prune::recreates(&p.gvr)
                            && restorable(&p.gvr, &live, &Transform::default()) != p.form
                        {
                            let path = object_path(&p.gvr, p.namespace.as_deref(), &p.name);
                            prune::delete_and_wait(&kube, &path, timeout).await?;
                            recreated += 1;
                        }
                    }
                }
                let path = object_path(&p.gvr, p.namespace.as_deref(), &p.name);
                match hold.then(|| held_form(&p.form)).flatten() {
                    Some(zero) => {
                        kube.apply(&path, &zero, timeout).await?;
                        held.push((path, p.form.clone()));
                    }
                    None => {
                        kube.apply(&path, &p.form, timeout).await?;
                    }
                }
                if apply_rank(&p.gvr) == 0 {
                    crds.push(p.name.clone());
                }
                applied += 1;
                if let Err(e) = progress.update("objects", i as u64 + 1, Some(total)) {
                    stopped = Some(e);
                    break;
                }
            }
            for name in crds {
                KubeTarget::wait_established(&kube, &name, Duration::from_secs(60)).await?;
            }
            Ok(())
        });
        let held_count = held.len();
        self.held = held;
        if let Some(e) = stopped {
            return Err(e);
        }
        result.map_err(|e| RestoreError::Apply(e.to_string()))?;
        self.scope = Some(scope);
        let mut counts = vec![("objects applied".to_string(), applied)];
        if skipped > 0 {
            counts.push((
                "objects left as they were (--existing skip)".into(),
                skipped,
            ));
        }
        let transformed = objects.iter().filter(|p| p.transformed).count() as u64;
        if transformed > 0 {
            let names = self.transforms.names().join(", ");
            counts.push((format!("objects transformed ({names})"), transformed));
        }
        if recreated > 0 {
            counts.push(("objects recreated (--existing recreate)".into(), recreated));
        }
        if self.prune {
            let scope = self.scope.clone().unwrap_or_default();
            let doomed = self.prunable(journal, plan, &objects, &scope)?;
            let pruned = self
                .rt
                .block_on(async {
                    let mut n = 0u64;
                    for (gvr, ns, name) in &doomed {
                        let path = object_path(gvr, Some(ns), name);
                        n += u64::from(kube.delete(&path, timeout).await?);
                    }
                    Ok::<_, KubeError>(n)
                })
                .map_err(|e| RestoreError::Apply(format!("pruning: {e}")))?;
            counts.push((
                "objects pruned (in the restored namespaces, not in the journal at the moment)"
                    .into(),
                pruned,
            ));
        }
        if made_ns > 0 {
            counts.push(("namespaces created".into(), made_ns));
        }
        let mut notes = vec![format!(
            "journal digest at the moment as restored (namespaces mapped, transforms applied): {}",
            expected.overall
        )];
        if held_count > 0 {
            notes.push(format!(
                "{held_count} workload(s) applied at zero replicas, held until the data sources are restored (annotation {HELD_ANNOTATION}: the count at the moment)"
            ));
        }
        Ok(Applied {
            counts,
            final_position: None,
            notes,
        })
    }

    fn hold(&mut self) -> bool {
        self.hold = true;
        true
    }

    fn release(&mut self) -> Result<String, RestoreError> {
        let kube = self.kube()?;
        let timeout = self.timeouts.read;
        let held = std::mem::take(&mut self.held);
        self.rt
            .block_on(async {
                for (path, form) in &held {
                    kube.apply(path, form, timeout).await?;
                }
                Ok::<_, KubeError>(())
            })
            .map_err(|e| {
                RestoreError::Apply(format!(
                    "releasing the workloads held at zero replicas: {e} (each one's count at the moment is in its annotation {HELD_ANNOTATION})"
                ))
            })?;
        Ok(format!(
            "{} workload(s) released: scaled from zero to their replica count at the moment",
            held.len()
        ))
    }

    fn teardown(&mut self, journal: &Journal, plan: &RestorePlan) -> Result<String, RestoreError> {
        let (objects, _) = self.planned(journal, plan)?;
        let kube = self.kube()?;
        let timeout = self.timeouts.read;
        let deleted = self
            .rt
            .block_on(async {
                let mut deleted = 0u64;
                for p in objects.iter().rev() {
                    let path = object_path(&p.gvr, p.namespace.as_deref(), &p.name);
                    if kube.delete(&path, timeout).await? {
                        deleted += 1;
                    }
                }
                Ok::<_, KubeError>(deleted)
            })
            .map_err(|e| RestoreError::Target(format!("tearing down: {e}")))?;
        Ok(format!(
            "deleted {deleted} of the {} restored objects from {}",
            objects.len(),
            self.describe()
        ))
    }

    fn digest(&mut self) -> Result<Digest, RestoreError> {
        let kube = self.kube()?;
        let scope = self.scope.clone().unwrap_or_default();
        self.rt
            .block_on(digest::live(&kube, &scope, self.timeouts.read))
            .map_err(|e| RestoreError::Target(e.to_string()))
    }
}

/// Top-level paths (`spec.replicas`, `data`) where `a` and `b` differ.
fn changed_fields(a: &Value, b: &Value) -> Vec<String> {
    fn walk(a: &Value, b: &Value, path: &str, depth: usize, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) if depth < 2 => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let null = Value::Null;
                    walk(
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        &p,
                        depth + 1,
                        out,
                    );
                }
            }
            _ if a != b => out.push(path.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(a, b, "", 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_maps_and_changed_fields() {
        assert_eq!(
            parse_map("a=b,c=d").unwrap(),
            [("a".to_string(), "b".to_string()), ("c".into(), "d".into())].into()
        );
        assert!(parse_map("a").is_err());
        let a = json!({"spec": {"replicas": 1, "x": 1}, "data": {"k": "v"}});
        let b = json!({"spec": {"replicas": 2, "x": 1}, "data": {"k": "v"}});
        assert_eq!(changed_fields(&a, &b), vec!["spec.replicas".to_string()]);
    }
}
