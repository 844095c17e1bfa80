//! TLS to PostgreSQL against a real server with `ssl=on`: a CA, a server certificate
//! for 127.0.0.1 (IP SAN) and localhost (DNS SAN) and a client certificate, all made
//! by the `openssl` tool in a temp dir. The server's pg_hba.conf accepts only TLS
//! (`hostssl ... cert` for the capture role, `hostnossl ... reject`), so a test that
//! passes used TLS on every path: SQL, replication and `pg_dump`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::pgcapture::{try_restore, Capture};
use common::Postgres;
use tidemark::config::SourceConfig;
use tidemark::connectors::postgres::conn::ConnInfo;
use tidemark::connectors::postgres::digest::digest_url;
use tidemark::connectors::postgres::repl::ReplicationConnection;
use tidemark::sandbox::PgSetup;

/// The role that logs in with its client certificate (CN = role).
const CERT_ROLE: &str = "tidemark_tls";
/// A role that logs in with SCRAM (over TLS only).
const SCRAM_ROLE: &str = "scram_tls";
const SCRAM_PASSWORD: &str = "Scr4m-over-TLS";

/// Certificates made with the `openssl` tool.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `None` (after a SKIP line; a failure under CI) without the `openssl` tool.
    fn make() -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            common::skip("the openssl command-line tool is missing (apt-get install openssl)");
            return None;
        }
        let pki = Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        pki.ca("ca", "tidemark test CA");
        pki.ca("other_ca", "some other CA");
        pki.leaf(
            "server",
            "tidemark-test-server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.leaf("client", CERT_ROLE, "extendedKeyUsage=clientAuth\n");
        Some(pki)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn new_key_and_csr(&self, name: &str, cn: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }

    fn ca(&self, name: &str, cn: &str) {
        self.new_key_and_csr(name, cn);
        std::fs::write(
            self.path(&format!("{name}.ext")),
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-signkey",
            &format!("{name}.key"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }

    fn leaf(&self, name: &str, cn: &str, ext: &str) {
        self.new_key_and_csr(name, cn);
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}"),
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            if name == "server" { "2" } else { "3" },
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.path(&format!("{name}.key")),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

/// A server that speaks only TLS (on 127.0.0.1 and 127.0.0.2, so that a host the
/// certificate does not name can be reached).
fn tls_server(pki: &Pki) -> Postgres {
    let (crt, key, ca) = (
        pki.read("server.crt"),
        pki.read("server.key"),
        pki.read("ca.crt"),
    );
    let hba = [
        "local all all trust",
        // The harness's psql (libpq, sslmode=prefer) as the superuser.
        "hostssl all postgres 127.0.0.0/8 trust",
        "hostssl all tidemark_tls 127.0.0.0/8 cert",
        "hostssl all scram_tls 127.0.0.0/8 scram-sha-256",
        "hostnossl all all 127.0.0.0/8 reject",
    ];
    let pg = Postgres::start_setup(&PgSetup {
        settings: &[
            "listen_addresses=127.0.0.1,127.0.0.2",
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
            "ssl_ca_file=ca.crt",
        ],
        hba: Some(&hba),
        files: &[("server.crt", &crt), ("server.key", &key), ("ca.crt", &ca)],
    });
    pg.psql(
        "postgres",
        &format!("CREATE ROLE {CERT_ROLE} SUPERUSER LOGIN; CREATE ROLE {SCRAM_ROLE} LOGIN REPLICATION PASSWORD '{SCRAM_PASSWORD}'"),
    );
    pg
}

/// A URL for `db` as the certificate role, `host`, and `query`.
fn url(pg: &Postgres, host: &str, db: &str, query: &str) -> String {
    format!("postgres://{CERT_ROLE}@{host}:{}/{db}?{query}", pg.port)
}

/// verify-full with the client certificate.
fn full(pki: &Pki) -> String {
    format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pki.path("ca.crt").display(),
        pki.path("client.crt").display(),
        pki.path("client.key").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_restore_and_digest_over_verify_full_with_a_client_certificate() {
    let Some(pki) = Pki::make() else { return };
    let pg = tls_server(&pki);
    pg.psql("postgres", "CREATE DATABASE app");
    pg.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100) g",
    );
    let source = url(&pg, "127.0.0.1", "app", &full(&pki));
    let cap = Capture::start(&source).await;
    pg.psql(
        "app",
        "INSERT INTO t SELECT g, 'streamed' FROM generate_series(101, 200) g; UPDATE t SET v = 'changed' WHERE id <= 10",
    );
    let end = cap.moment().await;
    // The walsender serving the capture is encrypted, as the certificate role.
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.usename = '{CERT_ROLE}' AND s.ssl AND s.client_dn = '/CN={CERT_ROLE}'")
        ),
        "1"
    );
    let expected = digest_url(&source).await.unwrap();
    let journal = cap.stop().await;

    pg.psql("postgres", "CREATE DATABASE restored");
    let target = url(&pg, "localhost", "restored", &full(&pki));
    try_restore(&journal, end, &target).await.unwrap();
    assert_eq!(digest_url(&target).await.unwrap(), expected);
    assert_eq!(
        pg.psql("restored", "SELECT count(*) FROM t WHERE v = 'changed'"),
        "10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_encrypts_and_scram_works_over_tls() {
    let Some(pki) = Pki::make() else { return };
    let pg = tls_server(&pki);
    let require = format!(
        "postgres://{SCRAM_ROLE}:{SCRAM_PASSWORD}@127.0.0.1:{}/postgres?sslmode=require",
        pg.port
    );
    let conn = ConnInfo::parse(&require).unwrap();
    let client = conn.connect().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the SQL connection is encrypted");
    // The replication connection: SCRAM without channel binding, inside TLS.
    let mut repl = ReplicationConnection::connect(&conn.replication())
        .await
        .unwrap();
    assert!(repl.is_tls());
    repl.identify_system().await.unwrap();
    repl.close().await;
    // `require` with a CA checks the chain (libpq): a CA that did not sign fails.
    let other = format!(
        "{require}&sslrootcert={}",
        pki.path("other_ca.crt").display()
    );
    let e = ConnInfo::parse(&other)
        .unwrap()
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("failed verification under sslmode=require"),
        "{e}"
    );
    assert!(!e.contains(SCRAM_PASSWORD), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_wrong_host_name_and_an_untrusted_ca() {
    let Some(pki) = Pki::make() else { return };
    let pg = tls_server(&pki);
    let password = "never-in-errors";
    let with_pw = |host: &str, query: String| {
        format!(
            "postgres://{CERT_ROLE}:{password}@{host}:{}/postgres?{query}",
            pg.port
        )
    };
    // 127.0.0.2 reaches the server, but the certificate names 127.0.0.1 and localhost.
    let wrong_host = with_pw("127.0.0.2", full(&pki));
    let untrusted = with_pw(
        "127.0.0.1",
        full(&pki).replace(
            &pki.path("ca.crt").display().to_string(),
            &pki.path("other_ca.crt").display().to_string(),
        ),
    );
    // The server sends its CA along (it is in ssl_ca_file), so an unknown CA reads
    // as a self-signed one in the chain; without it, as a missing issuer.
    let cases: [(&str, &[&str]); 2] = [
        (&wrong_host, &["IP address mismatch"]),
        (
            &untrusted,
            &[
                "self-signed certificate in certificate chain",
                "unable to get local issuer certificate",
            ],
        ),
    ];
    for (url, why) in cases {
        let conn = ConnInfo::parse(url).unwrap();
        let sql = conn.connect().await.unwrap_err().to_string();
        let repl = ReplicationConnection::connect(&conn.replication())
            .await
            .unwrap_err()
            .to_string();
        for e in [sql, repl] {
            assert!(e.contains(&conn.display), "names the URL: {e}");
            assert!(
                e.contains("***") && !e.contains(password),
                "password masked: {e}"
            );
            assert!(e.contains("sslmode=verify-full"), "{e}");
            assert!(why.iter().any(|w| e.contains(w)), "says why: {e}");
            assert!(e.contains("sslrootcert="), "says what to check: {e}");
        }
    }
    // The same host by its DNS name verifies.
    let by_name = url(&pg, "localhost", "postgres", &full(&pki));
    ConnInfo::parse(&by_name).unwrap().connect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_connections_are_refused_and_plain_servers_fail_under_require() {
    let Some(pki) = Pki::make() else { return };
    let pg = tls_server(&pki);
    // sslmode=disable reaches pg_hba's `hostnossl ... reject`: TLS was what let the
    // other tests in.
    let plain = url(&pg, "127.0.0.1", "postgres", "sslmode=disable");
    let conn = ConnInfo::parse(&plain).unwrap();
    let e = conn.connect().await.unwrap_err().to_string();
    assert!(e.contains("no encryption"), "{e}");
    let e = ReplicationConnection::connect(&conn.replication())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no encryption"), "{e}");

    // A server without TLS: prefer falls back to plain, require and verify-* fail
    // naming the URL and the mode.
    let no_tls = Postgres::start();
    let base = format!(
        "postgres://postgres:pw-hidden@127.0.0.1:{}/postgres",
        no_tls.port
    );
    let prefer = ConnInfo::parse(&format!("{base}?sslmode=prefer")).unwrap();
    prefer.connect().await.unwrap();
    ReplicationConnection::connect(&prefer.replication())
        .await
        .unwrap()
        .close()
        .await;
    for query in ["sslmode=require".to_string(), full(&pki)] {
        let conn = ConnInfo::parse(&format!("{base}?{query}")).unwrap();
        let mode = query.split('&').next().unwrap().to_string();
        let sql = conn.connect().await.unwrap_err().to_string();
        let repl = ReplicationConnection::connect(&conn.replication())
            .await
            .unwrap_err()
            .to_string();
        for e in [sql, repl] {
            assert!(e.contains(&conn.display) && !e.contains("pw-hidden"), "{e}");
            assert!(
                e.contains("does not accept TLS") && e.contains(&mode),
                "{e}"
            );
        }
    }
}

#[test]
fn the_url_parameters_are_checked_when_the_config_loads() {
    let parse = |url: &str| {
        SourceConfig::parse_one(
            "app",
            "postgres",
            toml::from_str(&format!("url = {url:?}")).unwrap(),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let e = parse("postgres://u:secret@h/db?sslmode=verify");
    assert!(
        e.contains("source")
            && e.contains("url")
            && e.contains("disable, prefer, require, verify-ca, verify-full"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
    let e = parse("postgres://u@h/db?sslmode=verify-ca");
    assert!(e.contains("sslrootcert"), "{e}");
    let missing = Path::new("/nonexistent/tidemark/ca.pem");
    let e = parse(&format!(
        "postgres://u@h/db?sslmode=verify-full&sslrootcert={}",
        missing.display()
    ));
    assert!(
        e.contains("sslrootcert=/nonexistent/tidemark/ca.pem cannot be read"),
        "{e}"
    );
}
