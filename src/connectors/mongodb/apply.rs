//! Applying journaled change events to a target deployment, idempotently (see
//! [`super::image`] for why: an image is reconciled by the events from its start).
//!
//! - `insert`, `replace`: the whole document (`fullDocument`, the document as the
//!   event wrote it) replaces the one with the same `documentKey`, or is inserted.
//! - `update`: from `updateDescription` alone, never from a looked-up document:
//!   first each of `truncatedArrays` (`$push` of nothing with `$slice`), then
//!   `updatedFields` as `$set` and `removedFields` as `$unset`, all by the dotted
//!   paths the server named. A path whose `disambiguatedPaths` entry has a field
//!   name containing `.` or starting with `$` cannot be named by a dotted path:
//!   the restore stops and says so rather than write the wrong field.
//! - `delete`: by `documentKey`.
//! - DDL (`create`, `createIndexes`, `dropIndexes`, `modify`, `rename`, `drop`,
//!   `dropDatabase`): the same command, where "already so" (exists, not found)
//!   counts as done.

use mongodb::bson::{doc, Bson, Document, RawDocument, RawDocumentBuf};

use super::client::{error_code, Conn};
use crate::event::MongoChange;

/// Server codes meaning "already so" for DDL replayed twice.
const NAMESPACE_NOT_FOUND: i32 = 26;
const INDEX_NOT_FOUND: i32 = 27;
const NAMESPACE_EXISTS: i32 = 48;

/// Applies one change; the error says which event and why.
pub async fn apply(conn: &Conn, change: &MongoChange) -> Result<(), String> {
    let ev = RawDocument::from_bytes(&change.event_bson)
        .map_err(|e| format!("a journaled MongoDB event is not BSON: {e}"))?;
    let ns = format!("{}.{}", change.db, change.collection);
    let ctx = |e: String| format!("{} on {ns}: {e}", change.operation_type);
    apply_event(conn, change, ev).await.map_err(ctx)
}

fn to_doc(d: &RawDocument) -> Result<Document, String> {
    Document::try_from(d).map_err(|e| e.to_string())
}

async fn apply_event(conn: &Conn, change: &MongoChange, ev: &RawDocument) -> Result<(), String> {
    let db = conn.client.database(&change.db);
    let coll = db.collection::<RawDocumentBuf>(&change.collection);
    let key = || {
        ev.get_document("documentKey")
            .map_err(|e| format!("no documentKey: {e}"))
            .and_then(to_doc)
    };
    let desc = || ev.get_document("operationDescription").ok();
    let err = |e: mongodb::error::Error| conn.err("apply", e).to_string();
    let tolerate = |r: Result<Document, mongodb::error::Error>, ok: &[i32]| match r {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e).is_some_and(|c| ok.contains(&c)) => Ok(()),
        Err(e) => Err(conn.err("apply", e).to_string()),
    };
    match change.operation_type.as_str() {
        "insert" | "replace" => {
            let full = ev
                .get_document("fullDocument")
                .map_err(|e| format!("no fullDocument: {e}"))?;
            coll.replace_one(key()?, full.to_raw_document_buf())
                .upsert(true)
                .await
                .map_err(err)?;
        }
        "update" => {
            let ud = ev
                .get_document("updateDescription")
                .map_err(|e| format!("no updateDescription: {e}"))?;
            check_paths(ud)?;
            let key = key()?;
            if let Ok(arrays) = ud.get_array("truncatedArrays") {
                for t in arrays {
                    let t = t.map_err(|e| e.to_string())?;
                    let t = t.as_document().ok_or("a truncatedArrays entry is not a document")?;
                    let field = t.get_str("field").map_err(|e| e.to_string())?;
                    let size = t
                        .get_i32("newSize")
                        .map(i64::from)
                        .or_else(|_| t.get_i64("newSize"))
                        .map_err(|e| e.to_string())?;
                    coll.update_one(
                        key.clone(),
                        doc! {"$push": {field: {"$each": [], "$slice": size}}},
                    )
                    .await
                    .map_err(err)?;
                }
            }
            let mut update = Document::new();
            if let Ok(set) = ud.get_document("updatedFields") {
                let set = to_doc(set)?;
                if !set.is_empty() {
                    update.insert("$set", set);
                }
            }
            if let Ok(removed) = ud.get_array("removedFields") {
                let mut unset = Document::new();
                for f in removed {
                    let f = f.map_err(|e| e.to_string())?;
                    let f = f.as_str().ok_or("a removedFields entry is not a string")?;
                    unset.insert(f, "");
                }
                if !unset.is_empty() {
                    update.insert("$unset", unset);
                }
            }
            if !update.is_empty() {
                coll.update_one(key, update).await.map_err(err)?;
            }
        }
        "delete" => {
            coll.delete_one(key()?).await.map_err(err)?;
        }
        "create" => {
            let mut cmd = doc! {"create": &change.collection};
            if let Some(d) = desc() {
                for (k, v) in to_doc(d)? {
                    cmd.insert(k, v);
                }
            }
            tolerate(db.run_command(cmd).await, &[NAMESPACE_EXISTS])?;
        }
        "createIndexes" => {
            let indexes = index_list(desc())?;
            let cmd = doc! {"createIndexes": &change.collection, "indexes": indexes};
            tolerate(db.run_command(cmd).await, &[])?;
        }
        "dropIndexes" => {
            for ix in index_list(desc())? {
                let Bson::Document(ix) = ix else { continue };
                let name = ix.get_str("name").map_err(|e| e.to_string())?;
                let cmd = doc! {"dropIndexes": &change.collection, "index": name};
                tolerate(
                    db.run_command(cmd).await,
                    &[INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND],
                )?;
            }
        }
        "modify" => {
            let mut cmd = doc! {"collMod": &change.collection};
            if let Some(d) = desc() {
                for (k, v) in to_doc(d)? {
                    cmd.insert(k, v);
                }
            }
            tolerate(db.run_command(cmd).await, &[NAMESPACE_NOT_FOUND])?;
        }
        "rename" => {
            let to = ev
                .get_document("to")
                .ok()
                .or_else(|| desc().and_then(|d| d.get_document("to").ok()))
                .ok_or("no `to` namespace")?;
            let target = format!(
                "{}.{}",
                to.get_str("db").map_err(|e| e.to_string())?,
                to.get_str("coll").map_err(|e| e.to_string())?
            );
            let drop_target = desc().is_some_and(|d| d.get("dropTarget").ok().flatten().is_some());
            let cmd = doc! {
                "renameCollection": format!("{}.{}", change.db, change.collection),
                "to": target,
                "dropTarget": drop_target,
            };
            tolerate(
                conn.client.database("admin").run_command(cmd).await,
                &[NAMESPACE_NOT_FOUND],
            )?;
        }
        "drop" => {
            tolerate(
                db.run_command(doc! {"drop": &change.collection}).await,
                &[NAMESPACE_NOT_FOUND],
            )?;
        }
        "dropDatabase" => {
            db.drop().await.map_err(err)?;
        }
        other => {
            return Err(format!(
                "this version of tidemark cannot restore `{other}` events (sharding and other operations are not supported); restore to a moment before it"
            ))
        }
    }
    Ok(())
}

/// The `indexes` of an operationDescription, without the server-set `v`.
fn index_list(desc: Option<&RawDocument>) -> Result<Vec<Bson>, String> {
    let desc = desc.ok_or("no operationDescription")?;
    let arr = desc
        .get_array("indexes")
        .map_err(|e| format!("no indexes: {e}"))?;
    let mut out = Vec::new();
    for ix in arr {
        let ix = ix.map_err(|e| e.to_string())?;
        let ix = ix.as_document().ok_or("an index is not a document")?;
        let mut d = to_doc(ix)?;
        d.remove("v");
        out.push(Bson::Document(d));
    }
    Ok(out)
}

/// Refuses updates whose paths a dotted path would misname.
fn check_paths(ud: &RawDocument) -> Result<(), String> {
    let Ok(paths) = ud.get_document("disambiguatedPaths") else {
        return Ok(());
    };
    for item in paths {
        let (path, parts) = item.map_err(|e| e.to_string())?;
        let Some(parts) = parts.as_array() else {
            continue;
        };
        for p in parts {
            let p = p.map_err(|e| e.to_string())?;
            if let Some(s) = p.as_str() {
                if s.contains('.') || s.starts_with('$') {
                    return Err(format!(
                        "the update of `{path}` names a field called `{s}`, which a dotted path cannot address; this version of tidemark cannot restore it exactly, so it stops here (restore to a moment before this event)"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_a_dot_cannot_name_are_refused() {
        let ok = mongodb::bson::rawdoc! {"disambiguatedPaths": {"a.0": ["a", "0"]}};
        assert!(check_paths(&ok).is_ok());
        let bad = mongodb::bson::rawdoc! {"disambiguatedPaths": {"a.b.c": ["a", "b.c"]}};
        let e = check_paths(&bad).unwrap_err();
        assert!(e.contains("`b.c`"), "{e}");
    }
}
