//! `diff` of a Kubernetes source, per object: which objects exist at the second
//! cut and not the first (created), at the first and not the second (deleted), and
//! for every object at both whose content differs, the field paths that differ
//! (changed); per Helm release, the revisions that appeared, changed status or
//! went.
//!
//! It is the net effect between the cuts: an object created and deleted between
//! them is in neither list. Objects are compared in their *restorable form*
//! ([`restorable`]: what restore applies and the digest hashes), so server-owned
//! churn is not a change: `status`, `metadata.resourceVersion`, `generation`,
//! `uid`, `creationTimestamp`, `managedFields` (never journaled), owner
//! references, allocated cluster IPs and node ports.
//!
//! Values are never printed, only paths. Secrets' data is sealed in the journal:
//! with the source's key it is opened to compare, and a difference is shown as
//! `data changed` (its keys are not shown: they are readable only with the key);
//! without the key, sealed data that may differ is `data changed?`. A Bitnami
//! `SealedSecret`'s `spec.encryptedData` names its keys in clear and encrypts the
//! values: a difference there is `data changed (keys: a, b)`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::connectors::kubernetes::discovery::Gvr;
use crate::connectors::kubernetes::helm;
use crate::connectors::kubernetes::object::{fold, open_object, restorable, ObjectKey, Transform};
use crate::crypto::SealKey;
use crate::event::{KubeEvent, Payload};
use crate::journal::{Journal, JournalError, SourceId};

/// A Kubernetes source's objects between two cuts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct KubeDiff {
    /// Objects that exist at the second cut only (`ConfigMap app/extra`).
    pub created: Vec<String>,
    /// Objects that existed at the first cut only.
    pub deleted: Vec<String>,
    /// Per object at both cuts whose restorable form differs: the field paths
    /// (`spec.replicas`, `metadata.labels["app.kubernetes.io/name"]`,
    /// `spec.template.spec.containers[0].image`, `data changed`).
    pub changed: BTreeMap<String, Vec<String>>,
    /// Helm revisions that appeared, changed status or went, per release.
    pub helm: Vec<HelmChange>,
}

/// One Helm revision's change between the cuts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HelmChange {
    /// `namespace/name` of the release.
    pub release: String,
    /// The revision.
    pub revision: u64,
    /// `added`, `status changed` or `removed`.
    pub change: String,
    /// Its status at the second cut (at the first, if removed).
    pub status: String,
    /// Its status at the first cut, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub was: Option<String>,
    /// `chart-version`, when the record can be read (a Secret's needs the key).
    pub chart: Option<String>,
    /// The chart's appVersion, when readable.
    pub app_version: Option<String>,
}

type State = BTreeMap<ObjectKey, KubeEvent>;

/// The objects of `src` at sequence `a` and at `b` (`a <= b`), by one scan.
fn states(
    journal: &Journal,
    src: SourceId,
    a: u64,
    b: u64,
) -> Result<(State, State), JournalError> {
    let mut state = State::new();
    let mut first = None;
    if b > 0 {
        for entry in journal.events(src, 1, b) {
            let entry = entry?;
            if entry.seq > a && first.is_none() {
                first = Some(state.clone());
            }
            if let Some(Payload::Kubernetes(ev)) = entry.event.payload {
                fold(&mut state, ev);
            }
        }
    }
    let first = first.unwrap_or_else(|| state.clone());
    Ok((first, state))
}

fn name_of(ev: &KubeEvent) -> String {
    if ev.namespace.is_empty() {
        format!("{} {}", ev.kind, ev.name)
    } else {
        format!("{} {}/{}", ev.kind, ev.namespace, ev.name)
    }
}

/// What changed in Kubernetes source `src` between sequences `a` and `b`.
pub fn diff(
    journal: &Journal,
    src: SourceId,
    a: u64,
    b: u64,
    key: Option<&SealKey>,
) -> Result<KubeDiff, JournalError> {
    let (before, after) = states(journal, src, a, b.max(a))?;
    let mut d = KubeDiff::default();
    for (k, ev) in &after {
        match before.get(k) {
            None => d.created.push(name_of(ev)),
            Some(old) => {
                let fields = changed_fields(old, ev, key);
                if !fields.is_empty() {
                    d.changed.insert(name_of(ev), fields);
                }
            }
        }
    }
    for (k, ev) in &before {
        if !after.contains_key(k) {
            d.deleted.push(name_of(ev));
        }
    }
    d.created.sort();
    d.deleted.sort();
    d.helm = helm_changes(&before, &after, key);
    Ok(d)
}

/// The field paths where `old` and `new` (two versions of one object) differ.
fn changed_fields(old: &KubeEvent, new: &KubeEvent, key: Option<&SealKey>) -> Vec<String> {
    let Ok(gvr) = Gvr::parse(&new.resource) else {
        return vec!["(unknown resource: not compared)".into()];
    };
    let form = |ev: &KubeEvent| {
        let visible: Value = serde_json::from_slice(&ev.object_json).unwrap_or(Value::Null);
        restorable(&gvr, &visible, &Transform::default())
    };
    let mut out = Vec::new();
    walk(&form(old), &form(new), &mut String::new(), &mut out);
    if new.kind == "SealedSecret" {
        let (mut keys, mut all) = (BTreeSet::new(), false);
        out.retain(|p| match p.strip_prefix("spec.encryptedData") {
            Some("") => {
                all = true;
                false
            }
            Some(rest) => {
                keys.insert(field_name(rest));
                false
            }
            None => true,
        });
        if all {
            out.push("data changed".into());
        } else if !keys.is_empty() {
            let list: Vec<String> = keys.into_iter().collect();
            out.push(format!("data changed (keys: {})", list.join(", ")));
        }
    }
    if let Some(sealed) = sealed_change(old, new, key) {
        out.push(sealed.into());
    }
    out
}

/// Whether a Secret's sealed fields differ: `data changed` (opened with `key`),
/// `data changed?` (without it, the sealed bytes differ: the seal is randomised,
/// so they differ at every re-seal), `None` when equal or not sealed.
fn sealed_change(old: &KubeEvent, new: &KubeEvent, key: Option<&SealKey>) -> Option<&'static str> {
    if old.sealed.is_empty() && new.sealed.is_empty() {
        return None;
    }
    let hidden = |ev: &KubeEvent| {
        let o = open_object(ev, key).ok()?;
        Some((
            o.get("data").cloned(),
            o.get("stringData").cloned(),
            o["metadata"]["annotations"]
                .get(crate::connectors::kubernetes::object::LAST_APPLIED)
                .cloned(),
        ))
    };
    match (hidden(old), hidden(new)) {
        (Some(x), Some(y)) if x == y => None,
        (Some(_), Some(_)) => Some("data changed"),
        _ if old.sealed == new.sealed => None,
        _ => Some("data changed?"),
    }
}

/// `["a.b"]` or `.k` (the first field of a path's rest) as a bare name.
fn field_name(rest: &str) -> String {
    if let Some(q) = rest.strip_prefix("[\"") {
        return q.split("\"]").next().unwrap_or_default().to_string();
    }
    let r = rest.trim_start_matches('.');
    r.split(['.', '[']).next().unwrap_or_default().to_string()
}

/// Appends to `out` every path below `path` where `a` and `b` differ: into
/// objects by field, arrays by index when both are arrays of one length (else the
/// array is one change), leaves by value.
fn walk(a: &Value, b: &Value, path: &mut String, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    let len = path.len();
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let names: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            let null = Value::Null;
            for k in names {
                if k.contains(['.', '[', ']', '"']) || k.is_empty() {
                    path.push_str(&format!("[{}]", Value::String(k.clone())));
                } else {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                walk(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    path,
                    out,
                );
                path.truncate(len);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                path.push_str(&format!("[{i}]"));
                walk(p, q, path, out);
                path.truncate(len);
            }
        }
        _ => out.push(path.clone()),
    }
}

/// Per Helm revision record: added, removed, or whose status changed.
fn helm_changes(before: &State, after: &State, key: Option<&SealKey>) -> Vec<HelmChange> {
    let releases = |s: &State| -> BTreeMap<(String, String, u64), helm::Release> {
        s.values()
            .filter_map(|ev| helm::release_of(ev, key))
            .map(|r| ((r.namespace.clone(), r.name.clone(), r.revision), r))
            .collect()
    };
    let (x, y) = (releases(before), releases(after));
    let change = |r: &helm::Release, change: &str, was: Option<String>| HelmChange {
        release: format!("{}/{}", r.namespace, r.name),
        revision: r.revision,
        change: change.into(),
        status: r.status.clone(),
        was,
        chart: r
            .chart
            .as_ref()
            .map(|c| format!("{}-{}", c.name, c.version)),
        app_version: r.chart.as_ref().map(|c| c.app_version.clone()),
    };
    let mut out = Vec::new();
    let ids: BTreeSet<&(String, String, u64)> = x.keys().chain(y.keys()).collect();
    for id in ids {
        match (x.get(id), y.get(id)) {
            (None, Some(r)) => out.push(change(r, "added", None)),
            (Some(r), None) => out.push(change(r, "removed", None)),
            (Some(o), Some(r)) if o.status != r.status => {
                out.push(change(r, "status changed", Some(o.status.clone())))
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_of_fields_arrays_and_dotted_names() {
        let a = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"image": "a:1"}]}}},
                       "metadata": {"labels": {"app.kubernetes.io/name": "x", "tier": "web"}}});
        let b = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"image": "a:2"}]}}},
                       "metadata": {"labels": {"app.kubernetes.io/name": "y"}}});
        let mut out = Vec::new();
        walk(&a, &b, &mut String::new(), &mut out);
        assert_eq!(
            out,
            [
                r#"metadata.labels["app.kubernetes.io/name"]"#,
                "metadata.labels.tier",
                "spec.replicas",
                "spec.template.spec.containers[0].image",
            ]
        );
        let mut out = Vec::new();
        walk(
            &json!({"l": [1]}),
            &json!({"l": [1, 2]}),
            &mut String::new(),
            &mut out,
        );
        assert_eq!(out, ["l"]);
        assert_eq!(field_name(".pw.x"), "pw");
        assert_eq!(field_name(r#"["a.b"].c"#), "a.b");
    }

    #[test]
    fn sealed_secret_values_are_never_shown() {
        let ev = |data: Value| KubeEvent {
            kind: "SealedSecret".into(),
            resource: "bitnami.com/v1alpha1/sealedsecrets".into(),
            object_json: serde_json::to_vec(&json!({"apiVersion": "bitnami.com/v1alpha1",
                "kind": "SealedSecret", "metadata": {"name": "s", "namespace": "n"},
                "spec": {"encryptedData": data}}))
            .unwrap(),
            ..Default::default()
        };
        let f = changed_fields(
            &ev(json!({"pw": "AgB1", "user": "AgC2"})),
            &ev(json!({"pw": "AgB9", "user": "AgC2", "token": "AgD3"})),
            None,
        );
        assert_eq!(f, ["data changed (keys: pw, token)"]);
    }
}
