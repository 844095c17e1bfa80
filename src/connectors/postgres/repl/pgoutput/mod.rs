//! Decoder for the `pgoutput` logical replication message format.
//!
//! Covers protocol version 1 fully, plus the streaming messages of version 2
//! (and the extended Stream Abort of version 4) through [`Decoder`]. Every
//! function here returns a [`DecodeError`] on malformed input and never
//! panics.

use bytes::Bytes;

use crate::connectors::postgres::repl::lsn::{Lsn, PgTimestamp};

mod types;
pub use types::*;

/// Why a pgoutput message could not be decoded.
///
/// Guarantees: names the message type and the field that was wrong, so a
/// log line is enough to locate the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer was empty.
    #[error("empty pgoutput message")]
    Empty,
    /// The first byte is not a known message type.
    #[error("unknown pgoutput message type {:#04x} ('{}')", .0, char::from(*.0))]
    UnknownMessageType(u8),
    /// The buffer ended inside a field.
    #[error("truncated pgoutput {message} message: buffer ended while reading {field}")]
    Truncated {
        /// Message type name.
        message: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// A field had an impossible value.
    #[error("invalid pgoutput {message} message: bad {field}: {detail}")]
    Invalid {
        /// Message type name.
        message: &'static str,
        /// Offending field.
        field: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Bytes were left over after the message.
    #[error("pgoutput {message} message has {count} unexpected trailing bytes")]
    TrailingBytes {
        /// Message type name.
        message: &'static str,
        /// Number of extra bytes.
        count: usize,
    },
}

/// Decodes one pgoutput protocol version 1 message (as carried in one
/// XLogData frame).
///
/// Guarantees: never panics; returns [`DecodeError`] for empty, truncated,
/// over-long or otherwise malformed input. Do not use it for protocol 2
/// streamed transactions, whose change messages carry an extra xid only
/// between Stream Start and Stream Stop; use [`Decoder`] for those.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    decode_inner(buf, false, 1)
}

/// A stateful decoder that tracks Stream Start / Stream Stop so it can decode
/// protocol 2+ streamed transactions.
///
/// Guarantees: same as [`decode`]; for version 1 input it returns exactly
/// what [`decode`] returns.
#[derive(Debug, Clone)]
pub struct Decoder {
    proto_version: u32,
    in_stream: bool,
}

impl Decoder {
    /// A decoder for the `proto_version` given to `START_REPLICATION`.
    pub fn new(proto_version: u32) -> Self {
        Decoder {
            proto_version,
            in_stream: false,
        }
    }

    /// Whether the decoder is between Stream Start and Stream Stop.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes the next message and updates the stream state.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Message, DecodeError> {
        let msg = decode_inner(buf, self.in_stream, self.proto_version)?;
        match msg {
            Message::StreamStart { .. } => self.in_stream = true,
            Message::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(msg)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(self.u32(field)? as i32)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(self.i64(field)? as u64))
    }

    fn ts(&mut self, field: &'static str) -> Result<PgTimestamp, DecodeError> {
        Ok(PgTimestamp(self.i64(field)?))
    }

    fn invalid(&self, field: &'static str, detail: impl Into<String>) -> DecodeError {
        DecodeError::Invalid {
            message: self.message,
            field,
            detail: detail.into(),
        }
    }

    fn utf8(&self, b: &[u8], field: &'static str) -> Result<String, DecodeError> {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|e| self.invalid(field, format!("not valid UTF-8 ({e})")))
    }

    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated {
                message: self.message,
                field,
            })?;
        let s = self.utf8(&self.buf[..end], field)?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn len_prefixed(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.i32(field)?;
        let len = usize::try_from(len)
            .map_err(|_| self.invalid(field, format!("negative length {len}")))?;
        self.take(len, field)
    }

    fn tuple(&mut self) -> Result<Vec<ColumnValue>, DecodeError> {
        let n = self.i16("tuple column count")?;
        if n < 0 {
            return Err(self.invalid("tuple column count", format!("negative ({n})")));
        }
        // Each column needs at least one byte, which bounds the allocation.
        let mut cols = Vec::with_capacity((n as usize).min(self.buf.len()));
        for _ in 0..n as usize {
            let v = match self.u8("tuple column kind")? {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' => ColumnValue::Text(Bytes::copy_from_slice(
                    self.len_prefixed("text column value")?,
                )),
                b'b' => ColumnValue::Binary(Bytes::copy_from_slice(
                    self.len_prefixed("binary column value")?,
                )),
                k => {
                    return Err(self.invalid("tuple column kind", format!("unknown kind {k:#04x}")))
                }
            };
            cols.push(v);
        }
        Ok(cols)
    }

    fn old_tuple(&mut self, kind: u8) -> Result<OldTuple, DecodeError> {
        match kind {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            k => Err(self.invalid(
                "old tuple marker",
                format!("expected 'K' or 'O', got {k:#04x}"),
            )),
        }
    }

    fn expect_new(&mut self, kind: u8) -> Result<Vec<ColumnValue>, DecodeError> {
        if kind != b'N' {
            return Err(self.invalid("new tuple marker", format!("expected 'N', got {kind:#04x}")));
        }
        self.tuple()
    }
}

fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        _ => return None,
    })
}

fn decode_inner(buf: &[u8], in_stream: bool, proto: u32) -> Result<Message, DecodeError> {
    let (&tag, rest) = buf.split_first().ok_or(DecodeError::Empty)?;
    let message = message_name(tag).ok_or(DecodeError::UnknownMessageType(tag))?;
    let mut c = Cursor { buf: rest, message };
    let xid = |c: &mut Cursor<'_>| -> Result<Option<u32>, DecodeError> {
        if in_stream {
            c.u32("xid").map(Some)
        } else {
            Ok(None)
        }
    };
    let msg = match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: c.lsn("final LSN")?,
            commit_time: c.ts("commit timestamp")?,
            xid: c.u32("xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: c.u8("flags")?,
            commit_lsn: c.lsn("commit LSN")?,
            end_lsn: c.lsn("end LSN")?,
            commit_time: c.ts("commit timestamp")?,
        }),
        b'O' => Message::Origin(Origin {
            commit_lsn: c.lsn("commit LSN")?,
            name: c.cstr("origin name")?,
        }),
        b'R' => {
            let xid = xid(&mut c)?;
            let oid = c.u32("relation oid")?;
            let namespace = c.cstr("namespace")?;
            let name = c.cstr("relation name")?;
            let replica_identity = match c.u8("replica identity")? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                other => {
                    return Err(
                        c.invalid("replica identity", format!("unknown setting {other:#04x}"))
                    )
                }
            };
            let n = c.i16("column count")?;
            if n < 0 {
                return Err(c.invalid("column count", format!("negative ({n})")));
            }
            let mut columns = Vec::with_capacity((n as usize).min(c.buf.len()));
            for _ in 0..n {
                columns.push(Column {
                    flags: c.u8("column flags")?,
                    name: c.cstr("column name")?,
                    type_oid: c.u32("column type oid")?,
                    type_modifier: c.i32("column type modifier")?,
                });
            }
            Message::Relation(Relation {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type(TypeInfo {
            xid: xid(&mut c)?,
            oid: c.u32("type oid")?,
            namespace: c.cstr("namespace")?,
            name: c.cstr("type name")?,
        }),
        b'I' => {
            let xid = xid(&mut c)?;
            let relation_oid = c.u32("relation oid")?;
            let k = c.u8("new tuple marker")?;
            Message::Insert(Insert {
                xid,
                relation_oid,
                new: c.expect_new(k)?,
            })
        }
        b'U' => {
            let xid = xid(&mut c)?;
            let relation_oid = c.u32("relation oid")?;
            let mut k = c.u8("tuple marker")?;
            let mut old = None;
            if k == b'K' || k == b'O' {
                old = Some(c.old_tuple(k)?);
                k = c.u8("new tuple marker")?;
            }
            Message::Update(Update {
                xid,
                relation_oid,
                old,
                new: c.expect_new(k)?,
            })
        }
        b'D' => {
            let xid = xid(&mut c)?;
            let relation_oid = c.u32("relation oid")?;
            let k = c.u8("old tuple marker")?;
            Message::Delete(Delete {
                xid,
                relation_oid,
                old: c.old_tuple(k)?,
            })
        }
        b'T' => {
            let xid = xid(&mut c)?;
            let n = c.i32("relation count")?;
            if n < 0 {
                return Err(c.invalid("relation count", format!("negative ({n})")));
            }
            let options = c.u8("options")?;
            let mut relation_oids = Vec::with_capacity((n as usize).min(c.buf.len() / 4));
            for _ in 0..n {
                relation_oids.push(c.u32("relation oid")?);
            }
            Message::Truncate(Truncate {
                xid,
                options,
                relation_oids,
            })
        }
        b'M' => Message::LogicalMessage(LogicalMessage {
            xid: xid(&mut c)?,
            flags: c.u8("flags")?,
            lsn: c.lsn("message LSN")?,
            prefix: c.cstr("prefix")?,
            content: Bytes::copy_from_slice(c.len_prefixed("content")?),
        }),
        b'S' => Message::StreamStart {
            xid: c.u32("xid")?,
            first_segment: c.u8("first segment flag")? != 0,
        },
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit {
            xid: c.u32("xid")?,
            flags: c.u8("flags")?,
            commit_lsn: c.lsn("commit LSN")?,
            end_lsn: c.lsn("end LSN")?,
            commit_time: c.ts("commit timestamp")?,
        }),
        b'A' => {
            let xid = c.u32("xid")?;
            let subxid = c.u32("subtransaction xid")?;
            // Protocol 4 (parallel streaming) appends the abort LSN and time.
            let abort = if proto >= 4 && !c.buf.is_empty() {
                Some((c.lsn("abort LSN")?, c.ts("abort timestamp")?))
            } else {
                None
            };
            Message::StreamAbort(StreamAbort { xid, subxid, abort })
        }
        other => return Err(DecodeError::UnknownMessageType(other)),
    };
    if !c.buf.is_empty() {
        return Err(DecodeError::TrailingBytes {
            message,
            count: c.buf.len(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests;
