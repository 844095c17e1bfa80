//! SQL for replaying journaled PostgreSQL changes. Values are the source's text
//! forms (DateStyle ISO, TimeZone UTC, extra_float_digits 3), written as untyped
//! literals that PostgreSQL coerces to each column's type. A value whose bytes are
//! not UTF-8 (a `SQL_ASCII` database's text) cannot be written into SQL text: it
//! becomes a parameter (`$n`), sent as the bytes journaled, in text format, so the
//! server coerces it exactly as it would the literal.

use super::error::Malformed;
use crate::connectors::postgres::setup::{quote_ident, quote_literal};
use crate::event::{PgChange, PgOp, PgValue, PgValueKind};

/// A statement reproducing a change: SQL, and the values of its `$n` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statement {
    /// The SQL (empty: nothing to do).
    pub sql: String,
    /// Raw text values for `$1`, `$2`, ...
    pub raw: Vec<Vec<u8>>,
}

fn literal(v: &PgValue, raw: &mut Vec<Vec<u8>>) -> Option<String> {
    match PgValueKind::try_from(v.kind) {
        Ok(PgValueKind::Null) => Some("NULL".into()),
        Ok(PgValueKind::UnchangedToast) => None,
        Ok(PgValueKind::Binary) => Some(format!("'\\x{}'::bytea", crate::digest::hex(&v.data))),
        _ => match std::str::from_utf8(&v.data) {
            Ok(text) => Some(quote_literal(text)),
            Err(_) => {
                raw.push(v.data.clone());
                Some(format!("${}", raw.len()))
            }
        },
    }
}

fn table(c: &PgChange) -> String {
    format!("{}.{}", quote_ident(&c.schema), quote_ident(&c.table))
}

/// The row-identifying condition of an update or delete.
fn identity(c: &PgChange, raw: &mut Vec<Vec<u8>>) -> Result<String, Malformed> {
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
            match literal(v, raw) {
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
            .and_then(|v| literal(v, raw))
            .ok_or_else(|| format!("change to {} lacks key column {k}", table(c)))?;
        conds.push(format!("{} = {v}", col(k)?));
    }
    Ok(conds.join(" AND "))
}

/// One SQL statement reproducing `c`.
pub fn statement(c: &PgChange) -> Result<Statement, Malformed> {
    let op = PgOp::try_from(c.op).map_err(|_| format!("unknown PostgreSQL operation {}", c.op))?;
    let mut raw = Vec::new();
    let sql = match op {
        PgOp::Insert => {
            let (mut cols, mut vals) = (Vec::new(), Vec::new());
            for (i, v) in c.new_tuple.iter().enumerate() {
                if let (Some(name), Some(l)) = (c.columns.get(i), literal(v, &mut raw)) {
                    cols.push(quote_ident(name));
                    vals.push(l);
                }
            }
            // OVERRIDING SYSTEM VALUE: identity columns GENERATED ALWAYS take the
            // journaled values (it has no effect on other tables).
            format!(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
                table(c),
                cols.join(", "),
                vals.join(", ")
            )
        }
        PgOp::Update => {
            let mut sets = Vec::new();
            // Without an old tuple the key did not change: it is left out of SET (an
            // identity column GENERATED ALWAYS may only be set to DEFAULT).
            let key_unchanged = c.old_tuple.is_empty();
            for (i, v) in c.new_tuple.iter().enumerate() {
                if key_unchanged && c.key.contains(&(i as u32)) {
                    continue;
                }
                if let (Some(name), Some(l)) = (c.columns.get(i), literal(v, &mut raw)) {
                    sets.push(format!("{} = {l}", quote_ident(name)));
                }
            }
            if sets.is_empty() {
                return Ok(Statement::default());
            }
            let cond = identity(c, &mut raw)?;
            format!("UPDATE {} SET {} WHERE {cond}", table(c), sets.join(", "))
        }
        PgOp::Delete => {
            let cond = identity(c, &mut raw)?;
            format!("DELETE FROM {} WHERE {cond}", table(c))
        }
        PgOp::Ddl if c.nested => guarded(&c.ddl),
        PgOp::Truncate | PgOp::Ddl | PgOp::Sequence => c.ddl.clone(),
        PgOp::Unspecified => return Err("change without an operation".into()),
    };
    Ok(Statement { sql, raw })
}

/// The statement replaying `c`, if it does anything.
pub fn replayed(c: &PgChange) -> Result<Option<Replayed>, Malformed> {
    let s = statement(c)?;
    if s.sql.is_empty() {
        return Ok(None);
    }
    Ok(Some(Replayed {
        inserts_into: (c.op == PgOp::Insert as i32).then(|| (c.schema.clone(), c.table.clone())),
        sql: s.sql,
        raw: s.raw,
    }))
}

/// Rows inserted, updated and deleted so far in the target's transaction.
const ROWS_CHANGED: &str = "(SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_xact_user_tables)::text";

/// A `DO` block or function call that ran DDL, replayed only if it changes no rows:
/// the rows it changed on the source are journaled as changes of their own, and
/// running it again would apply them twice.
fn guarded(statement: &str) -> String {
    format!(
        "SELECT set_config('tidemark.rows_before', {ROWS_CHANGED}, true);\n{statement};\n\
         DO $tidemark_guard$ BEGIN IF {ROWS_CHANGED} <> current_setting('tidemark.rows_before') THEN \
         RAISE EXCEPTION 'this DO block or function ran DDL and also changed rows: replaying it would apply those rows twice, so tidemark cannot restore past it exactly (restore to a moment before it, or move its DDL out of the block)'; \
         END IF; END $tidemark_guard$"
    )
}

/// One statement of a transaction being replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// `(schema, table)` when the statement inserts a captured row.
    pub inserts_into: Option<(String, String)>,
    /// The SQL.
    pub sql: String,
    /// Raw text values of its `$n` parameters.
    pub raw: Vec<Vec<u8>>,
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
                            raw: Vec::new(),
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
            statement(&c).unwrap().sql,
            "INSERT INTO \"public\".\"t\" (\"id\", \"v\") OVERRIDING SYSTEM VALUE VALUES ('1', 'it''s')"
        );
        c.new_tuple[1] = PgValue {
            kind: PgValueKind::Null as i32,
            data: vec![],
        };
        assert!(statement(&c).unwrap().sql.ends_with("VALUES ('1', NULL)"));
    }

    #[test]
    fn text_that_is_not_utf8_becomes_a_raw_parameter() {
        let mut c = change(PgOp::Update);
        let bytes = PgValue {
            kind: PgValueKind::Text as i32,
            data: vec![b'a', 0x80, 0xff],
        };
        c.new_tuple = vec![text("1"), bytes.clone()];
        c.old_tuple = vec![bytes.clone(), text("x")];
        c.key = vec![0];
        let s = statement(&c).unwrap();
        assert_eq!(
            s.sql,
            "UPDATE \"public\".\"t\" SET \"id\" = '1', \"v\" = $1 WHERE \"id\" = $2"
        );
        assert_eq!(s.raw, vec![bytes.data.clone(), bytes.data]);
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
        // Key unchanged and the rest unchanged TOAST: nothing to set.
        assert_eq!(statement(&c).unwrap().sql, "");
        c.new_tuple.push(text("x"));
        c.columns.push("w".into());
        assert_eq!(
            statement(&c).unwrap().sql,
            "UPDATE \"public\".\"t\" SET \"w\" = 'x' WHERE \"id\" = '1'"
        );
        // The key changed: the old key finds the row, the new one is set.
        c.old_tuple = vec![text("7"), PgValue::default()];
        assert_eq!(
            statement(&c).unwrap().sql,
            "UPDATE \"public\".\"t\" SET \"id\" = '1', \"w\" = 'x' WHERE \"id\" = '7'"
        );
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
            statement(&c).unwrap().sql,
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
            raw: Vec::new(),
        };
        let ddl = Replayed {
            inserts_into: None,
            sql: "CREATE TABLE t2 AS SELECT * FROM t".into(),
            raw: Vec::new(),
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
