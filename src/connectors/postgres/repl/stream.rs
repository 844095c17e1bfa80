//! The CopyBoth phase of a logical replication connection.

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;

use crate::connectors::postgres::repl::connection::ReplicationConnection;
use crate::connectors::postgres::repl::error::Error;
use crate::connectors::postgres::repl::lsn::{Lsn, PgTimestamp};
use crate::connectors::postgres::repl::wire::{parse_error_fields, BodyReader};

/// Options passed to the `pgoutput` plugin by `START_REPLICATION`.
///
/// Guarantees: [`ReplicationOptions::new`] produces options valid on
/// PostgreSQL 14 and later (`messages` needs 14+); names are quoted so any
/// publication name without NUL bytes is passed through exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationOptions {
    /// pgoutput protocol version: 1, or 2 for streamed in-progress
    /// transactions (together with `streaming`).
    pub proto_version: u32,
    /// Publications whose tables are replicated. Must not be empty.
    pub publication_names: Vec<String>,
    /// Also send `pg_logical_emit_message` messages (PostgreSQL 14+).
    pub messages: bool,
    /// Ask for binary column values ('b' tuple columns; PostgreSQL 14+).
    pub binary: bool,
    /// Stream large in-progress transactions (needs `proto_version >= 2`).
    pub streaming: bool,
}

impl ReplicationOptions {
    /// Protocol version 1, text values, logical messages enabled, no streaming.
    pub fn new<I, S>(publications: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ReplicationOptions {
            proto_version: 1,
            publication_names: publications.into_iter().map(Into::into).collect(),
            messages: true,
            binary: false,
            streaming: false,
        }
    }

    pub(crate) fn to_command_options(&self) -> Result<String, Error> {
        if self.publication_names.is_empty() {
            return Err(Error::InvalidArgument(
                "at least one publication name is required".into(),
            ));
        }
        if !(1..=4).contains(&self.proto_version) {
            return Err(Error::InvalidArgument(format!(
                "unsupported pgoutput proto_version {}",
                self.proto_version
            )));
        }
        if self.streaming && self.proto_version < 2 {
            return Err(Error::InvalidArgument(
                "streaming needs proto_version >= 2".into(),
            ));
        }
        let mut names = Vec::new();
        for n in &self.publication_names {
            if n.is_empty() || n.contains('\0') {
                return Err(Error::InvalidArgument(format!(
                    "invalid publication name {n:?}"
                )));
            }
            names.push(format!("\"{}\"", n.replace('"', "\"\"")));
        }
        let list = names.join(",").replace('\'', "''");
        let mut out = format!(
            "proto_version '{}', publication_names '{}'",
            self.proto_version, list
        );
        if self.messages {
            out.push_str(", messages 'true'");
        }
        if self.binary {
            out.push_str(", binary 'true'");
        }
        if self.streaming {
            out.push_str(", streaming 'true'");
        }
        Ok(out)
    }
}

/// An `XLogData` ('w') frame: one chunk of output-plugin data.
///
/// With pgoutput each frame carries exactly one pgoutput message in `data`
/// (decode it with [`crate::connectors::postgres::repl::pgoutput::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// WAL position of the record this data came from (0/0 for some messages).
    pub wal_start: Lsn,
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock when the frame was sent.
    pub server_time: PgTimestamp,
    /// The output plugin's bytes.
    pub data: Bytes,
}

/// A primary keepalive ('k') frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// Current end of WAL on the server.
    pub wal_end: Lsn,
    /// Server clock when the frame was sent.
    pub server_time: PgTimestamp,
    /// The server wants a standby status update right away; if none arrives
    /// within `wal_sender_timeout` (default 60 s) it drops the connection.
    pub reply_requested: bool,
}

/// One frame received while streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// Output plugin data.
    XLogData(XLogData),
    /// Keepalive; may request a status update.
    Keepalive(PrimaryKeepalive),
}

/// A standby status update ('r') sent to the server.
///
/// The `flush` position is the acknowledgment: the server records it as the
/// slot's `confirmed_flush_lsn` and may then recycle WAL and never resend
/// transactions that committed before it. Only report a `flush` LSN after
/// everything before it is durable on the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Last WAL position received (informational for logical slots).
    pub write: Lsn,
    /// Last WAL position made durable by the client (the acknowledgment).
    pub flush: Lsn,
    /// Last WAL position applied (informational).
    pub apply: Lsn,
    /// Client clock.
    pub client_time: PgTimestamp,
    /// Ask the server to answer with a keepalive immediately.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// An update with the current time and no reply request.
    pub fn new(write: Lsn, flush: Lsn, apply: Lsn) -> Self {
        StandbyStatusUpdate {
            write,
            flush,
            apply,
            client_time: PgTimestamp::now(),
            reply_requested: false,
        }
    }

    fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(34);
        b.put_u8(b'r');
        b.put_u64(self.write.0);
        b.put_u64(self.flush.0);
        b.put_u64(self.apply.0);
        b.put_i64(self.client_time.0);
        b.put_u8(u8::from(self.reply_requested));
        b.freeze()
    }
}

/// Parses the payload of a CopyData frame received while streaming.
///
/// Never panics; truncated or unknown frames yield [`Error::Protocol`].
pub fn parse_copy_data(data: Bytes) -> Result<ReplicationMessage, Error> {
    let mut r = BodyReader::new(&data, "replication CopyData");
    match r.u8()? {
        b'w' => {
            let wal_start = Lsn(r.i64()? as u64);
            let wal_end = Lsn(r.i64()? as u64);
            let server_time = PgTimestamp(r.i64()?);
            let payload = data.slice(25..);
            Ok(ReplicationMessage::XLogData(XLogData {
                wal_start,
                wal_end,
                server_time,
                data: payload,
            }))
        }
        b'k' => Ok(ReplicationMessage::Keepalive(PrimaryKeepalive {
            wal_end: Lsn(r.i64()? as u64),
            server_time: PgTimestamp(r.i64()?),
            reply_requested: r.u8()? != 0,
        })),
        other => Err(Error::Protocol(format!(
            "unknown replication CopyData type '{}'",
            other as char
        ))),
    }
}

/// A connection in logical streaming mode.
///
/// Guarantees: [`ReplicationStream::next`] is cancel-safe (usable in
/// `tokio::select!` next to a status-update timer); the flush LSN reported to
/// the server never goes backwards (a lower value is replaced by the highest
/// one already sent, because the server would otherwise move
/// `confirmed_flush_lsn` back).
#[derive(Debug)]
pub struct ReplicationStream {
    conn: ReplicationConnection,
    max_flush: Lsn,
    server_done: bool,
    client_done: bool,
    /// The server already left COPY mode (sent CommandComplete).
    copy_finished: bool,
}

impl ReplicationStream {
    pub(crate) fn new(conn: ReplicationConnection) -> Self {
        ReplicationStream {
            conn,
            max_flush: Lsn::ZERO,
            server_done: false,
            client_done: false,
            copy_finished: false,
        }
    }

    /// Receives the next frame. Returns `Ok(None)` once the server has ended
    /// the stream (it sent CopyDone, e.g. after [`ReplicationStream::stop`]
    /// was requested or on shutdown); call `stop` afterwards to return to
    /// idle. Errors sent by the server mid-stream are returned classified.
    pub async fn next(&mut self) -> Result<Option<ReplicationMessage>, Error> {
        if self.server_done {
            return Ok(None);
        }
        loop {
            let msg = self.conn.framed().read_message().await?;
            match msg.tag {
                b'd' => return parse_copy_data(msg.body).map(Some),
                b'c' => {
                    self.server_done = true;
                    return Ok(None);
                }
                b'C' => {
                    // The server left COPY mode without CopyDone (PostgreSQL
                    // does this e.g. when START_REPLICATION is repeated on a
                    // connection whose earlier stream was stopped).
                    self.server_done = true;
                    self.copy_finished = true;
                    return Ok(None);
                }
                b'N' | b'S' => {}
                b'E' => {
                    let e = parse_error_fields(&msg.body);
                    return Err(Error::from_server(e, self.conn.user()));
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message '{}' ({:?}) while streaming",
                        other as char,
                        String::from_utf8_lossy(&msg.body[..msg.body.len().min(64)])
                    )))
                }
            }
        }
    }

    /// Sends a standby status update. Not cancel-safe: dropping the future
    /// mid-write leaves the connection unusable.
    ///
    /// Answer every keepalive with `reply_requested` promptly, and send one
    /// at least every `wal_sender_timeout / 2` even when idle.
    pub async fn send_status_update(&mut self, update: StandbyStatusUpdate) -> Result<(), Error> {
        let mut update = update;
        if update.flush < self.max_flush {
            update.flush = self.max_flush;
        }
        self.max_flush = update.flush;
        let framed = self.conn.framed();
        frontend::CopyData::new(update.encode())?.write(&mut framed.write_buf);
        framed.flush().await
    }

    /// The highest flush LSN sent so far (`0/0` if none).
    pub fn last_flush_sent(&self) -> Lsn {
        self.max_flush
    }

    /// Ends streaming cleanly: sends CopyDone, discards frames still in
    /// flight, waits for the server's CopyDone, CommandComplete and
    /// ReadyForQuery, and returns the idle connection. Wrap it in a timeout if
    /// the server may be slow to notice (it checks between WAL records).
    pub async fn stop(mut self) -> Result<ReplicationConnection, Error> {
        if !self.client_done && !self.copy_finished {
            let framed = self.conn.framed();
            frontend::copy_done(&mut framed.write_buf);
            framed.flush().await?;
            self.client_done = true;
        }
        let mut error = None;
        loop {
            let msg = self.conn.framed().read_message().await?;
            match msg.tag {
                b'd' | b'N' | b'S' | b'T' | b'D' | b'C' => {}
                b'c' => self.server_done = true,
                b'E' => error = Some(parse_error_fields(&msg.body)),
                b'Z' => {
                    return match error {
                        Some(e) => Err(Error::from_server(e, self.conn.user())),
                        None => Ok(self.conn),
                    }
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected message '{}' while stopping replication",
                        other as char
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_frames() {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(0x10);
        b.put_u64(0x20);
        b.put_i64(5);
        b.put_slice(b"xyz");
        let m = parse_copy_data(b.freeze()).unwrap();
        assert_eq!(
            m,
            ReplicationMessage::XLogData(XLogData {
                wal_start: Lsn(0x10),
                wal_end: Lsn(0x20),
                server_time: PgTimestamp(5),
                data: Bytes::from_static(b"xyz"),
            })
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x30);
        k.put_i64(7);
        k.put_u8(1);
        let full = k.freeze();
        assert!(matches!(
            parse_copy_data(full.clone()).unwrap(),
            ReplicationMessage::Keepalive(PrimaryKeepalive {
                reply_requested: true,
                ..
            })
        ));
        for i in 0..full.len() {
            assert!(parse_copy_data(full.slice(..i)).is_err());
        }
        assert!(parse_copy_data(Bytes::from_static(b"zz")).is_err());
    }

    #[test]
    fn status_update_encoding() {
        let u = StandbyStatusUpdate {
            write: Lsn(1),
            flush: Lsn(2),
            apply: Lsn(3),
            client_time: PgTimestamp(4),
            reply_requested: true,
        };
        let e = u.encode();
        assert_eq!(e.len(), 34);
        assert_eq!(e[0], b'r');
        assert_eq!(&e[9..17], &2u64.to_be_bytes());
        assert_eq!(e[33], 1);
    }

    #[test]
    fn option_quoting() {
        let mut o = ReplicationOptions::new(["pub", "we\"ird'name"]);
        assert_eq!(
            o.to_command_options().unwrap(),
            "proto_version '1', publication_names '\"pub\",\"we\"\"ird''name\"', messages 'true'"
        );
        o.streaming = true;
        assert!(o.to_command_options().is_err());
        o.proto_version = 2;
        assert!(o
            .to_command_options()
            .unwrap()
            .ends_with("streaming 'true'"));
        assert!(ReplicationOptions::new(Vec::<String>::new())
            .to_command_options()
            .is_err());
    }
}
