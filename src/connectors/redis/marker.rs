//! Recovery-point markers in Redis's own log: `PUBLISH tidemark:points ID` on the
//! primary. Redis propagates PUBLISH to its replicas, so the marker arrives on
//! the replication stream capture follows, in order with the writes around it. A
//! restore replays it as any other command (a message to no subscriber).

use super::locate::Locator;
use super::resp::Conn;
use crate::app::marker::REDIS_CHANNEL;
use crate::config::Timeouts;
use crate::connectors::{ConnectorError, MarkWriter};
use crate::event::{ChangeEvent, Payload};

/// Connects to the primary for its markers.
pub fn connect(url: &str, timeouts: &Timeouts) -> Result<Box<dyn MarkWriter>, ConnectorError> {
    let locator = Locator::parse(url).map_err(ConnectorError::from_display)?;
    let conn = locator
        .primary(timeouts, None)
        .map_err(ConnectorError::from_display)?
        .conn;
    Ok(Box::new(RedisMarker(conn)))
}

struct RedisMarker(Conn);

impl MarkWriter for RedisMarker {
    fn write(&mut self, id: &str) -> Result<(), ConnectorError> {
        self.0
            .call(&["PUBLISH", REDIS_CHANNEL, id])
            .map_err(ConnectorError::from_display)?;
        Ok(())
    }
}

/// Whether `event` is marker `id`.
pub fn is_marker(event: &ChangeEvent, id: &str) -> bool {
    let Some(Payload::Redis(c)) = &event.payload else {
        return false;
    };
    c.args.len() == 3
        && c.args[0].eq_ignore_ascii_case(b"PUBLISH")
        && c.args[1] == REDIS_CHANNEL.as_bytes()
        && c.args[2] == id.as_bytes()
}
