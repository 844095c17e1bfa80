//! PostgreSQL digest: per table, the row count and two 64-bit sums of the rows' MD5
//! hashes (of each row's text form, with fixed DateStyle, TimeZone and float
//! precision). Sums make it independent of row order and keep duplicate rows
//! counted; the whole computation runs in the server.

use super::conn::ConnInfo;
use super::layout::Selection;
use super::PgError;
use crate::config::Timeouts;
use crate::digest::{short_sha, Digest, PartDigest};

/// Digests every user table of the database at `url`.
pub async fn digest_url(url: &str) -> Result<Digest, PgError> {
    digest_with(url, &Timeouts::default(), &Selection::default()).await
}

/// [`digest_url`] with explicit timeouts, of the tables `selection` covers.
pub async fn digest_with(
    url: &str,
    timeouts: &Timeouts,
    selection: &Selection,
) -> Result<Digest, PgError> {
    let conn = ConnInfo::parse(url)?.with_timeouts(timeouts);
    let client = conn.connect().await?;
    digest(&client, &conn.display, selection).await
}

/// Digests the user tables visible to `client` that `selection` covers (in one
/// repeatable-read snapshot).
pub async fn digest(
    client: &tokio_postgres::Client,
    target: &str,
    selection: &Selection,
) -> Result<Digest, PgError> {
    let q = |e: tokio_postgres::Error| PgError::query(target, &e);
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(q)?;
    let tables = client
        .query(
            "SELECT format('%I.%I', schemaname, tablename), schemaname || '.' || tablename, schemaname::text, tablename::text FROM pg_tables
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'tidemark') ORDER BY schemaname, tablename",
            &[],
        )
        .await
        .map_err(q)?;
    let covered: Option<std::collections::HashSet<(String, String)>> = if selection.is_all() {
        None
    } else {
        Some(
            super::layout::tables_with_lineage(client, target)
                .await?
                .into_iter()
                .filter(|l| selection.covers(l))
                .map(|l| l[0].clone())
                .collect(),
        )
    };
    let mut parts = Vec::with_capacity(tables.len());
    for t in tables {
        let (quoted, name, schema, table): (String, String, String, String) =
            (t.get(0), t.get(1), t.get(2), t.get(3));
        if covered
            .as_ref()
            .is_some_and(|c| !c.contains(&(schema, table)))
        {
            continue;
        }
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text,
                            coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text
                     FROM (SELECT md5(t::text) AS h FROM {quoted} t) s"
                ),
                &[],
            )
            .await
            .map_err(q)?;
        let (rows, a, b): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
        parts.push(PartDigest {
            name,
            rows: rows as u64,
            digest: short_sha(&format!("{rows}:{a}:{b}")),
        });
    }
    client.batch_execute("COMMIT").await.map_err(q)?;
    Ok(Digest::from_parts("rows", parts))
}
