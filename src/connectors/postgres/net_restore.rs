//! The net-effect restore's course (see [`super::net`]): the first segment of the
//! history is read (ahead, see [`super::net_scan`]) and merged into the base image
//! as it loads; each later segment is applied when its barrier (a transaction with
//! DDL or a `TRUNCATE`) is reached, and the barrier replayed as it is.

use std::collections::HashSet;

use super::conn::{db_error, ConnInfo};
use super::net::{cannot, End, Segment};
use super::net_apply::apply_segment;
use super::net_scan::{Scan, Txn};
use super::net_store::NetStore;
use super::restore::{describe_txn, run, state_left, PgRestoreOptions, PgRestoreSummary};
use super::restore_image::{load_image, ImageLoad};
use super::restore_sql::{created_from_query_first, replayed};
use crate::restore::{ProgressSink, RestoreError, RestorePlan};

fn failed(message: String) -> RestoreError {
    RestoreError::Target(message)
}

/// What the target holds, committed, for messages.
#[derive(Default)]
struct Applied {
    txns: u64,
    last: Option<(u64, i64)>,
}

impl Applied {
    /// The sentences of an error that say what the target holds and what to do.
    fn left(&self, conn: &ConnInfo) -> String {
        let state = match self.last {
            Some((lsn, t)) => format!("up to and including {}", describe_txn(lsn, t)),
            None => "as of its base image".to_string(),
        };
        state_left(conn, &state, self.txns)
    }
}

/// Restores the image and the history by its net effect.
pub(super) async fn restore_net(
    l: &ImageLoad<'_>,
    plan: &RestorePlan,
    opts: &PgRestoreOptions,
    mut scan: Scan<'_>,
    summary: &mut PgRestoreSummary,
    progress: &mut dyn ProgressSink,
) -> Result<(), RestoreError> {
    let store = NetStore::new(opts.net_memory, opts.spill_dir.clone());
    let mut seg = Segment::new(store);
    let mut end = seg.fill(&mut scan, None, progress, plan.events).await?;
    let (done, net_rows) = load_image(l, Some(&seg), summary, progress).await?;
    summary.net_rows += net_rows;
    let mut applied = Applied::default();
    flush(l, &mut seg, &done, &mut applied, summary).await?;
    loop {
        end = match end {
            End::Done => break,
            End::Barrier(txn) => {
                barrier(l, &txn, &mut applied, summary).await?;
                seg.fill(&mut scan, None, progress, plan.events).await?
            }
            End::Split(txn, at) => {
                seg.fill(&mut scan, Some((txn, at)), progress, plan.events)
                    .await?
            }
        };
        flush(l, &mut seg, &HashSet::new(), &mut applied, summary).await?;
    }
    if seg.store.spilled_bytes > 0 {
        summary.notes.push(format!(
            "the history's net state passed its memory limit ({} MiB) and spilled {} MiB to a temporary directory",
            opts.net_memory >> 20,
            seg.store.spilled_bytes >> 20
        ));
    }
    Ok(())
}

/// Applies what of the segment is not applied yet (`done`: tables merged into the
/// image) and starts it again empty; on failure says what the target holds.
async fn flush(
    l: &ImageLoad<'_>,
    seg: &mut Segment,
    done: &HashSet<u32>,
    applied: &mut Applied,
    summary: &mut PgRestoreSummary,
) -> Result<(), RestoreError> {
    let result = if seg.is_empty() {
        Ok(0)
    } else {
        apply_segment(l.client, l.conn, seg, done).await
    };
    match result {
        Ok(n) => {
            summary.net_rows += n;
            summary.transactions += seg.txns;
            summary.changes += seg.changes;
            applied.txns += seg.txns;
            if let Some(last) = seg.last.take() {
                applied.last = Some(last);
                summary.final_lsn = super::repl::Lsn(last.0).to_string();
            }
            seg.reset()
        }
        Err(e) => {
            let _ = l.client.batch_execute("ROLLBACK").await;
            let up_to = seg
                .last
                .map(|(lsn, t)| format!(" (transactions up to {})", describe_txn(lsn, t)))
                .unwrap_or_default();
            Err(failed(format!("{e}{up_to}. {}", applied.left(l.conn))))
        }
    }
}

/// Replays a transaction with DDL or truncates statement by statement.
async fn barrier(
    l: &ImageLoad<'_>,
    txn: &Txn,
    applied: &mut Applied,
    summary: &mut PgRestoreSummary,
) -> Result<(), RestoreError> {
    let (client, conn) = (l.client, l.conn);
    let q = |e: tokio_postgres::Error| failed(format!("{}: {}", conn.display, db_error(&e)));
    let mut stmts = Vec::new();
    for c in &txn.changes {
        stmts.extend(replayed(c).map_err(|e| cannot(c, e))?);
    }
    client.batch_execute("BEGIN").await.map_err(q)?;
    for r in created_from_query_first(stmts) {
        if let Err(e) = run(client, &r).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(failed(format!(
                "replaying {}: {}: {}; refused statement: {}. {}",
                describe_txn(txn.lsn, txn.time_us),
                conn.display,
                db_error(&e),
                r.sql.chars().take(300).collect::<String>(),
                applied.left(conn)
            )));
        }
    }
    client.batch_execute("COMMIT").await.map_err(q)?;
    applied.txns += 1;
    applied.last = Some((txn.lsn, txn.time_us));
    summary.transactions += 1;
    summary.changes += txn.changes.len() as u64;
    summary.final_lsn = super::repl::Lsn(txn.lsn).to_string();
    Ok(())
}
