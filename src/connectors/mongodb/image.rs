//! Base images of a MongoDB deployment, and their chunk format.
//!
//! # How an image meets the stream
//! The server cannot be asked for a snapshot at one cluster time everywhere (the
//! SecantusDB stand-in refuses `readConcern: snapshot`; a sharded cluster would
//! need it per shard), so an image is taken the Debezium way and reconciled:
//!
//! 1. list the captured collections (name, type, UUID);
//! 2. take the deployment's operation time `T0`: the image's position, and where
//!    the change stream starts (`startAtOperationTime`, inclusive);
//! 3. read every collection (options, indexes, then the documents in `_id` order,
//!    each exactly once: WiredTiger does not move records on update);
//! 4. list the collections again: if any was created, dropped or renamed in
//!    between, the image is discarded and taken again (a rename during the read
//!    could hide documents from both names);
//! 5. seal the image as representing the deployment at `T1`, the end of the read.
//!
//! A document in the image is as it was at some moment in `[T0, T1]`. The stream
//! from `T0` holds every change after that moment too, and a restore applies
//! events idempotently (inserts and replaces as upserts of the whole document,
//! updates as `$set`/`$unset`/`$slice` of the paths they name, deletes by key,
//! DDL ignoring "already so"), so replaying the events up to any moment at or
//! after `T1` gives the deployment at that moment. A restore before `T1` cannot
//! use this image (the journal knows it by its time).
//!
//! # Chunk format `mongodb-bson-v1`
//! A chunk is a run of BSON documents, back to back (each starts with its
//! length). Each is one record:
//! - `{k: "coll", db, coll, info}`: a collection or view before its documents;
//!   `info` is its `listCollections` entry (type, options, UUID), and for
//!   collections `indexes`, its `listIndexes` entries;
//! - `{k: "doc", db, coll, doc}`: one document, byte for byte as the server
//!   returned it (so key order and number types are kept).

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document, RawArrayBuf, RawBson, RawDocument, RawDocumentBuf};

use super::client::{Conn, MongoError, Selection};
use crate::journal::JournalError;

/// The chunk format.
pub const FORMAT: &str = "mongodb-bson-v1";

/// Bytes buffered before a chunk is handed to the journal.
const CHUNK_BYTES: usize = 1 << 20;

/// A collection to image (name, type and identity as listed).
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// Database.
    pub db: String,
    /// `listCollections` entry.
    pub info: RawDocumentBuf,
}

impl Listed {
    /// Collection name.
    pub fn name(&self) -> &str {
        self.info.get_str("name").unwrap_or_default()
    }

    /// `collection`, `view` or `timeseries`.
    pub fn kind(&self) -> &str {
        self.info.get_str("type").unwrap_or("collection")
    }

    /// What identifies it across a listing: name, type and UUID.
    fn identity(&self) -> (String, String, String, Option<Vec<u8>>) {
        let uuid = self
            .info
            .get_document("info")
            .ok()
            .and_then(|i| i.get_binary("uuid").ok())
            .map(|b| b.bytes.to_vec());
        (
            self.db.clone(),
            self.name().to_string(),
            self.kind().to_string(),
            uuid,
        )
    }
}

/// Every captured collection and view, by database then name.
pub async fn list(conn: &Conn, sel: &Selection) -> Result<Vec<Listed>, MongoError> {
    let mut out = Vec::new();
    let mut dbs = conn.databases().await?;
    dbs.sort();
    for db in dbs.into_iter().filter(|d| sel.has_db(d)) {
        for info in conn.collections(&db).await? {
            let l = Listed {
                db: db.clone(),
                info,
            };
            if sel.has(&l.db, l.name()) {
                out.push(l);
            }
        }
    }
    Ok(out)
}

/// Whether two listings name the same collections (identity only).
pub fn same_listing(a: &[Listed], b: &[Listed]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.identity() == y.identity())
}

/// Where the image's chunks go (the journal's image sink, or a test buffer).
pub trait ChunkOut: Send {
    /// Takes one chunk.
    fn put(
        &mut self,
        chunk: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), JournalError>> + Send;
}

impl ChunkOut for crate::capture::ImageSink {
    async fn put(&mut self, chunk: Vec<u8>) -> Result<(), JournalError> {
        crate::capture::ImageSink::put(self, chunk).await
    }
}

/// Counts of what an image holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Collections and views.
    pub collections: u64,
    /// Documents.
    pub documents: u64,
}

/// Why reading an image stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The server failed.
    Mongo(MongoError),
    /// The journal failed.
    Journal(JournalError),
}

/// Reads `listed` into `out` (steps 3 of the module docs); logs progress every
/// few seconds under `source`.
pub async fn read(
    conn: &Conn,
    listed: &[Listed],
    out: &mut impl ChunkOut,
    source: &str,
) -> Result<Counts, ReadError> {
    let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
    let mut counts = Counts::default();
    let mut shown = Instant::now();
    for l in listed {
        let mut info = l.info.clone();
        if l.kind() == "collection" {
            let mut arr = RawArrayBuf::new();
            for ix in conn
                .indexes(&l.db, l.name())
                .await
                .map_err(ReadError::Mongo)?
            {
                arr.push(RawBson::Document(ix));
            }
            info.append("indexes", RawBson::Array(arr));
        }
        push_record(&mut buf, "coll", &l.db, l.name(), "info", info);
        counts.collections += 1;
        if l.kind() == "view" {
            continue;
        }
        let coll = conn
            .client
            .database(&l.db)
            .collection::<RawDocumentBuf>(l.name());
        let find = coll.find(doc! {});
        // `_id` order reads each document once; a time-series collection has no
        // `_id` index to walk (its buckets are read in storage order).
        let find = if l.kind() == "collection" {
            find.sort(doc! {"_id": 1})
        } else {
            find
        };
        let what = format!("reading {}.{}", l.db, l.name());
        let mut cursor = find
            .await
            .map_err(|e| ReadError::Mongo(conn.err(&what, e)))?;
        while cursor
            .advance()
            .await
            .map_err(|e| ReadError::Mongo(conn.err(&what, e)))?
        {
            let d = cursor.current().to_raw_document_buf();
            push_record(&mut buf, "doc", &l.db, l.name(), "doc", d);
            counts.documents += 1;
            if buf.len() >= CHUNK_BYTES {
                out.put(std::mem::take(&mut buf))
                    .await
                    .map_err(ReadError::Journal)?;
            }
            if shown.elapsed() > Duration::from_secs(5) {
                shown = Instant::now();
                tracing::info!(source, collection = %format!("{}.{}", l.db, l.name()), documents = counts.documents, "base image in progress");
            }
        }
    }
    if !buf.is_empty() {
        out.put(buf).await.map_err(ReadError::Journal)?;
    }
    Ok(counts)
}

fn push_record(buf: &mut Vec<u8>, k: &str, db: &str, coll: &str, key: &str, value: RawDocumentBuf) {
    let mut r = RawDocumentBuf::new();
    r.append("k", k);
    r.append("db", db);
    r.append("coll", coll);
    r.append(key, RawBson::Document(value));
    buf.extend_from_slice(r.as_bytes());
}

/// One record of an image chunk.
#[derive(Debug)]
pub enum Record<'a> {
    /// A collection or view and its `listCollections` entry (with `indexes`).
    Coll {
        /// Database.
        db: &'a str,
        /// Name.
        coll: &'a str,
        /// The entry.
        info: &'a RawDocument,
    },
    /// A document.
    Doc {
        /// Database.
        db: &'a str,
        /// Collection.
        coll: &'a str,
        /// The document as the server returned it.
        doc: &'a RawDocument,
    },
}

/// Splits a chunk into its records, in order; an error names what is damaged.
pub fn records(chunk: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < chunk.len() {
        let len = chunk
            .get(at..at + 4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .filter(|n| *n >= 5 && at + *n as usize <= chunk.len())
            .ok_or_else(|| format!("record at byte {at} has no valid length"))?
            as usize;
        let r = RawDocument::from_bytes(&chunk[at..at + len])
            .map_err(|e| format!("record at byte {at}: {e}"))?;
        at += len;
        let field = |k: &str| {
            r.get_str(k)
                .map_err(|e| format!("record at byte {at}: {k}: {e}"))
        };
        let (k, db, coll) = (field("k")?, field("db")?, field("coll")?);
        out.push(match k {
            "coll" => Record::Coll {
                db,
                coll,
                info: r.get_document("info").map_err(|e| e.to_string())?,
            },
            "doc" => Record::Doc {
                db,
                coll,
                doc: r.get_document("doc").map_err(|e| e.to_string())?,
            },
            other => return Err(format!("unknown record kind `{other}`")),
        });
    }
    Ok(out)
}

/// The `create` command that makes the collection or view `info` describes in
/// `coll` (options as listed; what `create` does not take left out).
pub fn create_command(coll: &str, info: &RawDocument) -> Result<Document, String> {
    let mut cmd = doc! {"create": coll};
    if let Ok(opts) = info.get_document("options") {
        let opts = Document::try_from(opts).map_err(|e| e.to_string())?;
        for (k, v) in opts {
            if let ("clusteredIndex", mongodb::bson::Bson::Document(mut ci)) =
                (k.as_str(), v.clone())
            {
                ci.remove("v");
                cmd.insert(k, ci);
            } else {
                cmd.insert(k, v);
            }
        }
    }
    Ok(cmd)
}

/// The indexes of `info` to create (all but `_id_` and the clustered index), as
/// `createIndexes` takes them.
pub fn index_specs(info: &RawDocument) -> Result<Vec<Document>, String> {
    let mut out = Vec::new();
    let Ok(arr) = info.get_array("indexes") else {
        return Ok(out);
    };
    for ix in arr {
        let ix = ix.map_err(|e| e.to_string())?;
        let Some(d) = ix.as_document() else { continue };
        let mut d = Document::try_from(d).map_err(|e| e.to_string())?;
        if d.get_str("name").is_ok_and(|n| n == "_id_") || d.get_bool("clustered").unwrap_or(false)
        {
            continue;
        }
        d.remove("v");
        d.remove("ns");
        out.push(d);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_named() {
        let mut buf = Vec::new();
        let mut info = RawDocumentBuf::new();
        info.append("name", "people");
        push_record(&mut buf, "coll", "app", "people", "info", info);
        let mut d = RawDocumentBuf::new();
        d.append("_id", 1);
        d.append("b", 2.5);
        push_record(&mut buf, "doc", "app", "people", "doc", d.clone());
        let recs = records(&buf).unwrap();
        assert_eq!(recs.len(), 2);
        match &recs[1] {
            Record::Doc { db, coll, doc } => {
                assert_eq!((*db, *coll), ("app", "people"));
                assert_eq!(doc.as_bytes(), d.as_bytes());
            }
            _ => panic!("expected a document"),
        }
        buf.truncate(buf.len() - 3);
        assert!(records(&buf).unwrap_err().contains("no valid length"));
    }
}
