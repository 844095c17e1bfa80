//! What capture needs on the source database, created if missing and said so in the
//! log: logical `wal_level`, a publication, replica identities that keep the
//! application's UPDATEs working, and the DDL event trigger.

use tokio_postgres::Client;

use super::conn::db_error;

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
  marker text := md5(current_query()) || ':' || txid_current();
  n int := 1;
BEGIN
  IF current_setting('tidemark.in_ddl', true) = 'on' THEN
    RETURN;
  END IF;
  PERFORM set_config('tidemark.in_ddl', 'on', true);
  FOR r IN SELECT objid FROM pg_event_trigger_ddl_commands()
           WHERE command_tag = 'CREATE TABLE' AND object_type = 'table' LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = r.objid AND indisprimary)
       AND (SELECT relreplident FROM pg_class WHERE oid = r.objid) = 'd' THEN
      EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', r.objid::regclass);
    END IF;
  END LOOP;
  IF current_setting('tidemark.last_ddl', true) = marker THEN
    n := current_setting('tidemark.ddl_n', true)::int + 1;
  END IF;
  PERFORM set_config('tidemark.last_ddl', marker, true);
  PERFORM set_config('tidemark.ddl_n', n::text, true);
  PERFORM pg_logical_emit_message(true, 'tidemark.ddl',
    n || E'\n' || current_setting('search_path') || E'\n' || current_query());
  PERFORM set_config('tidemark.in_ddl', 'off', true);
END
$fn$;
"#;

/// Fails unless the server's `wal_level` is `logical`, naming the fix.
pub async fn check_wal_level(client: &Client) -> Result<(), String> {
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(|e| db_error(&e))?
        .get(0);
    if wal_level != "logical" {
        return Err(format!(
            "wal_level is `{wal_level}`; logical replication needs `wal_level = logical` in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and a server restart"
        ));
    }
    Ok(())
}

/// Checks and prepares the source. Returns warnings for the log and status.
pub async fn prepare(
    client: &Client,
    publication: &str,
    tables: &[String],
) -> Result<Vec<String>, String> {
    let q = |e: tokio_postgres::Error| db_error(&e);
    check_wal_level(client).await?;
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
    if !has_trigger {
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

/// Whether the replication slot exists (and its plugin).
pub async fn slot_plugin(client: &Client, slot: &str) -> Result<Option<String>, String> {
    let row = client
        .query_opt(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| db_error(&e))?;
    Ok(row.map(|r| r.get::<_, Option<String>>(0).unwrap_or_default()))
}

/// Slot lag (bytes of WAL not yet confirmed) and WAL retained by the slot.
pub async fn slot_lag(client: &Client, slot: &str) -> Result<Option<(i64, i64)>, String> {
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, (pg_current_wal_lsn() - restart_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| db_error(&e))?;
    Ok(row.map(|r| {
        (
            r.get::<_, Option<i64>>(0).unwrap_or(0),
            r.get::<_, Option<i64>>(1).unwrap_or(0),
        )
    }))
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
