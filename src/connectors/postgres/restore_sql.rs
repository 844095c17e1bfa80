//! SQL for replaying journaled PostgreSQL changes. Values are the source's text
//! forms (DateStyle ISO, TimeZone UTC, extra_float_digits 3), written as untyped
//! literals that PostgreSQL coerces to each column's type.

use super::error::Malformed;
use crate::connectors::postgres::setup::{quote_ident, quote_literal};
use crate::event::{PgChange, PgOp, PgValue, PgValueKind};

fn literal(v: &PgValue) -> Option<String> {
    match PgValueKind::try_from(v.kind) {
        Ok(PgValueKind::Null) => Some("NULL".into()),
        Ok(PgValueKind::UnchangedToast) => None,
        Ok(PgValueKind::Binary) => Some(format!("'\\x{}'::bytea", crate::digest::hex(&v.data))),
        _ => Some(quote_literal(&String::from_utf8_lossy(&v.data))),
    }
}

fn table(c: &PgChange) -> String {
    format!("{}.{}", quote_ident(&c.schema), quote_ident(&c.table))
}

/// The row-identifying condition of an update or delete.
fn identity(c: &PgChange) -> Result<String, Malformed> {
    let col = |i: usize| {
        c.columns
            .get(i)
            .map(|n| quote_ident(n))
            .ok_or_else(|| format!("change to {} has a tuple wider than its columns", table(c)))
    };
    if c.old_is_full {
        // REPLICA IDENTITY FULL: match one row on every column by its text form
        // (works for types without an equality operator, such as json).
        let mut conds = Vec::new();
        for (i, v) in c.old_tuple.iter().enumerate() {
            match literal(v) {
                Some(l) if l == "NULL" => conds.push(format!("{} IS NULL", col(i)?)),
                Some(l) => conds.push(format!("{}::text = {l}::text", col(i)?)),
                None => {}
            }
        }
        let t = table(c);
        let cond = if conds.is_empty() {
            "true".to_string()
        } else {
            conds.join(" AND ")
        };
        return Ok(format!(
            "ctid = (SELECT ctid FROM {t} WHERE {cond} LIMIT 1)"
        ));
    }
    let source = if c.old_tuple.is_empty() {
        &c.new_tuple
    } else {
        &c.old_tuple
    };
    if c.key.is_empty() {
        return Err(format!(
            "table {} has no replica identity: its updates and deletes cannot be replayed",
            table(c)
        )
        .into());
    }
    let mut conds = Vec::new();
    for &k in &c.key {
        let k = k as usize;
        let v = source
            .get(k)
            .and_then(literal)
            .ok_or_else(|| format!("change to {} lacks key column {k}", table(c)))?;
        conds.push(format!("{} = {v}", col(k)?));
    }
    Ok(conds.join(" AND "))
}

/// One SQL statement reproducing `c`.
pub fn statement(c: &PgChange) -> Result<String, Malformed> {
    let op = PgOp::try_from(c.op).map_err(|_| format!("unknown PostgreSQL operation {}", c.op))?;
    Ok(match op {
        PgOp::Insert => {
            let (mut cols, mut vals) = (Vec::new(), Vec::new());
            for (i, v) in c.new_tuple.iter().enumerate() {
                if let (Some(name), Some(l)) = (c.columns.get(i), literal(v)) {
                    cols.push(quote_ident(name));
                    vals.push(l);
                }
            }
            format!(
                "INSERT INTO {} ({}) VALUES ({})",
                table(c),
                cols.join(", "),
                vals.join(", ")
            )
        }
        PgOp::Update => {
            let sets: Vec<String> = c
                .new_tuple
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    Some(format!(
                        "{} = {}",
                        quote_ident(c.columns.get(i)?),
                        literal(v)?
                    ))
                })
                .collect();
            if sets.is_empty() {
                return Ok(String::new());
            }
            format!(
                "UPDATE {} SET {} WHERE {}",
                table(c),
                sets.join(", "),
                identity(c)?
            )
        }
        PgOp::Delete => format!("DELETE FROM {} WHERE {}", table(c), identity(c)?),
        PgOp::Truncate | PgOp::Ddl => c.ddl.clone(),
        PgOp::Unspecified => return Err("change without an operation".into()),
    })
}

/// One statement of a transaction being replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// `(schema, table)` when the statement inserts a captured row.
    pub inserts_into: Option<(String, String)>,
    /// The SQL.
    pub sql: String,
}

/// Puts each `CREATE TABLE ... AS` / `SELECT ... INTO` before the rows it produced.
///
/// The DDL trigger fires at the end of the statement, so the journal holds the rows
/// such a statement inserted *before* the statement itself: replayed as journaled,
/// they would go into a table that does not exist yet. The statement is moved to
/// just before its first row and followed by a `TRUNCATE` of the new table, so the
/// table gets its columns from the statement and its rows, exactly once, from the
/// journal (even where the query would not give the same rows again).
pub fn created_from_query_first(mut txn: Vec<Replayed>) -> Vec<Replayed> {
    let mut d = 0;
    while d < txn.len() {
        if txn[d].inserts_into.is_none() {
            if let Some(name) = created_from_query(&txn[d].sql) {
                let mut f = d;
                while f > 0
                    && txn[f - 1]
                        .inserts_into
                        .as_ref()
                        .is_some_and(|(_, t)| *t == name)
                {
                    f -= 1;
                }
                if f < d {
                    let (schema, table) = txn[f].inserts_into.clone().unwrap_or_default();
                    let ddl = txn.remove(d);
                    txn.insert(f, ddl);
                    txn.insert(
                        f + 1,
                        Replayed {
                            inserts_into: None,
                            sql: format!(
                                "TRUNCATE {}.{}",
                                quote_ident(&schema),
                                quote_ident(&table)
                            ),
                        },
                    );
                    d += 1;
                }
            }
        }
        d += 1;
    }
    txn
}

/// The table a `CREATE TABLE ... AS` or `SELECT ... INTO` statement creates (its
/// last name component as the server stores it), if `sql` is one. `sql` may start
/// with the `SET LOCAL search_path` line of a journaled DDL statement.
pub fn created_from_query(sql: &str) -> Option<String> {
    static CTAS: std::sync::OnceLock<(regex::Regex, regex::Regex)> = std::sync::OnceLock::new();
    let (ctas, select_into) = CTAS.get_or_init(|| {
        let name = r#"((?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*))?)"#;
        let ctas = format!(
            r"(?is)^\s*CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{name}\s*(?:\([^()]*\)\s*)?(?:USING\s+\w+\s*)?(?:WITH\s*\([^()]*\)\s*|WITHOUT\s+OIDS\s*)?(?:ON\s+COMMIT\s+\w+(?:\s+\w+)?\s*)?(?:TABLESPACE\s+\w+\s*)?AS\b"
        );
        let select_into = format!(
            r"(?is)^\s*SELECT\b.*?\bINTO\s+(?:(?:TEMP|TEMPORARY|UNLOGGED)\s+)?(?:TABLE\s+)?{name}"
        );
        (
            regex::Regex::new(&ctas).unwrap_or_else(|e| panic!("CTAS pattern: {e}")),
            regex::Regex::new(&select_into).unwrap_or_else(|e| panic!("SELECT INTO pattern: {e}")),
        )
    });
    let body = match sql.strip_prefix("SET LOCAL search_path") {
        Some(rest) => rest.split_once('\n').map_or("", |(_, b)| b),
        None => sql,
    };
    let full = ctas
        .captures(body)
        .or_else(|| select_into.captures(body))?
        .get(1)?
        .as_str();
    let last = split_qualified(full).pop()?;
    Some(
        match last.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
            Some(quoted) => quoted.replace("\"\"", "\""),
            None => last.to_ascii_lowercase(),
        },
    )
}

/// `a."b.c"` into `["a", "\"b.c\""]`: dots inside quotes do not split.
fn split_qualified(name: &str) -> Vec<String> {
    let (mut parts, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for ch in name.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            '.' if !quoted => parts.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(ch),
        }
    }
    parts.push(cur.trim().to_string());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> PgValue {
        PgValue {
            kind: PgValueKind::Text as i32,
            data: s.as_bytes().to_vec(),
        }
    }

    fn change(op: PgOp) -> PgChange {
        PgChange {
            op: op as i32,
            schema: "public".into(),
            table: "t".into(),
            columns: vec!["id".into(), "v".into()],
            key: vec![0],
            ..Default::default()
        }
    }

    #[test]
    fn insert_quotes_values_and_keeps_nulls() {
        let mut c = change(PgOp::Insert);
        c.new_tuple = vec![text("1"), text("it's")];
        assert_eq!(
            statement(&c).unwrap(),
            "INSERT INTO \"public\".\"t\" (\"id\", \"v\") VALUES ('1', 'it''s')"
        );
        c.new_tuple[1] = PgValue {
            kind: PgValueKind::Null as i32,
            data: vec![],
        };
        assert!(statement(&c).unwrap().ends_with("VALUES ('1', NULL)"));
    }

    #[test]
    fn update_skips_unchanged_toast_and_uses_the_key() {
        let mut c = change(PgOp::Update);
        c.new_tuple = vec![
            text("1"),
            PgValue {
                kind: PgValueKind::UnchangedToast as i32,
                data: vec![],
            },
        ];
        assert_eq!(
            statement(&c).unwrap(),
            "UPDATE \"public\".\"t\" SET \"id\" = '1' WHERE \"id\" = '1'"
        );
        c.old_tuple = vec![text("7"), PgValue::default()];
        assert!(statement(&c).unwrap().ends_with("WHERE \"id\" = '7'"));
    }

    #[test]
    fn full_identity_matches_one_row_by_text() {
        let mut c = change(PgOp::Delete);
        c.key.clear();
        c.old_is_full = true;
        c.old_tuple = vec![
            text("1"),
            PgValue {
                kind: PgValueKind::Null as i32,
                data: vec![],
            },
        ];
        assert_eq!(
            statement(&c).unwrap(),
            "DELETE FROM \"public\".\"t\" WHERE ctid = (SELECT ctid FROM \"public\".\"t\" WHERE \"id\"::text = '1'::text AND \"v\" IS NULL LIMIT 1)"
        );
    }

    #[test]
    fn keyless_update_is_an_error_not_a_guess() {
        let mut c = change(PgOp::Update);
        c.key.clear();
        c.new_tuple = vec![text("1"), text("x")];
        assert!(statement(&c).unwrap_err().0.contains("no replica identity"));
    }

    #[test]
    fn finds_tables_created_from_queries() {
        let cases = [
            (
                "SET LOCAL search_path TO \"$user\", public;\nCREATE TABLE t2 AS SELECT 1",
                Some("t2"),
            ),
            (
                "create unlogged table if not exists S.\"Odd Name\" as table x",
                Some("Odd Name"),
            ),
            (
                "CREATE TABLE Big (a, b) WITH (fillfactor=70) AS VALUES (1, 2)",
                Some("big"),
            ),
            ("SELECT a, b INTO TEMP TABLE t3 FROM t", Some("t3")),
            ("select * into \"we\"\"ird\" from t", Some("we\"ird")),
            ("CREATE TABLE t (a int, b text)", None),
            ("CREATE TABLE t (LIKE u INCLUDING ALL)", None),
            ("INSERT INTO t SELECT 1", None),
        ];
        for (sql, want) in cases {
            assert_eq!(created_from_query(sql).as_deref(), want, "{sql}");
        }
    }

    #[test]
    fn ctas_moves_before_its_rows_with_a_truncate() {
        let ins = |t: &str, n: u32| Replayed {
            inserts_into: Some(("public".into(), t.into())),
            sql: format!("INSERT INTO {t} VALUES ({n})"),
        };
        let ddl = Replayed {
            inserts_into: None,
            sql: "CREATE TABLE t2 AS SELECT * FROM t".into(),
        };
        let out = created_from_query_first(vec![
            ins("t", 1),
            ins("t2", 1),
            ins("t2", 2),
            ddl.clone(),
            ins("t2", 3),
        ]);
        let sql: Vec<&str> = out.iter().map(|r| r.sql.as_str()).collect();
        assert_eq!(
            sql,
            [
                "INSERT INTO t VALUES (1)",
                "CREATE TABLE t2 AS SELECT * FROM t",
                "TRUNCATE \"public\".\"t2\"",
                "INSERT INTO t2 VALUES (1)",
                "INSERT INTO t2 VALUES (2)",
                "INSERT INTO t2 VALUES (3)",
            ]
        );
        // WITH NO DATA: no rows before it, nothing moves.
        assert_eq!(created_from_query_first(vec![ddl.clone()]), vec![ddl]);
    }
}
