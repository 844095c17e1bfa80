//! Objects between the API server and the journal: the journaled form (minus
//! `managedFields`, Secrets' confidential fields sealed), the state at a moment
//! replayed from the journal, and the *restorable form* that restore applies and the
//! digest hashes.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::discovery::Gvr;
use crate::crypto::{self, SealError, SealKey};
use crate::event::{ChangeEvent, KubeEvent, Payload};
use crate::journal::{Journal, JournalError, SourceId};
use crate::position::{KubePosition, Position, PositionKind};
use crate::time::Timestamp;

/// The annotation `kubectl apply` writes: for a Secret it holds the data in clear.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Which object: resource, namespace (empty when cluster-scoped), name.
pub type ObjectKey = (String, String, String);

/// Sets `apiVersion` and `kind` where they are missing: the items of a list
/// response carry neither (watch events do).
pub fn with_type(obj: &mut Value, gvr: &Gvr, kind: &str) {
    if let Some(o) = obj.as_object_mut() {
        if !o.get("apiVersion").is_some_and(Value::is_string) {
            o.insert("apiVersion".into(), json!(gvr.api_version()));
        }
        if !o.get("kind").is_some_and(Value::is_string) && !kind.is_empty() {
            o.insert("kind".into(), json!(kind));
        }
    }
}

fn aad(namespace: &str, name: &str) -> Vec<u8> {
    format!("tidemark/kubernetes/secret/{namespace}/{name}").into_bytes()
}

/// Builds the journal event for `obj` (a watch or list item) of `gvr` on stream
/// `stream` at `position_rv`. Secrets' `data`, `stringData` and last-applied
/// annotation are sealed with `key` (an error without one: they never reach the
/// journal in clear).
pub fn to_event(
    stream: &str,
    gvr: &Gvr,
    event_type: &str,
    mut obj: Value,
    position_rv: &str,
    key: Option<&SealKey>,
    observed_late: bool,
) -> Result<ChangeEvent, SealError> {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    let meta = &obj["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (namespace, name, uid, rv) = (
        s(&meta["namespace"]),
        s(&meta["name"]),
        s(&meta["uid"]),
        s(&meta["resourceVersion"]),
    );
    let mut sealed = Vec::new();
    if gvr.is_core("secrets") {
        let mut hidden = Map::new();
        if let Some(o) = obj.as_object_mut() {
            for f in ["data", "stringData"] {
                if let Some(v) = o.remove(f) {
                    hidden.insert(f.to_string(), v);
                }
            }
        }
        if let Some(a) = obj["metadata"]
            .get_mut("annotations")
            .and_then(Value::as_object_mut)
        {
            if let Some(v) = a.remove(LAST_APPLIED) {
                hidden.insert("annotations".into(), json!({ LAST_APPLIED: v }));
            }
        }
        if !hidden.is_empty() {
            let what = format!("Secret {namespace}/{name}");
            let key = key.ok_or_else(|| SealError::NoKey {
                what: what.clone(),
                key_id: "(none configured)".into(),
            })?;
            let plain = serde_json::to_vec(&Value::Object(hidden)).unwrap_or_default();
            sealed = key.seal(&aad(&namespace, &name), &plain)?;
        }
    }
    let ev = KubeEvent {
        event_type: event_type.to_string(),
        api_version: s(&obj["apiVersion"]),
        kind: s(&obj["kind"]),
        namespace,
        name,
        uid,
        object_json: serde_json::to_vec(&obj).unwrap_or_default(),
        sealed,
        resource_version: rv,
        observed_late,
        resource: gvr.to_string(),
    };
    Ok(ChangeEvent {
        position: Some(Position {
            kind: Some(PositionKind::Kubernetes(KubePosition {
                resource: stream.to_string(),
                resource_version: position_rv.to_string(),
            })),
        }),
        capture_time_us: Timestamp::now().as_micros(),
        payload: Some(Payload::Kubernetes(ev)),
        ..Default::default()
    })
}

/// The object of `ev` as the server had it: sealed fields opened with `key`.
pub fn open_object(ev: &KubeEvent, key: Option<&SealKey>) -> Result<Value, SealError> {
    let mut obj: Value = serde_json::from_slice(&ev.object_json).unwrap_or(Value::Null);
    if ev.sealed.is_empty() {
        return Ok(obj);
    }
    let what = format!("Secret {}/{}", ev.namespace, ev.name);
    let plain = crypto::open_with(key, &aad(&ev.namespace, &ev.name), &ev.sealed, &what)?;
    let hidden: Value = serde_json::from_slice(&plain).unwrap_or(Value::Null);
    if let (Some(o), Some(h)) = (obj.as_object_mut(), hidden.as_object()) {
        for (k, v) in h {
            if k == "annotations" {
                let meta = o.entry("metadata").or_insert_with(|| json!({}));
                if let Some(m) = meta.as_object_mut() {
                    let ann = m.entry("annotations").or_insert_with(|| json!({}));
                    if let (Some(a), Some(src)) = (ann.as_object_mut(), v.as_object()) {
                        a.extend(src.clone());
                    }
                }
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(obj)
}

/// The source's objects at sequence `last_seq` (inclusive): key → the newest
/// journaled event of each object that exists then.
pub fn state_at(
    journal: &Journal,
    src: SourceId,
    last_seq: u64,
) -> Result<BTreeMap<ObjectKey, KubeEvent>, JournalError> {
    let mut state = BTreeMap::new();
    if last_seq == 0 {
        return Ok(state);
    }
    for entry in journal.events(src, 1, last_seq) {
        if let Some(Payload::Kubernetes(ev)) = entry?.event.payload {
            fold(&mut state, ev);
        }
    }
    Ok(state)
}

/// Moves `state` (key → newest event of each existing object) past `ev`.
pub fn fold(state: &mut BTreeMap<ObjectKey, KubeEvent>, ev: KubeEvent) {
    let key = (ev.resource.clone(), ev.namespace.clone(), ev.name.clone());
    if ev.event_type == "DELETED" {
        state.remove(&key);
    } else {
        state.insert(key, ev);
    }
}

/// How restore changes objects on the way into a target.
#[derive(Debug, Clone, Default)]
pub struct Transform {
    /// Source namespace → target namespace.
    pub namespace_map: BTreeMap<String, String>,
    /// Keep a Service's allocated `nodePort`s.
    pub keep_node_ports: bool,
}

impl Transform {
    /// The target namespace of source namespace `ns`.
    pub fn namespace(&self, ns: &str) -> String {
        self.namespace_map
            .get(ns)
            .cloned()
            .unwrap_or_else(|| ns.to_string())
    }
}

/// The restorable form of `obj` of `gvr`: what restore applies, and what the digest
/// hashes, on the journal's side and on a live cluster's alike. Server-owned fields
/// go (`uid`, `resourceVersion`, `generation`, `creationTimestamp`, `selfLink`,
/// `managedFields`, `ownerReferences` (dropped: the owners' uids differ in the
/// target), deletion marks, `status`; a Service's allocated `clusterIP(s)` unless
/// headless and `nodePort`s unless kept; a Pod's `nodeName`), and namespaces are
/// mapped (the object's, a RoleBinding's ServiceAccount subjects', a Namespace's
/// name).
pub fn restorable(gvr: &Gvr, obj: &Value, t: &Transform) -> Value {
    let mut o = obj.clone();
    if let Some(root) = o.as_object_mut() {
        root.remove("status");
        if let Some(m) = root.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "selfLink",
                "managedFields",
                "ownerReferences",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                m.remove(f);
            }
            if let Some(ns) = m.get("namespace").and_then(Value::as_str) {
                let mapped = t.namespace(ns);
                m.insert("namespace".into(), json!(mapped));
            }
            if gvr.is_core("namespaces") {
                if let Some(n) = m.get("name").and_then(Value::as_str) {
                    let mapped = t.namespace(n);
                    m.insert("name".into(), json!(mapped));
                    if let Some(l) = m.get_mut("labels").and_then(Value::as_object_mut) {
                        if l.contains_key("kubernetes.io/metadata.name") {
                            l.insert("kubernetes.io/metadata.name".into(), json!(mapped));
                        }
                    }
                }
            }
            if m.get("annotations")
                .and_then(Value::as_object)
                .is_some_and(Map::is_empty)
            {
                m.remove("annotations");
            }
        }
    }
    if gvr.is_core("services") {
        if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
            let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
            if !headless {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            spec.remove("healthCheckNodePort");
            if !t.keep_node_ports {
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        p.remove("nodePort");
                    }
                }
            }
        }
    }
    if gvr.is_core("pods") {
        if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("nodeName");
        }
    }
    if gvr.group == "rbac.authorization.k8s.io" && gvr.plural.ends_with("rolebindings") {
        if let Some(subjects) = o.get_mut("subjects").and_then(Value::as_array_mut) {
            for s in subjects.iter_mut().filter_map(Value::as_object_mut) {
                if let Some(ns) = s.get("namespace").and_then(Value::as_str) {
                    let mapped = t.namespace(ns);
                    s.insert("namespace".into(), json!(mapped));
                }
            }
        }
    }
    o
}

/// Where a resource goes in a restore: CRDs, namespaces, storage, RBAC, service
/// accounts, secrets, configmaps, workloads, services, then the rest (custom
/// resources among them).
pub fn apply_rank(gvr: &Gvr) -> u32 {
    match (gvr.group.as_str(), gvr.plural.as_str()) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => 0,
        ("", "namespaces") => 1,
        ("storage.k8s.io", "storageclasses") => 2,
        ("", "persistentvolumes") => 3,
        ("", "persistentvolumeclaims") => 4,
        ("rbac.authorization.k8s.io", "clusterroles") => 5,
        ("rbac.authorization.k8s.io", "roles") => 6,
        ("rbac.authorization.k8s.io", "clusterrolebindings") => 7,
        ("rbac.authorization.k8s.io", "rolebindings") => 8,
        ("", "serviceaccounts") => 9,
        ("", "secrets") => 10,
        ("", "configmaps") => 11,
        ("", "limitranges") | ("", "resourcequotas") => 12,
        ("apps", _) | ("batch", _) | ("", "pods") | ("", "replicationcontrollers") => 13,
        ("", "services") => 14,
        _ => 15,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sealed_and_reopen() {
        let key = SealKey::from_bytes([3; 32]);
        let gvr = Gvr::parse("v1/secrets").unwrap();
        let obj = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "db", "namespace": "app", "uid": "u1", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}],
                         "annotations": {LAST_APPLIED: "{\"data\":{\"pw\":\"czNjcjN0\"}}"}},
            "data": {"pw": "czNjcjN0"}
        });
        let e = to_event(
            "v1/secrets",
            &gvr,
            "ADDED",
            obj.clone(),
            "7",
            Some(&key),
            false,
        )
        .unwrap();
        let Some(Payload::Kubernetes(k)) = &e.payload else {
            panic!()
        };
        let text = String::from_utf8_lossy(&k.object_json);
        assert!(
            !text.contains("czNjcjN0") && !text.contains("managedFields"),
            "{text}"
        );
        assert!(!k.sealed.is_empty());
        let back = open_object(k, Some(&key)).unwrap();
        assert_eq!(back["data"], obj["data"]);
        assert_eq!(
            back["metadata"]["annotations"],
            obj["metadata"]["annotations"]
        );
        assert!(open_object(k, None)
            .unwrap_err()
            .to_string()
            .contains("no key is configured"));
        assert!(to_event("v1/secrets", &gvr, "ADDED", obj, "7", None, false).is_err());
    }

    #[test]
    fn restorable_strips_server_fields_and_maps_namespaces() {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "a", "uid": "x", "resourceVersion": "9",
                         "creationTimestamp": "t", "ownerReferences": []},
            "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "type": "NodePort",
                     "ports": [{"port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {}}
        });
        let t = Transform {
            namespace_map: [("a".to_string(), "b".to_string())].into(),
            keep_node_ports: false,
        };
        let r = restorable(&Gvr::parse("v1/services").unwrap(), &svc, &t);
        assert_eq!(
            r,
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "web", "namespace": "b"},
                   "spec": {"type": "NodePort", "ports": [{"port": 80}]}})
        );
        let kept = Transform {
            keep_node_ports: true,
            ..Transform::default()
        };
        let r = restorable(&Gvr::parse("v1/services").unwrap(), &svc, &kept);
        assert_eq!(r["spec"]["ports"][0]["nodePort"], 30080);
        assert!(r["spec"].get("clusterIP").is_none());
        let headless = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
        let r = restorable(
            &Gvr::parse("v1/services").unwrap(),
            &headless,
            &Transform::default(),
        );
        assert_eq!(r["spec"]["clusterIP"], "None");
    }
}
