//! Restoring a PostgreSQL source into a database: the schema and rows of the base
//! image (COPY), then every transaction committed up to the moment, whole and in
//! commit order, then sequences brought up to the values their columns use.

use std::time::Instant;

use super::beside::SchemaMap;
use super::conn::{db_error, ConnInfo};
use super::net_scan::Scan;
use super::restore_image::{load_image, ImageLoad};

use super::layout::Selection;
use super::restore_sql::Replayed;
use super::setup::quote_ident;
use super::PgError;
use crate::config::Timeouts;
use crate::connectors::KindOptions;
use crate::digest::Digest;
use crate::event::Payload;
use crate::journal::Journal;
use crate::position::PositionKind;
use crate::restore::{Applied, ProgressSink, Rerun, RestoreError, RestorePlan, Target};

/// Replayed SQL is sent in batches of whole transactions of about this size.
const REPLAY_BATCH_BYTES: usize = 1 << 20;

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PgRestoreSummary {
    /// Tables loaded from the base image.
    pub tables: u64,
    /// Rows loaded from the base image.
    pub image_rows: u64,
    /// Final rows of changed keys loaded by `COPY` (net-effect replay).
    pub net_rows: u64,
    /// Transactions replayed.
    pub transactions: u64,
    /// Row changes (and DDL/truncates) replayed.
    pub changes: u64,
    /// Commit LSN of the last transaction replayed (or the image's position).
    pub final_lsn: String,
    /// Seconds taken.
    pub seconds: f64,
    /// What the restore could not bring back, or did besides (for the report).
    pub notes: Vec<String>,
}

fn failed(message: String) -> RestoreError {
    RestoreError::Target(message)
}

/// What the database at `client` holds: its user tables, if any.
async fn occupied(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
) -> Result<Option<String>, RestoreError> {
    let existing: i64 = client
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", &[])
        .await
        .map_err(|e| failed(PgError::query(&conn.display, &e).to_string()))?
        .get(0);
    Ok((existing > 0).then(|| format!("{existing} tables")))
}

/// A server setting of the target.
pub(super) async fn show(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    setting: &str,
) -> Result<String, RestoreError> {
    Ok(client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .map_err(|e| failed(PgError::query(&conn.display, &e).to_string()))?
        .get(0))
}

/// Runs a part of the image's schema (`what` names it for errors), then sets the
/// session back: pg_dump empties `search_path` and sets the dump's client encoding,
/// and the image's rows and the replayed changes are in the encoding of journaled
/// text.
pub(super) async fn load_definitions(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    sql: &str,
    what: &str,
) -> Result<(), RestoreError> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| failed(format!("{what}: {}", db_error(&e))))?;
    client
        .batch_execute(&format!(
            "RESET search_path; {}",
            super::conn::SESSION_ENCODING
        ))
        .await
        .map_err(|e| failed(format!("{}: {}", conn.display, db_error(&e))))
}

/// Refuses a target whose encoding is not the source's (named by the dump's
/// `SET client_encoding`): its text could not hold the same bytes.
pub(super) async fn check_encoding(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    schema: &str,
) -> Result<(), RestoreError> {
    let Some(source) = schema.lines().find_map(|l| {
        l.strip_prefix("SET client_encoding = '")
            .and_then(|r| r.strip_suffix("';"))
    }) else {
        return Ok(());
    };
    let target = show(client, conn, "server_encoding").await?;
    if !target.eq_ignore_ascii_case(source) {
        return Err(failed(format!(
            "target database {} has encoding {target}, the source's is {source}: restore into a database created with ENCODING '{source}' (and TEMPLATE template0)",
            conn.display
        )));
    }
    Ok(())
}

/// Refuses a target on an older major version than the source's (named by the
/// dump's header): its schema may use what the older server lacks.
pub(super) async fn check_version(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    schema: &str,
) -> Result<(), RestoreError> {
    let Some(source) = schema.lines().find_map(|l| {
        l.strip_prefix("-- Dumped from database version ")
            .and_then(|v| v.split(['.', ' ']).next())
            .and_then(|m| m.parse::<u32>().ok())
    }) else {
        return Ok(());
    };
    let target = show(client, conn, "server_version_num").await?;
    let target = target.parse::<u32>().unwrap_or(0) / 10000;
    if target < source {
        return Err(failed(format!(
            "target database {} runs PostgreSQL {target}, the source ran PostgreSQL {source}: restore into a server of major version {source} or newer",
            conn.display
        )));
    }
    Ok(())
}

/// The restore role may not set `session_replication_role` (it needs superuser):
/// refused if the schema has triggers of its own (they would fire again on what the
/// journal holds), else said in the report (foreign keys are checked as rows load).
pub(super) async fn without_replica_role(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    why: &str,
    summary: &mut PgRestoreSummary,
) -> Result<(), RestoreError> {
    let triggers: Vec<String> = client
        .query(
            "SELECT format('%s on %s', t.tgname, t.tgrelid::regclass) FROM pg_trigger t WHERE NOT t.tgisinternal ORDER BY 1 LIMIT 5",
            &[],
        )
        .await
        .map_err(|e| failed(PgError::query(&conn.display, &e).to_string()))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !triggers.is_empty() {
        return Err(failed(format!(
            "the schema has triggers ({}), which would fire again on the changes the journal holds and duplicate them; a restore switches them off with session_replication_role = replica, which the restore role may not set ({why}): restore as a superuser (or a role granted SET on session_replication_role). The target now holds the schema only; re-run with --force",
            triggers.join(", ")
        )));
    }
    summary.notes.push(format!(
        "restored without session_replication_role = replica ({why}): foreign keys were checked while rows loaded"
    ));
    Ok(())
}

/// After the replay: refreshes materialized views from the restored tables (their
/// contents are not in the stream) and names unlogged tables, restored empty.
async fn finish(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    summary: &mut PgRestoreSummary,
) -> Result<(), RestoreError> {
    let q = |e: tokio_postgres::Error| failed(PgError::query(&conn.display, &e).to_string());
    let rows = client
        .query(
            "SELECT c.relkind::text, format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE (c.relkind = 'm' OR (c.relkind IN ('r', 'p') AND c.relpersistence = 'u')) AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             ORDER BY c.oid",
            &[],
        )
        .await
        .map_err(q)?;
    for r in rows {
        let (kind, name): (String, String) = (r.get(0), r.get(1));
        if kind != "m" {
            summary.notes.push(format!(
                "unlogged table {name} restored empty: logical decoding does not carry its rows"
            ));
            continue;
        }
        match client
            .batch_execute(&format!("REFRESH MATERIALIZED VIEW {name}"))
            .await
        {
            Ok(()) => summary.notes.push(format!(
                "materialized view {name} refreshed from the restored tables"
            )),
            Err(e) => summary.notes.push(format!(
                "materialized view {name} left unpopulated: refreshing it failed: {}",
                db_error(&e)
            )),
        }
    }
    Ok(())
}

/// How a PostgreSQL restore goes about it.
#[derive(Debug, Clone)]
pub struct PgRestoreOptions {
    /// `--tables`.
    pub selection: Selection,
    /// Replay every change as a statement instead of applying the net effect of the
    /// history (see [`super::net`]); both give the same result.
    pub every_change: bool,
    /// Bytes of net state kept in memory before it spills to disk.
    pub net_memory: usize,
    /// Where the net state spills (the system's temporary directory if `None`).
    pub spill_dir: Option<std::path::PathBuf>,
}

impl Default for PgRestoreOptions {
    fn default() -> Self {
        PgRestoreOptions {
            selection: Selection::default(),
            every_change: false,
            net_memory: super::net_store::DEFAULT_MEMORY_LIMIT,
            spill_dir: None,
        }
    }
}

/// Runs one statement (with its raw text parameters, if any).
pub(super) async fn run(
    client: &tokio_postgres::Client,
    r: &Replayed,
) -> Result<(), tokio_postgres::Error> {
    if r.raw.is_empty() {
        return client.batch_execute(&r.sql).await;
    }
    client
        .execute_raw(r.sql.as_str(), r.raw.iter().map(|v| RawText(v)))
        .await
        .map(|_| ())
}

/// Runs `stmts` in order in as few round trips as it can: plain SQL joined into
/// batches of about [`REPLAY_BATCH_BYTES`], each statement with raw parameters on
/// its own; `before` and `after` open the first batch and close the last.
pub(super) async fn run_all<'a>(
    client: &tokio_postgres::Client,
    before: &str,
    stmts: impl IntoIterator<Item = &'a Replayed>,
    after: &str,
) -> Result<(), tokio_postgres::Error> {
    let mut sql = String::from(before);
    for r in stmts {
        if r.raw.is_empty() {
            sql.push_str(&r.sql);
            sql.push_str(";\n");
            if sql.len() < REPLAY_BATCH_BYTES {
                continue;
            }
        }
        if !sql.is_empty() {
            client.batch_execute(&sql).await?;
            sql.clear();
        }
        if !r.raw.is_empty() {
            run(client, r).await?;
        }
    }
    sql.push_str(after);
    if sql.is_empty() {
        return Ok(());
    }
    client.batch_execute(&sql).await
}

/// `the transaction committed at T (LSN L)`.
pub(super) fn describe_txn(lsn: u64, time_us: i64) -> String {
    format!(
        "the transaction committed at {} (LSN {})",
        crate::time::Timestamp::from_micros(time_us),
        super::repl::Lsn(lsn)
    )
}

/// The sentences of a failed restore's error that say what the target holds
/// (`state`: "up to and including ...") and what to do.
pub(super) fn state_left(conn: &ConnInfo, state: &str, txns: u64) -> String {
    format!(
        "The target {} now holds the source's state {state} ({txns} transactions replayed after the base image), committed; it is not the moment asked for. Fix the cause, then re-run the restore with --force (it starts over)",
        conn.display
    )
}

/// Restores `plan` into the database at `conn`; `force`: drop what it holds first.
///
/// On a multi-threaded runtime, a net-effect restore reads the journal ahead on a
/// thread of its own while it applies (see [`super::net_scan`]).
pub async fn restore(
    journal: &Journal,
    plan: &RestorePlan,
    conn: &ConnInfo,
    opts: &PgRestoreOptions,
    force: bool,
    progress: &mut dyn ProgressSink,
) -> Result<PgRestoreSummary, RestoreError> {
    let handle = tokio::runtime::Handle::current();
    if opts.every_change
        || plan.events == 0
        || handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread
    {
        let scan = (!opts.every_change).then(|| Scan::inline(journal, plan));
        return restore_with(journal, plan, conn, opts, force, progress, scan).await;
    }
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let (scan, tx) = Scan::ahead();
            s.spawn(move || super::net_scan::read_ahead(journal, plan, tx));
            handle.block_on(restore_with(
                journal,
                plan,
                conn,
                opts,
                force,
                progress,
                Some(scan),
            ))
        })
    })
}

/// [`restore`], the history read by `scan` (by net effect) or replayed change by
/// change (`None`).
async fn restore_with(
    journal: &Journal,
    plan: &RestorePlan,
    conn: &ConnInfo,
    opts: &PgRestoreOptions,
    force: bool,
    progress: &mut dyn ProgressSink,
    scan: Option<Scan<'_>>,
) -> Result<PgRestoreSummary, RestoreError> {
    let selection = &opts.selection;
    let started = Instant::now();
    let client = conn.connect().await.map_err(|e| failed(e.to_string()))?;
    let q = |e: tokio_postgres::Error| failed(format!("{}: {}", conn.display, db_error(&e)));
    if let Some(holds) = occupied(&client, conn).await? {
        if !force {
            return Err(failed(format!("target database {} already has {holds}; restore into an empty database, or pass --force to drop its contents first", conn.display)));
        }
        tracing::warn!(target = %conn.display, %holds, "--force: dropping the target's schemas");
        client.batch_execute(DROP_ALL_SCHEMAS).await.map_err(q)?;
    }
    let mut summary = PgRestoreSummary::default();
    // As a logical-replication subscriber applies changes: the target's triggers and
    // foreign-key checks do not fire. What triggers wrote on the source is in the
    // journal as changes of its own; firing them again would duplicate it, and the
    // image's tables are loaded in name order, not in foreign-key order.
    let replica_role = client
        .batch_execute("SET session_replication_role = replica")
        .await
        .map_err(|e| db_error(&e));
    let image = plan
        .image
        .as_ref()
        .ok_or_else(|| failed("a PostgreSQL restore needs a base image".into()))?;
    if let Some(PositionKind::Postgres(p)) = image.position.as_ref().and_then(|p| p.kind.as_ref()) {
        summary.final_lsn = crate::position::Position::postgres(p.lsn).to_string();
    }
    let load = ImageLoad {
        journal,
        image,
        client: &client,
        conn,
        selection,
        replica_role: &replica_role,
    };
    match scan {
        Some(scan) => {
            super::net_restore::restore_net(&load, plan, opts, scan, &mut summary, progress).await?
        }
        None => {
            load_image(&load, None, &mut summary, progress).await?;
            replay(journal, plan, &client, conn, &mut summary, progress).await?;
        }
    }
    client.batch_execute(SYNC_SEQUENCES).await.map_err(q)?;
    if !selection.is_all() {
        let notes = super::layout::drop_unselected(&client, conn, selection)
            .await
            .map_err(|e| failed(e.to_string()))?;
        summary.notes.extend(notes);
    }
    finish(&client, conn, &mut summary).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// One journaled transaction, ready to replay.
struct TxnReplay {
    stmts: Vec<Replayed>,
    /// Changes it holds (statements, DDL and truncates).
    changes: u64,
    /// Its commit position and time, for messages.
    lsn: u64,
    time_us: i64,
}

impl TxnReplay {
    fn describe(&self) -> String {
        describe_txn(self.lsn, self.time_us)
    }
}

/// Whole transactions sent to the target as one server transaction.
#[derive(Default)]
struct Batch {
    txns: Vec<TxnReplay>,
    bytes: usize,
}

/// Replays whole transactions in journal order; a trailing transaction without its
/// commit (cut by the moment, or journaled in part) is left out.
///
/// Transactions go to the target in batches of about [`REPLAY_BATCH_BYTES`], one
/// server transaction each. If the target refuses a statement, the batch is rolled
/// back and its transactions are applied one at a time up to the one refused: the
/// target is left holding the source exactly as it was before that transaction,
/// and the error names it.
async fn replay(
    journal: &Journal,
    plan: &RestorePlan,
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    summary: &mut PgRestoreSummary,
    progress: &mut dyn ProgressSink,
) -> Result<(), RestoreError> {
    if plan.events == 0 {
        return Ok(());
    }
    let mut seen = 0u64;
    let mut txn: Vec<Replayed> = Vec::new();
    let mut txn_changes = 0u64;
    let mut batch = Batch::default();
    for entry in journal.events(plan.source.id, plan.first_seq, plan.last_seq) {
        let e = entry?.event;
        seen += 1;
        progress.update("changes replayed", seen, Some(plan.events))?;
        let Some(Payload::Postgres(change)) = &e.payload else {
            continue;
        };
        let replayed = super::restore_sql::replayed(change).map_err(|err| {
            failed(format!(
                "cannot replay the change at {} to {}.{}: {err}",
                e.position
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                change.schema,
                change.table
            ))
        })?;
        txn.extend(replayed);
        txn_changes += 1;
        if e.txn.as_ref().is_some_and(|t| t.commit) {
            let lsn = match e.position.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(PositionKind::Postgres(p)) => p.lsn,
                _ => 0,
            };
            let stmts = super::restore_sql::created_from_query_first(std::mem::take(&mut txn));
            batch.bytes += stmts.iter().map(|r| r.sql.len() + 2).sum::<usize>();
            batch.txns.push(TxnReplay {
                stmts,
                changes: std::mem::take(&mut txn_changes),
                lsn,
                time_us: e.time_us(),
            });
            if batch.bytes >= REPLAY_BATCH_BYTES {
                apply_batch(client, conn, std::mem::take(&mut batch), summary).await?;
            }
        }
    }
    if !batch.txns.is_empty() {
        apply_batch(client, conn, batch, summary).await?;
    }
    Ok(())
}

/// Sends `txns` as one server transaction.
async fn send(
    client: &tokio_postgres::Client,
    txns: &[TxnReplay],
) -> Result<(), tokio_postgres::Error> {
    run_all(
        client,
        "BEGIN;\n",
        txns.iter().flat_map(|t| &t.stmts),
        "COMMIT;",
    )
    .await
}

async fn apply_batch(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    batch: Batch,
    summary: &mut PgRestoreSummary,
) -> Result<(), RestoreError> {
    let q = |e: tokio_postgres::Error| failed(format!("{}: {}", conn.display, db_error(&e)));
    if send(client, &batch.txns).await.is_ok() {
        account(summary, &batch.txns);
        return Ok(());
    }
    client.batch_execute("ROLLBACK").await.map_err(q)?;
    for (i, t) in batch.txns.iter().enumerate() {
        if let Err(e) = send(client, std::slice::from_ref(t)).await {
            client.batch_execute("ROLLBACK").await.map_err(q)?;
            let statement = first_failing(client, t).await;
            let before = match i.checked_sub(1).map(|p| &batch.txns[p]) {
                Some(prev) => format!("up to and including {}", prev.describe()),
                None if summary.transactions > 0 => format!("up to LSN {}", summary.final_lsn),
                None => "as of its base image".to_string(),
            };
            return Err(failed(format!(
                "replaying {}: {}: {}{statement}. {}",
                t.describe(),
                conn.display,
                db_error(&e),
                state_left(conn, &before, summary.transactions),
            )));
        }
        account(summary, std::slice::from_ref(t));
    }
    // The batch failed as a whole but each of its transactions passed on its own
    // (a transient failure): everything is applied.
    Ok(())
}

fn account(summary: &mut PgRestoreSummary, txns: &[TxnReplay]) {
    for t in txns {
        summary.transactions += 1;
        summary.changes += t.changes;
        summary.final_lsn = super::repl::Lsn(t.lsn).to_string();
    }
}

/// The statement of `txn` the target refuses, found by running them one at a time
/// in a transaction that is rolled back; described for the error.
async fn first_failing(client: &tokio_postgres::Client, txn: &TxnReplay) -> String {
    if client.batch_execute("BEGIN").await.is_err() {
        return String::new();
    }
    let mut found = String::new();
    for r in &txn.stmts {
        if run(client, r).await.is_err() {
            let table = r
                .inserts_into
                .as_ref()
                .map(|(s, t)| format!(" into table {s}.{t}"))
                .unwrap_or_default();
            found = format!(
                "; refused statement{table}: {}",
                r.sql.chars().take(300).collect::<String>()
            );
            break;
        }
    }
    let _ = client.batch_execute("ROLLBACK").await;
    found
}

/// A text-format parameter sent as the journaled bytes (the server coerces it to
/// the parameter's inferred type, as it would an untyped literal).
#[derive(Debug)]
struct RawText<'a>(&'a [u8]);

impl tokio_postgres::types::ToSql for RawText<'_> {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    fn encode_format(&self, _: &tokio_postgres::types::Type) -> tokio_postgres::types::Format {
        tokio_postgres::types::Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// pgoutput does not carry sequence advances (PostgreSQL 15): bring each sequence
/// owned by a column up to the largest value that column holds.
const SYNC_SEQUENCES: &str = r#"
DO $$
DECLARE r record; m bigint;
BEGIN
  FOR r IN
    SELECT s.oid::regclass AS seq, c.oid::regclass AS tbl, a.attname
    FROM pg_class s
    JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
    JOIN pg_class c ON c.oid = d.refobjid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
    WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i')
  LOOP
    EXECUTE format('SELECT max(%I)::bigint FROM %s', r.attname, r.tbl) INTO m;
    IF m IS NOT NULL THEN
      PERFORM setval(r.seq, greatest(m, (SELECT coalesce(last_value, m) FROM pg_sequences
                                        WHERE format('%I.%I', schemaname, sequencename)::regclass = r.seq)));
    END IF;
  END LOOP;
END $$;
"#;

/// Empties a database as `--force` and a teardown do: every schema dropped with
/// what it holds, then an empty `public` as `CREATE DATABASE` makes it.
const DROP_ALL_SCHEMAS: &str = "DO $$ DECLARE s text; BEGIN
   FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP
     EXECUTE format('DROP SCHEMA %I CASCADE', s);
   END LOOP;
 END $$;
 CREATE SCHEMA public; ALTER SCHEMA public OWNER TO pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC;";

/// A PostgreSQL database as a restore target. Re-running a failed restore with
/// `--force` drops every schema of the target and starts over.
pub struct PgTarget {
    conn: ConnInfo,
    selection: Selection,
    schema_map: SchemaMap,
    rt: tokio::runtime::Runtime,
}

impl PgTarget {
    /// A target for `url` with the `--tables` of `options` (connects to nothing yet).
    pub fn new(
        url: &str,
        options: &KindOptions,
        timeouts: &Timeouts,
    ) -> Result<PgTarget, RestoreError> {
        let conn = ConnInfo::parse(url)
            .map_err(|e| failed(e.to_string()))?
            .with_timeouts(timeouts);
        let selection = Selection::parse(options.get(super::layout::TABLES).unwrap_or(""))
            .map_err(RestoreError::Options)?;
        let schema_map = SchemaMap::parse(options.get(super::beside::SCHEMA_MAP).unwrap_or(""))
            .map_err(RestoreError::Options)?;
        // Multi-threaded: a restore reads the journal ahead on a thread of its own.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| failed(format!("cannot start the async runtime: {e}")))?;
        Ok(PgTarget {
            conn,
            selection,
            schema_map,
            rt,
        })
    }
}

impl Target for PgTarget {
    fn describe(&self) -> String {
        self.conn.display.clone()
    }

    fn occupied(&mut self, _: &Journal, _: &RestorePlan) -> Result<Option<String>, RestoreError> {
        let (conn, map) = (&self.conn, &self.schema_map);
        self.rt.block_on(async {
            let client = conn.connect().await.map_err(|e| failed(e.to_string()))?;
            if map.is_empty() {
                occupied(&client, conn).await
            } else {
                super::beside::occupied(&client, conn, map).await
            }
        })
    }

    fn force_effect(&self) -> &'static str {
        if self.schema_map.is_empty() {
            "drop every schema in it (and all it holds) first"
        } else {
            "drop the schemas --schema-map names as targets (only those) first"
        }
    }

    fn rerun(&self) -> Rerun {
        Rerun::StartOverWithForce
    }

    fn teardown(&mut self, _: &Journal, _: &RestorePlan) -> Result<String, RestoreError> {
        if !self.schema_map.is_empty() {
            return Err(RestoreError::Refused(format!(
                "{} was restored beside its own schemas (--schema-map): drop the mapped schemas by hand",
                self.conn.display
            )));
        }
        let conn = &self.conn;
        self.rt.block_on(async {
            let client = conn.connect().await.map_err(|e| failed(e.to_string()))?;
            client
                .batch_execute(DROP_ALL_SCHEMAS)
                .await
                .map_err(|e| failed(format!("{}: {}", conn.display, db_error(&e))))
        })?;
        Ok(format!("dropped every schema of {}", self.conn.display))
    }

    fn apply(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        force: bool,
        progress: &mut dyn ProgressSink,
    ) -> Result<Applied, RestoreError> {
        let s = if self.schema_map.is_empty() {
            self.rt.block_on(restore(
                journal,
                plan,
                &self.conn,
                &PgRestoreOptions {
                    selection: self.selection.clone(),
                    ..Default::default()
                },
                force,
                progress,
            ))?
        } else {
            self.rt.block_on(super::beside::restore_beside(
                journal,
                plan,
                &self.conn,
                &self.selection,
                &self.schema_map,
                force,
                progress,
            ))?
        };
        Ok(Applied {
            counts: vec![
                ("tables".into(), s.tables),
                ("rows from the base image".into(), s.image_rows),
                (
                    "final rows loaded as the history's net effect".into(),
                    s.net_rows,
                ),
                ("transactions replayed".into(), s.transactions),
                ("changes".into(), s.changes),
            ],
            final_position: Some(s.final_lsn),
            notes: s.notes,
        })
    }

    /// The whole target's digest; beside other schemas (`--schema-map`), the new
    /// schemas' tables only, named as in the source, so it compares with the
    /// source's digest of the same tables.
    fn digest(&mut self) -> Result<Digest, RestoreError> {
        let (conn, map) = (&self.conn, &self.schema_map);
        self.rt.block_on(async {
            let client = conn.connect().await.map_err(|e| failed(e.to_string()))?;
            let selection = if map.is_empty() {
                Selection::default()
            } else {
                Selection::parse(
                    &map.targets()
                        .iter()
                        .map(|n| format!("{}.*", quote_ident(n)))
                        .collect::<Vec<_>>()
                        .join(","),
                )
                .map_err(RestoreError::Options)?
            };
            let d = super::digest::digest(&client, &conn.display, &selection)
                .await
                .map_err(|e| failed(e.to_string()))?;
            Ok(if map.is_empty() {
                d
            } else {
                d.renamed(|name| match name.split_once('.') {
                    Some((s, t)) => format!("{}.{t}", map.source_of(s)),
                    None => name.to_string(),
                })
            })
        })
    }
}
