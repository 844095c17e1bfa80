//! Recovery-point markers in the Kubernetes API's own log: the ConfigMap
//! `tidemark-points` (in the source's first namespace, else `default`) applied
//! with the annotation `tidemark.io/point: ID`. The watch delivers the change in
//! order with the other objects' changes; a restore brings the ConfigMap along.
//! A label selector is honoured by giving the ConfigMap its `key=value` labels.

use serde_json::{json, Map, Value};

use super::client::{object_path, Kube};
use super::config::KubeSettings;
use super::discovery::Gvr;
use crate::config::Timeouts;
use crate::connectors::{ConnectorError, MarkWriter};
use crate::event::{ChangeEvent, Payload};

/// The marker ConfigMap's name.
pub const NAME: &str = "tidemark-points";
/// The annotation holding the point's id.
pub const ANNOTATION: &str = "tidemark.io/point";

fn namespace(s: &KubeSettings) -> &str {
    s.namespaces.first().map_or("default", String::as_str)
}

fn configmaps() -> Gvr {
    Gvr {
        group: String::new(),
        version: "v1".into(),
        plural: "configmaps".into(),
    }
}

/// The labels a label selector of only `key=value` terms requires.
fn labels(selector: Option<&str>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for term in selector
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.trim().is_empty())
    {
        let (k, v) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(k, _)| !k.ends_with('!'))
            .ok_or_else(|| format!("recovery points need the marker ConfigMap to match `label_selector`, and `{}` is not a key=value term", term.trim()))?;
        out.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
    }
    Ok(out)
}

/// Why `s` cannot be marked.
pub fn problem(s: &KubeSettings) -> Option<String> {
    if !s.resources.is_empty() && !s.resources.contains(&configmaps()) {
        return Some(
            "recovery points need ConfigMaps captured: add \"v1/configmaps\" to its `resources`"
                .into(),
        );
    }
    labels(s.label_selector.as_deref()).err()
}

/// Connects to the cluster for its markers.
pub fn connect(
    s: &KubeSettings,
    timeouts: &Timeouts,
) -> Result<Box<dyn MarkWriter>, ConnectorError> {
    let labels = labels(s.label_selector.as_deref()).map_err(ConnectorError)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ConnectorError::from_display)?;
    let kube = rt
        .block_on(Kube::connect(&s.cluster, timeouts))
        .map_err(ConnectorError::from_display)?;
    Ok(Box::new(KubeMarker {
        rt,
        kube,
        namespace: namespace(s).to_string(),
        labels,
        timeout: timeouts.read,
    }))
}

struct KubeMarker {
    rt: tokio::runtime::Runtime,
    kube: Kube,
    namespace: String,
    labels: Map<String, Value>,
    timeout: std::time::Duration,
}

impl MarkWriter for KubeMarker {
    fn write(&mut self, id: &str) -> Result<(), ConnectorError> {
        let mut annotations = Map::new();
        annotations.insert(ANNOTATION.into(), Value::String(id.into()));
        let obj = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": self.namespace, "labels": self.labels, "annotations": annotations},
            "data": {"point": id},
        });
        let path = object_path(&configmaps(), Some(&self.namespace), NAME);
        self.rt
            .block_on(self.kube.apply(&path, &obj, self.timeout))
            .map_err(ConnectorError::from_display)?;
        Ok(())
    }
}

/// Whether `event` is marker `id`.
pub fn is_marker(event: &ChangeEvent, id: &str) -> bool {
    let Some(Payload::Kubernetes(k)) = &event.payload else {
        return false;
    };
    if k.kind != "ConfigMap" || k.name != NAME || k.event_type == "DELETED" {
        return false;
    }
    serde_json::from_slice::<Value>(&k.object_json)
        .ok()
        .is_some_and(|o| o["metadata"]["annotations"][ANNOTATION] == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_selectors_become_labels_and_others_are_refused() {
        let l = labels(Some("app=shop, tier==web")).unwrap();
        assert_eq!(l["app"], "shop");
        assert_eq!(l["tier"], "web");
        assert!(labels(Some("app!=shop")).is_err());
        assert!(labels(Some("app in (a,b)")).is_err());
        assert!(labels(None).unwrap().is_empty());
    }
}
