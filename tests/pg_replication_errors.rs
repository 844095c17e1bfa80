//! Authentication methods and operator-facing errors against a real
//! PostgreSQL 15.

mod common;

use common::pgcluster::{ClusterOptions, PgCluster};
use tidemark::connectors::postgres::repl::{Error, ReplicationConnection, SnapshotAction};

fn scram_cluster_options() -> ClusterOptions {
    ClusterOptions {
        hba: vec![
            "local all all trust",
            "host all md5user 127.0.0.1/32 md5",
            "host all pwuser 127.0.0.1/32 password",
            "host all all 127.0.0.1/32 scram-sha-256",
            "host replication all 127.0.0.1/32 scram-sha-256",
        ],
        extra_conf: vec!["password_encryption = 'scram-sha-256'".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_authentication_methods() {
    let pg = PgCluster::start(scram_cluster_options()).await;
    let admin = pg.admin().await;
    admin
        .batch_execute(
            "CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 'Scr4m-s3cret';
             CREATE ROLE norepl LOGIN PASSWORD 'plain-user-pw';
             CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'clear-pw';
             SET password_encryption = 'md5';
             CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5-pw';",
        )
        .await
        .expect("roles");
    let stored: String = admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'scramuser'",
            &[],
        )
        .await
        .expect("authid")
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"));

    // SCRAM-SHA-256.
    let mut conn = ReplicationConnection::connect(&pg.config("scramuser", Some("Scr4m-s3cret")))
        .await
        .expect("scram login");
    let res = conn
        .simple_query("SELECT current_user")
        .await
        .expect("query");
    assert_eq!(res[0].rows[0][0].as_deref(), Some("scramuser"));
    conn.identify_system().await.expect("identify");
    conn.close().await;

    // MD5 and cleartext.
    for (user, pw) in [("md5user", "md5-pw"), ("pwuser", "clear-pw")] {
        let mut conn = ReplicationConnection::connect(&pg.config(user, Some(pw)))
            .await
            .unwrap_or_else(|e| panic!("{user} login: {e}"));
        conn.identify_system().await.expect("identify");
    }

    // Wrong password: a clear error that never echoes the password.
    for user in ["scramuser", "md5user", "pwuser"] {
        let err = ReplicationConnection::connect(&pg.config(user, Some("Wrong-Guess-123")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::WrongPassword { .. }),
            "{user}: {err:?}"
        );
        let text = format!("{err} {err:?}");
        assert!(text.contains("password authentication failed"), "{text}");
        assert!(text.contains(user), "{text}");
        assert!(!text.contains("Wrong-Guess-123"), "password leaked: {text}");
    }
    let cfg = pg.config("scramuser", Some("Scr4m-s3cret"));
    assert!(!format!("{cfg:?}").contains("Scr4m-s3cret"));

    // No password configured.
    let err = ReplicationConnection::connect(&pg.config("scramuser", None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PasswordRequired { .. }), "{err:?}");

    // Role without REPLICATION.
    let err = ReplicationConnection::connect(&pg.config("norepl", Some("plain-user-pw")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ReplicationNotPermitted { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("ALTER ROLE \"norepl\" REPLICATION"),
        "{err}"
    );

    // Unknown role: the server answers like a wrong password (no user enumeration).
    let err = ReplicationConnection::connect(&pg.config("ghost", Some("x")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongPassword { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_gives_clear_error() {
    let pg = PgCluster::start(ClusterOptions {
        wal_level: "replica",
        ..Default::default()
    })
    .await;
    let mut conn = ReplicationConnection::connect(&pg.config("postgres", None))
        .await
        .expect("connect works with wal_level=replica");
    let err = conn
        .create_replication_slot("tm_slot", false, SnapshotAction::Export)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WalLevelNotLogical { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("wal_level = logical"), "{text}");
    assert!(text.contains("postgresql.conf"), "{text}");
    assert!(text.contains("restart"), "{text}");
    // The connection is still usable after the error.
    conn.identify_system().await.expect("identify after error");
}

#[tokio::test]
async fn unreachable_host_is_reported() {
    // Port 1: privileged, nothing listens there. (A port freed by a dropped listener
    // can be taken meanwhile by a server another test starts.)
    let port = 1;
    let mut cfg = tidemark::connectors::postgres::repl::Config::new("127.0.0.1", "u", "db");
    cfg.port = port;
    cfg.password = Some("never-shown".into());
    let err = ReplicationConnection::connect(&cfg).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("never-shown"));
}
