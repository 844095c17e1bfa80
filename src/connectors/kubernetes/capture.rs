//! Capture: one list/watch loop per *stream* (a resource, in one namespace when the
//! source names namespaces), each an explicit state machine:
//!
//! ```text
//!  no checkpoint ──list──▶ Listed(rv) ──watch from rv──▶ Watching ──events, bookmarks──▶ (append, rv)
//!        ▲                                   │  server ends the watch: watch again from rv
//!        └──────────── 410 Gone ─────────────┘
//! ```
//!
//! - **Journal before acknowledging.** A stream's resourceVersion is its checkpoint,
//!   written in the same atomic append as the events up to it; a restart watches
//!   from the checkpoint: no relist, no gap, no duplicate.
//! - **410 Gone** (the checkpoint is older than what the server keeps): relist and
//!   compare with the journal's last known set of the stream: same uid and
//!   resourceVersion is skipped, a changed resourceVersion is journaled as
//!   `MODIFIED`, a new uid under the same name as `DELETED` + `ADDED`, and objects
//!   the list lacks as `DELETED`; all of these marked `observed_late`.
//! - **Coverage.** Every `coverage_interval` each stream lists its objects' metadata
//!   (a quorum read) and compares uids and resourceVersions with what it has
//!   journaled: equal means the journal holds the stream as it was when the list was
//!   sent. The source's coverage is the oldest such moment over its streams.
//! - New resources (CRDs) are discovered every `discovery_interval`; a resource the
//!   server stops serving (404) ends its stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::core::WatchEvent;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::client::{collection_path, Kube, KubeError};
use super::config::KubeSettings;
use super::discovery::{self, object_excluded, Resource};
use super::object::to_event;
use crate::capture::{BoxFuture, CaptureContext, CaptureError, Source, SourceJournal};
use crate::config::Timeouts;
use crate::event::{ChangeEvent, Payload};
use crate::journal::Progress;
use crate::position::{KubePosition, Position, PositionKind};
use crate::time::Timestamp;

/// Seconds a watch request asks the server to keep it open.
const WATCH_SECONDS: u64 = 240;

/// A Kubernetes source's capture.
pub struct KubeSource {
    name: String,
    settings: Arc<KubeSettings>,
    timeouts: Timeouts,
}

impl KubeSource {
    /// Builds it; connects to nothing.
    pub fn new(name: &str, settings: Arc<KubeSettings>, timeouts: Timeouts) -> KubeSource {
        KubeSource {
            name: name.to_string(),
            settings,
            timeouts,
        }
    }
}

/// One stream: a resource, in one namespace or all.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    stream: String,
    resource: Resource,
    namespace: Option<String>,
}

fn specs(resources: &[Resource], settings: &KubeSettings) -> Vec<Spec> {
    let mut out = Vec::new();
    for r in resources {
        if r.namespaced && !settings.namespaces.is_empty() {
            for ns in &settings.namespaces {
                out.push(Spec {
                    stream: format!("{}@{ns}", r.gvr),
                    resource: r.clone(),
                    namespace: Some(ns.clone()),
                });
            }
        } else {
            out.push(Spec {
                stream: r.gvr.to_string(),
                resource: r.clone(),
                namespace: None,
            });
        }
    }
    out
}

/// `(namespace, name)` → `(uid, resourceVersion)`: a stream's objects.
type Known = HashMap<(String, String), (String, String)>;

/// What the journal holds per stream: checkpoint and last known set.
#[derive(Default)]
struct Loaded {
    checkpoints: HashMap<String, String>,
    known: HashMap<String, Known>,
}

fn load(journal: &SourceJournal) -> Result<Loaded, CaptureError> {
    let mut out = Loaded::default();
    for c in journal.checkpoints()? {
        if let Some(PositionKind::Kubernetes(p)) = c.position.kind {
            out.checkpoints.insert(p.resource, p.resource_version);
        }
    }
    if out.checkpoints.is_empty() {
        return Ok(out);
    }
    for entry in journal.journal().events(journal.id(), 1, u64::MAX) {
        let e = entry?.event;
        let (Some(Payload::Kubernetes(k)), Some(PositionKind::Kubernetes(p))) =
            (e.payload, e.position.and_then(|p| p.kind))
        else {
            continue;
        };
        let set = out.known.entry(p.resource).or_default();
        let key = (k.namespace, k.name);
        if k.event_type == "DELETED" {
            set.remove(&key);
        } else {
            set.insert(key, (k.uid, k.resource_version));
        }
    }
    Ok(out)
}

/// What the streams of one capture attempt share.
struct Shared {
    name: String,
    journal: SourceJournal,
    kube: Kube,
    settings: Arc<KubeSettings>,
    timeouts: Timeouts,
    /// Per stream: the moment the journal is known to hold it up to.
    coverage: Mutex<BTreeMap<String, Option<i64>>>,
    /// The source coverage last appended.
    appended_coverage: Mutex<Option<i64>>,
    /// The newest moment from which some stream is known complete: its first
    /// comparison in this attempt, or its latest relist. Changes a stream
    /// journals when it (re)starts or relists were made earlier (while capture was
    /// not watching) but are stamped when journaled, so no moment before this one
    /// can be claimed as covered.
    complete_from: Mutex<i64>,
}

impl Shared {
    fn err(&self, e: KubeError) -> CaptureError {
        CaptureError::of(&self.name, e)
    }

    fn coverage(&self) -> Option<Timestamp> {
        let map = self.coverage.lock().unwrap_or_else(|p| p.into_inner());
        let mut min: Option<i64> = None;
        for v in map.values() {
            let v = (*v)?;
            min = Some(min.map_or(v, |m| m.min(v)));
        }
        let from = *self.complete_from.lock().unwrap_or_else(|p| p.into_inner());
        min.filter(|m| *m >= from).map(Timestamp::from_micros)
    }

    /// Stream data journaled now may be late: no coverage before now.
    fn complete_from_now(&self) {
        let mut from = self.complete_from.lock().unwrap_or_else(|p| p.into_inner());
        *from = (*from).max(Timestamp::now().as_micros());
    }

    fn set_coverage(&self, stream: &str, at: Timestamp) {
        let mut map = self.coverage.lock().unwrap_or_else(|p| p.into_inner());
        let slot = map.entry(stream.to_string()).or_insert(None);
        if slot.is_none() {
            // The stream's first comparison: what it journaled before (catching up
            // after a restart) may be late; it is complete from here on.
            let mut from = self.complete_from.lock().unwrap_or_else(|p| p.into_inner());
            *from = (*from).max(at.as_micros());
        }
        *slot = Some(slot.map_or(at.as_micros(), |v| v.max(at.as_micros())));
    }

    /// Appends `events` with `stream`'s checkpoint at `rv` (if given) and the
    /// source's coverage; durable when it returns.
    async fn append(
        &self,
        events: Vec<ChangeEvent>,
        stream: &str,
        rv: Option<&str>,
    ) -> Result<(), CaptureError> {
        let coverage = self.coverage();
        let checkpoint = rv
            .map(|rv| {
                vec![Position {
                    kind: Some(PositionKind::Kubernetes(KubePosition {
                        resource: stream.to_string(),
                        resource_version: rv.to_string(),
                    })),
                }]
            })
            .unwrap_or_default();
        if events.is_empty() && checkpoint.is_empty() {
            let last = *self
                .appended_coverage
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if coverage.is_none() || coverage.map(|c| c.as_micros()) <= last {
                return Ok(());
            }
        }
        self.journal
            .append(
                events,
                Progress {
                    checkpoint,
                    coverage,
                },
            )
            .await?;
        if let Some(c) = coverage {
            let mut last = self
                .appended_coverage
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *last = Some(last.map_or(c.as_micros(), |l| l.max(c.as_micros())));
        }
        Ok(())
    }
}

fn meta_of(obj: &Value) -> ((String, String), (String, String)) {
    let m = &obj["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        (s(&m["namespace"]), s(&m["name"])),
        (s(&m["uid"]), s(&m["resourceVersion"])),
    )
}

/// One stream's loop; see the module docs.
struct StreamLoop {
    shared: Arc<Shared>,
    spec: Spec,
    path: String,
    known: Known,
    /// Objects left out by the per-object exclusions (coverage ignores them).
    skipped: Known,
    rv: Option<String>,
}

impl StreamLoop {
    fn include(&self) -> impl Fn(&str) -> bool + '_ {
        |w: &str| self.shared.settings.includes(w)
    }

    fn event(
        &self,
        kind: &str,
        mut obj: Value,
        rv: &str,
        late: bool,
    ) -> Result<ChangeEvent, CaptureError> {
        super::object::with_type(&mut obj, &self.spec.resource.gvr, &self.spec.resource.kind);
        to_event(
            &self.spec.stream,
            &self.spec.resource.gvr,
            kind,
            obj,
            rv,
            self.shared.settings.key.as_deref(),
            late,
        )
        .map_err(|e| self.shared.err(KubeError::Local(e.to_string())))
    }

    fn tombstone(&self, key: &(String, String), uid: &str, rv: &str) -> Value {
        json!({
            "apiVersion": self.spec.resource.gvr.api_version(),
            "kind": self.spec.resource.kind,
            "metadata": {"namespace": key.0, "name": key.1, "uid": uid, "resourceVersion": rv},
        })
    }

    /// Lists the stream and journals what differs from the known set; returns the
    /// list's resourceVersion (`None`: the server no longer serves the resource).
    async fn relist(&mut self) -> Result<Option<String>, CaptureError> {
        let late = self.rv.is_some() || !self.known.is_empty();
        let sh = Arc::clone(&self.shared);
        let (items, list_rv) = match sh
            .kube
            .list(
                &self.path,
                sh.settings.label_selector.as_deref(),
                sh.timeouts.read,
            )
            .await
        {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(sh.err(e)),
        };
        if list_rv.is_empty() {
            return Err(sh.err(KubeError::Protocol {
                what: format!("{} list {}", sh.kube.cluster, self.path),
                problem: "the list has no resourceVersion".into(),
            }));
        }
        let mut events = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Known::new();
        self.skipped.clear();
        for obj in items {
            let (key, (uid, orv)) = meta_of(&obj);
            if !self.known.contains_key(&key)
                && object_excluded(&self.spec.resource.gvr, &obj, &self.include())
            {
                self.skipped.insert(key, (uid, orv));
                continue;
            }
            seen.insert(key.clone());
            match self.known.get(&key) {
                Some((u, r)) if *u == uid && *r == orv => {}
                Some((u, _)) if *u == uid => {
                    events.push(self.event("MODIFIED", obj, &list_rv, late)?);
                }
                Some((u, r)) => {
                    let t = self.tombstone(&key, u, r);
                    events.push(self.event("DELETED", t, &list_rv, true)?);
                    events.push(self.event("ADDED", obj, &list_rv, late)?);
                }
                None => events.push(self.event("ADDED", obj, &list_rv, late)?),
            }
            next.insert(key, (uid, orv));
        }
        for (key, (u, r)) in &self.known {
            if !seen.contains(key) {
                let t = self.tombstone(key, u, r);
                events.push(self.event("DELETED", t, &list_rv, true)?);
            }
        }
        let n = events.len();
        // No coverage from the list itself; what it found may have happened while
        // capture was not watching: no moment before now is covered.
        sh.complete_from_now();
        sh.append(events, &self.spec.stream, Some(&list_rv)).await?;
        self.known = next;
        self.rv = Some(list_rv.clone());
        tracing::info!(source = %sh.name, stream = %self.spec.stream, journaled = n, "listed");
        Ok(Some(list_rv))
    }

    /// Compares the server's current objects with the journaled set; equal: the
    /// stream is covered up to the moment the list was sent.
    async fn check_coverage(&mut self) -> Result<(), CaptureError> {
        let sh = Arc::clone(&self.shared);
        let before = Timestamp::now();
        let (items, _) = match sh
            .kube
            .list_metadata(
                &self.path,
                sh.settings.label_selector.as_deref(),
                sh.timeouts.read,
            )
            .await
        {
            Ok(l) => l,
            // Coverage waits for the next round; the watch decides about errors.
            Err(_) => return Ok(()),
        };
        let mut matched = 0usize;
        for obj in &items {
            let (key, v) = meta_of(obj);
            if self.known.get(&key) == Some(&v) {
                matched += 1;
            } else if self.skipped.get(&key) != Some(&v) {
                return Ok(());
            }
        }
        if matched == self.known.len() {
            sh.set_coverage(&self.spec.stream, before);
            sh.append(Vec::new(), &self.spec.stream, None).await?;
        }
        Ok(())
    }

    /// Runs until an error the source must stop or retry on. `Ok` when the server
    /// stopped serving the resource.
    async fn run(mut self) -> Result<(), CaptureError> {
        let sh = Arc::clone(&self.shared);
        let selector = sh.settings.label_selector.clone();
        loop {
            let from = match self.rv.clone() {
                Some(rv) => rv,
                None => match self.relist().await? {
                    Some(rv) => rv,
                    None => return Ok(()),
                },
            };
            let watch = match sh
                .kube
                .watch(&self.path, &from, selector.as_deref(), WATCH_SECONDS)
                .await
            {
                Ok(w) => w,
                Err(e) if e.is_gone() => {
                    tracing::warn!(source = %sh.name, stream = %self.spec.stream, rv = %from, "resourceVersion expired (410 Gone): relisting");
                    self.rv = None;
                    continue;
                }
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(sh.err(e)),
            };
            let mut chunks = Box::pin(watch.ready_chunks(500));
            let mut tick = tokio::time::interval(sh.settings.coverage_interval);
            // A watch that sends nothing (not even its end) for this long is stalled.
            let stall = Duration::from_secs(WATCH_SECONDS) + sh.timeouts.read;
            loop {
                tokio::select! {
                    next = tokio::time::timeout(stall, chunks.next()) => {
                        let batch = match next {
                            Ok(Some(b)) => b,
                            Ok(None) => break, // the server ended the watch: watch again
                            Err(_) => {
                                tracing::warn!(source = %sh.name, stream = %self.spec.stream, "watch stalled; watching again");
                                break;
                            }
                        };
                        if self.handle(batch).await? {
                            break;
                        }
                    }
                    _ = tick.tick() => self.check_coverage().await?,
                }
            }
        }
    }

    /// Journals one batch of watch events. True when the stream must relist (410).
    async fn handle(
        &mut self,
        batch: Vec<Result<WatchEvent<Value>, KubeError>>,
    ) -> Result<bool, CaptureError> {
        let sh = Arc::clone(&self.shared);
        let mut events = Vec::new();
        let mut rv = None;
        let mut gone = false;
        for item in batch {
            let ev = item.map_err(|e| sh.err(e))?;
            let (kind, obj) = match ev {
                WatchEvent::Added(o) => ("ADDED", o),
                WatchEvent::Modified(o) => ("MODIFIED", o),
                WatchEvent::Deleted(o) => ("DELETED", o),
                WatchEvent::Bookmark(b) => {
                    rv = Some(b.metadata.resource_version);
                    continue;
                }
                WatchEvent::Error(s) if s.code == 410 => {
                    gone = true;
                    break;
                }
                WatchEvent::Error(s) => {
                    return Err(sh.err(KubeError::Api {
                        what: format!("{} watch {}", sh.kube.cluster, self.path),
                        code: s.code,
                        reason: s.reason.clone(),
                        message: s.message.clone(),
                    }))
                }
            };
            let (key, (uid, orv)) = meta_of(&obj);
            let known = self.known.contains_key(&key);
            if !known && object_excluded(&self.spec.resource.gvr, &obj, &self.include()) {
                if kind == "DELETED" {
                    self.skipped.remove(&key);
                } else {
                    self.skipped.insert(key, (uid, orv.clone()));
                }
                rv = Some(orv);
                continue;
            }
            self.skipped.remove(&key);
            if kind == "DELETED" {
                self.known.remove(&key);
            } else {
                self.known.insert(key, (uid, orv.clone()));
            }
            events.push(self.event(kind, obj, &orv, false)?);
            rv = Some(orv);
        }
        if let Some(rv) = rv.filter(|r| !r.is_empty()) {
            sh.append(events, &self.spec.stream, Some(&rv)).await?;
            self.rv = Some(rv);
        }
        if gone {
            tracing::warn!(source = %sh.name, stream = %self.spec.stream, "watch expired (410 Gone): relisting");
            self.rv = None;
        }
        Ok(gone)
    }
}

impl Source for KubeSource {
    fn preflight(&self) -> BoxFuture<'_, Result<(), CaptureError>> {
        Box::pin(async move {
            let kube = Kube::connect(&self.settings.cluster, &self.timeouts)
                .await
                .map_err(|e| CaptureError::config(&self.name, e.to_string()))?;
            kube.get("/version", self.timeouts.read)
                .await
                .map_err(|e| CaptureError::of(&self.name, e))?;
            Ok(())
        })
    }

    fn run(self: Box<Self>, ctx: CaptureContext) -> BoxFuture<'static, Result<(), CaptureError>> {
        Box::pin(async move {
            let KubeSource {
                name,
                settings,
                timeouts,
            } = *self;
            let CaptureContext {
                journal,
                mut shutdown,
                capturing,
            } = ctx;
            let kube = Kube::connect(&settings.cluster, &timeouts)
                .await
                .map_err(|e| CaptureError::config(&name, e.to_string()))?;
            let j = journal.clone();
            let mut loaded = tokio::task::spawn_blocking(move || load(&j))
                .await
                .map_err(|e| CaptureError::config(&name, format!("loading state failed: {e}")))??;
            let shared = Arc::new(Shared {
                name: name.clone(),
                journal,
                kube: kube.clone(),
                settings: Arc::clone(&settings),
                timeouts,
                coverage: Mutex::new(BTreeMap::new()),
                appended_coverage: Mutex::new(None),
                complete_from: Mutex::new(0),
            });
            let mut tasks: JoinSet<(String, Result<(), CaptureError>)> = JoinSet::new();
            let mut running: HashSet<String> = HashSet::new();
            let mut rediscover = tokio::time::interval(settings.discovery_interval);
            loop {
                tokio::select! {
                    _ = shutdown.wait() => {
                        tasks.abort_all();
                        return Ok(());
                    }
                    _ = rediscover.tick() => {
                        let resources = discovery::select(&kube, &settings, timeouts.read)
                            .await
                            .map_err(|e| CaptureError::of(&name, e))?;
                        let fresh: Vec<Spec> = specs(&resources, &settings)
                            .into_iter()
                            .filter(|s| running.insert(s.stream.clone()))
                            .collect();
                        // Every new stream counts for coverage before any of them
                        // appends: the source's coverage is the minimum over all.
                        {
                            let mut cov = shared.coverage.lock().unwrap_or_else(|p| p.into_inner());
                            for spec in &fresh {
                                cov.insert(spec.stream.clone(), None);
                            }
                        }
                        for spec in fresh {
                            let path = collection_path(&spec.resource.gvr, spec.namespace.as_deref());
                            let stream = StreamLoop {
                                shared: Arc::clone(&shared),
                                rv: loaded.checkpoints.remove(&spec.stream),
                                known: loaded.known.remove(&spec.stream).unwrap_or_default(),
                                skipped: Known::new(),
                                path,
                                spec: spec.clone(),
                            };
                            tasks.spawn(async move { (spec.stream.clone(), stream.run().await) });
                        }
                        capturing.now();
                    }
                    Some(done) = tasks.join_next() => {
                        match done {
                            Ok((stream, Ok(()))) => {
                                tracing::info!(source = %name, %stream, "resource no longer served; its stream ends");
                                running.remove(&stream);
                                shared.coverage.lock().unwrap_or_else(|p| p.into_inner()).remove(&stream);
                            }
                            Ok((_, Err(e))) => {
                                tasks.abort_all();
                                return Err(e);
                            }
                            Err(e) => {
                                tasks.abort_all();
                                return Err(CaptureError::config(&name, format!("a stream task failed: {e}")));
                            }
                        }
                    }
                }
            }
        })
    }
}
