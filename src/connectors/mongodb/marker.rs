//! Recovery-point markers in MongoDB's own log: an insert of `{_id: ID}` into
//! `tidemark.points` (majority write concern), which the deployment-level change
//! stream delivers in order with the writes around it. The source's selection
//! must capture that collection (`config validate` says so otherwise); a restore
//! brings it along like any captured collection.

use mongodb::bson::{doc, RawDocument};
use mongodb::options::{Acknowledgment, WriteConcern};

use super::client::{Conn, Selection};
use crate::config::Timeouts;
use crate::connectors::{ConnectorError, MarkWriter};
use crate::event::{ChangeEvent, Payload};

/// The database of the marker collection.
pub const DB: &str = "tidemark";
/// The marker collection.
pub const COLLECTION: &str = "points";

/// Why a source with `selection` cannot be marked.
pub fn problem(selection: &Selection) -> Option<String> {
    (!selection.has(DB, COLLECTION)).then(|| {
        format!("recovery points need the marker collection captured: add \"{DB}\" to its `databases` (or \"{DB}.{COLLECTION}\" to its `collections`)")
    })
}

/// Connects to the deployment (a `ping` dials it) for its markers. The client
/// lives on a runtime of the marker's own: the driver's monitoring tasks run on
/// the runtime that made the client, so a client made on a throwaway runtime
/// finds no server to write to later.
pub fn connect(url: &str, timeouts: &Timeouts) -> Result<Box<dyn MarkWriter>, ConnectorError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConnectorError(format!("cannot start an async runtime: {e}")))?;
    let conn = rt
        .block_on(async {
            let conn = Conn::open(url, timeouts).await?;
            conn.command("admin", doc! {"ping": 1}, "ping").await?;
            Ok::<_, super::client::MongoError>(conn)
        })
        .map_err(ConnectorError::from_display)?;
    Ok(Box::new(MongoMarker {
        rt,
        conn,
        timeouts: *timeouts,
    }))
}

struct MongoMarker {
    rt: tokio::runtime::Runtime,
    conn: Conn,
    timeouts: Timeouts,
}

impl MarkWriter for MongoMarker {
    fn write(&mut self, id: &str) -> Result<(), ConnectorError> {
        let (conn, read) = (&self.conn, self.timeouts.read);
        self.rt.block_on(async move {
            let wc = WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .w_timeout(read)
                .build();
            conn.client
                .database(DB)
                .collection::<mongodb::bson::Document>(COLLECTION)
                .insert_one(doc! {"_id": id, "at": mongodb::bson::DateTime::now()})
                .write_concern(wc)
                .await
                .map_err(|e| {
                    ConnectorError::from_display(conn.err("writing the recovery-point marker", e))
                })?;
            Ok(())
        })
    }
}

/// Whether `event` is marker `id`.
pub fn is_marker(event: &ChangeEvent, id: &str) -> bool {
    let Some(Payload::Mongo(c)) = &event.payload else {
        return false;
    };
    if c.db != DB || c.collection != COLLECTION || c.operation_type != "insert" {
        return false;
    }
    RawDocument::from_bytes(&c.event_bson)
        .ok()
        .and_then(|d| d.get_document("documentKey").ok())
        .and_then(|k| k.get_str("_id").ok())
        .is_some_and(|v| v == id)
}
