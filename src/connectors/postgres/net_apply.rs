//! Applying a segment's net state to the target: merged into the base image while
//! it loads ([`ImageFilter`], [`load_net_rows`] on connections of their own, in
//! parallel), or afterwards in one transaction ([`apply_segment`]: deletes in
//! batches, final rows by `COPY`, then the statements kept in order).

use std::collections::HashSet;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use super::conn::{db_error, ConnInfo};
use super::net::{Segment, TableNet};
use super::net_store::{Net, NetStore, Row, Val};
use super::restore::{run, run_all};
use super::restore_sql::{statement, Replayed};
use super::setup::{quote_ident, quote_literal};
use crate::event::{PgChange, PgOp, PgValue, PgValueKind};
use crate::restore::RestoreError;

/// Keys deleted per `DELETE ... IN (...)` statement.
const DELETE_CHUNK: usize = 1000;
/// COPY data is sent in pieces of about this size.
const SEND_BYTES: usize = 1 << 20;
/// Connections loading final rows at the same time, beside the image's.
pub(super) const LOADERS: usize = 3;

fn qualified(t: &TableNet) -> String {
    format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table))
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The key's values from its encoding (see `net_store::encode_key`).
fn key_values(mut k: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while k.len() >= 4 {
        let len = u32::from_le_bytes([k[0], k[1], k[2], k[3]]) as usize;
        let end = (4 + len).min(k.len());
        out.push(&k[4..end]);
        k = &k[end..];
    }
    out
}

/// Sends `table`'s final rows and appended rows by COPY; returns how many rows.
async fn copy_net_rows(
    client: &tokio_postgres::Client,
    store: &NetStore,
    t: &TableNet,
) -> Result<u64, RestoreError> {
    let q = |e: tokio_postgres::Error| {
        RestoreError::Target(format!(
            "loading the final rows of {}: {}",
            qualified(t),
            db_error(&e)
        ))
    };
    let sink = client
        .copy_in(&format!(
            "COPY {} ({}) FROM STDIN",
            qualified(t),
            column_list(&t.columns)
        ))
        .await
        .map_err(q)?;
    futures_util::pin_mut!(sink);
    let mut buf = Vec::with_capacity(SEND_BYTES + 4096);
    if t.key.is_empty() {
        for chunk in store.appends(t.id) {
            sink.send(Bytes::copy_from_slice(&chunk?))
                .await
                .map_err(q)?;
        }
    } else {
        for item in store.rows(t.id) {
            if let (_, Net::Full(r)) = item? {
                r.copy_line(&mut buf);
                if buf.len() >= SEND_BYTES {
                    sink.send(Bytes::from(std::mem::take(&mut buf)))
                        .await
                        .map_err(q)?;
                }
            }
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await.map_err(q)?;
    }
    sink.finish().await.map_err(q)
}

/// Loads the final rows of `tables` (merged with the image: no deletes needed) on up
/// to [`LOADERS`] connections of their own, one table each at a time; returns the
/// rows loaded.
pub(super) async fn load_net_rows(
    conn: &ConnInfo,
    replica_role: bool,
    store: &NetStore,
    tables: &[TableNet],
) -> Result<u64, RestoreError> {
    let loads = tables.iter().map(|t| async move {
        let client = conn
            .connect()
            .await
            .map_err(|e| RestoreError::Target(e.to_string()))?;
        if replica_role {
            client
                .batch_execute("SET session_replication_role = replica")
                .await
                .map_err(|e| RestoreError::Target(format!("{}: {}", conn.display, db_error(&e))))?;
        }
        copy_net_rows(&client, store, t).await
    });
    let mut total = 0;
    let mut running = futures_util::stream::iter(loads).buffer_unordered(LOADERS);
    while let Some(n) = running.next().await {
        total += n?;
    }
    Ok(total)
}

/// Applies the segment's state for the tables not in `done`, then its statements,
/// in one transaction; returns the rows loaded by COPY.
pub(super) async fn apply_segment(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    seg: &Segment,
    done: &HashSet<u32>,
) -> Result<u64, RestoreError> {
    let q = |e: tokio_postgres::Error| {
        RestoreError::Target(format!(
            "{}: applying the net effect of the history: {}",
            conn.display,
            db_error(&e)
        ))
    };
    client.batch_execute("BEGIN").await.map_err(q)?;
    let mut loaded = 0;
    for t in seg.keyed().filter(|t| !done.contains(&t.id)) {
        delete_changed(client, &seg.store, t).await.map_err(q)?;
        loaded += copy_net_rows(client, &seg.store, t).await?;
        update_partial(client, &seg.store, t).await.map_err(q)?;
    }
    for t in seg.appended().filter(|t| !done.contains(&t.id)) {
        loaded += copy_net_rows(client, &seg.store, t).await?;
    }
    run_all(client, "", &seg.statements, "").await.map_err(q)?;
    client.batch_execute("COMMIT").await.map_err(q)?;
    Ok(loaded)
}

/// Deletes the keys that end deleted or with a complete row, in batches.
async fn delete_changed(
    client: &tokio_postgres::Client,
    store: &NetStore,
    t: &TableNet,
) -> Result<(), tokio_postgres::Error> {
    let name = qualified(t);
    let key_cols: Vec<String> = t
        .key
        .iter()
        .map(|&k| quote_ident(t.columns.get(k as usize).map_or("", String::as_str)))
        .collect();
    let mut literal_keys = Vec::new();
    let flush = |keys: &mut Vec<String>| {
        let sql = format!(
            "DELETE FROM {name} WHERE ({}) IN ({})",
            key_cols.join(", "),
            keys.join(", ")
        );
        keys.clear();
        sql
    };
    for item in store.rows(t.id) {
        let Ok((k, net)) = item else { continue };
        if matches!(net, Net::Partial(_)) {
            continue;
        }
        let values = key_values(&k);
        match values
            .iter()
            .map(|v| std::str::from_utf8(v).ok())
            .collect::<Option<Vec<&str>>>()
        {
            Some(texts) => {
                literal_keys.push(format!(
                    "({})",
                    texts
                        .iter()
                        .map(|v| quote_literal(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                if literal_keys.len() >= DELETE_CHUNK {
                    client.batch_execute(&flush(&mut literal_keys)).await?;
                }
            }
            None => {
                let cond: Vec<String> = key_cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = ${}", i + 1))
                    .collect();
                let r = Replayed {
                    inserts_into: None,
                    sql: format!("DELETE FROM {name} WHERE {}", cond.join(" AND ")),
                    raw: values.iter().map(|v| v.to_vec()).collect(),
                };
                run(client, &r).await?;
            }
        }
    }
    if !literal_keys.is_empty() {
        client.batch_execute(&flush(&mut literal_keys)).await?;
    }
    Ok(())
}

/// Updates the keys whose final row lacks values the target holds.
async fn update_partial(
    client: &tokio_postgres::Client,
    store: &NetStore,
    t: &TableNet,
) -> Result<(), tokio_postgres::Error> {
    for item in store.rows(t.id) {
        let Ok((_, Net::Partial(row))) = item else {
            continue;
        };
        let change = PgChange {
            op: PgOp::Update as i32,
            schema: t.schema.clone(),
            table: t.table.clone(),
            columns: t.columns.clone(),
            key: t.key.clone(),
            new_tuple: row
                .values()
                .map(|v| match v {
                    Val::Null => PgValue {
                        kind: PgValueKind::Null as i32,
                        data: Vec::new(),
                    },
                    Val::Unknown => PgValue {
                        kind: PgValueKind::UnchangedToast as i32,
                        data: Vec::new(),
                    },
                    Val::Text(d) => PgValue {
                        kind: PgValueKind::Text as i32,
                        data: d.to_vec(),
                    },
                })
                .collect(),
            ..Default::default()
        };
        if let Ok(s) = statement(&change) {
            if !s.sql.is_empty() {
                let r = Replayed {
                    inserts_into: None,
                    sql: s.sql,
                    raw: s.raw,
                };
                run(client, &r).await?;
            }
        }
    }
    Ok(())
}

/// Filters a table's base-image rows (COPY text, in chunks split anywhere) against
/// the first segment's net state: rows of keys the history changed are left out
/// (their final rows are loaded beside the image), a key whose final row lacks
/// unchanged TOAST values keeps the image's values for those.
pub(super) struct ImageFilter<'a> {
    store: &'a NetStore,
    table: u32,
    /// Image column index of each key column, in key order.
    key_at: Vec<usize>,
    /// For each image column, its index among the history's columns.
    image_to_net: Vec<Option<usize>>,
    /// An unfinished line carried from the previous chunk.
    carry: Vec<u8>,
    /// Image rows left out.
    pub dropped: u64,
}

impl<'a> ImageFilter<'a> {
    /// A filter for an image table with `image_columns`, merged with `t`; `None` if
    /// the image's columns are not the history's (then the table is not merged).
    pub fn new(
        store: &'a NetStore,
        t: &TableNet,
        image_columns: &[String],
    ) -> Option<ImageFilter<'a>> {
        let mut a: Vec<&String> = image_columns.iter().collect();
        let mut b: Vec<&String> = t.columns.iter().collect();
        a.sort();
        b.sort();
        if a != b {
            return None;
        }
        let pos = |name: &String| image_columns.iter().position(|c| c == name);
        let key_at = t
            .key
            .iter()
            .map(|&k| t.columns.get(k as usize).and_then(pos))
            .collect::<Option<Vec<_>>>()?;
        let image_to_net = image_columns
            .iter()
            .map(|c| t.columns.iter().position(|n| n == c))
            .collect();
        Some(ImageFilter {
            store,
            table: t.id,
            key_at,
            image_to_net,
            carry: Vec::new(),
            dropped: 0,
        })
    }

    /// Filters the next chunk into `out` (whole lines only).
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), RestoreError> {
        let mut rest = chunk;
        if !self.carry.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                self.carry.extend_from_slice(rest);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&rest[..=nl]);
            self.line(&line, out)?;
            rest = &rest[nl + 1..];
        }
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            self.line(&rest[..=nl], out)?;
            rest = &rest[nl + 1..];
        }
        self.carry.extend_from_slice(rest);
        Ok(())
    }

    /// Whatever is left at the end of the table's rows (a last line without its
    /// newline, which COPY text does not produce).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), RestoreError> {
        if !self.carry.is_empty() {
            let mut line = std::mem::take(&mut self.carry);
            line.push(b'\n');
            self.line(&line, out)?;
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), RestoreError> {
        let body = &line[..line.len() - 1];
        let fields: Vec<&[u8]> = body.split(|&b| b == b'\t').collect();
        let mut key = Vec::new();
        for &i in &self.key_at {
            let Some(f) = fields.get(i).and_then(|f| unescape(f)) else {
                out.extend_from_slice(line);
                return Ok(());
            };
            key.extend_from_slice(&(f.len() as u32).to_le_bytes());
            key.extend_from_slice(&f);
        }
        match self.store.get(self.table, &key)? {
            None => out.extend_from_slice(line),
            Some(Net::Deleted | Net::Full(_)) => self.dropped += 1,
            Some(Net::Partial(row)) => {
                self.dropped += 1;
                complete_line(&row, &fields, &self.image_to_net, out);
            }
        }
        Ok(())
    }
}

/// An image line with the known values of `row` in place of the image's.
fn complete_line(row: &Row, fields: &[&[u8]], image_to_net: &[Option<usize>], out: &mut Vec<u8>) {
    let vals: Vec<Val> = row.values().collect();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match image_to_net
            .get(i)
            .copied()
            .flatten()
            .and_then(|j| vals.get(j))
        {
            Some(Val::Text(t)) => super::net_store::copy_escape(t, out),
            Some(Val::Null) => out.extend_from_slice(b"\\N"),
            _ => out.extend_from_slice(f),
        }
    }
    out.push(b'\n');
}

/// A COPY text field's bytes; `None` for `\N` (NULL).
fn unescape(f: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if f == b"\\N" {
        return None;
    }
    if !f.contains(&b'\\') {
        return Some(std::borrow::Cow::Borrowed(f));
    }
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] != b'\\' || i + 1 == f.len() {
            out.push(f[i]);
            i += 1;
            continue;
        }
        let c = f[i + 1];
        i += 2;
        out.push(match c {
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match f.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                v as u8
            }
            b'x' if f.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match f.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                v as u8
            }
            other => other,
        });
    }
    Some(std::borrow::Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::postgres::net_store::encode_key;

    fn table() -> TableNet {
        TableNet {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            columns: vec!["id".into(), "body".into(), "n".into()],
            key: vec![0],
        }
    }

    #[test]
    fn unescapes_copy_text() {
        assert_eq!(unescape(b"\\N"), None);
        assert_eq!(
            &*unescape(b"a\\tb\\\\c\\n\\101\\x41").unwrap(),
            b"a\tb\\c\nAA"
        );
    }

    #[test]
    fn image_rows_of_changed_keys_are_left_out_or_completed() {
        let mut store = NetStore::new(1 << 20, None);
        let key = |s: &str| encode_key([s.as_bytes()]);
        store.put(1, key("1"), Net::Deleted).unwrap();
        store
            .put(
                1,
                key("2"),
                Net::Full(Row::encode([Val::Text(b"2"), Val::Null, Val::Text(b"9")])),
            )
            .unwrap();
        store
            .put(
                1,
                key("a\tb"),
                Net::Partial(Row::encode([
                    Val::Text(b"a\tb"),
                    Val::Unknown,
                    Val::Text(b"7"),
                ])),
            )
            .unwrap();
        // The image has its columns in another order: n, id, body.
        let cols = vec!["n".to_string(), "id".to_string(), "body".to_string()];
        let mut f = ImageFilter::new(&store, &table(), &cols).unwrap();
        let image = b"0\t1\tx\n0\t2\ty\n0\ta\\tb\tlong\n0\t3\tz\n";
        let mut out = Vec::new();
        // Split anywhere, even inside a line.
        for piece in image.chunks(5) {
            f.feed(piece, &mut out).unwrap();
        }
        f.finish(&mut out).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "7\ta\\tb\tlong\n0\t3\tz\n"
        );
        assert_eq!(f.dropped, 3);
        let other = vec!["id".to_string(), "body".to_string()];
        assert!(ImageFilter::new(&store, &table(), &other).is_none());
    }
}
