//! Reaching an API server: a `kube` client from a kubeconfig, and the raw JSON
//! requests capture, restore and digest make (list with pagination, watch with
//! bookmarks, get, server-side apply). Objects stay `serde_json::Value`: typed
//! structs would drop fields their schema lacks.

use std::time::Duration;

use futures_util::Stream;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::WatchEvent;
use serde_json::Value;

use super::config::ClusterRef;
use super::discovery::Gvr;
use crate::capture::Fault;
use crate::config::Timeouts;

/// A failure talking to the API server. Messages name the cluster and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig cannot be used.
    #[error("{cluster}: {problem}")]
    Config {
        /// The kubeconfig and context.
        cluster: String,
        /// What is wrong.
        problem: String,
    },
    /// The server answered with an error status.
    #[error("{what}: the API server answered {code} {reason}: {message}")]
    Api {
        /// The request.
        what: String,
        /// HTTP status code.
        code: u16,
        /// The status reason (`NotFound`, `Expired`).
        reason: String,
        /// The server's message.
        message: String,
    },
    /// The connection failed or timed out.
    #[error("{what}: {problem} (is the API server reachable? capture retries)")]
    Network {
        /// The request.
        what: String,
        /// The transport error.
        problem: String,
    },
    /// The server sent something this version cannot use.
    #[error("{what}: {problem}")]
    Protocol {
        /// The request.
        what: String,
        /// What was wrong.
        problem: String,
    },
    /// The journal or the key failed.
    #[error("{0}")]
    Local(String),
}

impl KubeError {
    /// True for `410 Gone` (the resourceVersion is too old to watch from).
    pub fn is_gone(&self) -> bool {
        matches!(self, KubeError::Api { code: 410, .. })
    }

    /// True for `404 Not Found`.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Api { code: 404, .. })
    }

    fn from_kube(what: &str, e: kube::Error) -> KubeError {
        match e {
            kube::Error::Api(s) => KubeError::Api {
                what: what.to_string(),
                code: s.code,
                reason: s.reason.clone(),
                message: s.message.clone(),
            },
            kube::Error::SerdeError(e) => KubeError::Protocol {
                what: what.to_string(),
                problem: format!("malformed JSON: {e}"),
            },
            other => KubeError::Network {
                what: what.to_string(),
                problem: other.to_string(),
            },
        }
    }
}

impl Fault for KubeError {
    fn is_transient(&self) -> bool {
        match self {
            KubeError::Network { .. } => true,
            KubeError::Api { code, .. } => *code >= 500 || *code == 429 || *code == 410,
            _ => false,
        }
    }
}

/// A connected client and what it was made from.
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
    /// For messages.
    pub cluster: String,
}

impl Kube {
    /// A client for `cluster` (reads the kubeconfig; connects on first request).
    pub async fn connect(cluster: &ClusterRef, timeouts: &Timeouts) -> Result<Kube, KubeError> {
        let describe = cluster.describe();
        let cfg_err = |problem: String| KubeError::Config {
            cluster: describe.clone(),
            problem,
        };
        let kc = Kubeconfig::read_from(&cluster.kubeconfig)
            .map_err(|e| cfg_err(format!("cannot read it: {e}")))?;
        let opts = KubeConfigOptions {
            context: cluster.context.clone(),
            ..Default::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .map_err(|e| cfg_err(format!("cannot use it: {e}")))?;
        config.connect_timeout = Some(timeouts.connect);
        // No read timeout on the client: watches are long requests bounded by their
        // own `timeoutSeconds`; each other request is bounded by `call` below.
        config.read_timeout = None;
        let client = kube::Client::try_from(config)
            .map_err(|e| cfg_err(format!("cannot build a client: {e}")))?;
        Ok(Kube {
            client,
            cluster: describe,
        })
    }

    fn request(
        method: &str,
        uri: &str,
        body: Vec<u8>,
        ctype: Option<&str>,
        accept: &str,
    ) -> http::Request<Vec<u8>> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::ACCEPT, accept);
        if let Some(c) = ctype {
            b = b.header(http::header::CONTENT_TYPE, c);
        }
        // The builder fails only on a malformed method or URI; ours are built from
        // validated parts, and a bad one surfaces as the server's 404.
        b.body(body).unwrap_or_default()
    }

    /// One request answered with JSON, bounded by `timeout`.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<(Vec<u8>, &str)>,
        timeout: Duration,
    ) -> Result<Value, KubeError> {
        self.call_accept(method, uri, body, timeout, "application/json")
            .await
    }

    async fn call_accept(
        &self,
        method: &str,
        uri: &str,
        body: Option<(Vec<u8>, &str)>,
        timeout: Duration,
        accept: &str,
    ) -> Result<Value, KubeError> {
        let what = format!("{} {method} {uri}", self.cluster);
        let (body, ctype) = match body {
            Some((b, c)) => (b, Some(c)),
            None => (Vec::new(), None),
        };
        let req = Kube::request(method, uri, body, ctype, accept);
        match tokio::time::timeout(timeout, self.client.request::<Value>(req)).await {
            Ok(r) => r.map_err(|e| KubeError::from_kube(&what, e)),
            Err(_) => Err(KubeError::Network {
                what,
                problem: format!("no answer within {timeout:?}"),
            }),
        }
    }

    /// GET `uri`.
    pub async fn get(&self, uri: &str, timeout: Duration) -> Result<Value, KubeError> {
        self.call("GET", uri, None, timeout).await
    }

    /// Lists every object at collection `path` (all pages), with `selector`.
    /// Returns the items and the list's resourceVersion.
    pub async fn list(
        &self,
        path: &str,
        selector: Option<&str>,
        timeout: Duration,
    ) -> Result<(Vec<Value>, String), KubeError> {
        self.list_as(path, selector, timeout, "application/json")
            .await
    }

    /// As [`Kube::list`], but only the objects' metadata (a quorum read of what
    /// coverage compares with the journal; no Secret data on the wire).
    pub async fn list_metadata(
        &self,
        path: &str,
        selector: Option<&str>,
        timeout: Duration,
    ) -> Result<(Vec<Value>, String), KubeError> {
        self.list_as(
            path,
            selector,
            timeout,
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        )
        .await
    }

    async fn list_as(
        &self,
        path: &str,
        selector: Option<&str>,
        timeout: Duration,
        accept: &str,
    ) -> Result<(Vec<Value>, String), KubeError> {
        let mut items = Vec::new();
        let mut cont = String::new();
        loop {
            let mut uri = format!("{path}?limit=500");
            if let Some(s) = selector {
                uri.push_str(&format!("&labelSelector={}", encode(s)));
            }
            if !cont.is_empty() {
                uri.push_str(&format!("&continue={}", encode(&cont)));
            }
            let mut page = self.call_accept("GET", &uri, None, timeout, accept).await?;
            if let Some(Value::Array(list)) = page.get_mut("items").map(Value::take) {
                items.extend(list);
            }
            let meta = &page["metadata"];
            cont = meta["continue"].as_str().unwrap_or_default().to_string();
            if cont.is_empty() {
                let rv = meta["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                return Ok((items, rv));
            }
        }
    }

    /// Watches collection `path` from `rv` with bookmarks; the server ends the
    /// stream after `timeout_s` seconds.
    pub async fn watch(
        &self,
        path: &str,
        rv: &str,
        selector: Option<&str>,
        timeout_s: u64,
    ) -> Result<impl Stream<Item = Result<WatchEvent<Value>, KubeError>> + use<>, KubeError> {
        use futures_util::StreamExt as _;
        let mut uri = format!(
            "{path}?watch=1&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={timeout_s}",
            encode(rv)
        );
        if let Some(s) = selector {
            uri.push_str(&format!("&labelSelector={}", encode(s)));
        }
        let what = format!("{} watch {path}", self.cluster);
        let req = Kube::request("GET", &uri, Vec::new(), None, "application/json");
        let stream = self
            .client
            .request_events::<Value>(req)
            .await
            .map_err(|e| KubeError::from_kube(&what, e))?;
        Ok(
            stream.map(move |r: Result<WatchEvent<Value>, kube::Error>| {
                r.map_err(|e| KubeError::from_kube(&what, e))
            }),
        )
    }

    /// Server-side apply of `obj` at `path` (the object's own URL) as field manager
    /// `tidemark`, taking over conflicting fields.
    pub async fn apply(
        &self,
        path: &str,
        obj: &Value,
        timeout: Duration,
    ) -> Result<Value, KubeError> {
        let body = serde_json::to_vec(obj).map_err(|e| KubeError::Local(e.to_string()))?;
        self.call(
            "PATCH",
            &format!("{path}?fieldManager=tidemark&force=true"),
            Some((body, "application/apply-patch+yaml")),
            timeout,
        )
        .await
    }

    /// Deletes the object at `path` (dependents left to the garbage collector);
    /// returns whether it was there.
    pub async fn delete(&self, path: &str, timeout: Duration) -> Result<bool, KubeError> {
        let body =
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}"#;
        match self
            .call(
                "DELETE",
                path,
                Some((body.to_vec(), "application/json")),
                timeout,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The underlying client (discovery).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }
}

/// The URL path of a collection of `gvr` (in namespace `ns`, if namespaced).
pub fn collection_path(gvr: &Gvr, ns: Option<&str>) -> String {
    let base = if gvr.group.is_empty() {
        format!("/api/{}", gvr.version)
    } else {
        format!("/apis/{}/{}", gvr.group, gvr.version)
    };
    match ns {
        Some(ns) => format!("{base}/namespaces/{ns}/{}", gvr.plural),
        None => format!("{base}/{}", gvr.plural),
    }
}

/// The URL path of one object.
pub fn object_path(gvr: &Gvr, ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", collection_path(gvr, ns))
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
