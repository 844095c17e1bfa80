//! Connection settings from a `postgres://` URL, for SQL and replication connections.

use std::time::Duration;

use super::repl;
use super::tls::{self, SslMode, TlsSettings};
use super::PgError;
use crate::config::{redact_url, Timeouts};

/// A PostgreSQL server and database, parsed from a URL. `Debug` hides the password.
#[derive(Clone)]
pub struct ConnInfo {
    sql: tokio_postgres::Config,
    /// Host (TCP) or socket directory.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role.
    pub user: String,
    password: Option<String>,
    /// Database.
    pub dbname: String,
    /// The URL with the password masked.
    pub display: String,
    /// How long to wait for the server.
    pub timeouts: Timeouts,
    /// `sslmode` and its files, for all three paths (SQL, replication, `pg_dump`).
    tls: TlsSettings,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl ConnInfo {
    /// Parses `postgres://user:password@host:port/dbname`, with libpq's `sslmode`,
    /// `sslrootcert`, `sslcert` and `sslkey` in the query (no file is read yet).
    pub fn parse(url: &str) -> Result<ConnInfo, PgError> {
        let display = redact_url(url);
        let (mut tls, url) = TlsSettings::from_url(url).map_err(|error| PgError::Tls {
            target: display.clone(),
            error,
        })?;
        let url = url.as_str();
        let mut sql: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| PgError::BadUrl {
                    url: display.clone(),
                    // The parser's message quotes no part of the URL.
                    detail: e.to_string().replace(url, &display),
                })?;
        if !url.contains("://") {
            // A `key=value` string: tokio-postgres read its sslmode.
            let mode = match sql.get_ssl_mode() {
                tokio_postgres::config::SslMode::Disable => SslMode::Disable,
                tokio_postgres::config::SslMode::Require => SslMode::Require,
                _ => SslMode::Prefer,
            };
            tls = TlsSettings::new(mode, None, None, None).map_err(|error| PgError::Tls {
                target: display.clone(),
                error,
            })?;
        }
        sql.ssl_mode(match tls.mode() {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let host = match sql.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        if sql.get_hosts().is_empty() {
            sql.host("localhost");
        }
        let port = sql.get_ports().first().copied().unwrap_or(5432);
        let user = sql.get_user().unwrap_or("postgres").to_string();
        if sql.get_user().is_none() {
            sql.user(&user);
        }
        let dbname = sql.get_dbname().unwrap_or(&user).to_string();
        let password = sql
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        sql.application_name("tidemark");
        let timeouts = Timeouts::default();
        sql.connect_timeout(timeouts.connect);
        sql.keepalives_idle(Duration::from_secs(30));
        Ok(ConnInfo {
            timeouts,
            sql,
            host,
            port,
            user,
            password,
            dbname,
            display,
            tls,
        })
    }

    /// The TLS settings.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// The same server with `timeouts`.
    pub fn with_timeouts(mut self, timeouts: &Timeouts) -> ConnInfo {
        self.timeouts = *timeouts;
        self.sql.connect_timeout(timeouts.connect);
        self
    }

    /// The same server with another database.
    pub fn with_dbname(&self, dbname: &str) -> ConnInfo {
        let mut c = self.clone();
        c.sql.dbname(dbname);
        c.dbname = dbname.to_string();
        // The query (sslrootcert=/path/...) holds slashes of its own.
        let (base, query) = c
            .display
            .split_at(c.display.find('?').unwrap_or(c.display.len()));
        c.display = match base.rsplit_once('/') {
            Some((head, _))
                if head.contains("://") && head.len() > head.find("://").unwrap_or(0) + 3 =>
            {
                format!("{head}/{dbname}{query}")
            }
            _ => c.display.clone(),
        };
        c
    }

    /// The password, for child processes (`PGPASSWORD`), never for display.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Settings for a `replication=database` connection.
    pub fn replication(&self) -> repl::Config {
        let mut c = repl::Config::new(self.host.clone(), self.user.clone(), self.dbname.clone());
        c.port = self.port;
        c.password = self.password.clone();
        c.connect_timeout = self.timeouts.connect;
        c.tls = self.tls.clone();
        c.server = Some(self.display.clone());
        c
    }

    /// Opens an SQL connection (its driver runs on a spawned task) with the session
    /// settings tidemark relies on for stable text values. The whole of it (TCP,
    /// startup, authentication, settings) is bounded by the connect timeout: a
    /// server that accepts TCP and never answers fails instead of hanging.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        let connecting = async {
            let client = match self.tls.mode() {
                SslMode::Disable => self.open(tokio_postgres::NoTls).await?,
                _ => {
                    let tls = tls::sql::MakeTls::new(&self.tls).map_err(|error| PgError::Tls {
                        target: self.display.clone(),
                        error,
                    })?;
                    self.open(tls).await?
                }
            };
            client
                .batch_execute(&format!("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3; {SESSION_ENCODING}"))
                .await
                .map_err(|e| PgError::query(&self.display, &e))?;
            Ok(client)
        };
        self.bounded("to a connection attempt", self.timeouts.connect, connecting)
            .await
    }

    /// Connects with `tls` and spawns the connection's driver.
    async fn open<T>(&self, tls: T) -> Result<tokio_postgres::Client, PgError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = self
            .sql
            .connect(tls)
            .await
            .map_err(|e| describe_connect_error(&self.display, &self.tls, &e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// `work` bounded by `after`; a timeout is [`PgError::Timeout`] naming `what`.
    pub async fn bounded<T>(
        &self,
        what: &str,
        after: Duration,
        work: impl std::future::Future<Output = Result<T, PgError>>,
    ) -> Result<T, PgError> {
        match tokio::time::timeout(after, work).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Timeout {
                target: self.display.clone(),
                what: what.to_string(),
                after,
            }),
        }
    }

    /// Environment for `pg_dump`/`psql` children: never put the password in argv.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
        ];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        env.extend(self.tls.child_env());
        env
    }
}

/// Sets the session's `client_encoding` to the encoding of journaled text: UTF-8
/// (the server converts), except in a `SQL_ASCII` database, whose bytes are carried
/// as stored (the server cannot convert them, and refuses to send or take bytes
/// above 0x7F as UTF-8).
pub const SESSION_ENCODING: &str = "SELECT set_config('client_encoding', CASE current_setting('server_encoding') WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END, false)";

/// A server error's message (with its hint) or the client error.
pub fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(h) => format!("{} ({h})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

fn describe_connect_error(display: &str, tls: &TlsSettings, e: &tokio_postgres::Error) -> PgError {
    if let Some(error) = tls::sql::from_connect_error(e, tls) {
        return PgError::Tls {
            target: display.to_string(),
            error,
        };
    }
    if let Some(db) = e.as_db_error() {
        let class28 = db.code().code().starts_with("28");
        if db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD || class28 {
            return PgError::Auth {
                target: display.to_string(),
                detail: if db.code() == &tokio_postgres::error::SqlState::INVALID_PASSWORD {
                    "password authentication failed".to_string()
                } else {
                    db.message().to_string()
                },
            };
        }
        return PgError::query(display, e);
    }
    PgError::Connect {
        target: display.to_string(),
        detail: e.to_string(),
    }
}
