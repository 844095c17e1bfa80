//! Restore transforms beyond the namespace map: what a restore changes in each
//! object on its way into another cluster. Each is a restore option of the
//! `kubernetes` kind (`tidemark restore --NAME VALUE`, or `NAME = "VALUE"` in an
//! application's profile table).
//!
//! | option | value | changes |
//! |---|---|---|
//! | `storage-class-map` | `old=new,*=new` | `storageClassName` of PVCs, PVs and StatefulSet `volumeClaimTemplates` (and the beta annotation) |
//! | `image-rewrite` | `registry.a/=registry.b/mirror/,...` | the longest matching prefix of every container, init container and ephemeral container image in Pods and pod templates |
//! | `replicas` | `web=3,*=1` | an integer `spec.replicas`, by object name, `*` for the rest |
//! | `add-labels` | `k=v,...` | labels set on every restored object |
//! | `add-annotations` | `k=v,...` | annotations set on every restored object |
//! | `json-patch-file` | a file path | RFC 6902 patches per kind: `{"Deployment": [ops], "apps/v1/StatefulSet": [ops], "*": [ops]}` |
//!
//! Guarantees:
//! - Transforms apply to the restorable form (after server-owned fields are
//!   stripped and namespaces mapped), in the order of the table; JSON patches last,
//!   so they see (and may undo) every other transform.
//! - Pure: the same object and options give the same form, so the journal's state
//!   can be digested *as restored* and compared with the target.
//! - Every object is transformed before anything is applied: a failing patch (a
//!   `test` that does not hold, a path that is not there) refuses the whole restore,
//!   naming the object, the rule, the operation and the path.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::discovery::Gvr;
use super::json_patch::Patch;
use crate::connectors::KindOptions;

/// `--storage-class-map old=new,*=new`.
pub const STORAGE_CLASS_MAP: &str = "storage-class-map";
/// `--image-rewrite from-prefix=to-prefix,...`.
pub const IMAGE_REWRITE: &str = "image-rewrite";
/// `--replicas name=N,*=N`.
pub const REPLICAS: &str = "replicas";
/// `--add-labels k=v,...`.
pub const ADD_LABELS: &str = "add-labels";
/// `--add-annotations k=v,...`.
pub const ADD_ANNOTATIONS: &str = "add-annotations";
/// `--json-patch-file PATH`.
pub const JSON_PATCH_FILE: &str = "json-patch-file";

/// The beta annotation older PVCs name their class with.
const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// Why the transforms cannot be set up or applied. Each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// An option's value is malformed.
    #[error("--{option}: {problem}")]
    Option {
        /// Which option.
        option: &'static str,
        /// What is wrong, with an example of a good value.
        problem: String,
    },
    /// The JSON patch file cannot be read or parsed.
    #[error("--json-patch-file {file}: {problem}")]
    PatchFile {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// A patch operation failed on an object (nothing was applied).
    #[error("--json-patch-file {}: rule `{}` operation #{} ({} {}) on {}: {}; nothing was applied: fix the rule (or leave that kind out of it) and restore again", .0.file, .0.rule, .0.index, .0.op, .0.path, .0.object, .0.problem)]
    Patch(Box<PatchFailed>),
}

/// Where a JSON patch failed.
#[derive(Debug)]
pub struct PatchFailed {
    /// The file.
    pub file: String,
    /// The rule's key (`Deployment`).
    pub rule: String,
    /// The operation's number in the rule, from 1.
    pub index: usize,
    /// The operation (`test`).
    pub op: &'static str,
    /// Its path.
    pub path: String,
    /// The object, `resource/namespace/name`.
    pub object: String,
    /// What failed.
    pub problem: String,
}

/// The JSON patch rules of a file: (key, patch) in the file's order.
#[derive(Debug, Clone, Default)]
struct PatchRules {
    file: String,
    rules: Vec<(String, Patch)>,
}

/// Every transform a restore was given; [`Transforms::default`] changes nothing.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    /// Storage class → storage class (`*`: any other named class).
    storage_classes: BTreeMap<String, String>,
    /// (from prefix, to prefix), longest prefix first.
    images: Vec<(String, String)>,
    /// Object name → replicas (`*`: any other).
    replicas: BTreeMap<String, u64>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    patches: Option<PatchRules>,
}

/// `a=b,c=d` as pairs; `allow_empty_value` for label values and image prefixes.
fn pairs(
    option: &'static str,
    text: &str,
    example: &str,
    allow_empty_value: bool,
) -> Result<Vec<(String, String)>, TransformError> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && (allow_empty_value || !v.is_empty()) => {
                out.push((k.to_string(), v.to_string()))
            }
            _ => {
                return Err(TransformError::Option {
                    option,
                    problem: format!("`{pair}` is not key=value (e.g. --{option} {example})"),
                })
            }
        }
    }
    Ok(out)
}

/// A label or annotation key: `[prefix/]name`, name of at most 63 characters of
/// `[A-Za-z0-9-_.]` starting and ending alphanumeric.
fn check_key(option: &'static str, key: &str) -> Result<(), TransformError> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    if name_ok(name) && !name.is_empty() {
        Ok(())
    } else {
        Err(TransformError::Option {
            option,
            problem: format!(
                "`{key}` is not a valid key: [prefix/]name, the name at most 63 characters of letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit"
            ),
        })
    }
}

fn name_ok(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// A rule key: `*`, `Kind`, `version/Kind` or `group/version/Kind`.
fn check_rule_key(key: &str) -> Result<(), String> {
    let parts: Vec<&str> = key.split('/').collect();
    if key == "*" || (parts.len() <= 3 && parts.iter().all(|p| !p.is_empty())) {
        Ok(())
    } else {
        Err(format!(
            "rule `{key}`: a key is a kind (`Deployment`), apiVersion/kind (`apps/v1/Deployment`, `v1/ConfigMap`) or `*`"
        ))
    }
}

impl Transforms {
    /// The transforms of the restore options (reads the JSON patch file).
    pub fn from_options(options: &KindOptions) -> Result<Transforms, TransformError> {
        let mut t = Transforms::default();
        if let Some(v) = options.get(STORAGE_CLASS_MAP) {
            t.storage_classes = pairs(STORAGE_CLASS_MAP, v, "standard=fast,*=fast", false)?
                .into_iter()
                .collect();
        }
        if let Some(v) = options.get(IMAGE_REWRITE) {
            t.images = pairs(IMAGE_REWRITE, v, "registry.a/=registry.b/mirror/", true)?;
            t.images
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        }
        if let Some(v) = options.get(REPLICAS) {
            for (name, n) in pairs(REPLICAS, v, "web=3,*=1", false)? {
                let n = n.parse::<u64>().map_err(|_| TransformError::Option {
                    option: REPLICAS,
                    problem: format!("`{name}={n}`: the count must be a whole number (e.g. --replicas web=3,*=1)"),
                })?;
                t.replicas.insert(name, n);
            }
        }
        if let Some(v) = options.get(ADD_LABELS) {
            for (k, val) in pairs(ADD_LABELS, v, "restored-by=tidemark", true)? {
                check_key(ADD_LABELS, &k)?;
                if !name_ok(&val) {
                    return Err(TransformError::Option {
                        option: ADD_LABELS,
                        problem: format!("`{k}={val}`: a label value is at most 63 letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit (put other text in --add-annotations)"),
                    });
                }
                t.labels.insert(k, val);
            }
        }
        if let Some(v) = options.get(ADD_ANNOTATIONS) {
            for (k, val) in pairs(ADD_ANNOTATIONS, v, "restored-from=prod", true)? {
                check_key(ADD_ANNOTATIONS, &k)?;
                t.annotations.insert(k, val);
            }
        }
        if let Some(file) = options.get(JSON_PATCH_FILE) {
            t.patches = Some(read_rules(file)?);
        }
        Ok(t)
    }

    /// The names of the transforms set (for the summary), in the order they apply.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (!self.storage_classes.is_empty(), STORAGE_CLASS_MAP),
            (!self.images.is_empty(), IMAGE_REWRITE),
            (!self.replicas.is_empty(), REPLICAS),
            (!self.labels.is_empty(), ADD_LABELS),
            (!self.annotations.is_empty(), ADD_ANNOTATIONS),
            (self.patches.is_some(), JSON_PATCH_FILE),
        ]
        .into_iter()
        .filter_map(|(set, n)| set.then_some(n))
        .collect()
    }

    /// `form` (a restorable form of `gvr`) with every transform applied.
    pub fn apply(&self, gvr: &Gvr, mut form: Value) -> Result<Value, TransformError> {
        self.map_storage_classes(gvr, &mut form);
        self.rewrite_images(&mut form);
        self.override_replicas(&mut form);
        set_all(&mut form, "labels", &self.labels);
        set_all(&mut form, "annotations", &self.annotations);
        match &self.patches {
            Some(p) => p.apply(gvr, form),
            None => Ok(form),
        }
    }

    fn class(&self, v: &mut Value) {
        if let Some(old) = v.as_str() {
            if let Some(new) = self
                .storage_classes
                .get(old)
                .or_else(|| self.storage_classes.get("*"))
            {
                *v = json!(new);
            }
        }
    }

    fn claim(&self, claim: &mut Value) {
        if let Some(c) = claim.pointer_mut("/spec/storageClassName") {
            self.class(c);
        }
        if let Some(c) = claim
            .pointer_mut("/metadata/annotations")
            .and_then(|a| a.get_mut(BETA_CLASS))
        {
            self.class(c);
        }
    }

    fn map_storage_classes(&self, gvr: &Gvr, form: &mut Value) {
        if self.storage_classes.is_empty() {
            return;
        }
        if gvr.is_core("persistentvolumeclaims") || gvr.is_core("persistentvolumes") {
            self.claim(form);
        } else if gvr.group == "apps" && gvr.plural == "statefulsets" {
            if let Some(list) = form
                .pointer_mut("/spec/volumeClaimTemplates")
                .and_then(Value::as_array_mut)
            {
                list.iter_mut().for_each(|c| self.claim(c));
            }
        }
    }

    fn rewrite_images(&self, form: &mut Value) {
        if self.images.is_empty() {
            return;
        }
        let Some(spec) = pod_spec(form) else {
            return;
        };
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) else {
                continue;
            };
            for image in cs.iter_mut().filter_map(|c| c.get_mut("image")) {
                let Some(old) = image.as_str() else { continue };
                if let Some((from, to)) = self.images.iter().find(|(f, _)| old.starts_with(f)) {
                    *image = json!(format!("{to}{}", &old[from.len()..]));
                }
            }
        }
    }

    fn override_replicas(&self, form: &mut Value) {
        if self.replicas.is_empty() {
            return;
        }
        let name = form["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let Some(r) = form.pointer_mut("/spec/replicas").filter(|r| r.is_u64()) else {
            return;
        };
        if let Some(n) = self.replicas.get(&name).or_else(|| self.replicas.get("*")) {
            *r = json!(n);
        }
    }
}

/// The pod spec of a Pod, a PodTemplate, a CronJob's job template, or any object
/// with a pod template at `spec.template` (Deployments, StatefulSets, DaemonSets,
/// ReplicaSets, Jobs, ReplicationControllers, custom workloads).
fn pod_spec(form: &mut Value) -> Option<&mut Map<String, Value>> {
    let at = match form["kind"].as_str().unwrap_or_default() {
        "Pod" => "/spec",
        "PodTemplate" => "/template/spec",
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        _ => "/spec/template/spec",
    };
    form.pointer_mut(at)?
        .as_object_mut()
        .filter(|s| s.contains_key("containers"))
}

/// Sets every pair of `values` in `metadata.<field>`.
fn set_all(form: &mut Value, field: &str, values: &BTreeMap<String, String>) {
    if values.is_empty() {
        return;
    }
    let Some(meta) = form.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let m = meta.entry(field).or_insert_with(|| json!({}));
    if !m.is_object() {
        *m = json!({});
    }
    if let Some(m) = m.as_object_mut() {
        for (k, v) in values {
            m.insert(k.clone(), json!(v));
        }
    }
}

fn read_rules(file: &str) -> Result<PatchRules, TransformError> {
    let bad = |problem: String| TransformError::PatchFile {
        file: file.to_string(),
        problem,
    };
    let text = std::fs::read_to_string(file).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(map) = doc.as_object() else {
        return Err(bad(
            "must be a JSON object of kind → operations, e.g. {\"Deployment\": [{\"op\": \"replace\", \"path\": \"/spec/replicas\", \"value\": 1}]}".into(),
        ));
    };
    let mut rules = Vec::new();
    for (key, ops) in map {
        check_rule_key(key).map_err(bad)?;
        let patch = Patch::parse(ops).map_err(|e| {
            bad(format!(
                "rule `{key}` operation #{}: {}",
                e.index + 1,
                e.problem
            ))
        })?;
        rules.push((key.clone(), patch));
    }
    Ok(PatchRules {
        file: file.to_string(),
        rules,
    })
}

impl PatchRules {
    /// Applies every rule whose key matches the object's kind, in the file's order.
    fn apply(&self, gvr: &Gvr, mut form: Value) -> Result<Value, TransformError> {
        let kind = form["kind"].as_str().unwrap_or_default().to_string();
        let full = format!("{}/{kind}", form["apiVersion"].as_str().unwrap_or_default());
        for (key, patch) in &self.rules {
            if key != "*" && key != &kind && key != &full {
                continue;
            }
            form = patch.apply(&form).map_err(|e| {
                let op = &patch.0[e.index];
                TransformError::Patch(Box::new(PatchFailed {
                    file: self.file.clone(),
                    rule: key.clone(),
                    index: e.index + 1,
                    op: op.name(),
                    path: op.path().text.clone(),
                    object: format!(
                        "{gvr}/{}/{}",
                        form["metadata"]["namespace"].as_str().unwrap_or_default(),
                        form["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    problem: e.problem,
                }))
            })?;
        }
        Ok(form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> KindOptions {
        KindOptions(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn gvr(s: &str) -> Gvr {
        Gvr::parse(s).unwrap()
    }

    #[test]
    fn every_transform_changes_what_it_names() {
        let t = Transforms::from_options(&opts(&[
            (STORAGE_CLASS_MAP, "slow=fast,*=other"),
            (
                IMAGE_REWRITE,
                "registry.a/=registry.b/mirror/,registry.a/special/=x/",
            ),
            (REPLICAS, "web=3,*=0"),
            (ADD_LABELS, "restored=yes"),
            (ADD_ANNOTATIONS, "example.com/from=prod,note=restore drill"),
        ]))
        .unwrap();
        assert_eq!(
            t.names(),
            vec![
                STORAGE_CLASS_MAP,
                IMAGE_REWRITE,
                REPLICAS,
                ADD_LABELS,
                ADD_ANNOTATIONS
            ]
        );
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "n"},
            "spec": {"replicas": 1, "template": {"spec": {
                "initContainers": [{"name": "i", "image": "registry.a/special/init:1"}],
                "containers": [{"name": "c", "image": "registry.a/db:1"}, {"name": "d", "image": "other/db"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"storageClassName": "slow"}},
                                         {"metadata": {"name": "logs"}, "spec": {"storageClassName": "gold"}},
                                         {"metadata": {"name": "tmp"}, "spec": {}}]}});
        let out = t.apply(&gvr("apps/v1/statefulsets"), sts).unwrap();
        let spec = &out["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["image"], "x/init:1");
        assert_eq!(spec["containers"][0]["image"], "registry.b/mirror/db:1");
        assert_eq!(spec["containers"][1]["image"], "other/db");
        assert_eq!(out["spec"]["replicas"], 0);
        let vct = &out["spec"]["volumeClaimTemplates"];
        assert_eq!(vct[0]["spec"]["storageClassName"], "fast");
        assert_eq!(vct[1]["spec"]["storageClassName"], "other");
        assert!(vct[2]["spec"].get("storageClassName").is_none());
        assert_eq!(out["metadata"]["labels"]["restored"], "yes");
        assert_eq!(out["metadata"]["annotations"]["example.com/from"], "prod");
        assert_eq!(out["metadata"]["annotations"]["note"], "restore drill");

        let cron = json!({"apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": "web"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "c", "image": "registry.a/job:2"}]}}}}}});
        let out = t.apply(&gvr("batch/v1beta1/cronjobs"), cron).unwrap();
        assert_eq!(
            out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.b/mirror/job:2"
        );
        assert!(out["spec"].get("replicas").is_none());
        let pv = json!({"kind": "PersistentVolume", "metadata": {"name": "pv1"},
                        "spec": {"storageClassName": "slow"}});
        let out = t.apply(&gvr("v1/persistentvolumes"), pv).unwrap();
        assert_eq!(out["spec"]["storageClassName"], "fast");
        let pvc = json!({"kind": "PersistentVolumeClaim", "metadata": {"name": "c",
                         "annotations": {BETA_CLASS: "slow"}}, "spec": {}});
        let out = t.apply(&gvr("v1/persistentvolumeclaims"), pvc).unwrap();
        assert_eq!(out["metadata"]["annotations"][BETA_CLASS], "fast");
        assert!(Transforms::default().names().is_empty());
    }

    #[test]
    fn bad_options_say_what_to_write() {
        for (o, v, want) in [
            (REPLICAS, "web=three", "whole number"),
            (REPLICAS, "web", "not key=value"),
            (STORAGE_CLASS_MAP, "slow=", "not key=value"),
            (ADD_LABELS, "a=b c", "label value"),
            (ADD_LABELS, "-a=b", "not a valid key"),
            (JSON_PATCH_FILE, "/nonexistent/rules.json", "cannot read it"),
        ] {
            let e = Transforms::from_options(&opts(&[(o, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains(o), "{e}");
        }
    }

    #[test]
    fn json_patch_rules_match_kinds_and_fail_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.json");
        std::fs::write(
            &file,
            r#"{"Deployment": [{"op": "add", "path": "/metadata/annotations/a~1b", "value": "x"}],
                "apps/v1/StatefulSet": [{"op": "test", "path": "/spec/replicas", "value": 5}],
                "v1/ConfigMap": [{"op": "remove", "path": "/data/gone"}]}"#,
        )
        .unwrap();
        let t = Transforms::from_options(&opts(&[
            (JSON_PATCH_FILE, file.to_str().unwrap()),
            (ADD_ANNOTATIONS, "k=v"),
        ]))
        .unwrap();
        let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}});
        let out = t.apply(&gvr("apps/v1/deployments"), dep).unwrap();
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"a/b": "x", "k": "v"})
        );
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                         "metadata": {"name": "db", "namespace": "n"}, "spec": {"replicas": 1}});
        let e = t
            .apply(&gvr("apps/v1/statefulsets"), sts)
            .unwrap_err()
            .to_string();
        for want in [
            "rule `apps/v1/StatefulSet`",
            "operation #1 (test /spec/replicas)",
            "on apps/v1/statefulsets/n/db",
            "the test wants 5, the object has 1",
            "nothing was applied",
        ] {
            assert!(e.contains(want), "{e}");
        }
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
        let e = t.apply(&gvr("v1/configmaps"), cm).unwrap_err().to_string();
        assert!(e.contains("/data/gone: nothing at /data/gone"), "{e}");
        std::fs::write(&file, r#"{"a//b": []}"#).unwrap();
        assert!(
            Transforms::from_options(&opts(&[(JSON_PATCH_FILE, file.to_str().unwrap())]))
                .unwrap_err()
                .to_string()
                .contains("rule `a//b`")
        );
        std::fs::write(
            &file,
            r#"{"Pod": [{"op": "add", "path": "x", "value": 1}]}"#,
        )
        .unwrap();
        assert!(
            Transforms::from_options(&opts(&[(JSON_PATCH_FILE, file.to_str().unwrap())]))
                .unwrap_err()
                .to_string()
                .contains("rule `Pod` operation #1: `x` is not a JSON pointer")
        );
    }
}
