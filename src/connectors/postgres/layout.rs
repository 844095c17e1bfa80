//! Restoring into another layout: a subset of the tables (`--tables`), also for
//! `digest`, so a subset restore can be compared with the same subset of its source.
//!
//! A subset restore loads the whole schema (the selected tables may use any type,
//! function or sequence of it), copies the image's rows of the selected tables only,
//! replays the history as always, then drops every table outside the selection
//! (`CASCADE`: views and foreign keys that depend on them go too, and are named in
//! the report). A partition belongs to the selection when it or a table it is a
//! partition of matches.

use tokio_postgres::Client;

use super::conn::ConnInfo;
use super::setup::quote_ident;
use super::PgError;

/// The `--tables` option of `restore` and `digest`.
pub const TABLES: &str = "tables";

/// One `--tables` entry: schema and table, `None` for `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    schema: Option<String>,
    table: Option<String>,
}

/// Which tables a restore or digest covers; empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection(Vec<Pattern>);

impl Selection {
    /// Parses `a.x,b.*,"My Schema"."T",y` (an unqualified name matches in every
    /// schema; `*` matches any name; double quotes keep dots and case).
    pub fn parse(list: &str) -> Result<Selection, String> {
        let mut out = Vec::new();
        for entry in split_unquoted(list, ',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let parts = split_unquoted(entry, '.');
            let name = |p: &str| -> Result<Option<String>, String> {
                let p = p.trim();
                if p == "*" {
                    return Ok(None);
                }
                if p.is_empty() {
                    return Err(format!("--tables: `{entry}` has an empty name"));
                }
                Ok(Some(
                    match p.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                        Some(q) => q.replace("\"\"", "\""),
                        None => p.to_string(),
                    },
                ))
            };
            let pattern = match parts.as_slice() {
                [table] => Pattern {
                    schema: None,
                    table: name(table)?,
                },
                [schema, table] => Pattern {
                    schema: name(schema)?,
                    table: name(table)?,
                },
                _ => {
                    return Err(format!(
                        "--tables: `{entry}` is not `schema.table`, `schema.*` or `table` (quote names holding dots: \"a.b\")"
                    ))
                }
            };
            out.push(pattern);
        }
        Ok(Selection(out))
    }

    /// True when every table is selected.
    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `schema.table` matches an entry.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        self.is_all()
            || self.0.iter().any(|p| {
                p.schema.as_deref().is_none_or(|s| s == schema)
                    && p.table.as_deref().is_none_or(|t| t == table)
            })
    }

    /// Whether the table is selected, itself or through a table it is a partition of
    /// (`lineage`: the table, then its ancestors, as `(schema, table)`).
    pub fn covers(&self, lineage: &[(String, String)]) -> bool {
        lineage.iter().any(|(s, t)| self.matches(s, t))
    }
}

/// Splits at `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, ch) in s.char_indices() {
        if ch == '"' {
            quoted = !quoted;
        } else if ch == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + 1;
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Every user table of the database with its lineage (itself, then the tables it is
/// a partition of), in name order.
pub async fn tables_with_lineage(
    client: &Client,
    target: &str,
) -> Result<Vec<Vec<(String, String)>>, PgError> {
    let rows = client
        .query(
            "SELECT array_agg(n.nspname::text ORDER BY a.depth), array_agg(c.relname::text ORDER BY a.depth)
             FROM pg_class t
             JOIN pg_namespace tn ON tn.oid = t.relnamespace
             CROSS JOIN LATERAL (
               SELECT p.relid, p.depth FROM pg_partition_ancestors(t.oid) WITH ORDINALITY p(relid, depth)
               UNION ALL SELECT t.oid, 1 WHERE NOT EXISTS (SELECT 1 FROM pg_partition_ancestors(t.oid))
             ) a
             JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE t.relkind IN ('r', 'p') AND tn.nspname NOT IN ('pg_catalog', 'information_schema', 'tidemark')
               AND tn.nspname NOT LIKE 'pg\\_%'
             GROUP BY t.oid, tn.nspname, t.relname ORDER BY tn.nspname, t.relname",
            &[],
        )
        .await
        .map_err(|e| PgError::query(target, &e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (schemas, tables): (Vec<String>, Vec<String>) = (r.get(0), r.get(1));
            schemas.into_iter().zip(tables).collect()
        })
        .collect())
}

/// The lineage of one table of the target, as [`tables_with_lineage`] gives it.
pub async fn lineage(
    client: &Client,
    conn: &ConnInfo,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String)>, PgError> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_partition_ancestors(to_regclass($1)) WITH ORDINALITY a(relid, depth)
             JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY a.depth",
            &[&qualified],
        )
        .await
        .map_err(|e| PgError::query(&conn.display, &e))?;
    let mut out: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if out.is_empty() {
        out.push((schema.to_string(), table.to_string()));
    }
    Ok(out)
}

/// Drops every table of the target outside `selection` (after detaching selected
/// partitions from unselected parents); returns what the report says.
pub async fn drop_unselected(
    client: &Client,
    conn: &ConnInfo,
    selection: &Selection,
) -> Result<Vec<String>, PgError> {
    let q = |e: tokio_postgres::Error| PgError::query(&conn.display, &e);
    let all = tables_with_lineage(client, &conn.display).await?;
    let mut dropped = Vec::new();
    for lineage in &all {
        let (schema, table) = &lineage[0];
        let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
        if selection.covers(lineage) {
            // Selected, but its parent is not: keep it as a table of its own.
            if let Some((ps, pt)) = lineage.get(1) {
                if !selection.covers(&lineage[1..]) {
                    client
                        .batch_execute(&format!(
                            "ALTER TABLE {}.{} DETACH PARTITION {name}",
                            quote_ident(ps),
                            quote_ident(pt)
                        ))
                        .await
                        .map_err(q)?;
                }
            }
            continue;
        }
        dropped.push(format!("{schema}.{table}"));
    }
    for name in &dropped {
        let (schema, table) = name.split_once('.').unwrap_or(("", name));
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {}.{} CASCADE",
                quote_ident(schema),
                quote_ident(table)
            ))
            .await
            .map_err(q)?;
    }
    if dropped.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![format!(
        "--tables: {} tables outside the selection dropped after the replay (with what depended on them): {}",
        dropped.len(),
        dropped.join(", ")
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_qualified_wildcard_and_quoted_names() {
        let s = Selection::parse("a.x, b.*,\"My Schema\".\"t.1\",y").unwrap();
        assert!(s.matches("a", "x") && !s.matches("a", "z"));
        assert!(s.matches("b", "anything"));
        assert!(s.matches("My Schema", "t.1") && !s.matches("my schema", "t.1"));
        assert!(s.matches("public", "y") && s.matches("other", "y"));
        assert!(!s.matches("public", "z"));
        assert!(s.covers(&[("p".into(), "leaf".into()), ("a".into(), "x".into())]));
        assert!(Selection::parse("").unwrap().is_all());
        assert!(Selection::parse("a.b.c")
            .unwrap_err()
            .contains("schema.table"));
        assert!(Selection::parse("a.").unwrap_err().contains("empty name"));
    }
}
