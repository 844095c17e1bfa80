//! Recovery-point markers in PostgreSQL's own log: a transactional logical
//! message (`pg_logical_emit_message(true, 'tidemark.point', ID)`), which capture
//! journals as a [`Marker`](crate::event::Marker) event in commit order with the
//! rows around it. No table is written and no writer waits.

use super::conn::ConnInfo;
use super::PgError;
use crate::app::marker::PG_PREFIX;
use crate::config::Timeouts;
use crate::connectors::ConnectorError;
use crate::event::{ChangeEvent, Payload};

/// Emits marker `id` and returns once it is committed.
pub fn mark(url: &str, id: &str, timeouts: &Timeouts) -> Result<(), ConnectorError> {
    let conn = ConnInfo::parse(url)
        .map_err(ConnectorError::from_display)?
        .with_timeouts(timeouts);
    super::block_on(async {
        let client = conn.connect().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&PG_PREFIX, &id];
        let emit = client.query_one(
            "SELECT pg_logical_emit_message(true, $1::text, $2::text)::text",
            &params,
        );
        conn.bounded("to write the recovery-point marker", timeouts.read, async {
            emit.await.map_err(|e| PgError::query(&conn.display, &e))
        })
        .await?;
        Ok(())
    })
}

/// Whether `event` is marker `id`.
pub fn is_marker(event: &ChangeEvent, id: &str) -> bool {
    matches!(&event.payload, Some(Payload::Marker(m)) if m.name == id)
}
