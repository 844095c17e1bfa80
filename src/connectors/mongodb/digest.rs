//! Per-collection digests of a live deployment (`tidemark digest mongodb://...`,
//! and the check at the end of a restore).
//!
//! A collection's digest covers its documents as canonical BSON (the bytes the
//! server returns: key order inside a document and number types count), combined
//! order-independently (a wrapping sum of each document's SHA-256, so document
//! order does not count), its type, its options (validator, capped size,
//! collation, time-series, clustered...) and its indexes (all but `_id_`), with
//! top-level option and index fields sorted by name (their order is the server's,
//! not the data's). Views are digested by their definition.

use mongodb::bson::{RawDocument, RawDocumentBuf};
use sha2::{Digest as _, Sha256};

use super::client::{Conn, MongoError};
use crate::digest::{hex, short_sha, Digest, PartDigest};

/// What a part's `rows` counts.
pub const UNIT: &str = "documents";

/// The digest of every user collection at `conn`.
pub async fn digest(conn: &Conn) -> Result<Digest, MongoError> {
    let mut parts = Vec::new();
    for db in conn.databases().await? {
        for info in conn.collections(&db).await? {
            parts.push(collection(conn, &db, &info).await?);
        }
    }
    Ok(Digest::from_parts(UNIT, parts))
}

async fn collection(
    conn: &Conn,
    db: &str,
    info: &RawDocumentBuf,
) -> Result<PartDigest, MongoError> {
    let name = info.get_str("name").unwrap_or_default().to_string();
    let kind = info.get_str("type").unwrap_or("collection").to_string();
    let mut meta = format!("type={kind}\n");
    if let Ok(opts) = info.get_document("options") {
        meta.push_str(&format!("options={}\n", sorted_fields(opts)));
    }
    let (mut rows, mut sum) = (0u64, 0u128);
    if kind != "view" {
        if kind == "collection" {
            for ix in conn.indexes(db, &name).await? {
                if ix.get_str("name").is_ok_and(|n| n == "_id_") {
                    continue;
                }
                meta.push_str(&format!("index={}\n", sorted_fields(&ix)));
            }
        }
        let coll = conn.client.database(db).collection::<RawDocumentBuf>(&name);
        let what = format!("digest of {db}.{name}");
        let mut cursor = coll
            .find(mongodb::bson::doc! {})
            .await
            .map_err(|e| conn.err(&what, e))?;
        while cursor.advance().await.map_err(|e| conn.err(&what, e))? {
            sum = sum.wrapping_add(doc_hash(cursor.current()));
            rows += 1;
        }
    }
    meta.push_str(&format!("rows={rows}\nsum={sum:032x}\n"));
    Ok(PartDigest {
        name: format!("{db}.{name}"),
        rows,
        digest: short_sha(&meta),
    })
}

/// A document's contribution: the first 16 bytes of the SHA-256 of its bytes.
pub fn doc_hash(doc: &RawDocument) -> u128 {
    let h = Sha256::digest(doc.as_bytes());
    u128::from_be_bytes(h[..16].try_into().unwrap_or([0; 16]))
}

/// The document's top-level fields sorted by name (`v` and `ns` of index specs
/// left out: the server sets them), as hex of each field's BSON.
fn sorted_fields(doc: &RawDocument) -> String {
    let mut fields: Vec<(String, String)> = Vec::new();
    for item in doc.iter().flatten() {
        let (k, v) = item;
        if k == "v" || k == "ns" {
            continue;
        }
        let mut one = RawDocumentBuf::new();
        one.append(k, v.to_raw_bson());
        fields.push((k.to_string(), hex(one.as_bytes())));
    }
    fields.sort();
    fields
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_counts_document_order_does_not() {
        let mut a = RawDocumentBuf::new();
        a.append("_id", 1);
        a.append("x", 1);
        let mut b = RawDocumentBuf::new();
        b.append("x", 1);
        b.append("_id", 1);
        assert_ne!(doc_hash(&a), doc_hash(&b));
        let mut c = RawDocumentBuf::new();
        c.append("_id", 2);
        let ab = doc_hash(&a).wrapping_add(doc_hash(&c));
        let ba = doc_hash(&c).wrapping_add(doc_hash(&a));
        assert_eq!(ab, ba);
        // An int32 is not an int64 of the same value.
        let mut d = RawDocumentBuf::new();
        d.append("_id", 1i64);
        d.append("x", 1);
        assert_ne!(doc_hash(&a), doc_hash(&d));
    }
}
