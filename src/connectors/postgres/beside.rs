//! `--schema-map old=new`: a restore side by side with what the target holds (the
//! live source itself, say), under other schema names.
//!
//! The restore goes first into a scratch database on the target's server (created
//! and dropped by tidemark), exactly as any restore; there each mapped schema is
//! renamed (`ALTER SCHEMA ... RENAME`: everything that refers to its objects by OID,
//! defaults, constraints, indexes, views, follows), and `pg_dump --schema=new ...`
//! of the scratch database is loaded into the target in one transaction (`psql
//! --single-transaction`). Only the mapped schemas reach the target; objects of other
//! schemas that they use (types, functions) must exist there, as they do beside the
//! source. Function bodies are text: one that names `old.x` keeps naming it.
//!
//! The target counts as occupied when one of the new schemas exists in it; `--force`
//! drops those schemas only, never anything else of the target.

use super::conn::{db_error, ConnInfo};
use super::image::pg_tool;
use super::layout::Selection;
use super::restore::{restore, PgRestoreSummary};
use super::setup::{quote_ident, quote_literal};
use super::PgError;
use crate::journal::Journal;
use crate::restore::{ProgressSink, RestoreError, RestorePlan};

/// The `--schema-map` option of `restore`.
pub const SCHEMA_MAP: &str = "schema-map";

/// `old=new` pairs, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaMap(pub Vec<(String, String)>);

impl SchemaMap {
    /// Parses `old=new,old2=new2`: distinct sources, distinct targets, no target
    /// that is also a source.
    pub fn parse(list: &str) -> Result<SchemaMap, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (old, new) = entry
                .split_once('=')
                .map(|(o, n)| (o.trim(), n.trim()))
                .filter(|(o, n)| !o.is_empty() && !n.is_empty())
                .ok_or_else(|| {
                    format!("--schema-map: `{entry}` is not `old=new` (e.g. public=restored)")
                })?;
            if pairs.iter().any(|(o, n)| o == old || n == new) {
                return Err(format!(
                    "--schema-map: `{entry}` maps a schema twice or onto a name already used"
                ));
            }
            pairs.push((old.to_string(), new.to_string()));
        }
        if let Some((_, n)) = pairs
            .iter()
            .find(|(_, n)| pairs.iter().any(|(o, _)| o == n))
        {
            return Err(format!(
                "--schema-map: `{n}` is both a source and a target schema"
            ));
        }
        Ok(SchemaMap(pairs))
    }

    /// True when no schema is mapped.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The new schemas.
    pub fn targets(&self) -> Vec<String> {
        self.0.iter().map(|(_, n)| n.clone()).collect()
    }

    /// The source schema a restored table's schema stands for.
    pub fn source_of<'a>(&'a self, schema: &'a str) -> &'a str {
        self.0
            .iter()
            .find(|(_, n)| n == schema)
            .map_or(schema, |(o, _)| o.as_str())
    }
}

fn failed(message: String) -> RestoreError {
    RestoreError::Target(message)
}

/// The new schemas that already exist in the target.
pub async fn occupied(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    map: &SchemaMap,
) -> Result<Option<String>, RestoreError> {
    let existing: Vec<String> = client
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname = ANY($1) ORDER BY 1",
            &[&map.targets()],
        )
        .await
        .map_err(|e| failed(PgError::query(&conn.display, &e).to_string()))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((!existing.is_empty()).then(|| format!("schema {}", existing.join(", "))))
}

/// Restores `plan` beside what the target holds, under the schema names of `map`.
pub async fn restore_beside(
    journal: &Journal,
    plan: &RestorePlan,
    conn: &ConnInfo,
    selection: &Selection,
    map: &SchemaMap,
    force: bool,
    progress: &mut dyn ProgressSink,
) -> Result<PgRestoreSummary, RestoreError> {
    let client = conn.connect().await.map_err(|e| failed(e.to_string()))?;
    let q = |e: tokio_postgres::Error| failed(format!("{}: {}", conn.display, db_error(&e)));
    if let Some(holds) = occupied(&client, conn, map).await? {
        if !force {
            return Err(failed(format!("target database {} already has {holds}; choose other names in --schema-map, or pass --force to drop those schemas (only those) first", conn.display)));
        }
    }
    let scratch = format!(
        "tidemark_scratch_{}_{}",
        std::process::id(),
        crate::time::Timestamp::now().as_micros() % 1_000_000
    );
    let encoding: String = client
        .query_one(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    client
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C'",
            quote_ident(&scratch),
            quote_literal(&encoding)
        ))
        .await
        .map_err(|e| {
            failed(format!(
                "--schema-map restores through a scratch database on the target's server, and creating it failed: {} (the role needs CREATEDB)",
                db_error(&e)
            ))
        })?;
    let result = through_scratch(
        journal, plan, conn, &scratch, selection, map, force, progress,
    )
    .await;
    if let Err(e) = client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&scratch)
        ))
        .await
    {
        tracing::warn!(database = %scratch, error = %db_error(&e), "cannot drop the scratch database; drop it by hand");
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn through_scratch(
    journal: &Journal,
    plan: &RestorePlan,
    conn: &ConnInfo,
    scratch: &str,
    selection: &Selection,
    map: &SchemaMap,
    force: bool,
    progress: &mut dyn ProgressSink,
) -> Result<PgRestoreSummary, RestoreError> {
    let scratch_conn = conn.with_dbname(scratch);
    let opts = super::restore::PgRestoreOptions {
        selection: selection.clone(),
        ..Default::default()
    };
    let mut summary = restore(journal, plan, &scratch_conn, &opts, false, progress).await?;
    let client = scratch_conn
        .connect()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let q =
        |e: tokio_postgres::Error| failed(format!("{}: {}", scratch_conn.display, db_error(&e)));
    for (old, new) in &map.0 {
        let exists = client
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[old])
            .await
            .map_err(q)?
            .is_some();
        if !exists {
            return Err(RestoreError::Options(format!(
                "--schema-map: the source has no schema `{old}` at that moment"
            )));
        }
        client
            .batch_execute(&format!(
                "ALTER SCHEMA {} RENAME TO {}",
                quote_ident(old),
                quote_ident(new)
            ))
            .await
            .map_err(q)?;
    }
    drop(client);
    let mut dump = tokio::process::Command::new(pg_tool("pg_dump"));
    dump.args([
        "--no-owner",
        "--no-privileges",
        "--no-publications",
        "--no-subscriptions",
    ])
    .envs(scratch_conn.child_env());
    for new in map.targets() {
        dump.arg(format!("--schema={}", quote_ident(&new)));
    }
    let dumped = dump.output().await.map_err(|e| {
        failed(format!(
            "cannot run pg_dump: {e}; install the PostgreSQL client tools or set TIDEMARK_PG_BIN"
        ))
    })?;
    if !dumped.status.success() {
        return Err(failed(format!(
            "pg_dump of the scratch database failed: {}",
            String::from_utf8_lossy(&dumped.stderr).trim()
        )));
    }
    let mut sql = Vec::with_capacity(dumped.stdout.len() + 256);
    if force {
        for new in map.targets() {
            sql.extend_from_slice(
                format!("DROP SCHEMA IF EXISTS {} CASCADE;\n", quote_ident(&new)).as_bytes(),
            );
        }
    }
    sql.extend_from_slice(&dumped.stdout);
    load(conn, sql).await?;
    summary.notes.push(format!(
        "restored beside the target's own schemas as {}, through a scratch database",
        map.0
            .iter()
            .map(|(o, n)| format!("{o} -> {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(summary)
}

/// Runs `sql` (a dump) against the target with psql in one transaction.
async fn load(conn: &ConnInfo, sql: Vec<u8>) -> Result<(), RestoreError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(pg_tool("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"])
        .envs(conn.child_env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            failed(format!(
                "cannot run psql: {e}; install the PostgreSQL client tools or set TIDEMARK_PG_BIN"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&sql)
            .await
            .map_err(|e| failed(format!("writing to psql: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(format!("psql: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "loading the renamed schemas into {} failed, and nothing of them was kept (one transaction): {}",
            conn.display,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_distinct_pairs() {
        let m = SchemaMap::parse("public=restored, sales = sales_then").unwrap();
        assert_eq!(m.targets(), ["restored", "sales_then"]);
        assert_eq!(m.source_of("restored"), "public");
        assert_eq!(m.source_of("other"), "other");
        assert!(SchemaMap::parse("public").unwrap_err().contains("old=new"));
        assert!(SchemaMap::parse("a=b,a=c").is_err());
        assert!(SchemaMap::parse("a=b,c=b").is_err());
        assert!(SchemaMap::parse("a=b,b=c").unwrap_err().contains("both"));
    }
}
