//! The MongoDB restore target: collections (options, validators, indexes) and
//! documents from the base image, then the journaled events up to the moment,
//! whole transactions only, then the digest.
//!
//! Guarantees (the [`crate::restore`] contract):
//! - **Refuse to clobber.** A target with any user database is refused unless
//!   `--force`, which drops every user database there first.
//! - **Whole transactions.** Events of a transaction are held until its commit
//!   event; a transaction the moment cuts (none can be: its events share one
//!   time) or that the journal holds only in part is not applied, and the summary
//!   says so.
//! - **Re-runs.** Run again with `--force`: the target is emptied and rebuilt.
//! - **Idempotent events.** Every event is applied so that applying it to a state
//!   that already has it changes nothing (see [`super::apply`]), which is what lets
//!   the image be read while the source changed.

use mongodb::bson::{doc, RawDocumentBuf};

use super::apply::apply;
use super::client::{Conn, MongoError};
use super::image::{self, create_command, index_specs, Record};
use crate::config::Timeouts;
use crate::digest::Digest;
use crate::event::Payload;
use crate::journal::Journal;
use crate::restore::{Applied, ProgressSink, Rerun, RestoreError, RestorePlan, Target};

/// Documents per `insert` while loading the image.
const INSERT_BATCH: usize = 1000;

/// A deployment being rebuilt.
pub struct MongoTarget {
    url: String,
    masked: String,
    timeouts: Timeouts,
    rt: tokio::runtime::Runtime,
    conn: Option<Conn>,
}

fn target_err(e: MongoError) -> RestoreError {
    RestoreError::Target(e.to_string())
}

impl MongoTarget {
    /// A target at `url`; connects on first use.
    pub fn new(url: &str, timeouts: &Timeouts) -> Result<MongoTarget, RestoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RestoreError::Target(format!("cannot start an async runtime: {e}")))?;
        Ok(MongoTarget {
            url: url.to_string(),
            masked: crate::redact::redact_url(url),
            timeouts: *timeouts,
            rt,
            conn: None,
        })
    }

    fn conn(&mut self) -> Result<Conn, RestoreError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = self
            .rt
            .block_on(Conn::open(&self.url, &self.timeouts))
            .map_err(target_err)?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Drops every user database of the target; returns their names.
    fn drop_all(&mut self) -> Result<Vec<String>, RestoreError> {
        let conn = self.conn()?;
        self.rt
            .block_on(async {
                let dbs = conn.databases().await?;
                for db in &dbs {
                    conn.command(db, doc! {"dropDatabase": 1}, &format!("dropping {db}"))
                        .await?;
                }
                Ok::<_, MongoError>(dbs)
            })
            .map_err(target_err)
    }

    fn load_image(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        progress: &mut dyn ProgressSink,
        applied: &mut Applied,
    ) -> Result<(), RestoreError> {
        let Some(meta) = &plan.image else {
            return Ok(());
        };
        if meta.format != image::FORMAT {
            return Err(RestoreError::Apply(format!(
                "base image #{} has format `{}`; this version reads `{}`",
                meta.id,
                meta.format,
                image::FORMAT
            )));
        }
        let conn = self.conn()?;
        let (mut colls, mut docs) = (0u64, 0u64);
        let mut pending: Vec<RawDocumentBuf> = Vec::new();
        let mut pending_ns: (String, String) = Default::default();
        for chunk in journal.image_chunks(meta) {
            let chunk = chunk?;
            let recs = image::records(&chunk)
                .map_err(|e| RestoreError::Apply(format!("base image #{}: {e}", meta.id)))?;
            for r in recs {
                match r {
                    Record::Coll { db, coll, info } => {
                        self.flush_docs(&conn, &pending_ns, &mut pending)?;
                        let create = create_command(coll, info).map_err(RestoreError::Apply)?;
                        let indexes = index_specs(info).map_err(RestoreError::Apply)?;
                        self.rt
                            .block_on(async {
                                conn.command(db, create, &format!("creating {db}.{coll}"))
                                    .await?;
                                if !indexes.is_empty() {
                                    let cmd = doc! {"createIndexes": coll, "indexes": indexes};
                                    conn.command(db, cmd, &format!("indexing {db}.{coll}"))
                                        .await?;
                                }
                                Ok::<_, MongoError>(())
                            })
                            .map_err(target_err)?;
                        colls += 1;
                        pending_ns = (db.to_string(), coll.to_string());
                    }
                    Record::Doc { db, coll, doc } => {
                        if pending_ns.0 != db || pending_ns.1 != coll {
                            self.flush_docs(&conn, &pending_ns, &mut pending)?;
                            pending_ns = (db.to_string(), coll.to_string());
                        }
                        pending.push(doc.to_raw_document_buf());
                        docs += 1;
                        if pending.len() >= INSERT_BATCH {
                            self.flush_docs(&conn, &pending_ns, &mut pending)?;
                            progress.update("documents from the image", docs, None)?;
                        }
                    }
                }
            }
        }
        self.flush_docs(&conn, &pending_ns, &mut pending)?;
        applied
            .counts
            .push(("collections from the image".into(), colls));
        applied
            .counts
            .push(("documents from the image".into(), docs));
        Ok(())
    }

    fn flush_docs(
        &self,
        conn: &Conn,
        ns: &(String, String),
        docs: &mut Vec<RawDocumentBuf>,
    ) -> Result<(), RestoreError> {
        if docs.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(docs);
        let coll = conn
            .client
            .database(&ns.0)
            .collection::<RawDocumentBuf>(&ns.1);
        self.rt
            .block_on(async { coll.insert_many(batch).ordered(true).await })
            .map_err(|e| target_err(conn.err(&format!("inserting into {}.{}", ns.0, ns.1), e)))?;
        Ok(())
    }
}

impl Target for MongoTarget {
    fn describe(&self) -> String {
        self.masked.clone()
    }

    fn occupied(&mut self, _: &Journal, _: &RestorePlan) -> Result<Option<String>, RestoreError> {
        let conn = self.conn()?;
        let dbs = self.rt.block_on(conn.databases()).map_err(target_err)?;
        Ok((!dbs.is_empty()).then(|| format!("{} database(s): {}", dbs.len(), dbs.join(", "))))
    }

    fn force_effect(&self) -> &'static str {
        "drop every user database in the target first"
    }

    /// Drops every user database: the target is as empty as a restore needs it.
    fn teardown(&mut self, _: &Journal, _: &RestorePlan) -> Result<String, RestoreError> {
        let dropped = self.drop_all()?;
        Ok(format!(
            "dropped {} database(s) from {}{}",
            dropped.len(),
            self.masked,
            if dropped.is_empty() {
                String::new()
            } else {
                format!(": {}", dropped.join(", "))
            }
        ))
    }

    fn rerun(&self) -> Rerun {
        Rerun::StartOverWithForce
    }

    fn preview(&mut self, _: &Journal, plan: &RestorePlan) -> Result<Vec<String>, RestoreError> {
        let mut lines = Vec::new();
        if let Some(m) = &plan.image {
            lines.push(format!(
                "load base image #{} ({} chunks, {} bytes): collections with options and indexes, then documents",
                m.id, m.chunks, m.bytes
            ));
        }
        lines.push(format!(
            "apply {} change events idempotently, whole transactions only",
            plan.events
        ));
        Ok(lines)
    }

    fn apply(
        &mut self,
        journal: &Journal,
        plan: &RestorePlan,
        force: bool,
        progress: &mut dyn ProgressSink,
    ) -> Result<Applied, RestoreError> {
        let conn = self.conn()?;
        if force {
            self.drop_all()?;
        }
        let mut applied = Applied::default();
        self.load_image(journal, plan, progress, &mut applied)?;
        let (mut events, mut txns) = (0u64, 0u64);
        let mut open: Vec<crate::event::MongoChange> = Vec::new();
        let mut open_id: Option<String> = None;
        let mut last_pos = plan
            .image
            .as_ref()
            .and_then(|m| m.position.as_ref())
            .map(|p| p.to_string());
        if plan.last_seq >= plan.first_seq {
            for entry in journal.events(plan.source.id, plan.first_seq, plan.last_seq) {
                let entry = entry?;
                let ev = entry.event;
                let Some(Payload::Mongo(change)) = ev.payload else {
                    return Err(RestoreError::Apply(format!(
                        "event {} of source `{}` is not a MongoDB change",
                        entry.seq, plan.source.name
                    )));
                };
                let pos = ev.position.as_ref().map(|p| p.to_string());
                match ev.txn {
                    Some(t) => {
                        if open_id.as_ref().is_some_and(|id| *id != t.id) {
                            // The journal never splits one; a new id means the old
                            // one's end was not journaled: it is not applied.
                            open.clear();
                        }
                        open_id = Some(t.id.clone());
                        open.push(change);
                        if t.commit {
                            for c in open.drain(..) {
                                self.rt
                                    .block_on(apply(&conn, &c))
                                    .map_err(RestoreError::Apply)?;
                                events += 1;
                            }
                            open_id = None;
                            txns += 1;
                            last_pos = pos;
                        }
                    }
                    None => {
                        open.clear();
                        open_id = None;
                        self.rt
                            .block_on(apply(&conn, &change))
                            .map_err(RestoreError::Apply)?;
                        events += 1;
                        last_pos = pos;
                    }
                }
                progress.update("events", events, Some(plan.events))?;
            }
        }
        applied.counts.push(("events".into(), events));
        applied.counts.push(("transactions".into(), txns));
        if !open.is_empty() {
            applied.notes.push(format!(
                "{} event(s) of a transaction whose commit the journal does not hold were not applied",
                open.len()
            ));
        }
        applied.final_position = last_pos;
        Ok(applied)
    }

    fn digest(&mut self) -> Result<Digest, RestoreError> {
        let conn = self.conn()?;
        self.rt
            .block_on(super::digest::digest(&conn))
            .map_err(target_err)
    }
}
