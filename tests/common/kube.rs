//! A throwaway Kubernetes API server: etcd and kube-apiserver 1.20.2 on random
//! loopback ports in a temp dir, TLS with a CA made here, a bearer token, stopped
//! and removed on `Drop`.
//!
//! - kube-apiserver: `$TIDEMARK_KUBE_APISERVER` (`.ci/run` builds it once with
//!   `.ci/kube-apiserver`), else the CI cache's copy when present;
//! - etcd (`etcd-server`) and etcdctl (`etcd-client`) from Debian.
//!
//! Objects are made through tidemark's own client (raw JSON): Debian's kubectl
//! (1.32) is too far from a 1.20 server to rely on.
//!
//! Missing binaries SKIP the test, except under `CI=true` (a failure).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ::tidemark::sandbox::{free_port, stop_child, wait_ready};

/// The kube-apiserver binary, or `None` after [`super::skip`].
pub fn apiserver_bin() -> Option<String> {
    if let Ok(p) = std::env::var("TIDEMARK_KUBE_APISERVER") {
        if Path::new(&p).exists() {
            return Some(p);
        }
        super::skip(&format!("TIDEMARK_KUBE_APISERVER={p} does not exist"));
        return None;
    }
    let cache =
        std::env::var("TIDEMARK_CI_CACHE").unwrap_or_else(|_| "/var/cache/tidemark-ci".into());
    let p = format!("{cache}/servers/kube-apiserver-1.20.2/kube-apiserver");
    if Path::new(&p).exists() {
        return Some(p);
    }
    super::skip("set TIDEMARK_KUBE_APISERVER to a kube-apiserver 1.20 binary (.ci/kube-apiserver builds one)");
    None
}

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A running etcd + kube-apiserver.
pub struct KubeServer {
    etcd: Child,
    apiserver: Child,
    dir: tempfile::TempDir,
    /// etcd's client port.
    pub etcd_port: u16,
    /// The API server's secure port.
    pub port: u16,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl KubeServer {
    /// Starts one; `None` (after SKIP) when a binary is missing. `extra` goes to
    /// kube-apiserver (`--watch-cache=false`).
    pub fn start(extra: &[&str]) -> Option<KubeServer> {
        let apiserver = apiserver_bin()?;
        for b in ["etcd", "etcdctl"] {
            if !have(b) {
                super::skip(&format!(
                    "`{b}` is not installed (.ci/deps --tests installs it)"
                ));
                return None;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("tidemark-kube-")
            .tempdir()
            .expect("temp dir");
        let d_buf = dir.path().to_path_buf();
        let d = d_buf.as_path();
        // A CA, a server certificate for 127.0.0.1, and the service-account key.
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=tidemark-test-ca",
            ],
        );
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=kube-apiserver",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
        openssl(d, &["genrsa", "-out", "sa.key", "2048"]);
        std::fs::write(
            d.join("tokens.csv"),
            "tidemark-test-token,admin,admin,system:masters\n",
        )
        .unwrap();

        let (etcd_port, peer_port, port) = (
            free_port().unwrap(),
            free_port().unwrap(),
            free_port().unwrap(),
        );
        let etcd_log = d.join("etcd.log");
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = Command::new("etcd")
            .args(["--data-dir", &d.join("etcd").display().to_string()])
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer_port}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer_port}"),
            ])
            .arg("--unsafe-no-fsync")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&etcd_log).unwrap())
            .spawn()
            .expect("spawn etcd");
        wait_ready(&mut etcd, "etcd", &etcd_log, || {
            Command::new("etcdctl")
                .args(["--endpoints", &client_url, "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|e| panic!("{e}"));

        let log = d.join("apiserver.log");
        let p = |f: &str| d.join(f).display().to_string();
        let mut child = Command::new(&apiserver)
            .args(["--etcd-servers", &client_url])
            .args([
                "--secure-port",
                &port.to_string(),
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            .args(["--insecure-port", "0", "--cert-dir", &p("certs")])
            .args([
                "--tls-cert-file",
                &p("server.crt"),
                "--tls-private-key-file",
                &p("server.key"),
            ])
            .args([
                "--token-auth-file",
                &p("tokens.csv"),
                "--authorization-mode",
                "AlwaysAllow",
            ])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args([
                "--service-account-key-file",
                &p("sa.key"),
                "--service-account-signing-key-file",
                &p("sa.key"),
            ])
            .args([
                "--disable-admission-plugins",
                "ServiceAccount",
                "--service-cluster-ip-range",
                "10.0.0.0/24",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn kube-apiserver");
        let server = |child: Child| KubeServer {
            etcd,
            apiserver: child,
            dir,
            etcd_port,
            port,
        };
        std::fs::write(
            d.join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: tidemark-test-token\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
                p("ca.crt")
            ),
        )
        .unwrap();
        // Ready once TLS answers on the port; then usable once the bootstrap
        // controller made the namespace `default`.
        let ready = wait_ready(&mut child, "kube-apiserver", &log, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let s = server(child);
        ready.unwrap_or_else(|e| panic!("{e}"));
        s.wait_for(
            || s.get("/api/v1/namespaces/default").is_ok(),
            "namespace default",
        );
        Some(s)
    }

    /// The kubeconfig file (token auth, the test CA).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `kubernetes://<kubeconfig>` with `query`.
    pub fn url(&self, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("kubernetes://{}{q}", self.kubeconfig().display())
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API as JSON through tidemark's own client: `method` on `path` with
    /// `body` (`content type`, JSON); the answer or the error's text.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&serde_json::Value, &str)>,
    ) -> Result<serde_json::Value, String> {
        let cluster = ::tidemark::connectors::kubernetes::config::ClusterRef {
            kubeconfig: self.kubeconfig(),
            context: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let t = ::tidemark::config::Timeouts::default();
            let kube = ::tidemark::connectors::kubernetes::client::Kube::connect(&cluster, &t)
                .await
                .map_err(|e| e.to_string())?;
            let body = body.map(|(v, c)| (serde_json::to_vec(v).unwrap(), c));
            kube.call(method, path, body, std::time::Duration::from_secs(30))
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// POST `obj` to collection `path`; panics on failure.
    pub fn create(&self, path: &str, obj: serde_json::Value) -> serde_json::Value {
        self.call("POST", path, Some((&obj, "application/json")))
            .unwrap_or_else(|e| panic!("create {path}: {e}"))
    }

    /// JSON merge patch of object `path`; panics on failure.
    pub fn patch(&self, path: &str, patch: serde_json::Value) -> serde_json::Value {
        self.call(
            "PATCH",
            path,
            Some((&patch, "application/merge-patch+json")),
        )
        .unwrap_or_else(|e| panic!("patch {path}: {e}"))
    }

    /// DELETE object `path`; panics on failure.
    pub fn delete(&self, path: &str) {
        self.call("DELETE", path, None)
            .unwrap_or_else(|e| panic!("delete {path}: {e}"));
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        self.call("GET", path, None)
    }

    /// Polls `ok` (with growing pauses, up to 60 s); panics naming `what`.
    pub fn wait_for(&self, mut ok: impl FnMut() -> bool, what: &str) {
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(20);
        while !ok() {
            assert!(
                start.elapsed().as_secs() < 60,
                "timed out waiting for {what}"
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// etcd's current revision.
    pub fn etcd_revision(&self) -> i64 {
        let out = Command::new("etcdctl")
            .args([
                "--endpoints",
                &format!("http://127.0.0.1:{}", self.etcd_port),
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("revision")
    }

    /// Compacts etcd's history up to its current revision: watches from older
    /// resourceVersions then fail with `410 Gone` (with the watch cache off).
    pub fn compact(&self) {
        let rev = self.etcd_revision();
        let out = Command::new("etcdctl")
            .args([
                "--endpoints",
                &format!("http://127.0.0.1:{}", self.etcd_port),
                "compact",
                &rev.to_string(),
            ])
            .output()
            .expect("etcdctl compact");
        assert!(
            out.status.success(),
            "etcdctl compact: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        stop_child(
            &mut self.apiserver,
            libc::SIGTERM,
            std::time::Duration::from_secs(5),
        );
        stop_child(
            &mut self.etcd,
            libc::SIGTERM,
            std::time::Duration::from_secs(5),
        );
    }
}
