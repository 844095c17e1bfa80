//! Turning pgoutput messages into journal events.
//!
//! Every change becomes one [`ChangeEvent`] positioned at its transaction's commit
//! LSN and its index inside the transaction, stamped with the commit time, and
//! carrying the table's schema, name, columns and key from the latest Relation
//! message. The last event of each transaction is marked `commit`: the capture loop
//! keeps it back until the Commit message arrives.

use super::error::Malformed;
use std::collections::HashMap;

use super::repl::pgoutput::{ColumnValue, Message, OldTuple, Relation};
use super::repl::PgTimestamp;
use super::setup::{quote_ident, DDL_PREFIX};
use crate::event::{ChangeEvent, Payload, PgChange, PgOp, PgValue, PgValueKind, Txn};
use crate::position::Position;

/// µs between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A PostgreSQL timestamp as µs since the Unix epoch.
pub fn unix_us(t: PgTimestamp) -> i64 {
    t.0.saturating_add(PG_EPOCH_OFFSET_US)
}

/// What one message means for the capture loop.
#[derive(Debug)]
pub enum Step {
    /// A change to journal.
    Event(Box<ChangeEvent>),
    /// The open transaction committed: everything up to `end_lsn` is sent.
    Commit {
        /// The LSN to acknowledge once the transaction is durable.
        end_lsn: u64,
        /// Commit time (µs since the Unix epoch).
        time_us: i64,
    },
    /// Nothing to journal (Begin, Relation, Type, Origin, other messages).
    Nothing,
}

struct OpenTxn {
    final_lsn: u64,
    time_us: i64,
    xid: u32,
    index: u32,
    /// Changes of this transaction the journal already holds (a resumed, partly
    /// journaled transaction): skipped.
    skip: u32,
}

/// Decoder state: relation cache and the open transaction.
#[derive(Default)]
pub struct ChangeBuilder {
    relations: HashMap<u32, Relation>,
    txn: Option<OpenTxn>,
    /// `(commit lsn, changes journaled)` of a transaction the journal holds only
    /// in part; its resent changes up to that count are skipped.
    resume: Option<(u64, u32)>,
}

impl ChangeBuilder {
    /// A builder that will skip the first `count` changes of the transaction whose
    /// commit LSN is `lsn`, if it is resent.
    pub fn resuming(partial: Option<(u64, u32)>) -> Self {
        ChangeBuilder {
            resume: partial,
            ..Default::default()
        }
    }

    /// `schema.table` of relation `oid`, if known.
    pub fn table_name(&self, oid: u32) -> Option<String> {
        let r = self.relations.get(&oid)?;
        Some(format!("{}.{}", r.namespace, r.name))
    }

    /// True while a transaction's changes are arriving.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Interprets one decoded message.
    pub fn apply(&mut self, msg: Message, capture_time_us: i64) -> Result<Step, Malformed> {
        match msg {
            Message::Begin(b) => {
                let final_lsn = b.final_lsn.as_u64();
                let skip = match self.resume {
                    Some((lsn, n)) if lsn == final_lsn => n,
                    _ => 0,
                };
                self.txn = Some(OpenTxn {
                    final_lsn,
                    time_us: unix_us(b.commit_time),
                    xid: b.xid,
                    index: 0,
                    skip,
                });
                Ok(Step::Nothing)
            }
            Message::Commit(c) => {
                let txn = self.txn.take().ok_or("Commit without Begin")?;
                if self.resume.is_some_and(|(lsn, _)| lsn == txn.final_lsn) {
                    self.resume = None;
                }
                Ok(Step::Commit {
                    end_lsn: c.end_lsn.as_u64(),
                    time_us: txn.time_us,
                })
            }
            Message::Relation(r) => {
                self.relations.insert(r.oid, r);
                Ok(Step::Nothing)
            }
            Message::Insert(i) => {
                self.change(i.relation_oid, PgOp::Insert, i.new, None, capture_time_us)
            }
            Message::Update(u) => {
                self.change(u.relation_oid, PgOp::Update, u.new, u.old, capture_time_us)
            }
            Message::Delete(d) => self.change(
                d.relation_oid,
                PgOp::Delete,
                Vec::new(),
                Some(d.old),
                capture_time_us,
            ),
            Message::Truncate(t) => {
                let mut names = Vec::new();
                for oid in &t.relation_oids {
                    let r = self
                        .relations
                        .get(oid)
                        .ok_or_else(|| format!("Truncate of unknown relation {oid}"))?;
                    names.push(format!(
                        "{}.{}",
                        quote_ident(&r.namespace),
                        quote_ident(&r.name)
                    ));
                }
                let mut stmt = format!("TRUNCATE {}", names.join(", "));
                if t.restart_identity() {
                    stmt.push_str(" RESTART IDENTITY");
                }
                if t.cascade() {
                    stmt.push_str(" CASCADE");
                }
                let change = PgChange {
                    op: PgOp::Truncate as i32,
                    truncated: names,
                    ddl: stmt,
                    ..Default::default()
                };
                self.event(change, capture_time_us)
            }
            Message::LogicalMessage(m) if m.prefix == DDL_PREFIX && m.transactional() => {
                let content = String::from_utf8(m.content.to_vec())
                    .map_err(|_| "DDL message is not UTF-8")?;
                let Some(ddl) = super::ddl::statement_from_message(&content)? else {
                    return Ok(Step::Nothing);
                };
                let change = PgChange {
                    op: PgOp::Ddl as i32,
                    ddl: ddl.sql,
                    nested: ddl.nested,
                    ..Default::default()
                };
                self.event(change, capture_time_us)
            }
            Message::LogicalMessage(m)
                if m.prefix == super::sequences::PREFIX && m.transactional() =>
            {
                let content = String::from_utf8(m.content.to_vec())
                    .map_err(|_| "sequence message is not UTF-8")?;
                let change = PgChange {
                    op: PgOp::Sequence as i32,
                    ddl: super::sequences::statement_from_message(&content)?,
                    ..Default::default()
                };
                self.event(change, capture_time_us)
            }
            Message::LogicalMessage(m)
                if m.prefix == crate::app::marker::PG_PREFIX && m.transactional() =>
            {
                let name = String::from_utf8(m.content.to_vec())
                    .map_err(|_| "recovery-point marker is not UTF-8")?;
                let marker = crate::event::Marker {
                    name,
                    note: String::new(),
                };
                self.event_of(Payload::Marker(marker), capture_time_us)
            }
            _ => Ok(Step::Nothing),
        }
    }

    fn change(
        &mut self,
        oid: u32,
        op: PgOp,
        new: Vec<ColumnValue>,
        old: Option<OldTuple>,
        capture_time_us: i64,
    ) -> Result<Step, Malformed> {
        let r = self
            .relations
            .get(&oid)
            .ok_or_else(|| format!("change to relation {oid} before its Relation message"))?;
        let change = PgChange {
            op: op as i32,
            schema: r.namespace.clone(),
            table: r.name.clone(),
            columns: r.columns.iter().map(|c| c.name.clone()).collect(),
            key: r
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key())
                .map(|(i, _)| i as u32)
                .collect(),
            new_tuple: new.into_iter().map(value).collect(),
            old_is_full: matches!(old, Some(OldTuple::Full(_))),
            old_tuple: old
                .map(|o| match o {
                    OldTuple::Key(v) | OldTuple::Full(v) => v.into_iter().map(value).collect(),
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        self.event(change, capture_time_us)
    }

    fn event(&mut self, change: PgChange, capture_time_us: i64) -> Result<Step, Malformed> {
        self.event_of(Payload::Postgres(change), capture_time_us)
    }

    fn event_of(&mut self, payload: Payload, capture_time_us: i64) -> Result<Step, Malformed> {
        let txn = self.txn.as_mut().ok_or("change outside a transaction")?;
        let index = txn.index;
        txn.index += 1;
        if index < txn.skip {
            return Ok(Step::Nothing); // already journaled before a restart
        }
        Ok(Step::Event(Box::new(ChangeEvent {
            position: Some(Position::postgres_change(txn.final_lsn, index)),
            commit_time_us: Some(txn.time_us),
            capture_time_us,
            txn: Some(Txn {
                id: txn.xid.to_string(),
                commit: false,
            }),
            payload: Some(payload),
            ..Default::default()
        })))
    }
}

fn value(v: ColumnValue) -> PgValue {
    match v {
        ColumnValue::Null => PgValue {
            kind: PgValueKind::Null as i32,
            data: Vec::new(),
        },
        ColumnValue::UnchangedToast => PgValue {
            kind: PgValueKind::UnchangedToast as i32,
            data: Vec::new(),
        },
        ColumnValue::Text(s) => PgValue {
            kind: PgValueKind::Text as i32,
            data: s.to_vec(),
        },
        ColumnValue::Binary(b) => PgValue {
            kind: PgValueKind::Binary as i32,
            data: b.to_vec(),
        },
    }
}
