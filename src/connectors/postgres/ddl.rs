//! DDL messages from the event trigger, turned into the one statement to replay.
//!
//! The trigger fires once per DDL command but only sees the whole query string,
//! which may hold several statements, DML among them (migration tools send whole
//! files). It therefore sends `<n>\n<search_path>\n<query string>`, where `n` counts
//! the DDL commands of that string so far in the transaction. Capture splits the
//! string into statements and keeps the `n`-th DDL statement, so replay runs each
//! DDL statement once, in its place between the changes around it.

use super::error::Malformed;

/// Splits SQL text into statements at top-level semicolons, honouring quotes,
/// quoted identifiers, dollar quoting and comments. Empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\'' => {
                let escapes = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'$' => {
                // $tag$ ... $tag$ (a tag is letters, digits, underscores; not a $1 parameter).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e) if b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &sql[i..=e];
                        match sql[e + 1..].find(tag) {
                            Some(close) => i = e + 1 + close + tag.len(),
                            None => i = b.len(),
                        }
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                let stmt = sql[start..i].trim();
                if !stmt.is_empty() {
                    out.push(stmt);
                }
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    let tail = sql.get(start..).unwrap_or("").trim();
    if !tail.is_empty() {
        out.push(tail);
    }
    out
}

/// Whether a statement is one that fires a `ddl_command_end` event trigger.
fn is_ddl(stmt: &str) -> bool {
    let first = stmt
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .and_then(|l| l.split(|c: char| c.is_whitespace() || c == '(').next())
        .unwrap_or("")
        .to_ascii_uppercase();
    if first == "SELECT" {
        // SELECT ... INTO creates a table.
        return super::restore_sql::created_from_query(stmt).is_some();
    }
    matches!(
        first.as_str(),
        "CREATE"
            | "ALTER"
            | "DROP"
            | "COMMENT"
            | "GRANT"
            | "REVOKE"
            | "SECURITY"
            | "IMPORT"
            | "REFRESH"
    )
}

/// A DDL statement to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ddl {
    /// The statement, after a `SET LOCAL search_path` line.
    pub sql: String,
    /// The DDL ran inside a `DO` block or a function: `sql` is the whole top-level
    /// statement, which replay must run once and only if it changes no rows.
    pub nested: bool,
}

/// Turns a trigger message into the statement to replay (with its search_path);
/// `None` when an earlier message of the same statement already carries it (the
/// second and later DDL commands of one `DO` block or function call).
pub fn statement_from_message(content: &str) -> Result<Option<Ddl>, Malformed> {
    let mut parts = content.splitn(3, '\n');
    let (n, search_path, query) = match (parts.next(), parts.next(), parts.next()) {
        (Some(n), Some(p), Some(q)) => (
            n.trim()
                .parse::<usize>()
                .map_err(|_| "DDL message without a command number")?,
            p,
            q,
        ),
        _ => return Err("malformed DDL message".into()),
    };
    let statements = split_statements(query);
    let (chosen, nested) = if statements.len() == 1 {
        let nested = !is_ddl(statements[0]);
        if nested && n > 1 {
            return Ok(None);
        }
        (statements[0], nested)
    } else {
        match statements
            .iter()
            .filter(|s| is_ddl(s))
            .nth(n.saturating_sub(1))
        {
            Some(s) => (*s, false),
            None => {
                tracing::warn!(query, "cannot tell which statement of a multi-statement DDL string ran; journaling the whole string");
                (query, false)
            }
        }
    };
    Ok(Some(Ddl {
        sql: format!("SET LOCAL search_path TO {search_path};\n{chosen}"),
        nested,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_around_quotes_comments_and_dollar_bodies() {
        let sql = "CREATE TABLE a (x text DEFAULT ';'); -- c;\nINSERT INTO a VALUES ('it''s;'), (E'\\';');\n\
                   CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql; /* x; /* y; */ */ ALTER TABLE \"we;ird\" ADD y int";
        let s = split_statements(sql);
        assert_eq!(s.len(), 4, "{s:#?}");
        assert!(s[0].starts_with("CREATE TABLE a"));
        assert!(s[1].contains("INSERT INTO a"));
        assert!(s[2].ends_with("LANGUAGE sql"));
        assert!(s[3].ends_with("ADD y int"));
    }

    #[test]
    fn picks_the_nth_ddl_statement_and_skips_dml() {
        let msg = "2\n\"$user\", public\nCREATE TABLE t (k int); INSERT INTO t VALUES (1); ALTER TABLE t ADD v int; UPDATE t SET v = 1";
        assert_eq!(
            statement_from_message(msg).unwrap(),
            Some(Ddl {
                sql: "SET LOCAL search_path TO \"$user\", public;\nALTER TABLE t ADD v int".into(),
                nested: false
            })
        );
        let one = "1\npublic\nALTER TABLE t DROP COLUMN v";
        let ddl = statement_from_message(one).unwrap().unwrap();
        assert!(ddl.sql.ends_with("ALTER TABLE t DROP COLUMN v") && !ddl.nested);
        assert!(statement_from_message("garbage").is_err());
    }

    #[test]
    fn ddl_inside_a_block_or_function_is_the_whole_statement_once() {
        let block = "DO $$ BEGIN CREATE TABLE a (x int); CREATE TABLE b (y int); END $$";
        let first = statement_from_message(&format!("1\npublic\n{block}"))
            .unwrap()
            .unwrap();
        assert!(first.nested && first.sql.ends_with(block), "{first:?}");
        assert_eq!(
            statement_from_message(&format!("2\npublic\n{block}")).unwrap(),
            None
        );
        let call = statement_from_message("1\npublic\nSELECT make_partitions(2026)")
            .unwrap()
            .unwrap();
        assert!(call.nested);
        let into = statement_from_message("1\npublic\nSELECT * INTO t2 FROM t")
            .unwrap()
            .unwrap();
        assert!(!into.nested);
    }
}
