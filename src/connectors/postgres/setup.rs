//! What capture needs on the source database, created if missing and said so in the
//! log: logical `wal_level`, a publication, replica identities that keep the
//! application's UPDATEs working, and the DDL event trigger.

use tokio_postgres::Client;

use super::conn::db_error;
use super::repl::Lsn;
use super::PgError;

/// Prefix of the logical messages that carry DDL statements.
pub const DDL_PREFIX: &str = "tidemark.ddl";
/// Name of the event trigger.
pub const DDL_TRIGGER: &str = "tidemark_ddl";

/// The DDL capture function. It runs at `ddl_command_end`, inside the DDL's own
/// transaction, so the message lands in the WAL in order with the transaction's
/// changes. It also gives tables created without a key `REPLICA IDENTITY FULL`: a
/// published table without a replica identity would make the application's UPDATEs
/// and DELETEs on it fail. The message carries the command's number within its query
/// string, the session's `search_path` and the query string (see [`super::ddl`]).
const DDL_FUNCTION: &str = r#"
CREATE SCHEMA IF NOT EXISTS tidemark;
CREATE OR REPLACE FUNCTION tidemark.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  r record;
  q text;
  marker text := md5(current_query()) || ':' || txid_current() || ':' || statement_timestamp();
  n int := 1;
BEGIN
  IF current_setting('tidemark.in_ddl', true) = 'on' THEN
    RETURN;
  END IF;
  PERFORM set_config('tidemark.in_ddl', 'on', true);
  IF current_setting('tidemark.last_ddl', true) = marker THEN
    n := current_setting('tidemark.ddl_n', true)::int + 1;
  END IF;
  PERFORM set_config('tidemark.last_ddl', marker, true);
  PERFORM set_config('tidemark.ddl_n', n::text, true);
  PERFORM pg_logical_emit_message(true, 'tidemark.ddl',
    n || E'\n' || current_setting('search_path') || E'\n' || current_query());
  FOR r IN SELECT objid FROM pg_event_trigger_ddl_commands()
           WHERE command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') AND object_type = 'table' LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = r.objid AND indisprimary)
       AND (SELECT relreplident FROM pg_class WHERE oid = r.objid) = 'd' THEN
      q := format('ALTER TABLE %I.%I REPLICA IDENTITY FULL',
                  (SELECT nspname FROM pg_namespace WHERE oid = (SELECT relnamespace FROM pg_class WHERE oid = r.objid)),
                  (SELECT relname FROM pg_class WHERE oid = r.objid));
      EXECUTE q;
      PERFORM pg_logical_emit_message(true, 'tidemark.ddl', '1' || E'\n' || current_setting('search_path') || E'\n' || q);
    END IF;
  END LOOP;
  PERFORM set_config('tidemark.in_ddl', 'off', true);
END
$fn$;
"#;

/// Fails unless the server's `wal_level` is `logical`, naming the fix.
pub async fn check_wal_level(client: &Client, target: &str) -> Result<(), PgError> {
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| PgError::query(target, &e))?
        .get(0);
    if wal_level != "logical" {
        return Err(PgError::Unsuitable {
            target: target.to_string(),
            detail: format!("wal_level is `{wal_level}`; logical replication needs `wal_level = logical` in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and a server restart"),
        });
    }
    Ok(())
}

/// Checks and prepares the source. Returns warnings for the log and status.
pub async fn prepare(
    client: &Client,
    target: &str,
    publication: &str,
    tables: &[String],
) -> Result<Vec<String>, PgError> {
    let q = |e: tokio_postgres::Error| PgError::query(target, &e);
    check_wal_level(client, target).await?;
    let mut warnings = Vec::new();
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(q)?
        .is_some();
    if !exists {
        let target = if tables.is_empty() {
            "FOR ALL TABLES".to_string()
        } else {
            format!(
                "FOR TABLE {}",
                tables
                    .iter()
                    .map(|t| quote_qualified(t))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} {target}",
                quote_ident(publication)
            ))
            .await
            .map_err(q)?;
        tracing::info!(publication, "created publication {target}");
    }
    // Published tables without a replica identity would make UPDATE/DELETE fail.
    let keyless = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_publication_tables p
             JOIN pg_namespace n ON n.nspname = p.schemaname
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
             WHERE p.pubname = $1 AND (c.relreplident = 'n' OR (c.relreplident = 'd'
               AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))",
            &[&publication],
        )
        .await
        .map_err(q)?;
    for row in keyless {
        let table: String = row.get(0);
        client
            .batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY FULL"))
            .await
            .map_err(q)?;
        let w = format!("table {table} has no primary key: set REPLICA IDENTITY FULL so the application's UPDATEs and DELETEs keep working and can be captured");
        tracing::warn!("{w}");
        warnings.push(w);
    }
    let has_trigger = client
        .query_opt(
            "SELECT 1 FROM pg_event_trigger WHERE evtname = $1",
            &[&DDL_TRIGGER],
        )
        .await
        .map_err(q)?
        .is_some();
    if has_trigger {
        update_ddl_function(client, target).await?;
    } else {
        let install = async {
            client.batch_execute(DDL_FUNCTION).await?;
            client
                .batch_execute(&format!("CREATE EVENT TRIGGER {DDL_TRIGGER} ON ddl_command_end EXECUTE FUNCTION tidemark.capture_ddl()"))
                .await
        };
        match install.await {
            Ok(()) => tracing::info!(
                "installed event trigger {DDL_TRIGGER}: DDL is captured in transaction order"
            ),
            Err(e) => {
                let w = format!("cannot install the DDL event trigger ({}); schema changes after the base image will NOT be captured: run tidemark once as a superuser", db_error(&e));
                tracing::warn!("{w}");
                warnings.push(w);
            }
        }
    }
    Ok(warnings)
}

/// Replaces a DDL function installed by an older version, inside a transaction
/// that the function itself skips (so the replacement is not journaled as DDL).
async fn update_ddl_function(client: &Client, target: &str) -> Result<(), PgError> {
    let q = |e: tokio_postgres::Error| PgError::query(target, &e);
    let installed: Option<String> = client
        .query_opt(
            "SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'tidemark' AND p.proname = 'capture_ddl'",
            &[],
        )
        .await
        .map_err(q)?
        .map(|r| r.get(0));
    let ours = DDL_FUNCTION.split("$fn$").nth(1).unwrap_or_default();
    if installed.as_deref() == Some(ours) {
        return Ok(());
    }
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL tidemark.in_ddl = 'on'; {DDL_FUNCTION}; COMMIT"
        ))
        .await
        .map_err(q)?;
    tracing::info!("updated the DDL capture function tidemark.capture_ddl()");
    Ok(())
}

/// A replication slot as the server reports it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Output plugin.
    pub plugin: String,
    /// Process holding it, if active.
    pub active_pid: Option<i32>,
    /// WAL the slot still needs.
    pub restart_lsn: Option<u64>,
    /// Everything before this was confirmed by the slot's consumer.
    pub confirmed_flush: Option<u64>,
}

impl SlotInfo {
    /// For messages: holder and positions.
    pub fn describe(&self) -> String {
        let lsn = |l: Option<u64>| l.map_or("-".to_string(), |l| Lsn(l).to_string());
        format!(
            "plugin {}, {}, restart_lsn {}, confirmed_flush {}",
            self.plugin,
            self.active_pid
                .map_or("not in use".to_string(), |p| format!(
                    "in use by server process {p}"
                )),
            lsn(self.restart_lsn),
            lsn(self.confirmed_flush)
        )
    }
}

/// The replication slot `slot`, if it exists.
pub async fn slot_info(
    client: &Client,
    target: &str,
    slot: &str,
) -> Result<Option<SlotInfo>, PgError> {
    let row = client
        .query_opt(
            "SELECT coalesce(plugin, '')::text, active_pid, restart_lsn::text, confirmed_flush_lsn::text
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query(target, &e))?;
    let lsn = |v: Option<String>| v.and_then(|s| s.parse::<Lsn>().ok()).map(|l| l.as_u64());
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        active_pid: r.get(1),
        restart_lsn: lsn(r.get(2)),
        confirmed_flush: lsn(r.get(3)),
    }))
}

/// What preflight checks without changing anything: `wal_level`, and that every
/// configured table exists.
pub async fn check_source(client: &Client, target: &str, tables: &[String]) -> Result<(), PgError> {
    check_wal_level(client, target).await?;
    for t in tables {
        let found: Option<String> = client
            .query_one("SELECT to_regclass($1)::text", &[&quote_qualified(t)])
            .await
            .map_err(|e| PgError::query(target, &e))?
            .get(0);
        if found.is_none() {
            return Err(PgError::Unsuitable {
                target: target.to_string(),
                detail: format!("table `{t}` (listed in `tables`) does not exist; create it or remove it from the source's `tables`"),
            });
        }
    }
    Ok(())
}

/// Slot lag (bytes of WAL not yet confirmed) and WAL retained by the slot.
pub async fn slot_lag(
    client: &Client,
    target: &str,
    slot: &str,
) -> Result<Option<(i64, i64)>, PgError> {
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - restart_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| PgError::query(target, &e))?;
    Ok(row.map(|r| {
        (
            r.get::<_, Option<i64>>(0).unwrap_or(0),
            r.get::<_, Option<i64>>(1).unwrap_or(0),
        )
    }))
}

/// What the database holds that logical decoding does not carry: unlogged and
/// temporary tables (their rows) and large objects; at most 50 entries.
pub async fn not_captured(client: &Client, target: &str) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            "(SELECT format('rows of %s table %I.%I', CASE c.relpersistence WHEN 'u' THEN 'unlogged' ELSE 'temporary' END, n.nspname, c.relname)
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND c.relpersistence IN ('u', 't') ORDER BY 1 LIMIT 50)
             UNION ALL
             SELECT count(*) || ' large objects' FROM pg_largeobject_metadata HAVING count(*) > 0",
            &[],
        )
        .await
        .map_err(|e| PgError::query(target, &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `schema.table` (or `table`) as quoted identifiers.
pub fn quote_qualified(s: &str) -> String {
    s.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
