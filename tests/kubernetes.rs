//! Kubernetes capture, resume, relist, encrypted Secrets, Helm records, restore and
//! digests against a real kube-apiserver 1.20.2 (see tests/common/kube.rs).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tidemark::connectors::{self, KindOptions};
use tidemark::event::Payload;
use tidemark::journal::Journal;
use tidemark::time::Timestamp;

use common::kube::KubeServer;
use common::run::Run;

/// A Secret value that must never be found in the journal's files.
const SECRET: &str = "s3cr3t-hunter2-value";
const NS: &str = "/api/v1/namespaces";

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The source section: namespace `app`, CRDs, the key in a file.
fn source(server: &KubeServer, key_file: &Path) -> String {
    format!(
        "[[source]]\nname = \"k8s\"\nkind = \"kubernetes\"\nkubeconfig = \"{}\"\nnamespaces = [\"app\"]\ncluster_resources = [\"apiextensions.k8s.io/v1/customresourcedefinitions\"]\nsecrets_key_file = \"{}\"\ndiscovery_interval = \"1s\"\ncoverage_interval = \"1s\"\n",
        server.kubeconfig().display(),
        key_file.display()
    )
}

fn new_run(server: &KubeServer) -> Run {
    let run = Run::new("");
    let key_in = run.dir().join("secrets.key");
    std::fs::write(&key_in, "7f".repeat(32)).unwrap();
    std::fs::write(
        &run.config,
        format!(
            "[journal]\npath = \"journal\"\nsync = \"always\"\n\n{}",
            source(server, &key_in)
        ),
    )
    .unwrap();
    run
}

/// The digest of namespace `app` and the CRDs on `server`, as `tidemark digest`.
fn digest(server: &KubeServer, ns: &str) -> tidemark::digest::Digest {
    let url = server.url(&format!(
        "namespaces={ns}&cluster=apiextensions.k8s.io/v1/customresourcedefinitions"
    ));
    connectors::for_url(&url)
        .unwrap()
        .digest(&url, &KindOptions::default(), &Default::default())
        .unwrap()
}

/// Waits until the journal's coverage passes now (all changes made so far are
/// journaled); returns the coverage, a moment whose state is the server's now.
fn covered(run: &Run) -> Timestamp {
    let now = Timestamp::now().as_micros();
    let start = Instant::now();
    loop {
        if let Ok(j) = Journal::open_read_only(&run.dir().join("journal")) {
            if let Some(c) = j.source("k8s").ok().and_then(|s| s.stats.coverage_us) {
                if c > now {
                    return Timestamp::from_micros(c);
                }
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "coverage never passed now; log:\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every journaled Kubernetes event: (seq, type, resource, namespace/name, late).
fn events(run: &Run) -> Vec<(u64, String, String, String, bool)> {
    let j = Journal::open_read_only(&run.dir().join("journal")).unwrap();
    let id = j.source("k8s").unwrap().id;
    j.events(id, 1, u64::MAX)
        .map(|e| {
            let e = e.unwrap();
            let Some(Payload::Kubernetes(k)) = e.event.payload else {
                panic!("not a kube event")
            };
            (
                e.seq,
                k.event_type,
                k.resource,
                format!("{}/{}", k.namespace, k.name),
                k.observed_late,
            )
        })
        .collect()
}

/// A Helm 3 release record as the Secret driver stores it: the release JSON,
/// gzipped, base64, inside the Secret's own base64.
fn helm_record(rev: u64, status: &str, chart_version: &str) -> Value {
    use std::io::Write as _;
    let body = json!({
        "name": "web", "namespace": "app", "version": rev,
        "info": {"status": status, "description": "Upgrade complete"},
        "chart": {"metadata": {"name": "web", "version": chart_version, "appVersion": "1.2"}},
        "config": {"replicas": rev}, "manifest": "apiVersion: apps/v1\nkind: Deployment\n",
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).unwrap();
    let stored = b64(&gz.finish().unwrap());
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
        "metadata": {"name": format!("sh.helm.release.v1.web.v{rev}"),
                     "labels": {"name": "web", "owner": "helm", "status": status, "version": rev.to_string()}},
        "data": {"release": b64(stored.as_bytes())},
    })
}

fn helm_status(server: &KubeServer, rev: u64, status: &str) {
    server.patch(
        &format!("{NS}/app/secrets/sh.helm.release.v1.web.v{rev}"),
        json!({"metadata": {"labels": {"status": status}}}),
    );
}

/// The application at moment 1, part before capture starts, part after.
fn app_before_capture(s: &KubeServer) {
    s.create(
        NS,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
    );
    s.create(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": "widgets.example.com"},
               "spec": {"group": "example.com", "scope": "Namespaced",
                        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                        "versions": [{"name": "v1", "served": true, "storage": true,
                                      "schema": {"openAPIV3Schema": {"type": "object",
                                                 "x-kubernetes-preserve-unknown-fields": true}}}]}}),
    );
    s.create(
        &format!("{NS}/app/configmaps"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cfg", "labels": {"app": "web"}}, "data": {"mode": "a"}}),
    );
    // The annotation kubectl apply writes holds the data in clear: it must be sealed too.
    let data = json!({"password": b64(SECRET.as_bytes())});
    s.create(&format!("{NS}/app/secrets"), json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db", "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
            json!({"apiVersion": "v1", "kind": "Secret", "stringData": {"password": SECRET}}).to_string()}},
        "data": data}));
    s.create(
        &format!("{NS}/app/secrets"),
        helm_record(1, "deployed", "0.1.0"),
    );
}

fn app_after_capture(s: &KubeServer) {
    s.wait_for(
        || s.get("/apis/example.com/v1/namespaces/app/widgets").is_ok(),
        "CRD served",
    );
    s.create(
        "/apis/example.com/v1/namespaces/app/widgets",
        json!({"apiVersion": "example.com/v1",
        "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 1}}),
    );
    s.create(
        &format!("{NS}/app/serviceaccounts"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}}),
    );
    s.create("/apis/rbac.authorization.k8s.io/v1/namespaces/app/roles", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}));
    s.create("/apis/rbac.authorization.k8s.io/v1/namespaces/app/rolebindings", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": "app"}]}));
    let template = json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "registry.example/web:1.0"}]}});
    s.create("/apis/apps/v1/namespaces/app/deployments", json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}}));
    s.create("/apis/apps/v1/namespaces/app/statefulsets", json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"}, "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "registry.example/db:1"}]}}}}));
    s.create(
        &format!("{NS}/app/services"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    );
    s.create(
        &format!("{NS}/app/services"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-np"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 8080}]}}),
    );
    s.create(
        &format!("{NS}/app/services"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}}),
    );
    // Helm upgrade: revision 1 superseded, 2 deployed.
    helm_status(s, 1, "superseded");
    s.create(
        &format!("{NS}/app/secrets"),
        helm_record(2, "deployed", "0.2.0"),
    );
}

/// `diff` between moments 1 and 2 lists exactly the changes made, per object
/// with its fields, and the Helm revisions; no Secret value is shown.
fn assert_diff_1_2(run: &Run, t1: Timestamp, t2: Timestamp) {
    let (from, to) = (t1.to_rfc3339(), t2.to_rfc3339());
    let args = ["diff", "--source", "k8s", "--from", &from, "--to", &to];
    let out = run.cli(&[&args[..], &["--json"][..]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).expect("diff --json");
    assert_eq!(
        d["sources"][0]["kubernetes"],
        json!({
            "created": ["Secret app/sh.helm.release.v1.web.v3"],
            "deleted": ["Service app/web-np"],
            "changed": {
                "ConfigMap app/cfg": ["data.mode"],
                "Deployment app/web": ["spec.replicas"],
                "Secret app/db": ["data changed"],
                "Secret app/sh.helm.release.v1.web.v2": ["metadata.labels.status"],
                "Widget app/w1": ["spec.size"],
            },
            "helm": [
                {"release": "app/web", "revision": 2, "change": "status changed",
                 "status": "superseded", "was": "deployed", "chart": "web-0.2.0", "app_version": "1.2"},
                {"release": "app/web", "revision": 3, "change": "added",
                 "status": "deployed", "chart": "web-0.3.0", "app_version": "1.2"},
            ],
        }),
        "{d:#}"
    );
    let out = run.cli(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  changed Deployment app/web: spec.replicas",
        "  created Secret app/sh.helm.release.v1.web.v3",
        "  deleted Service app/web-np",
        "  helm app/web revision 3 added (deployed, chart web-0.3.0 app 1.2)",
        "  helm app/web revision 2 status changed (deployed -> superseded, chart web-0.2.0 app 1.2)",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    assert!(
        !text.contains(&b64(b"app")) && !text.contains(SECRET),
        "{text}"
    );
}

fn restore_json(run: &Run, at: Timestamp, target: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = run.restore("k8s", &at.to_rfc3339(), target, &args);
    assert!(
        out.status.success(),
        "restore at {at} into {target}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).expect("restore --json")
}

fn renamed(d: &tidemark::digest::Digest, to: &str) -> String {
    d.clone()
        .renamed(|n| n.replace("/app/", &format!("/{to}/")))
        .overall
}

fn deployed_revisions(s: &KubeServer, ns: &str) -> Vec<String> {
    let list = s
        .get(&format!(
            "{NS}/{ns}/secrets?labelSelector=owner%3Dhelm%2Cstatus%3Ddeployed"
        ))
        .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// Capture of an application, kill -9 and resume without relisting, restores at
/// three moments (another API server; other namespaces) with digests equal to the
/// source's, `--dry-run`, Helm records in `log` and `status`, and no Secret value in
/// the journal's files.
#[test]
fn kubernetes_capture_resume_restore() {
    let Some(src) = KubeServer::start(&[]) else {
        return;
    };
    let Some(other) = KubeServer::start(&[]) else {
        return;
    };
    app_before_capture(&src);
    let mut run = new_run(&src);
    run.start(&[]);
    app_after_capture(&src);
    let t1 = covered(&run);
    let d1 = digest(&src, "app");
    assert_eq!(d1.parts.len(), 14, "{:#?}", d1.part_lines());

    // Moment 2: a config change, a scale, a deleted Service, a Helm upgrade, new
    // Secret data.
    src.patch(
        &format!("{NS}/app/secrets/db"),
        json!({"data": {"user": b64(b"app")}}),
    );
    src.patch(
        &format!("{NS}/app/configmaps/cfg"),
        json!({"data": {"mode": "b"}}),
    );
    src.patch(
        "/apis/apps/v1/namespaces/app/deployments/web",
        json!({"spec": {"replicas": 3}}),
    );
    src.delete(&format!("{NS}/app/services/web-np"));
    src.patch(
        "/apis/example.com/v1/namespaces/app/widgets/w1",
        json!({"spec": {"size": 2}}),
    );
    helm_status(&src, 2, "superseded");
    src.create(
        &format!("{NS}/app/secrets"),
        helm_record(3, "deployed", "0.3.0"),
    );
    let t2 = covered(&run);
    let d2 = digest(&src, "app");
    assert_diff_1_2(&run, t1, t2);

    // kill -9, three changes while down, restart: exactly those three are journaled.
    run.kill9();
    let before = events(&run);
    src.patch(
        &format!("{NS}/app/configmaps/cfg"),
        json!({"data": {"mode": "c"}}),
    );
    src.create(
        &format!("{NS}/app/configmaps"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extra"}, "data": {"k": "v"}}),
    );
    src.delete(&format!("{NS}/app/secrets/db"));
    run.start(&[]);
    let t3 = covered(&run);
    let d3 = digest(&src, "app");
    let after = events(&run);
    let new: Vec<_> = after[before.len()..]
        .iter()
        .map(|e| (e.1.as_str(), e.3.as_str(), e.4))
        .collect();
    let mut sorted = new.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        vec![
            ("ADDED", "app/extra", false),
            ("DELETED", "app/db", false),
            ("MODIFIED", "app/cfg", false)
        ],
        "after restart: {new:?}"
    );
    assert!(
        !run.log().contains("listed"),
        "the restart relisted:\n{}",
        run.log()
    );
    assert!(after
        .iter()
        .all(|e| e.2 != "v1/events" && e.2 != "apps/v1/replicasets"));

    // Restores: moment 1 into the other API server, 2 and 3 into other namespaces.
    let r1 = restore_json(&run, t1, &other.url(""), &[]);
    assert_eq!(r1["digest"]["overall"], d1.overall, "moment 1: {r1:#}");
    assert_eq!(digest(&other, "app").overall, d1.overall);
    let r2 = restore_json(
        &run,
        t2,
        &src.url(""),
        &["--namespace-map", "app=app-2", "--force"],
    );
    assert_eq!(
        r2["digest"]["overall"],
        renamed(&d2, "app-2"),
        "moment 2: {r2:#}"
    );
    let r3 = restore_json(
        &run,
        t3,
        &src.url(""),
        &["--namespace-map", "app=app-3", "--force"],
    );
    assert_eq!(
        r3["digest"]["overall"],
        renamed(&d3, "app-3"),
        "moment 3: {r3:#}"
    );
    assert_ne!(d1.overall, d2.overall);
    assert_ne!(d2.overall, d3.overall);
    // Server-owned fields were stripped: the restored NodePort Service got its own port.
    let np = other.get(&format!("{NS}/app/services/web-np")).unwrap();
    assert!(np["spec"]["ports"][0]["nodePort"].as_i64().is_some());
    // Helm: exactly one deployed revision, the source's at each moment.
    assert_eq!(
        deployed_revisions(&other, "app"),
        vec!["sh.helm.release.v1.web.v2"]
    );
    assert_eq!(
        deployed_revisions(&src, "app-3"),
        vec!["sh.helm.release.v1.web.v3"]
    );

    // --dry-run of moment 3 into app-2 (which holds moment 2) shows the diff, changes nothing.
    let out = run.restore(
        "k8s",
        &t3.to_rfc3339(),
        &src.url(""),
        &["--namespace-map", "app=app-2", "--dry-run"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("update v1/configmaps/app-2/cfg: data.mode"),
        "{text}"
    );
    assert!(text.contains("create v1/configmaps/app-2/extra"), "{text}");
    assert!(
        text.contains("unchanged apps/v1/deployments/app-2/web"),
        "{text}"
    );
    assert_eq!(digest(&src, "app-2").overall, renamed(&d2, "app-2"));

    // log and status show the Helm release.
    let log = run.cli(&["log", "--source", "k8s"]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("helm release app/web revision 3 deployed chart web-0.3.0 app 1.2"),
        "{log}"
    );
    let status = run.cli(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("helm app/web: revisions 1 superseded, 2 superseded, 3 deployed"),
        "{status}"
    );

    // The Secret's value is in no file of the journal, in clear or base64.
    run.stop();
    let needles = [
        SECRET.as_bytes().to_vec(),
        b64(SECRET.as_bytes()).into_bytes(),
    ];
    let mut files = 0;
    for entry in walk(&run.dir().join("journal")) {
        let bytes = std::fs::read(&entry).unwrap();
        files += 1;
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == &n[..]),
                "{} holds the secret",
                entry.display()
            );
        }
    }
    assert!(files > 3);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// After `410 Gone` (etcd compacted past the checkpoint, watch cache off) capture
/// relists and journals exactly what changed while it was not watching, deletions
/// and a replaced object marked as observed late.
#[test]
fn kubernetes_gone_relists_and_journals_late_deletions() {
    let Some(src) = KubeServer::start(&["--watch-cache=false"]) else {
        return;
    };
    src.create(
        NS,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
    );
    let cm = |name: &str, v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": v}});
    for n in ["a", "b", "c", "keep"] {
        src.create(&format!("{NS}/app/configmaps"), cm(n, "1"));
    }
    // 1.20 serves CronJobs only in batch/v1beta1, not in batch's preferred v1:
    // discovery must find them there.
    src.create(
        "/apis/batch/v1beta1/namespaces/app/cronjobs",
        json!({"apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": "nightly"},
               "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                   "restartPolicy": "Never", "containers": [{"name": "job", "image": "registry.example/job:1"}]}}}}}}),
    );
    let mut run = new_run(&src);
    run.start(&[]);
    covered(&run);
    run.stop();
    let before = events(&run);
    assert!(
        before
            .iter()
            .any(|e| e.2 == "batch/v1beta1/cronjobs" && e.3 == "app/nightly"),
        "the CronJob was not captured: {before:?}"
    );
    src.delete(&format!("{NS}/app/configmaps/a"));
    src.patch(
        &format!("{NS}/app/configmaps/b"),
        json!({"data": {"v": "2"}}),
    );
    src.delete(&format!("{NS}/app/configmaps/c"));
    src.create(&format!("{NS}/app/configmaps"), cm("c", "new"));
    src.create(&format!("{NS}/app/configmaps"), cm("d", "1"));
    src.compact();
    run.start(&[]);
    let t = covered(&run);
    let d = digest(&src, "app");
    let after = events(&run);
    let mut new: Vec<_> = after[before.len()..]
        .iter()
        .filter(|e| e.2 == "v1/configmaps")
        .map(|e| (e.1.as_str(), e.3.as_str(), e.4))
        .collect();
    new.sort();
    assert_eq!(
        new,
        vec![
            ("ADDED", "app/c", true),
            ("ADDED", "app/d", true),
            ("DELETED", "app/a", true),
            ("DELETED", "app/c", true),
            ("MODIFIED", "app/b", true),
        ],
        "log:\n{}",
        run.log()
    );
    assert!(run.log().contains("410"), "{}", run.log());
    // Nothing else was journaled again (`keep` was unchanged), and the journal at
    // the moment equals the server.
    assert_eq!(after.len() - before.len(), 5, "{after:?}");
    let r = restore_json(&run, t, &src.url(""), &["--namespace-map", "app=app-r"]);
    assert_eq!(r["digest"]["overall"], renamed(&d, "app-r"), "{r:#}");
    assert!(src
        .get("/apis/batch/v1beta1/namespaces/app-r/cronjobs/nightly")
        .is_ok());
}

/// A source that captures Secrets without a key is refused by `config validate`,
/// naming both ways to give one.
#[test]
fn kubernetes_secrets_need_a_key() {
    let run = Run::new(
        "[[source]]\nname = \"k8s\"\nkind = \"kubernetes\"\nkubeconfig = \"/nonexistent\"\n",
    );
    let out = run.cli(&["config", "validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("secrets_key_file") && err.contains("secrets_key_env"),
        "{err}"
    );
}

/// The application of the transform and prune tests, in namespace `app`.
fn workloads(s: &KubeServer) {
    s.create(
        NS,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app"}}),
    );
    s.create(
        &format!("{NS}/app/configmaps"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"mode": "a"}}),
    );
    let pod = |app: &str| {
        json!({"metadata": {"labels": {"app": app}},
               "spec": {"initContainers": [{"name": "init", "image": format!("registry.a/{app}-init:1")}],
                        "containers": [{"name": app, "image": format!("registry.a/{app}:1.0")}]}})
    };
    s.create("/apis/apps/v1/namespaces/app/deployments", json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
        "template": pod("web")}}));
    s.create(
        "/apis/apps/v1/namespaces/app/daemonsets",
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "agent"}},
        "template": pod("agent")}}),
    );
    let claim = |name: &str| {
        json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"],
               "storageClassName": "slow", "resources": {"requests": {"storage": "1Gi"}}}})
    };
    s.create(
        "/apis/apps/v1/namespaces/app/statefulsets",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"}, "spec": {"replicas": 1, "serviceName": "db",
        "selector": {"matchLabels": {"app": "db"}}, "template": pod("db"),
        "volumeClaimTemplates": [claim("data")]}}),
    );
    let mut pvc = claim("shared");
    pvc["apiVersion"] = json!("v1");
    pvc["kind"] = json!("PersistentVolumeClaim");
    s.create(&format!("{NS}/app/persistentvolumeclaims"), pvc);
    let mut solo = pod("solo");
    solo["apiVersion"] = json!("v1");
    solo["kind"] = json!("Pod");
    solo["metadata"]["name"] = json!("solo");
    s.create(&format!("{NS}/app/pods"), solo);
}

/// `restore --json` that must fail: its stderr.
fn restore_fails(run: &Run, at: Timestamp, target: &str, extra: &[&str]) -> String {
    let out = run.restore("k8s", &at.to_rfc3339(), target, extra);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "restore {extra:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// The digest the restore's note gives for the journal at the moment, as restored.
fn noted_digest(r: &Value) -> String {
    let notes = r["applied"]["notes"].as_array().unwrap();
    let line = notes
        .iter()
        .filter_map(Value::as_str)
        .find_map(|n| n.strip_prefix(
                "journal digest at the moment as restored (namespaces mapped, transforms applied): ",
            ))
        .unwrap_or_else(|| panic!("no journal digest note: {r:#}"));
    line.to_string()
}

fn count(r: &Value, prefix: &str) -> u64 {
    r["applied"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0].as_str().unwrap().starts_with(prefix))
        .map_or(0, |c| c[1].as_u64().unwrap())
}

/// Every transform at once into another namespace, each one's effect on the live
/// objects, the summary's journal digest (transformed) equal to the target's; a
/// failing JSON-patch `test` and a bad path refuse before anything is changed.
#[test]
fn kubernetes_restore_transforms() {
    let Some(src) = KubeServer::start(&[]) else {
        return;
    };
    workloads(&src);
    let mut run = new_run(&src);
    run.start(&[]);
    let t = covered(&run);
    let d = digest(&src, "app");
    let rules = run.dir().join("rules.json");
    std::fs::write(
        &rules,
        json!({
            "ConfigMap": [{"op": "test", "path": "/data/mode", "value": "a"},
                          {"op": "replace", "path": "/data/mode", "value": "patched"}],
            "apps/v1/Deployment": [{"op": "add", "path": "/metadata/annotations/example.com~1patched",
                                    "value": "yes"}]
        })
        .to_string(),
    )
    .unwrap();
    let rules_arg = rules.display().to_string();
    let transforms = [
        "--namespace-map",
        "app=app-t",
        "--storage-class-map",
        "slow=fast",
        "--image-rewrite",
        "registry.a/=registry.b/mirror/",
        "--replicas",
        "web=3,*=2",
        "--add-labels",
        "restored-by=tidemark",
        "--add-annotations",
        "example.com/drill=yes",
        "--json-patch-file",
        rules_arg.as_str(),
    ];
    let r = restore_json(&run, t, &src.url(""), &transforms);

    let get = |path: &str| src.get(&format!("/api{path}")).unwrap();
    let apps = |path: &str| {
        src.get(&format!("/apis/apps/v1/namespaces/app-t/{path}"))
            .unwrap()
    };
    let (web, agent, db) = (
        apps("deployments/web"),
        apps("daemonsets/agent"),
        apps("statefulsets/db"),
    );
    let solo = get("/v1/namespaces/app-t/pods/solo");
    for (obj, app, tpl) in [
        (&web, "web", "/spec/template/spec"),
        (&agent, "agent", "/spec/template/spec"),
        (&db, "db", "/spec/template/spec"),
        (&solo, "solo", "/spec"),
    ] {
        let spec = obj.pointer(tpl).unwrap();
        assert_eq!(
            spec["containers"][0]["image"],
            format!("registry.b/mirror/{app}:1.0")
        );
        assert_eq!(
            spec["initContainers"][0]["image"],
            format!("registry.b/mirror/{app}-init:1")
        );
    }
    assert_eq!(web["spec"]["replicas"], 3);
    assert_eq!(db["spec"]["replicas"], 2);
    assert_eq!(
        db["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast"
    );
    let pvc = get("/v1/namespaces/app-t/persistentvolumeclaims/shared");
    assert_eq!(pvc["spec"]["storageClassName"], "fast");
    assert_eq!(web["metadata"]["annotations"]["example.com/patched"], "yes");
    let cfg = get("/v1/namespaces/app-t/configmaps/cfg");
    assert_eq!(cfg["data"]["mode"], "patched");
    for obj in [&web, &agent, &db, &solo, &pvc, &cfg] {
        assert_eq!(
            obj["metadata"]["labels"]["restored-by"], "tidemark",
            "{obj:#}"
        );
        assert_eq!(
            obj["metadata"]["annotations"]["example.com/drill"], "yes",
            "{obj:#}"
        );
    }
    // The source is as it was.
    assert_eq!(digest(&src, "app").overall, d.overall);
    // The summary compares the target with the journal's state transformed alike.
    let target = r["digest"]["overall"].as_str().unwrap();
    assert_eq!(noted_digest(&r), target, "{r:#}");
    assert_eq!(digest(&src, "app-t").overall, target);
    assert_ne!(renamed(&d, "app-t"), target);
    assert_eq!(count(&r, "objects transformed ("), 6, "{r:#}");

    // A failing `test` refuses, naming the object, rule and path; nothing changes,
    // neither in a new namespace nor over one that holds the earlier restore.
    std::fs::write(
        &rules,
        json!({"apps/v1/Deployment": [{"op": "replace", "path": "/spec/replicas", "value": 9},
                                       {"op": "test", "path": "/spec/replicas", "value": 7}]})
        .to_string(),
    )
    .unwrap();
    let patch = ["--json-patch-file", rules_arg.as_str()];
    for (map, force) in [("app=app-f", false), ("app=app-t", true)] {
        let mut args = vec!["--namespace-map", map];
        args.extend_from_slice(&patch);
        if force {
            args.push("--force");
        }
        let err = restore_fails(&run, t, &src.url(""), &args);
        let ns = map.trim_start_matches("app=");
        for want in [
            "rule `apps/v1/Deployment` operation #2 (test /spec/replicas)".to_string(),
            format!("on apps/v1/deployments/{ns}/web"),
            "the test wants 7, the object has 9".to_string(),
            "nothing was applied".to_string(),
        ] {
            assert!(err.contains(&want), "{want} not in {err}");
        }
    }
    assert!(src.get(&format!("{NS}/app-f")).is_err(), "app-f was made");
    assert_eq!(digest(&src, "app-t").overall, target);
    // A path that is not there.
    std::fs::write(
        &rules,
        json!({"ConfigMap": [{"op": "remove", "path": "/data/no~1such"}]}).to_string(),
    )
    .unwrap();
    let err = restore_fails(
        &run,
        t,
        &src.url(""),
        &[
            "--namespace-map",
            "app=app-f",
            "--json-patch-file",
            rules_arg.as_str(),
        ],
    );
    assert!(
        err.contains("rule `ConfigMap` operation #1 (remove /data/no~1such) on v1/configmaps/app-f/cfg: /data/no~1such: nothing at /data/no~1such"),
        "{err}"
    );
    assert!(src.get(&format!("{NS}/app-f")).is_err(), "app-f was made");
}

/// `--existing recreate` deletes and creates what differs (and only that);
/// `--prune true` shows in `--dry-run`, then deletes what the restored namespace
/// holds that the journal does not, and nothing outside it.
#[test]
fn kubernetes_restore_recreate_and_prune() {
    let Some(src) = KubeServer::start(&[]) else {
        return;
    };
    workloads(&src);
    let mut run = new_run(&src);
    run.start(&[]);
    let t = covered(&run);
    let d = digest(&src, "app");
    let url = src.url("");
    restore_json(&run, t, &url, &["--namespace-map", "app=app-r"]);
    let cfg_path = format!("{NS}/app-r/configmaps/cfg");
    let uid = |path: &str| src.get(path).unwrap()["metadata"]["uid"].clone();
    let web_path = "/apis/apps/v1/namespaces/app-r/deployments/web";
    let (cfg_uid, web_uid, ns_uid) = (uid(&cfg_path), uid(web_path), uid(&format!("{NS}/app-r")));
    // Another manager adds a key: an update (server-side apply) keeps it.
    src.patch(&cfg_path, json!({"data": {"extra": "x"}}));
    restore_json(&run, t, &url, &["--namespace-map", "app=app-r", "--force"]);
    assert_eq!(src.get(&cfg_path).unwrap()["data"]["extra"], "x");

    let recreate = ["--namespace-map", "app=app-r", "--existing", "recreate"];
    let mut args = recreate.to_vec();
    args.push("--dry-run");
    let out = run.restore("k8s", &t.to_rfc3339(), &url, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("recreate v1/configmaps/app-r/cfg: data.extra"),
        "{text}"
    );
    assert!(
        text.contains("unchanged apps/v1/deployments/app-r/web"),
        "{text}"
    );
    assert_eq!(src.get(&cfg_path).unwrap()["data"]["extra"], "x");
    let mut args = recreate.to_vec();
    args.push("--force");
    let r = restore_json(&run, t, &url, &args);
    assert_eq!(count(&r, "objects recreated"), 1, "{r:#}");
    let cfg = src.get(&cfg_path).unwrap();
    assert_ne!(cfg["metadata"]["uid"], cfg_uid);
    assert_eq!(cfg["data"], json!({"mode": "a"}));
    assert_eq!(uid(web_path), web_uid, "an unchanged object was recreated");
    assert_eq!(
        uid(&format!("{NS}/app-r")),
        ns_uid,
        "the namespace was recreated"
    );
    assert_eq!(r["digest"]["overall"], renamed(&d, "app-r"), "{r:#}");

    // Strays: two in app-r, one a controller owns, one in another namespace.
    let cm =
        |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    src.create(&format!("{NS}/app-r/configmaps"), cm("stray"));
    src.create(
        "/apis/apps/v1/namespaces/app-r/deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "stray-web"},
               "spec": {"selector": {"matchLabels": {"app": "s"}},
                        "template": {"metadata": {"labels": {"app": "s"}},
                                     "spec": {"containers": [{"name": "s", "image": "s:1"}]}}}}),
    );
    let mut owned = cm("owned");
    owned["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "Deployment",
        "name": "web", "uid": web_uid, "controller": true}]);
    src.create(&format!("{NS}/app-r/configmaps"), owned);
    src.create(
        NS,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}}),
    );
    src.create(&format!("{NS}/elsewhere/configmaps"), cm("stray"));

    let prune = ["--namespace-map", "app=app-r", "--prune", "true"];
    let mut args = prune.to_vec();
    args.push("--dry-run");
    let out = run.restore("k8s", &t.to_rfc3339(), &url, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deletes: Vec<&str> = text.lines().filter(|l| l.starts_with("delete")).collect();
    assert_eq!(
        deletes,
        vec![
            "delete (prune) apps/v1/deployments/app-r/stray-web",
            "delete (prune) v1/configmaps/app-r/stray"
        ],
        "{text}"
    );
    assert!(src.get(&format!("{NS}/app-r/configmaps/stray")).is_ok());
    let mut args = prune.to_vec();
    args.push("--force");
    let r = restore_json(&run, t, &url, &args);
    assert_eq!(count(&r, "objects pruned"), 2, "{r:#}");
    assert!(src.get(&format!("{NS}/app-r/configmaps/stray")).is_err());
    assert!(src
        .get("/apis/apps/v1/namespaces/app-r/deployments/stray-web")
        .is_err());
    assert!(src.get(&format!("{NS}/app-r/configmaps/owned")).is_ok());
    assert!(src.get(&format!("{NS}/elsewhere/configmaps/stray")).is_ok());
    assert_eq!(digest(&src, "app").overall, d.overall, "the source changed");
    src.delete(&format!("{NS}/app-r/configmaps/owned"));
    assert_eq!(digest(&src, "app-r").overall, renamed(&d, "app-r"));
}
