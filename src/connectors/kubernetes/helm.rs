//! Helm 3 release records: Secrets (type `helm.sh/release.v1`) and ConfigMaps
//! named `sh.helm.release.v1.<name>.v<revision>`, labelled `owner=helm`. Their
//! `data.release` is base64 of gzip of the release JSON (inside the Secret's own
//! base64 for the Secret driver). `log` and `status` show them.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Value};

use super::object::{open_object, state_at};
use crate::connectors::Probe;
use crate::crypto::SealKey;
use crate::event::KubeEvent;
use crate::journal::{Journal, SourceId};

/// A decoded release record.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Release {
    /// Release name.
    pub name: String,
    /// Namespace of the record.
    pub namespace: String,
    /// Revision.
    pub revision: u64,
    /// `deployed`, `superseded`, `failed`, ...
    pub status: String,
    /// Chart name, version and appVersion (`None` when the body is sealed and no
    /// key is configured).
    pub chart: Option<Chart>,
}

/// What the release body says about its chart.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Chart {
    /// Chart name.
    pub name: String,
    /// Chart version.
    pub version: String,
    /// appVersion.
    pub app_version: String,
    /// The values the release was installed with.
    pub values: Value,
    /// Bytes of rendered manifest.
    pub manifest_bytes: usize,
}

/// `(name, revision)` from a record name `sh.helm.release.v1.<name>.v<rev>`.
pub fn parse_record_name(n: &str) -> Option<(String, u64)> {
    let rest = n.strip_prefix("sh.helm.release.v1.")?;
    let (name, rev) = rest.rsplit_once(".v")?;
    Some((name.to_string(), rev.parse().ok()?))
}

/// Decodes a release body: the `release` value as the driver stored it (base64 of
/// gzip, or of plain JSON) into its JSON.
pub fn decode_body(stored: &str) -> Result<Value, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = b64
        .decode(stored.trim())
        .map_err(|e| format!("release body is not base64: {e}"))?;
    let json = if raw.starts_with(&[0x1f, 0x8b]) {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("release body is not valid gzip: {e}"))?;
        out
    } else {
        raw
    };
    serde_json::from_slice(&json).map_err(|e| format!("release body is not JSON: {e}"))
}

fn chart_of(body: &Value) -> Chart {
    let md = &body["chart"]["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Chart {
        name: s(&md["name"]),
        version: s(&md["version"]),
        app_version: s(&md["appVersion"]),
        values: body["config"].clone(),
        manifest_bytes: body["manifest"].as_str().map_or(0, str::len),
    }
}

/// The release a journaled event records, if it is a Helm record. The chart is
/// read from the body when it can be (a Secret's body needs `key`).
pub fn release_of(ev: &KubeEvent, key: Option<&SealKey>) -> Option<Release> {
    let (name, revision) = parse_record_name(&ev.name)?;
    if ev.kind != "Secret" && ev.kind != "ConfigMap" {
        return None;
    }
    let visible: Value = serde_json::from_slice(&ev.object_json).ok()?;
    let labels = &visible["metadata"]["labels"];
    if labels["owner"].as_str() != Some("helm") {
        return None;
    }
    let status = labels["status"].as_str().unwrap_or_default().to_string();
    let chart = open_object(ev, key).ok().and_then(|obj| {
        let stored = obj["data"]["release"].as_str()?.to_string();
        let body_text = if ev.kind == "Secret" {
            let inner = base64::engine::general_purpose::STANDARD
                .decode(stored.trim())
                .ok()?;
            String::from_utf8(inner).ok()?
        } else {
            stored
        };
        decode_body(&body_text).ok().map(|b| chart_of(&b))
    });
    Some(Release {
        name,
        namespace: ev.namespace.clone(),
        revision,
        status,
        chart,
    })
}

/// One line and JSON for `log`.
pub fn describe(ev: &KubeEvent, key: Option<&SealKey>) -> Option<(String, Value)> {
    let r = release_of(ev, key)?;
    let chart = match &r.chart {
        Some(c) => format!(" chart {}-{} app {}", c.name, c.version, c.app_version),
        None if !ev.sealed.is_empty() && key.is_none() => {
            " (chart details sealed: configure the key)".to_string()
        }
        None => String::new(),
    };
    let line = format!(
        "helm release {}/{} revision {} {}{chart}",
        r.namespace, r.name, r.revision, r.status
    );
    Some((line, json!({ "helm_release": r })))
}

/// `status` lines: every release's revisions as the journal holds them now.
pub fn probe(journal: &Journal, id: SourceId, key: Option<&SealKey>) -> Option<Probe> {
    let last = journal
        .sources()
        .into_iter()
        .find(|s| s.id == id)?
        .stats
        .last_seq;
    let state = state_at(journal, id, last).ok()?;
    let mut releases: BTreeMap<(String, String), Vec<Release>> = BTreeMap::new();
    for ev in state.values() {
        if let Some(r) = release_of(ev, key) {
            releases
                .entry((r.namespace.clone(), r.name.clone()))
                .or_default()
                .push(r);
        }
    }
    if releases.is_empty() {
        return None;
    }
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for ((ns, name), mut revs) in releases {
        revs.sort_by_key(|r| r.revision);
        let list: Vec<String> = revs
            .iter()
            .map(|r| format!("{} {}", r.revision, r.status))
            .collect();
        let chart = revs
            .last()
            .and_then(|r| r.chart.as_ref())
            .map(|c| format!(" (chart {}-{}, app {})", c.name, c.version, c.app_version))
            .unwrap_or_default();
        lines.push(format!(
            "    helm {ns}/{name}: revisions {}{chart}",
            list.join(", ")
        ));
        rows.push(json!({ "namespace": ns, "name": name, "revisions": revs }));
    }
    let mut fields = serde_json::Map::new();
    fields.insert("helm_releases".into(), json!(rows));
    Some(Probe {
        fields,
        suffix: String::new(),
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a release body as Helm's storage does: gzip, then base64.
    pub fn encode_body(v: &Value) -> String {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(v.to_string().as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap())
    }

    #[test]
    fn decodes_record_names_and_bodies() {
        assert_eq!(
            parse_record_name("sh.helm.release.v1.my.app.v12"),
            Some(("my.app".into(), 12))
        );
        assert_eq!(parse_record_name("other"), None);
        let body = json!({"name": "web", "chart": {"metadata": {"name": "web", "version": "0.3.0", "appVersion": "1.2"}},
                          "config": {"replicas": 2}, "manifest": "kind: Deployment\n", "version": 3});
        let stored = encode_body(&body);
        assert_eq!(decode_body(&stored).unwrap(), body);
        let c = chart_of(&decode_body(&stored).unwrap());
        assert_eq!(
            (c.name.as_str(), c.version.as_str(), c.app_version.as_str()),
            ("web", "0.3.0", "1.2")
        );
        assert!(decode_body("%%%").is_err());
    }
}
