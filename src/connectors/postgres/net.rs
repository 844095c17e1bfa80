//! Net-effect replay: the state at T, not the path to it.
//!
//! Between barriers, the row changes of keyed tables collapse per key into at most
//! one delete and one final row: a key that ends deleted is deleted, one that ends
//! with a complete row is deleted and loaded again by `COPY`. A key whose final row
//! lacks unchanged TOAST values that only the target holds ends as one `UPDATE` of
//! the columns known. Rows inserted into tables without a key (`REPLICA IDENTITY
//! FULL`) are loaded by `COPY` as a multiset, until a statement of that table needs
//! them in order; such statements (keyless updates and deletes) and sequence values
//! keep their order (changes to different tables commute: the restore session fires
//! no triggers and checks no foreign keys).
//!
//! A barrier is a transaction holding DDL or a `TRUNCATE`: the pending net state is
//! applied, then that transaction is replayed statement by statement, exactly as
//! the ordinary replay does. Only transactions journaled whole take part.
//!
//! The first segment (up to the first barrier) is merged into the base image as it
//! loads (`net_apply`): image rows of keys the history changed are left out and the
//! final rows loaded beside them, so those keys cost no `DELETE` at all.
//!
//! The per-key state lives in a [`NetStore`] (memory up to a limit, then disk). The
//! result equals replaying every change (tests compare both on one journal).

use std::collections::HashMap;

use super::net_scan::Txn;
use super::net_store::{encode_key, val_of, Net, NetStore, Row, Val};
use super::restore_sql::{replayed, Replayed};
use crate::event::{PgChange, PgOp, PgValue, PgValueKind};
use crate::restore::RestoreError;

/// A table with changes in the segment.
#[derive(Debug, Clone)]
pub(super) struct TableNet {
    /// Number in the store.
    pub id: u32,
    pub schema: String,
    pub table: String,
    /// Columns in tuple order.
    pub columns: Vec<String>,
    /// Indexes into `columns` of the key; empty for a keyless table (appends only).
    pub key: Vec<u32>,
}

/// How a segment ended.
pub(super) enum End {
    /// At the end of the history.
    Done,
    /// Before this transaction, which is replayed as it is (DDL, truncates).
    Barrier(Txn),
    /// In this transaction, before its change at this index: that change needs the
    /// pending rows of its table applied first. The segment resumes there.
    Split(Txn, usize),
}

fn failed(message: String) -> RestoreError {
    RestoreError::Target(message)
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

/// What a segment holds of one table.
#[derive(Default)]
pub(super) struct Slot {
    /// Its keyed rows, if it is netted by key.
    pub keyed: Option<TableNet>,
    /// Its rows to load, if it is keyless.
    pub append: Option<TableNet>,
    /// Its changes go as statements (to keep their order).
    pub statements: bool,
}

/// The pending state of one segment.
pub(super) struct Segment {
    pub store: NetStore,
    /// Tables by schema and name (looked up by `&str`: no allocation per change).
    slots: HashMap<String, HashMap<String, Slot>>,
    /// Statements kept as they are (keyless tables, sequences), in order.
    pub statements: Vec<Replayed>,
    next_id: u32,
    /// Transactions in the segment, and the last one's commit (LSN, time).
    pub txns: u64,
    pub last: Option<(u64, i64)>,
    /// Changes in those transactions.
    pub changes: u64,
    /// Journal events read so far (progress).
    pub events_read: u64,
}

impl Segment {
    pub fn new(store: NetStore) -> Segment {
        Segment {
            store,
            slots: HashMap::new(),
            statements: Vec::new(),
            next_id: 0,
            txns: 0,
            last: None,
            changes: 0,
            events_read: 0,
        }
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.values().flat_map(|m| m.values())
    }

    /// Tables netted by key.
    pub fn keyed(&self) -> impl Iterator<Item = &TableNet> {
        self.slots().filter_map(|s| s.keyed.as_ref())
    }

    /// Keyless tables with rows to load.
    pub fn appended(&self) -> impl Iterator<Item = &TableNet> {
        self.slots().filter_map(|s| s.append.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.statements.is_empty()
    }

    /// Forgets the applied state; the segment starts again empty.
    pub fn reset(&mut self) -> Result<(), RestoreError> {
        self.store.clear()?;
        self.slots.clear();
        self.statements.clear();
        self.txns = 0;
        self.changes = 0;
        self.last = None;
        Ok(())
    }

    /// The table's slot, made if it is new (allocating only then).
    fn slot(&mut self, c: &PgChange) -> Option<&mut Slot> {
        if !self.slots.contains_key(c.schema.as_str()) {
            self.slots.insert(c.schema.clone(), HashMap::new());
        }
        let tables = self.slots.get_mut(c.schema.as_str())?;
        if !tables.contains_key(c.table.as_str()) {
            tables.insert(c.table.clone(), Slot::default());
        }
        tables.get_mut(c.table.as_str())
    }

    fn get_slot(&self, c: &PgChange) -> Option<&Slot> {
        self.slots
            .get(c.schema.as_str())
            .and_then(|m| m.get(c.table.as_str()))
    }

    fn new_table(&mut self, keyed: bool, c: &PgChange) -> TableNet {
        self.next_id += 1;
        TableNet {
            id: self.next_id,
            schema: c.schema.clone(),
            table: c.table.clone(),
            columns: c.columns.clone(),
            key: if keyed { c.key.clone() } else { Vec::new() },
        }
    }

    /// Takes an insert into a keyless table as a row to load; `false`: it must go as
    /// a statement (one of its table's statements is pending, or it cannot be copied).
    fn append(&mut self, c: &PgChange) -> Result<bool, RestoreError> {
        if c.op != PgOp::Insert as i32
            || self
                .get_slot(c)
                .is_some_and(|s| s.statements || s.keyed.is_some())
            || !c.new_tuple.iter().all(|v| is_text(v) && !unchanged(v))
        {
            return Ok(false);
        }
        if self.get_slot(c).is_none_or(|s| s.append.is_none()) {
            let t = self.new_table(false, c);
            if let Some(s) = self.slot(c) {
                s.append = Some(t);
            }
        }
        let Some(t) = self.slot(c).and_then(|s| s.append.as_ref()) else {
            return Ok(false);
        };
        if t.columns != c.columns {
            return Ok(false);
        }
        let id = t.id;
        let mut line = Vec::with_capacity(128);
        Row::of_tuple(&c.new_tuple).copy_line(&mut line);
        self.store.append(id, &line)?;
        Ok(true)
    }

    /// Takes a row change into the net state; `false`: it cannot be netted here.
    fn add(&mut self, c: &PgChange) -> Result<bool, RestoreError> {
        let Ok(op) = PgOp::try_from(c.op) else {
            return Ok(false);
        };
        // REPLICA IDENTITY FULL flags every column as key: such a table may hold
        // identical rows, which only its statements restore as many times.
        if c.key.is_empty() || c.old_is_full || c.key.len() >= c.columns.len() {
            return Ok(false);
        }
        if !c.new_tuple.iter().chain(&c.old_tuple).all(is_text) {
            return Ok(false);
        }
        match self.get_slot(c) {
            Some(s) if s.append.is_some() || s.statements => return Ok(false),
            Some(Slot { keyed: Some(t), .. }) => {
                if t.columns != c.columns || t.key != c.key {
                    return Ok(false);
                }
            }
            _ => {
                let t = self.new_table(true, c);
                if let Some(s) = self.slot(c) {
                    s.keyed = Some(t);
                }
            }
        }
        let Some(id) = self
            .get_slot(c)
            .and_then(|s| s.keyed.as_ref())
            .map(|t| t.id)
        else {
            return Ok(false);
        };
        let key_of = |tuple: &[PgValue]| -> Option<Vec<u8>> {
            let parts: Option<Vec<&[u8]>> = c
                .key
                .iter()
                .map(|&k| {
                    tuple
                        .get(k as usize)
                        .filter(|v| !unchanged(v) && v.kind != PgValueKind::Null as i32)
                        .map(|v| v.data.as_slice())
                })
                .collect();
            parts.map(encode_key)
        };
        match op {
            PgOp::Insert => {
                let (Some(k), false) = (key_of(&c.new_tuple), c.new_tuple.iter().any(unchanged))
                else {
                    return Ok(false);
                };
                self.store
                    .put(id, k, Net::Full(Row::of_tuple(&c.new_tuple)))?;
            }
            PgOp::Delete => {
                let Some(k) = key_of(&c.old_tuple) else {
                    return Ok(false);
                };
                self.store.put(id, k, Net::Deleted)?;
            }
            PgOp::Update => {
                let Some(new_key) = key_of(&c.new_tuple) else {
                    return Ok(false);
                };
                let old_key = if c.old_tuple.is_empty() {
                    None
                } else {
                    match key_of(&c.old_tuple) {
                        Some(k) if k != new_key => Some(k),
                        Some(_) => None,
                        None => return Ok(false),
                    }
                };
                let row = if c.new_tuple.iter().any(unchanged) {
                    // Unchanged TOAST values: take them from the key's earlier
                    // version in this segment, if it has one.
                    let prior = self.store.get(id, old_key.as_deref().unwrap_or(&new_key))?;
                    let prior_vals: Vec<Val> = match &prior {
                        Some(Net::Full(r) | Net::Partial(r)) => r.values().collect(),
                        Some(Net::Deleted) => return Ok(false),
                        None => Vec::new(),
                    };
                    Row::encode(c.new_tuple.iter().enumerate().map(|(i, v)| {
                        if unchanged(v) {
                            prior_vals.get(i).cloned().unwrap_or(Val::Unknown)
                        } else {
                            val_of(v)
                        }
                    }))
                } else {
                    Row::of_tuple(&c.new_tuple)
                };
                let complete = row.complete();
                if let Some(old) = old_key {
                    // A moved key: its row must be complete to be loaded anew.
                    if !complete {
                        return Ok(false);
                    }
                    self.store.put(id, old, Net::Deleted)?;
                }
                let net = if complete {
                    Net::Full(row)
                } else {
                    Net::Partial(row)
                };
                self.store.put(id, new_key, net)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Takes transactions from `next` (starting with `resume`, a split transaction
    /// and the index to go on from) until a barrier, a split or the end.
    pub async fn fill(
        &mut self,
        scan: &mut super::net_scan::Scan<'_>,
        mut resume: Option<(Txn, usize)>,
        progress: &mut dyn crate::restore::ProgressSink,
        total_events: u64,
    ) -> Result<End, RestoreError> {
        loop {
            let (txn, from, split) = match resume.take() {
                Some((t, i)) => (t, i, Some(i)),
                None => match scan.next().await? {
                    Some(t) => (t, 0, None),
                    None => return Ok(End::Done),
                },
            };
            self.events_read = txn.events_read;
            progress.update("journal events read", txn.events_read, Some(total_events))?;
            if split.is_none()
                && txn
                    .changes
                    .iter()
                    .any(|c| matches!(PgOp::try_from(c.op), Ok(PgOp::Ddl | PgOp::Truncate)))
            {
                return Ok(End::Barrier(txn));
            }
            for (i, c) in txn.changes.iter().enumerate().skip(from) {
                let op = PgOp::try_from(c.op).ok();
                let row = matches!(op, Some(PgOp::Insert | PgOp::Update | PgOp::Delete));
                // The change a split stopped at goes as a statement: its table's
                // pending rows are applied now.
                let after_split = split == Some(i);
                if row && !after_split && (self.add(c)? || self.append(c)?) {
                    continue;
                }
                if row {
                    if !after_split
                        && self
                            .get_slot(c)
                            .is_some_and(|s| s.keyed.is_some() || s.append.is_some())
                    {
                        // Its table's pending rows go first, to keep that table's order.
                        return Ok(End::Split(txn, i));
                    }
                    if let Some(s) = self.slot(c) {
                        s.statements = true;
                    }
                }
                if let Some(r) = replayed(c).map_err(|e| cannot(c, e))? {
                    self.statements.push(r);
                }
            }
            self.txns += 1;
            self.changes += txn.changes.len() as u64;
            self.last = Some((txn.lsn, txn.time_us));
        }
    }
}

pub(super) fn cannot(c: &PgChange, e: impl std::fmt::Display) -> RestoreError {
    failed(format!(
        "cannot replay a change to {}.{}: {e}",
        c.schema, c.table
    ))
}
