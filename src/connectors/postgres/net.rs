//! Net-effect replay: the state at T, not the path to it.
//!
//! Between barriers, the row changes of keyed tables collapse per key into at most
//! one delete and one final row: a key that ends deleted is deleted, one that ends
//! with a complete row is deleted and loaded again by `COPY`. A key whose final row
//! lacks unchanged TOAST values that only the target holds ends as one `UPDATE` of
//! the columns known. Tables without a key (`REPLICA IDENTITY FULL`) and sequence
//! values keep their statements, in order (changes to different tables commute:
//! the restore session fires no triggers and checks no foreign keys).
//!
//! A barrier is a transaction holding DDL or a `TRUNCATE` (or any change that
//! cannot be netted): the pending net state is applied, then that transaction is
//! replayed statement by statement, exactly as the ordinary replay does. Only
//! transactions journaled whole take part, as in the ordinary replay.
//!
//! The result equals replaying every change (a test compares both on one journal);
//! the state is kept in memory, one entry per distinct key changed in a segment.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::SinkExt;

use super::conn::{db_error, ConnInfo};
use super::restore::{describe_txn, run, run_all, state_left, PgRestoreSummary};
use super::restore_sql::{created_from_query_first, replayed, statement, Replayed};
use super::setup::{quote_ident, quote_literal};
use crate::event::{Payload, PgChange, PgOp, PgValue, PgValueKind};
use crate::journal::Journal;
use crate::position::PositionKind;
use crate::restore::{ProgressSink, RestoreError, RestorePlan};

/// Keys deleted per `DELETE ... IN (...)` statement.
const DELETE_CHUNK: usize = 1000;

fn failed(message: String) -> RestoreError {
    RestoreError::Target(message)
}

/// A key's value bytes, in key-column order.
type Key = Vec<Vec<u8>>;

/// What a key ends as in the current segment.
enum Net {
    Deleted,
    /// Every column's value.
    Full(Vec<PgValue>),
    /// Some columns unknown (`None`: unchanged TOAST the target holds).
    Partial(Vec<Option<PgValue>>),
}

/// A keyed table's pending net state.
struct TableNet {
    schema: String,
    table: String,
    columns: Vec<String>,
    key: Vec<u32>,
    rows: HashMap<Key, Net>,
}

/// A keyless table's rows to load: its columns and the rows.
type Appends = (Vec<String>, Vec<Vec<PgValue>>);

/// The pending state of a segment.
#[derive(Default)]
struct Segment {
    tables: HashMap<(String, String), TableNet>,
    /// Statements kept as they are (keyless tables, sequences), in order.
    statements: Vec<Replayed>,
    /// Tables whose changes in this segment go as statements (to keep their order).
    statement_tables: std::collections::HashSet<(String, String)>,
    /// Rows inserted into keyless tables before any statement of theirs in this
    /// segment: loaded by `COPY`, before the statements.
    appends: HashMap<(String, String), Appends>,
}

fn is_text(v: &PgValue) -> bool {
    matches!(
        PgValueKind::try_from(v.kind),
        Ok(PgValueKind::Text | PgValueKind::Null | PgValueKind::UnchangedToast)
    )
}

fn unchanged(v: &PgValue) -> bool {
    v.kind == PgValueKind::UnchangedToast as i32
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.statements.is_empty() && self.appends.is_empty()
    }

    /// Takes an insert into a keyless table as a row to load; `false`: it must go as
    /// a statement (one of its table's statements is pending, or it cannot be copied).
    fn append(&mut self, c: &PgChange) -> bool {
        let table = (c.schema.clone(), c.table.clone());
        if c.op != PgOp::Insert as i32
            || self.statement_tables.contains(&table)
            || !c.new_tuple.iter().all(|v| is_text(v) && !unchanged(v))
        {
            return false;
        }
        let (columns, rows) = self
            .appends
            .entry(table)
            .or_insert_with(|| (c.columns.clone(), Vec::new()));
        if *columns != c.columns {
            return false;
        }
        rows.push(c.new_tuple.clone());
        true
    }

    /// Takes a row change into the net state; `false`: it cannot be netted here
    /// (the caller applies what is pending and replays it as a statement).
    fn add(&mut self, c: &PgChange) -> bool {
        let Ok(op) = PgOp::try_from(c.op) else {
            return false;
        };
        // REPLICA IDENTITY FULL flags every column as key: such a table may hold
        // identical rows, which only its statements restore as many times.
        if c.key.is_empty() || c.old_is_full || c.key.len() >= c.columns.len() {
            return false;
        }
        if !c.new_tuple.iter().chain(&c.old_tuple).all(is_text) {
            return false;
        }
        let entry = self
            .tables
            .entry((c.schema.clone(), c.table.clone()))
            .or_insert_with(|| TableNet {
                schema: c.schema.clone(),
                table: c.table.clone(),
                columns: c.columns.clone(),
                key: c.key.clone(),
                rows: HashMap::new(),
            });
        if entry.columns != c.columns || entry.key != c.key {
            return false;
        }
        let key_of = |t: &[PgValue]| -> Option<Key> {
            c.key
                .iter()
                .map(|&k| {
                    t.get(k as usize)
                        .filter(|v| !unchanged(v))
                        .map(|v| v.data.clone())
                })
                .collect()
        };
        match op {
            PgOp::Insert => {
                let (Some(k), false) = (key_of(&c.new_tuple), c.new_tuple.iter().any(unchanged))
                else {
                    return false;
                };
                entry.rows.insert(k, Net::Full(c.new_tuple.clone()));
                true
            }
            PgOp::Delete => {
                let Some(k) = key_of(&c.old_tuple) else {
                    return false;
                };
                entry.rows.insert(k, Net::Deleted);
                true
            }
            PgOp::Update => {
                let Some(new_key) = key_of(&c.new_tuple) else {
                    return false;
                };
                let old_key = if c.old_tuple.is_empty() {
                    new_key.clone()
                } else {
                    match key_of(&c.old_tuple) {
                        Some(k) => k,
                        None => return false,
                    }
                };
                let prior = entry.rows.get(&old_key);
                let merged: Vec<Option<PgValue>> = c
                    .new_tuple
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if !unchanged(v) {
                            return Some(v.clone());
                        }
                        match prior {
                            Some(Net::Full(r)) => r.get(i).cloned(),
                            Some(Net::Partial(p)) => p.get(i).cloned().flatten(),
                            _ => None,
                        }
                    })
                    .collect();
                if matches!(prior, Some(Net::Deleted)) {
                    return false;
                }
                let complete = merged.iter().all(Option::is_some);
                if old_key != new_key {
                    // A moved key: its row must be complete to be loaded anew.
                    if !complete {
                        return false;
                    }
                    entry.rows.insert(old_key, Net::Deleted);
                }
                let net = if complete {
                    Net::Full(merged.into_iter().flatten().collect())
                } else {
                    Net::Partial(merged)
                };
                entry.rows.insert(new_key, net);
                true
            }
            _ => false,
        }
    }

    /// Applies the segment to the target in one transaction; returns the number of
    /// rows loaded by `COPY`.
    async fn apply(
        &mut self,
        client: &tokio_postgres::Client,
        conn: &ConnInfo,
    ) -> Result<u64, RestoreError> {
        if self.is_empty() {
            return Ok(0);
        }
        let q = |e: tokio_postgres::Error| {
            failed(format!(
                "{}: applying the net effect of the history: {}",
                conn.display,
                db_error(&e)
            ))
        };
        client.batch_execute("BEGIN").await.map_err(q)?;
        let mut loaded = 0;
        for t in self.tables.values() {
            loaded += apply_table(client, t).await.map_err(q)?;
        }
        for ((schema, table), (columns, rows)) in &self.appends {
            let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
            let refs: Vec<&Vec<PgValue>> = rows.iter().collect();
            loaded += copy_rows(client, &name, columns, &refs).await.map_err(q)?;
        }
        run_all(client, "", &self.statements, "").await.map_err(q)?;
        client.batch_execute("COMMIT").await.map_err(q)?;
        *self = Segment::default();
        Ok(loaded)
    }
}

/// Deletes the keys that end deleted or complete, loads the complete rows by COPY,
/// updates the partial ones.
async fn apply_table(
    client: &tokio_postgres::Client,
    t: &TableNet,
) -> Result<u64, tokio_postgres::Error> {
    let name = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
    let key_cols: Vec<String> = t
        .key
        .iter()
        .map(|&k| quote_ident(t.columns.get(k as usize).map_or("", String::as_str)))
        .collect();
    let (mut literal_keys, mut raw_deletes) = (Vec::new(), Vec::new());
    for (k, net) in &t.rows {
        if matches!(net, Net::Partial(_)) {
            continue;
        }
        match k
            .iter()
            .map(|v| std::str::from_utf8(v).ok())
            .collect::<Option<Vec<&str>>>()
        {
            Some(texts) => literal_keys.push(format!(
                "({})",
                texts
                    .iter()
                    .map(|v| quote_literal(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => raw_deletes.push(k),
        }
    }
    for chunk in literal_keys.chunks(DELETE_CHUNK) {
        client
            .batch_execute(&format!(
                "DELETE FROM {name} WHERE ({}) IN ({})",
                key_cols.join(", "),
                chunk.join(", ")
            ))
            .await?;
    }
    for k in raw_deletes {
        let cond: Vec<String> = key_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", i + 1))
            .collect();
        let r = Replayed {
            inserts_into: None,
            sql: format!("DELETE FROM {name} WHERE {}", cond.join(" AND ")),
            raw: k.clone(),
        };
        run(client, &r).await?;
    }
    let full: Vec<&Vec<PgValue>> = t
        .rows
        .values()
        .filter_map(|n| match n {
            Net::Full(r) => Some(r),
            _ => None,
        })
        .collect();
    let loaded = copy_rows(client, &name, &t.columns, &full).await?;
    for net in t.rows.values() {
        let Net::Partial(values) = net else { continue };
        let change = PgChange {
            op: PgOp::Update as i32,
            schema: t.schema.clone(),
            table: t.table.clone(),
            columns: t.columns.clone(),
            key: t.key.clone(),
            new_tuple: values
                .iter()
                .map(|v| {
                    v.clone().unwrap_or(PgValue {
                        kind: PgValueKind::UnchangedToast as i32,
                        data: Vec::new(),
                    })
                })
                .collect(),
            ..Default::default()
        };
        if let Ok(s) = statement(&change) {
            if !s.sql.is_empty() {
                run(
                    client,
                    &Replayed {
                        inserts_into: None,
                        sql: s.sql,
                        raw: s.raw,
                    },
                )
                .await?;
            }
        }
    }
    Ok(loaded)
}

/// Loads `rows` into `name` by COPY; returns how many.
async fn copy_rows(
    client: &tokio_postgres::Client,
    name: &str,
    columns: &[String],
    rows: &[&Vec<PgValue>],
) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let sink = client
        .copy_in(&format!("COPY {name} ({}) FROM STDIN", cols.join(", ")))
        .await?;
    futures_util::pin_mut!(sink);
    let mut buf = Vec::with_capacity(1 << 20);
    for row in rows {
        copy_row(row, &mut buf);
        if buf.len() >= 1 << 20 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    sink.finish().await
}

/// One row in COPY text format.
fn copy_row(row: &[PgValue], out: &mut Vec<u8>) {
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        if v.kind == PgValueKind::Null as i32 {
            out.extend_from_slice(b"\\N");
            continue;
        }
        for &b in &v.data {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.push(b),
            }
        }
    }
    out.push(b'\n');
}

/// Replays the history after the image by its net effect (see the module docs).
pub async fn replay_net(
    journal: &Journal,
    plan: &RestorePlan,
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    summary: &mut PgRestoreSummary,
    progress: &mut dyn ProgressSink,
) -> Result<(), RestoreError> {
    if plan.events == 0 {
        return Ok(());
    }
    let q = |e: tokio_postgres::Error| failed(format!("{}: {}", conn.display, db_error(&e)));
    let (mut seen, mut txn) = (0u64, Vec::<PgChange>::new());
    let mut segment = Segment::default();
    let mut applied = Applied::default();
    for entry in journal.events(plan.source.id, plan.first_seq, plan.last_seq) {
        let mut e = entry?.event;
        seen += 1;
        progress.update("changes replayed", seen, Some(plan.events));
        let time_us = e.time_us();
        if let Some(Payload::Postgres(change)) = e.payload.take() {
            txn.push(change);
        }
        if !e.txn.as_ref().is_some_and(|t| t.commit) {
            continue;
        }
        let barrier = txn
            .iter()
            .any(|c| matches!(PgOp::try_from(c.op), Ok(PgOp::Ddl | PgOp::Truncate)));
        let changes = std::mem::take(&mut txn);
        summary.transactions += 1;
        summary.changes += changes.len() as u64;
        let lsn = match e.position.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(PositionKind::Postgres(p)) => p.lsn,
            _ => 0,
        };
        summary.final_lsn = super::repl::Lsn(lsn).to_string();
        let this = (lsn, time_us);
        if barrier {
            flush(&mut segment, client, conn, &mut applied, summary).await?;
            let mut stmts = Vec::new();
            for c in &changes {
                stmts.push(replayed(c).map_err(|e| cannot(c, e))?);
            }
            client.batch_execute("BEGIN").await.map_err(q)?;
            for r in created_from_query_first(stmts.into_iter().flatten().collect()) {
                if let Err(e) = run(client, &r).await {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(failed(format!(
                        "replaying {}: {}: {}; refused statement: {}. {}",
                        describe(this),
                        conn.display,
                        db_error(&e),
                        r.sql.chars().take(300).collect::<String>(),
                        applied.left(conn)
                    )));
                }
            }
            client.batch_execute("COMMIT").await.map_err(q)?;
            applied.txns += 1;
            applied.last = Some(this);
            continue;
        }
        for c in &changes {
            let op = PgOp::try_from(c.op).ok();
            let row = matches!(op, Some(PgOp::Insert | PgOp::Update | PgOp::Delete));
            let table = (c.schema.clone(), c.table.clone());
            if row && !segment.statement_tables.contains(&table) && segment.add(c) {
                continue;
            }
            if row && !segment.tables.contains_key(&table) && segment.append(c) {
                continue;
            }
            if row {
                if segment.tables.contains_key(&table) {
                    // Its table's pending rows go first, to keep that table's order.
                    flush(&mut segment, client, conn, &mut applied, summary).await?;
                }
                segment.statement_tables.insert(table);
            }
            if let Some(r) = replayed(c).map_err(|e| cannot(c, e))? {
                segment.statements.push(r);
            }
        }
        applied.pending_txns += 1;
        applied.pending_last = Some(this);
    }
    flush(&mut segment, client, conn, &mut applied, summary).await?;
    Ok(())
}

fn describe((lsn, time_us): (u64, i64)) -> String {
    describe_txn(lsn, time_us)
}

fn cannot(c: &PgChange, e: impl std::fmt::Display) -> RestoreError {
    failed(format!(
        "cannot replay a change to {}.{}: {e}",
        c.schema, c.table
    ))
}

/// What the target holds, committed, for messages.
#[derive(Default)]
struct Applied {
    txns: u64,
    last: Option<(u64, i64)>,
    /// Transactions in the pending segment.
    pending_txns: u64,
    pending_last: Option<(u64, i64)>,
}

impl Applied {
    /// The sentences of an error that say what the target holds and what to do.
    fn left(&self, conn: &ConnInfo) -> String {
        let state = match self.last {
            Some(t) => format!("up to and including {}", describe(t)),
            None => "as of its base image".to_string(),
        };
        state_left(conn, &state, self.txns)
    }
}

/// Applies the pending segment; on failure says what the target holds.
async fn flush(
    segment: &mut Segment,
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    applied: &mut Applied,
    summary: &mut PgRestoreSummary,
) -> Result<(), RestoreError> {
    match segment.apply(client, conn).await {
        Ok(n) => {
            summary.net_rows += n;
            applied.txns += std::mem::take(&mut applied.pending_txns);
            applied.last = applied.pending_last.take().or(applied.last);
            Ok(())
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            let up_to = applied
                .pending_last
                .map(|t| format!(" (transactions up to {})", describe(t)))
                .unwrap_or_default();
            Err(failed(format!("{e}{up_to}. {}", applied.left(conn))))
        }
    }
}
