//! The harness itself: real servers start, answer, and leave nothing behind.

mod common;

use std::net::TcpStream;

use common::{Postgres, Redis};

#[test]
fn postgres_starts_with_logical_replication_and_cleans_up() {
    let pg = Postgres::start();
    assert_eq!(pg.psql("postgres", "SHOW wal_level"), "logical");
    pg.psql("postgres", "CREATE TABLE t (id int primary key, v text)");
    pg.psql("postgres", "INSERT INTO t VALUES (1, 'one'), (2, NULL)");
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM t WHERE v IS NULL"),
        "1"
    );
    let (port, data) = (pg.port, pg.data_dir());
    assert!(data.exists());
    drop(pg);
    assert!(!data.exists(), "data dir removed");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server stopped"
    );
}

#[test]
fn two_postgres_servers_run_side_by_side() {
    let (a, b) = (Postgres::start(), Postgres::start());
    assert_ne!(a.port, b.port);
    a.psql("postgres", "CREATE TABLE only_in_a (x int)");
    assert_eq!(
        b.psql(
            "postgres",
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"
        ),
        "0"
    );
}

#[test]
fn redis_starts_answers_and_cleans_up() {
    let r = Redis::start();
    let mut c = r.client();
    assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), "OK");
    assert_eq!(c.cmd(&["GET", "k"]).unwrap(), "v");
    assert_eq!(c.cmd(&["GET", "missing"]).unwrap(), "(nil)");
    assert!(c.cmd(&["NOSUCHCOMMAND"]).is_err());
    let role = c.cmd(&["ROLE"]).unwrap();
    assert!(role.starts_with("master"), "{role}");
    let port = r.port;
    drop(c);
    drop(r);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server stopped"
    );
}

#[test]
fn redis_with_a_password_refuses_anonymous_clients() {
    let r = Redis::start_with(&["--requirepass", "pw"]);
    let mut c = r.client();
    assert!(c.cmd(&["GET", "k"]).unwrap_err().starts_with("NOAUTH"));
    assert_eq!(c.cmd(&["AUTH", "pw"]).unwrap(), "OK");
}
