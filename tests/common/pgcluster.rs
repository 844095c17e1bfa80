//! A PostgreSQL server with a chosen `pg_hba.conf` and settings, for the
//! replication-protocol tests (authentication methods, `wal_level`).

use std::time::Duration;

use tidemark::connectors::postgres::repl;

/// How to configure the server.
pub struct ClusterOptions {
    /// `wal_level`.
    pub wal_level: &'static str,
    /// Full pg_hba.conf contents.
    pub hba: Vec<&'static str>,
    /// Extra `name = value` settings.
    pub extra_conf: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_level: "logical",
            hba: vec![
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "host replication all 127.0.0.1/32 trust",
            ],
            extra_conf: Vec::new(),
        }
    }
}

/// A running server, stopped and removed on drop.
pub struct PgCluster {
    pg: super::Postgres,
    /// TCP port on 127.0.0.1.
    pub port: u16,
}

impl PgCluster {
    /// Starts the server with `opts` (pg_hba.conf is installed, then reloaded).
    pub async fn start(opts: ClusterOptions) -> PgCluster {
        let mut settings = vec![format!("wal_level={}", opts.wal_level)];
        settings.extend(opts.extra_conf.iter().map(|l| l.replace([' ', '\''], "")));
        let refs: Vec<&str> = settings.iter().map(String::as_str).collect();
        let pg = tokio::task::block_in_place(|| super::Postgres::start_with(&refs));
        std::fs::write(
            pg.data_dir().join("pg_hba.conf"),
            opts.hba.join("\n") + "\n",
        )
        .expect("write pg_hba.conf");
        let cluster = PgCluster { port: pg.port, pg };
        cluster
            .admin()
            .await
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .expect("reload");
        // Reload is asynchronous in the postmaster; give it a moment to re-read the file.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster
    }

    /// A superuser connection over the Unix socket (trusted).
    pub async fn admin(&self) -> tokio_postgres::Client {
        let info = format!(
            "host={} port={} user=postgres dbname=postgres",
            self.pg.data_dir().display(),
            self.port
        );
        let (client, conn) = tokio_postgres::connect(&info, tokio_postgres::NoTls)
            .await
            .expect("admin connect");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// A replication config for TCP on 127.0.0.1.
    pub fn config(&self, user: &str, password: Option<&str>) -> repl::Config {
        let mut c = repl::Config::new("127.0.0.1", user, "postgres");
        c.port = self.port;
        c.password = password.map(str::to_string);
        c.application_name = "tidemark-test".into();
        c.connect_timeout = Duration::from_secs(20);
        c
    }
}
