//! Loading a base image into the target: the schema, each table's rows by `COPY`,
//! sequence values, then indexes, constraints and triggers (post-data), as
//! `pg_restore` does. With a net state to merge (the history's first segment), the
//! image rows of changed keys are left out as they stream by, and the final rows
//! load at the same time on connections of their own, before the post-data.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures_util::SinkExt;
use prost::Message as _;

use super::conn::{db_error, ConnInfo};
use super::image::{PgImageChunk, PgImagePart};
use super::layout::Selection;
use super::net::{Segment, TableNet};
use super::net_apply::{load_net_rows, ImageFilter};
use super::restore::PgRestoreSummary;
use super::setup::{quote_ident, quote_literal};
use super::PgError;
use crate::event::BaseImageMeta;
use crate::journal::Journal;
use crate::restore::{ProgressSink, RestoreError};

fn failed(message: String) -> RestoreError {
    RestoreError::Target(message)
}

/// The tables of `seg` the image load can take in: plain tables on the target
/// whose columns are those of the history.
async fn mergeable(
    client: &tokio_postgres::Client,
    conn: &ConnInfo,
    seg: &Segment,
) -> Result<HashMap<(String, String), TableNet>, RestoreError> {
    let mut out = HashMap::new();
    for t in seg.keyed().chain(seg.appended()) {
        let name = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let row = client
            .query_opt(
                "SELECT array(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0
                 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum)
                 FROM pg_class c WHERE c.oid = to_regclass($1) AND c.relkind = 'r'",
                &[&name],
            )
            .await
            .map_err(|e| failed(PgError::query(&conn.display, &e).to_string()))?;
        let Some(row) = row else { continue };
        let mut cols: Vec<String> = row.get(0);
        let mut want = t.columns.clone();
        cols.sort();
        want.sort();
        if cols == want {
            out.insert((t.schema.clone(), t.table.clone()), t.clone());
        }
    }
    Ok(out)
}

/// What loading the image needs to know.
pub(super) struct ImageLoad<'a> {
    pub journal: &'a Journal,
    pub image: &'a BaseImageMeta,
    pub client: &'a tokio_postgres::Client,
    pub conn: &'a ConnInfo,
    pub selection: &'a Selection,
    /// Whether the session could set `session_replication_role = replica` (why not).
    pub replica_role: &'a Result<(), String>,
}

/// Loads the image; with `merge`, merges that segment's state for the tables it
/// can (returned: their store numbers, and the final rows loaded).
pub(super) async fn load_image(
    l: &ImageLoad<'_>,
    merge: Option<&Segment>,
    summary: &mut PgRestoreSummary,
    progress: &mut dyn ProgressSink,
) -> Result<(HashSet<u32>, u64), RestoreError> {
    let mut chunks = l.journal.image_chunks(l.image);
    let mut reader = PartReader::default();
    let first = reader.next(&mut chunks, l.image, progress)?;
    let Some(PgImagePart::Schema(sql)) = first else {
        return Err(failed("base image does not start with its schema".into()));
    };
    super::restore::check_encoding(l.client, l.conn, &sql).await?;
    super::restore::check_version(l.client, l.conn, &sql).await?;
    super::restore::load_definitions(l.client, l.conn, &sql, "loading the schema").await?;
    if let Err(why) = l.replica_role {
        super::restore::without_replica_role(l.client, l.conn, why, summary).await?;
    }
    let merged = match merge {
        Some(seg) => mergeable(l.client, l.conn, seg).await?,
        None => HashMap::new(),
    };
    let done: HashSet<u32> = merged.values().map(|t| t.id).collect();
    let loading: Vec<TableNet> = merged.values().cloned().collect();
    let rows = load_rows(
        l,
        &mut chunks,
        &mut reader,
        merge,
        &merged,
        summary,
        progress,
    );
    let net = async {
        match merge {
            Some(seg) if !loading.is_empty() => {
                load_net_rows(l.conn, l.replica_role.is_ok(), &seg.store, &loading).await
            }
            _ => Ok(0),
        }
    };
    let (post_data, net_rows) = futures_util::future::try_join(rows, net).await?;
    if let Some(sql) = post_data {
        super::restore::load_definitions(
            l.client,
            l.conn,
            &sql,
            "creating indexes, constraints and triggers after the rows",
        )
        .await?;
    }
    Ok((done, net_rows))
}

/// Decodes image chunks, counting bytes for progress.
#[derive(Default)]
struct PartReader {
    bytes: u64,
    table: String,
    rows: u64,
}

impl PartReader {
    fn next(
        &mut self,
        chunks: &mut impl Iterator<Item = Result<Vec<u8>, crate::journal::JournalError>>,
        image: &BaseImageMeta,
        progress: &mut dyn ProgressSink,
    ) -> Result<Option<PgImagePart>, RestoreError> {
        let Some(chunk) = chunks.next() else {
            return Ok(None);
        };
        let chunk = chunk?;
        self.bytes += chunk.len() as u64;
        let part = PgImageChunk::decode(chunk.as_slice())
            .map_err(|e| failed(format!("base image chunk undecodable: {e}")))?
            .part
            .ok_or_else(|| failed("empty base image chunk".into()))?;
        if let PgImagePart::CopyData(d) = &part {
            self.rows += memchr::memchr_iter(b'\n', d).count() as u64;
        }
        let what = if self.table.is_empty() {
            "bytes of the base image".to_string()
        } else {
            format!(
                "bytes of the base image; {}: {} rows",
                self.table, self.rows
            )
        };
        progress.update(&what, self.bytes, Some(image.bytes))?;
        Ok(Some(part))
    }
}

type Sink = std::pin::Pin<Box<tokio_postgres::CopyInSink<Bytes>>>;

/// Loads tables' rows and sequence values up to the post-data part (returned).
async fn load_rows(
    l: &ImageLoad<'_>,
    chunks: &mut impl Iterator<Item = Result<Vec<u8>, crate::journal::JournalError>>,
    reader: &mut PartReader,
    merge: Option<&Segment>,
    merged: &HashMap<(String, String), TableNet>,
    summary: &mut PgRestoreSummary,
    progress: &mut dyn ProgressSink,
) -> Result<Option<String>, RestoreError> {
    let (client, conn) = (l.client, l.conn);
    let q = |e: tokio_postgres::Error| failed(format!("{}: {}", conn.display, db_error(&e)));
    let mut sink: Option<Sink> = None;
    let mut filter: Option<ImageFilter> = None;
    // The rows of a table outside `--tables` are passed over.
    let mut skipping = false;
    let mut post_data = None;
    while let Some(part) = reader.next(chunks, l.image, progress)? {
        if !matches!(part, PgImagePart::CopyData(_)) {
            if let Some(mut s) = sink.take() {
                if let Some(mut f) = filter.take() {
                    let mut out = Vec::new();
                    f.finish(&mut out)?;
                    if !out.is_empty() {
                        s.send(Bytes::from(out)).await.map_err(q)?;
                    }
                }
                summary.image_rows += s.as_mut().finish().await.map_err(q)?;
            }
        }
        match part {
            PgImagePart::Schema(_) => {
                return Err(failed("base image holds a second schema".into()));
            }
            PgImagePart::Table(t) => {
                reader.table = format!("{}.{}", t.schema, t.name);
                reader.rows = 0;
                if !l.selection.is_all() {
                    let lineage = super::layout::lineage(client, conn, &t.schema, &t.name)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                    skipping = !l.selection.covers(&lineage);
                    if skipping {
                        continue;
                    }
                }
                if let (Some(seg), Some(n)) =
                    (merge, merged.get(&(t.schema.clone(), t.name.clone())))
                {
                    if !n.key.is_empty() {
                        filter = Some(ImageFilter::new(&seg.store, n, &t.columns).ok_or_else(|| {
                            failed(format!(
                                "the base image's columns of {}.{} are not those of its changes after it; restore with every change replayed",
                                t.schema, t.name
                            ))
                        })?);
                    }
                }
                let cols = t
                    .columns
                    .iter()
                    .map(|c| quote_ident(c))
                    .collect::<Vec<_>>()
                    .join(", ");
                let stmt = format!(
                    "COPY {}.{} ({cols}) FROM STDIN",
                    quote_ident(&t.schema),
                    quote_ident(&t.name)
                );
                sink = Some(Box::pin(client.copy_in(&stmt).await.map_err(q)?));
                summary.tables += 1;
            }
            PgImagePart::CopyData(data) => match (sink.as_mut(), filter.as_mut()) {
                (Some(s), Some(f)) => {
                    let mut out = Vec::with_capacity(data.len());
                    f.feed(&data, &mut out)?;
                    s.send(Bytes::from(out)).await.map_err(q)?;
                }
                (Some(s), None) => s.send(Bytes::from(data)).await.map_err(q)?,
                (None, _) if skipping => {}
                (None, _) => return Err(failed("base image has rows before their table".into())),
            },
            PgImagePart::Sequence(s) => {
                if let Some(v) = s.last_value {
                    let name = format!("{}.{}", quote_ident(&s.schema), quote_ident(&s.name));
                    client
                        .batch_execute(&format!(
                            "SELECT setval({}, {v}, true)",
                            quote_literal(&name)
                        ))
                        .await
                        .map_err(q)?;
                }
            }
            PgImagePart::PostData(sql) => post_data = Some(sql),
            PgImagePart::NotCaptured(what) => {
                // Unlogged tables are reported from the target at the end.
                if !what.starts_with("rows of unlogged table") {
                    summary.notes.push(format!(
                        "not restored (logical decoding does not carry it): {what}"
                    ));
                }
            }
        }
    }
    if let Some(mut s) = sink.take() {
        if let Some(mut f) = filter.take() {
            let mut out = Vec::new();
            f.finish(&mut out)?;
            if !out.is_empty() {
                s.send(Bytes::from(out)).await.map_err(q)?;
            }
        }
        summary.image_rows += s.as_mut().finish().await.map_err(q)?;
    }
    Ok(post_data)
}
