//! The digest of Kubernetes objects: one part per object, `resource/namespace/name`,
//! hashing its restorable form ([`super::object::restorable`]) as canonical JSON
//! (keys sorted). The journal's state at a moment and a live cluster are digested
//! the same way, so a restore's target compares with the source at that moment.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::client::{collection_path, Kube, KubeError};
use super::discovery::{excluded, object_excluded, served, Gvr};
use super::object::{restorable, with_type, Transform};
use crate::digest::{short_sha, Digest, PartDigest};

/// `value` as JSON with every object's keys sorted.
pub fn canonical(value: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, &Value> = m.iter().collect();
                out.push('{');
                for (i, (k, v)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// The digest part of an object already in restorable form: named
/// `resource/namespace/name`, hashing the form without its own namespace, with
/// references to that namespace (a RoleBinding's subjects) hashed as "its own
/// namespace". So an object restored under a namespace map hashes as its source
/// does, and the two digests compare once part names are mapped.
pub fn part(gvr: &Gvr, form: &Value) -> PartDigest {
    let ns = form["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = form["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut hashed = form.clone();
    if let Some(m) = hashed.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("namespace");
    }
    if let Some(subjects) = hashed.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
            if !ns.is_empty() && s.get("namespace").and_then(Value::as_str) == Some(&ns) {
                s.insert("namespace".into(), Value::String("(own)".into()));
            }
        }
    }
    PartDigest {
        name: format!("{gvr}/{ns}/{name}"),
        rows: 1,
        digest: short_sha(&canonical(&hashed)),
    }
}

/// What a live digest covers.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Namespaces whose namespaced objects count (every resource served with list
    /// and watch, minus the default exclusions); empty: none... unless `all`.
    pub namespaces: BTreeSet<String>,
    /// Every namespace (a source capturing all of them).
    pub all_namespaces: bool,
    /// Cluster-scoped resources, each with the names that count (`None`: all; for
    /// `v1/namespaces` with no names given, the namespaces above).
    pub cluster: BTreeMap<Gvr, Option<BTreeSet<String>>>,
}

/// The digest of the objects in `scope` on a live cluster.
pub async fn live(kube: &Kube, scope: &Scope, timeout: Duration) -> Result<Digest, KubeError> {
    let none = |_: &str| false;
    let mut parts = Vec::new();
    let t = Transform::default();
    let resources = served(kube, timeout).await?;
    for r in resources
        .iter()
        .filter(|r| r.namespaced && !excluded(&r.gvr, &none))
    {
        let paths: Vec<String> = if scope.all_namespaces {
            vec![collection_path(&r.gvr, None)]
        } else {
            scope
                .namespaces
                .iter()
                .map(|ns| collection_path(&r.gvr, Some(ns)))
                .collect()
        };
        for p in paths {
            let (items, _) = kube.list(&p, None, timeout).await?;
            for mut obj in items
                .into_iter()
                .filter(|o| !object_excluded(&r.gvr, o, &none))
            {
                with_type(&mut obj, &r.gvr, &r.kind);
                parts.push(part(&r.gvr, &restorable(&r.gvr, &obj, &t)));
            }
        }
    }
    for (gvr, names) in &scope.cluster {
        let names = match names {
            None if gvr.is_core("namespaces") && !scope.all_namespaces => Some(&scope.namespaces),
            n => n.as_ref(),
        };
        let (items, _) = match kube.list(&collection_path(gvr, None), None, timeout).await {
            Ok(l) => l,
            // A CRD the cluster lacks: nothing of it there.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        let kind = resources
            .iter()
            .find(|r| &r.gvr == gvr)
            .map_or("", |r| r.kind.as_str());
        for mut obj in items {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            if names.is_none_or(|n| n.contains(name)) {
                with_type(&mut obj, gvr, kind);
                parts.push(part(gvr, &restorable(gvr, &obj, &t)));
            }
        }
    }
    Ok(Digest::from_parts("objects", parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,{"q":2,"p":1}],"x":"s"}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"a":{"x":"s","y":[1,{"p":1,"q":2}]},"b":1}"#).unwrap();
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(
            canonical(&a),
            r#"{"a":{"x":"s","y":[1,{"p":1,"q":2}]},"b":1}"#
        );
    }
}
