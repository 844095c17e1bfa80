//! Reading the history for a net-effect restore: the journal's events from the
//! base image to the moment, decoded and grouped into whole committed transactions.
//!
//! On a multi-threaded runtime the scan runs ahead on a thread of its own (reading
//! and decoding in parallel with the apply), a bounded channel between them; on a
//! current-thread runtime it runs inline, as the apply asks for transactions.

use std::collections::VecDeque;

use crate::event::{Payload, PgChange};
use crate::journal::{Journal, JournalError, LogEntry};
use crate::position::PositionKind;
use crate::restore::{RestoreError, RestorePlan};

/// Transactions per message between the scanning thread and the apply.
const BATCH: usize = 256;
/// Messages in flight between them (bounds the read-ahead's memory).
const IN_FLIGHT: usize = 16;

/// One committed transaction of the history.
pub(super) struct Txn {
    /// Its row changes, DDL and truncates, in order.
    pub changes: Vec<PgChange>,
    /// Commit LSN.
    pub lsn: u64,
    /// Commit time (µs since the epoch).
    pub time_us: i64,
    /// Journal events read up to and including its commit (for progress).
    pub events_read: u64,
}

/// Groups events into committed transactions; a trailing one without its commit is
/// left out.
#[derive(Default)]
pub(super) struct Grouper {
    pending: Vec<PgChange>,
    read: u64,
}

impl Grouper {
    fn push(&mut self, entry: LogEntry) -> Option<Txn> {
        let mut e = entry.event;
        self.read += 1;
        if let Some(Payload::Postgres(c)) = e.payload.take() {
            self.pending.push(c);
        }
        if !e.txn.as_ref().is_some_and(|t| t.commit) {
            return None;
        }
        let lsn = match e.position.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(PositionKind::Postgres(p)) => p.lsn,
            _ => 0,
        };
        Some(Txn {
            changes: std::mem::take(&mut self.pending),
            lsn,
            time_us: e.time_us(),
            events_read: self.read,
        })
    }
}

type Message = Result<Vec<Txn>, RestoreError>;

/// The history's transactions, in commit order.
pub(super) enum Scan<'a> {
    /// Read as asked for.
    Inline {
        events: Box<dyn Iterator<Item = Result<LogEntry, JournalError>> + 'a>,
        grouper: Grouper,
    },
    /// Read ahead by [`read_ahead`] on another thread.
    Ahead {
        rx: tokio::sync::mpsc::Receiver<Message>,
        ready: VecDeque<Txn>,
    },
}

impl<'a> Scan<'a> {
    /// Reads `plan`'s history inline.
    pub fn inline(journal: &'a Journal, plan: &RestorePlan) -> Scan<'a> {
        let events: Box<dyn Iterator<Item = _> + 'a> = if plan.events == 0 {
            Box::new(std::iter::empty())
        } else {
            Box::new(journal.events(plan.source.id, plan.first_seq, plan.last_seq))
        };
        Scan::Inline {
            events,
            grouper: Grouper::default(),
        }
    }

    /// A scan fed by a [`read_ahead`] thread, and the sender to give that thread.
    pub fn ahead() -> (Scan<'a>, tokio::sync::mpsc::Sender<Message>) {
        let (tx, rx) = tokio::sync::mpsc::channel(IN_FLIGHT);
        (
            Scan::Ahead {
                rx,
                ready: VecDeque::new(),
            },
            tx,
        )
    }

    /// The next committed transaction; `None` at the end of the history.
    pub async fn next(&mut self) -> Result<Option<Txn>, RestoreError> {
        match self {
            Scan::Inline { events, grouper } => {
                for e in events.by_ref() {
                    if let Some(t) = grouper.push(e?) {
                        return Ok(Some(t));
                    }
                }
                Ok(None)
            }
            Scan::Ahead { rx, ready } => loop {
                if let Some(t) = ready.pop_front() {
                    return Ok(Some(t));
                }
                match rx.recv().await {
                    Some(batch) => ready.extend(batch?),
                    None => return Ok(None),
                }
            },
        }
    }
}

/// Reads `plan`'s history and sends it to `tx` in batches of transactions; stops
/// early if the receiver is gone (the restore ended or failed).
pub(super) fn read_ahead(
    journal: &Journal,
    plan: &RestorePlan,
    tx: tokio::sync::mpsc::Sender<Message>,
) {
    if plan.events == 0 {
        return;
    }
    let mut grouper = Grouper::default();
    let mut batch = Vec::with_capacity(BATCH);
    for e in journal.events(plan.source.id, plan.first_seq, plan.last_seq) {
        match e {
            Ok(e) => {
                if let Some(t) = grouper.push(e) {
                    batch.push(t);
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e.into()));
                return;
            }
        }
        if batch.len() >= BATCH && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
            return;
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
}
