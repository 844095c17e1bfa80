//! Connecting, authenticating and running simple queries and replication
//! commands on a `replication=database` connection.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use postgres_protocol::message::frontend;
use tokio::net::TcpStream;

use crate::connectors::postgres::repl::error::Error;
use crate::connectors::postgres::repl::lsn::Lsn;
use crate::connectors::postgres::repl::stream::{ReplicationOptions, ReplicationStream};
use crate::connectors::postgres::repl::transport;
use crate::connectors::postgres::repl::wire::{parse_error_fields, BodyReader, Framed};
use crate::connectors::postgres::tls::TlsSettings;

/// Connection settings for [`ReplicationConnection::connect`].
///
/// Guarantees: the `Debug` output never shows the password.
#[derive(Clone)]
pub struct Config {
    /// Host name or IP address (TCP only); under `verify-full` the server's
    /// certificate must name it.
    pub host: String,
    /// TCP port, usually 5432.
    pub port: u16,
    /// Role to log in as; it needs the `REPLICATION` attribute (or superuser).
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<String>,
    /// Database whose changes are decoded.
    pub database: String,
    /// `application_name`, visible in `pg_stat_replication`.
    pub application_name: String,
    /// Limit for TCP connect, TLS handshake and authentication.
    pub connect_timeout: Duration,
    /// `sslmode` and its files (see [`TlsSettings`]).
    pub tls: TlsSettings,
    /// How errors name the server (the URL, password masked); `host:port` if `None`.
    pub server: Option<String>,
}

impl Config {
    /// Creates a config with port 5432, no password, application name
    /// `tidemark`, a 30 second connect timeout and libpq's default
    /// `sslmode=prefer` (TLS when the server offers it, certificate unchecked).
    pub fn new(
        host: impl Into<String>,
        user: impl Into<String>,
        database: impl Into<String>,
    ) -> Self {
        Config {
            host: host.into(),
            port: 5432,
            user: user.into(),
            password: None,
            database: database.into(),
            application_name: "tidemark".to_string(),
            connect_timeout: Duration::from_secs(30),
            tls: TlsSettings::default(),
            server: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The result of one statement run through [`ReplicationConnection::simple_query`].
///
/// Guarantees: values are the server's text representation, `None` for SQL
/// NULL; every row has exactly `columns.len()` entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names from the row description (empty for statements without rows).
    pub columns: Vec<String>,
    /// Rows in the order the server sent them.
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag, e.g. `SELECT 1` or `CREATE_REPLICATION_SLOT`.
    pub command_tag: String,
}

impl QueryResult {
    /// Returns the value of column `name` in row `row`, or `None` if the row
    /// or column does not exist or the value is NULL.
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let col = self.columns.iter().position(|c| c == name)?;
        self.rows.get(row)?.get(col)?.as_deref()
    }
}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// Unique cluster identifier (decimal text, a 64-bit number).
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// Database connected to (`None` on a physical replication connection).
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` should do with the snapshot of the slot's
/// consistent point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// `EXPORT_SNAPSHOT`: export it under a name usable with
    /// `SET TRANSACTION SNAPSHOT` from another connection until this
    /// connection runs its next command.
    Export,
    /// `NOEXPORT_SNAPSHOT`: do not export it.
    NoExport,
    /// `USE_SNAPSHOT`: make it the snapshot of the current transaction on this
    /// connection (which must be inside `BEGIN ISOLATION LEVEL REPEATABLE READ`
    /// with no query run yet).
    Use,
}

/// Result of `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Name of the new slot.
    pub slot_name: String,
    /// First LSN from which streaming yields changes; everything committed
    /// before it is visible in the snapshot.
    pub consistent_point: Lsn,
    /// Exported snapshot name (only with [`SnapshotAction::Export`]).
    pub snapshot_name: Option<String>,
    /// Output plugin name (`pgoutput`).
    pub output_plugin: Option<String>,
}

/// A logged-in `replication=database` connection.
///
/// Guarantees: after every successful method return the connection is idle
/// (the server sent `ReadyForQuery`) and can run the next command. If a method
/// returns [`Error::Io`], [`Error::Closed`] or [`Error::Protocol`] the
/// connection must be dropped. It is not `Clone`; one command runs at a time.
pub struct ReplicationConnection {
    framed: Framed,
    user: String,
    parameters: HashMap<String, String>,
    backend_pid: Option<i32>,
    streamed: bool,
}

impl fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("user", &self.user)
            .field("backend_pid", &self.backend_pid)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Connects over TCP, negotiates TLS as `config.tls` asks (SSLRequest, then
    /// the handshake), sends the startup message with
    /// `replication=database` and authenticates (trust, cleartext password,
    /// MD5 or SCRAM-SHA-256 without channel binding).
    ///
    /// The session is started with `client_encoding=UTF8`, `DateStyle=ISO`,
    /// `TimeZone=UTC` and `extra_float_digits=3`, so pgoutput text values are
    /// UTF-8 and stable across server configurations; a `SQL_ASCII` database's
    /// session is then switched to `SQL_ASCII`, so its text arrives as stored.
    ///
    /// Errors: [`Error::Unreachable`] if TCP fails, [`Error::ConnectTimeout`]
    /// if `config.connect_timeout` elapses, [`Error::WrongPassword`],
    /// [`Error::PasswordRequired`], [`Error::LoginRejected`],
    /// [`Error::ReplicationNotPermitted`], [`Error::NoWalSenders`] or
    /// [`Error::UnsupportedAuth`] for login failures, [`Error::Tls`] when TLS is
    /// required and refused or the handshake or certificate check fails.
    pub async fn connect(config: &Config) -> Result<ReplicationConnection, Error> {
        let fut = Self::connect_inner(config);
        match tokio::time::timeout(config.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout {
                host: config.host.clone(),
                port: config.port,
                seconds: config.connect_timeout.as_secs(),
            }),
        }
    }

    async fn connect_inner(config: &Config) -> Result<ReplicationConnection, Error> {
        let stream = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|source| Error::Unreachable {
                host: config.host.clone(),
                port: config.port,
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let stream = transport::negotiate(stream, config).await?;
        let mut conn = ReplicationConnection {
            framed: Framed::new(stream),
            user: config.user.clone(),
            parameters: HashMap::new(),
            backend_pid: None,
            streamed: false,
        };
        let params = [
            ("user", config.user.as_str()),
            ("database", config.database.as_str()),
            ("replication", "database"),
            ("application_name", config.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("extra_float_digits", "3"),
        ];
        frontend::startup_message(params.iter().copied(), &mut conn.framed.write_buf)?;
        conn.framed.flush().await?;
        conn.authenticate(config.password.as_deref()).await?;
        conn.wait_ready_after_auth().await?;
        if conn.parameter("server_encoding") == Some("SQL_ASCII") {
            // The server validates what it sends as UTF-8 and would refuse the
            // stored bytes above 0x7F; in SQL_ASCII they pass as they are.
            conn.simple_query("SET client_encoding = 'SQL_ASCII'")
                .await?;
        }
        Ok(conn)
    }

    async fn authenticate(&mut self, password: Option<&str>) -> Result<(), Error> {
        crate::connectors::postgres::repl::auth::authenticate(
            &mut self.framed,
            &self.user,
            password,
        )
        .await
    }

    async fn wait_ready_after_auth(&mut self) -> Result<(), Error> {
        loop {
            let msg = self.framed.read_message().await?;
            match msg.tag {
                b'S' => {
                    let mut r = BodyReader::new(&msg.body, "ParameterStatus");
                    let k = r.cstr()?;
                    let v = r.cstr()?;
                    self.parameters.insert(k, v);
                }
                b'K' => {
                    let mut r = BodyReader::new(&msg.body, "BackendKeyData");
                    self.backend_pid = Some(r.i32()?);
                }
                b'N' => {}
                b'Z' => return Ok(()),
                b'E' => {
                    return Err(Error::from_server(
                        parse_error_fields(&msg.body),
                        &self.user,
                    ))
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message '{}' during startup",
                        other as char
                    )))
                }
            }
        }
    }

    /// Returns a run-time parameter reported by the server at startup
    /// (e.g. `server_version`), if it was reported.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server process id of this connection's walsender, if reported.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Whether the connection is encrypted (TLS).
    pub fn is_tls(&self) -> bool {
        self.framed.is_tls()
    }

    /// The role this connection logged in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub(crate) fn framed(&mut self) -> &mut Framed {
        &mut self.framed
    }

    /// Runs `query` with the simple query protocol and returns one
    /// [`QueryResult`] per statement that produced rows or a command tag.
    ///
    /// Works for replication commands (`IDENTIFY_SYSTEM`, ...) and, on a
    /// `replication=database` connection, for ordinary SQL. If any statement
    /// fails, the server error is returned (classified like login errors)
    /// after the connection is back to idle, so it stays usable. COPY
    /// statements and `START_REPLICATION` are rejected with
    /// [`Error::Protocol`] and leave the connection unusable; use
    /// [`ReplicationConnection::start_replication`] instead.
    pub async fn simple_query(&mut self, query: &str) -> Result<Vec<QueryResult>, Error> {
        if query.contains('\0') {
            return Err(Error::InvalidArgument("query contains a NUL byte".into()));
        }
        frontend::query(query, &mut self.framed.write_buf)?;
        self.framed.flush().await?;
        let mut results = Vec::new();
        let mut current: Option<QueryResult> = None;
        let mut error = None;
        loop {
            let msg = self.framed.read_message().await?;
            let mut r = BodyReader::new(&msg.body, "query response");
            match msg.tag {
                b'T' => {
                    if let Some(c) = current.take() {
                        results.push(c);
                    }
                    let n = r.i16()?;
                    let mut columns = Vec::with_capacity(n.max(0) as usize);
                    for _ in 0..n {
                        columns.push(r.cstr()?);
                        r.bytes(18)?;
                    }
                    current = Some(QueryResult {
                        columns,
                        ..Default::default()
                    });
                }
                b'D' => {
                    let res = current.get_or_insert_with(QueryResult::default);
                    let n = r.i16()?;
                    let mut row = Vec::with_capacity(n.max(0) as usize);
                    for _ in 0..n {
                        let len = r.i32()?;
                        if len < 0 {
                            row.push(None);
                        } else {
                            let b = r.bytes(len as usize)?;
                            row.push(Some(String::from_utf8_lossy(b).into_owned()));
                        }
                    }
                    if row.len() != res.columns.len() {
                        return Err(Error::Protocol("DataRow width differs from RowDescription".into()));
                    }
                    res.rows.push(row);
                }
                b'C' => {
                    let mut res = current.take().unwrap_or_default();
                    res.command_tag = r.cstr()?;
                    results.push(res);
                }
                b'I' | b'N' | b'A' => {}
                b'S' => {
                    let k = r.cstr()?;
                    let v = r.cstr()?;
                    self.parameters.insert(k, v);
                }
                b'E' => {
                    if error.is_none() {
                        error = Some(parse_error_fields(&msg.body));
                    }
                }
                b'G' | b'H' | b'W' => {
                    return Err(Error::Protocol(
                        "simple_query cannot run COPY or START_REPLICATION; the connection is now unusable".into(),
                    ))
                }
                b'Z' => {
                    if let Some(c) = current.take() {
                        results.push(c);
                    }
                    return match error {
                        Some(e) => Err(Error::from_server(e, &self.user)),
                        None => Ok(results),
                    };
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message '{}' in query response",
                        other as char
                    )))
                }
            }
        }
    }

    /// Runs `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, Error> {
        let res = single_row(
            self.simple_query("IDENTIFY_SYSTEM").await?,
            "IDENTIFY_SYSTEM",
        )?;
        let get = |c: &str| {
            res.get(0, c)
                .ok_or_else(|| Error::Protocol(format!("IDENTIFY_SYSTEM returned no {c}")))
        };
        Ok(SystemIdentity {
            system_id: get("systemid")?.to_string(),
            timeline: get("timeline")?
                .parse()
                .map_err(|_| Error::Protocol("IDENTIFY_SYSTEM timeline is not a number".into()))?,
            xlogpos: parse_lsn(get("xlogpos")?)?,
            dbname: res.get(0, "dbname").map(str::to_string),
        })
    }

    /// Creates a logical replication slot using the `pgoutput` plugin.
    ///
    /// `temporary` slots vanish when this connection closes. With
    /// [`SnapshotAction::Export`] the returned snapshot name is valid only
    /// until this connection runs another command (including
    /// `START_REPLICATION`) or closes: read the initial table contents from
    /// another connection with `BEGIN ISOLATION LEVEL REPEATABLE READ;
    /// SET TRANSACTION SNAPSHOT '<name>'` before doing anything else here.
    ///
    /// Errors: [`Error::InvalidArgument`] for names other than 1–63 characters
    /// of `[a-z0-9_]`; [`Error::WalLevelNotLogical`] if the server's
    /// `wal_level` is below `logical`; [`Error::Server`] e.g. when the slot
    /// already exists (SQLSTATE 42710).
    pub async fn create_replication_slot(
        &mut self,
        slot: &str,
        temporary: bool,
        snapshot: SnapshotAction,
    ) -> Result<CreatedSlot, Error> {
        validate_slot_name(slot)?;
        let snap = match snapshot {
            SnapshotAction::Export => "EXPORT_SNAPSHOT",
            SnapshotAction::NoExport => "NOEXPORT_SNAPSHOT",
            SnapshotAction::Use => "USE_SNAPSHOT",
        };
        let temp = if temporary { " TEMPORARY" } else { "" };
        let q = format!("CREATE_REPLICATION_SLOT {slot}{temp} LOGICAL pgoutput {snap}");
        let res = single_row(self.simple_query(&q).await?, "CREATE_REPLICATION_SLOT")?;
        let point = res.get(0, "consistent_point").ok_or_else(|| {
            Error::Protocol("CREATE_REPLICATION_SLOT returned no consistent_point".into())
        })?;
        Ok(CreatedSlot {
            slot_name: res.get(0, "slot_name").unwrap_or(slot).to_string(),
            consistent_point: parse_lsn(point)?,
            snapshot_name: res.get(0, "snapshot_name").map(str::to_string),
            output_plugin: res.get(0, "output_plugin").map(str::to_string),
        })
    }

    /// Drops a replication slot. With `wait`, waits for another connection
    /// using the slot to release it instead of failing.
    pub async fn drop_replication_slot(&mut self, slot: &str, wait: bool) -> Result<(), Error> {
        validate_slot_name(slot)?;
        let w = if wait { " WAIT" } else { "" };
        self.simple_query(&format!("DROP_REPLICATION_SLOT {slot}{w}"))
            .await?;
        Ok(())
    }

    /// Sends `START_REPLICATION SLOT <slot> LOGICAL <start_lsn> (...)` and
    /// switches the connection into CopyBoth streaming mode.
    ///
    /// With `start_lsn` = `0/0` (or anything below the slot's
    /// `confirmed_flush_lsn`) the server starts at `confirmed_flush_lsn`;
    /// transactions that committed before the start position are not sent.
    /// Errors from the server (slot missing, slot active elsewhere,
    /// publication missing, `wal_level`) are returned classified; on error the
    /// connection is consumed.
    ///
    /// Streaming can be started only once per connection: PostgreSQL's
    /// walsender does not reset its end-of-copy state for logical replication,
    /// so a second `START_REPLICATION` after a stopped stream ends at once.
    /// A second call returns [`Error::InvalidArgument`]; open a new connection
    /// to resume streaming.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start_lsn: Lsn,
        options: &ReplicationOptions,
    ) -> Result<ReplicationStream, Error> {
        validate_slot_name(slot)?;
        if self.streamed {
            return Err(Error::InvalidArgument(
                "this connection already streamed once; open a new connection to start replication again".into(),
            ));
        }
        let q = format!(
            "START_REPLICATION SLOT {slot} LOGICAL {start_lsn} ({})",
            options.to_command_options()?
        );
        frontend::query(&q, &mut self.framed.write_buf)?;
        self.framed.flush().await?;
        let mut error = None;
        loop {
            let msg = self.framed.read_message().await?;
            match msg.tag {
                b'W' => {
                    self.streamed = true;
                    return Ok(ReplicationStream::new(self));
                }
                b'N' | b'S' => {}
                b'E' => error = Some(parse_error_fields(&msg.body)),
                b'Z' => {
                    let e = error.ok_or_else(|| {
                        Error::Protocol("START_REPLICATION finished without streaming".into())
                    })?;
                    return Err(Error::from_server(e, &self.user));
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message '{}' after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }

    /// Sends `Terminate` and closes the socket. Dropping the connection also
    /// closes it, just less politely.
    pub async fn close(mut self) {
        self.framed.terminate().await;
    }
}

fn single_row(results: Vec<QueryResult>, what: &str) -> Result<QueryResult, Error> {
    results
        .into_iter()
        .find(|r| !r.columns.is_empty() && r.rows.len() == 1)
        .ok_or_else(|| Error::Protocol(format!("{what} did not return exactly one row")))
}

fn parse_lsn(s: &str) -> Result<Lsn, Error> {
    s.parse()
        .map_err(|e| Error::Protocol(format!("server sent a bad LSN: {e}")))
}

/// Checks that `name` is a valid replication slot name: 1–63 characters of
/// lower-case ASCII letters, digits and underscores (PostgreSQL's own rule).
pub fn validate_slot_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid replication slot name {name:?}: use 1-63 characters of a-z, 0-9 and _"
        )))
    }
}
