//! Recovery-point markers in PostgreSQL's own log: a transactional logical
//! message (`pg_logical_emit_message(true, 'tidemark.point', ID)`), which capture
//! journals as a [`Marker`](crate::event::Marker) event in commit order with the
//! rows around it. No table is written and no writer waits.

use super::conn::ConnInfo;
use super::PgError;
use crate::app::marker::PG_PREFIX;
use crate::config::Timeouts;
use crate::connectors::{ConnectorError, MarkWriter};
use crate::event::{ChangeEvent, Payload};

/// Connects to the source's database for its markers.
pub fn connect(url: &str, timeouts: &Timeouts) -> Result<Box<dyn MarkWriter>, ConnectorError> {
    let conn = ConnInfo::parse(url)
        .map_err(ConnectorError::from_display)?
        .with_timeouts(timeouts);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ConnectorError(format!("cannot start the async runtime: {e}")))?;
    let client = rt
        .block_on(conn.connect())
        .map_err(ConnectorError::from_display)?;
    Ok(Box::new(PgMarker { conn, rt, client }))
}

struct PgMarker {
    conn: ConnInfo,
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl MarkWriter for PgMarker {
    fn write(&mut self, id: &str) -> Result<(), ConnectorError> {
        let (conn, client) = (&self.conn, &self.client);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&PG_PREFIX, &id];
        let emit = client.query_one(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)::text",
            &params,
        );
        self.rt
            .block_on(conn.bounded(
                "to write the recovery-point marker",
                conn.timeouts.read,
                async { emit.await.map_err(|e| PgError::query(&conn.display, &e)) },
            ))
            .map_err(ConnectorError::from_display)?;
        Ok(())
    }
}

/// Whether `event` is marker `id`.
pub fn is_marker(event: &ChangeEvent, id: &str) -> bool {
    matches!(&event.payload, Some(Payload::Marker(m)) if m.name == id)
}
