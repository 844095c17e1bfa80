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
}
