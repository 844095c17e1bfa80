//! Stream decoding (`STREAM_LISTPACKS` v1, v2 and v3).

use std::collections::HashSet;
use std::io::BufRead;

use crate::connectors::redis::rdb::error::{CodecError, Result};
use crate::connectors::redis::rdb::listpack::{listpack_entries, Elem};
use crate::connectors::redis::rdb::reader::{blob_error, capped, Reader};
use crate::connectors::redis::rdb::string::read_string;
use crate::connectors::redis::rdb::value::{
    Consumer, ConsumerGroup, PendingEntry, Stream, StreamEntry, StreamId,
};

/// RDB type of the first stream encoding (Redis 5 to 6.2).
pub(crate) const STREAM_LISTPACKS: u8 = 15;
/// RDB type adding first ID, max deleted ID, entries added and entries read (7.0).
pub(crate) const STREAM_LISTPACKS_2: u8 = 19;
/// RDB type adding consumer active time (7.2).
pub(crate) const STREAM_LISTPACKS_3: u8 = 21;

const FLAG_DELETED: i64 = 1;
const FLAG_SAMEFIELDS: i64 = 2;

fn read_id<R: BufRead>(r: &mut Reader<R>, ctx: &'static str) -> Result<StreamId> {
    let ms = r.read_len(ctx)?;
    let seq = r.read_len(ctx)?;
    Ok(StreamId { ms, seq })
}

/// Reads a stream value of RDB type `type_id` (one of the three stream types).
pub(crate) fn read_stream<R: BufRead>(r: &mut Reader<R>, type_id: u8) -> Result<Stream> {
    let mut s = Stream::default();
    let nodes = r.read_len("stream listpack count")?;
    for _ in 0..nodes {
        let key_offset = r.offset();
        let node_key = read_string(r, "stream node key")?;
        let raw: [u8; 16] = node_key.as_slice().try_into().map_err(|_| {
            crate::connectors::redis::rdb::error::RdbError::Malformed {
                offset: key_offset,
                detail: format!("stream node key has {} bytes, expected 16", node_key.len()),
            }
        })?;
        let master = StreamId::from_be_bytes(raw);
        let lp_offset = r.offset();
        let lp = read_string(r, "stream listpack")?;
        let elems =
            listpack_entries(&lp).map_err(|e| blob_error(lp_offset, "stream listpack", e))?;
        parse_node(master, &elems, &mut s.entries)
            .map_err(|e| blob_error(lp_offset, "stream listpack", e))?;
    }
    s.length = r.read_len("stream length")?;
    s.last_id = read_id(r, "stream last id")?;
    if type_id >= STREAM_LISTPACKS_2 {
        s.first_id = read_id(r, "stream first id")?;
        s.max_deleted_id = read_id(r, "stream max deleted id")?;
        s.entries_added = r.read_len("stream entries added")?;
    } else {
        s.first_id = s.entries.first().map(|e| e.id).unwrap_or_default();
        s.entries_added = s.length;
    }
    let groups = r.read_len("stream group count")?;
    s.groups = Vec::with_capacity(capped(groups));
    for _ in 0..groups {
        let name = read_string(r, "consumer group name")?;
        let last_id = read_id(r, "consumer group last id")?;
        let entries_read = if type_id >= STREAM_LISTPACKS_2 {
            // Redis saves its "invalid" marker (-1) as u64::MAX.
            Some(r.read_len("consumer group entries read")?).filter(|&v| v != u64::MAX)
        } else {
            None
        };
        let pel_len = r.read_len("group PEL size")?;
        let mut pel = Vec::with_capacity(capped(pel_len));
        for _ in 0..pel_len {
            let id = StreamId::from_be_bytes(r.read_array::<16>("group PEL id")?);
            let delivery_time_ms = r.read_ms_time("group PEL delivery time")?;
            let delivery_count = r.read_len("group PEL delivery count")?;
            pel.push(PendingEntry {
                id,
                delivery_time_ms,
                delivery_count,
            });
        }
        let pel_ids: HashSet<StreamId> = pel.iter().map(|p| p.id).collect();
        let n_consumers = r.read_len("consumer count")?;
        let mut consumers = Vec::with_capacity(capped(n_consumers));
        for _ in 0..n_consumers {
            let cname = read_string(r, "consumer name")?;
            let seen_time_ms = r.read_ms_time("consumer seen time")?;
            let active_time_ms = if type_id >= STREAM_LISTPACKS_3 {
                Some(r.read_ms_time("consumer active time")?)
            } else {
                None
            };
            let n = r.read_len("consumer PEL size")?;
            let mut cpel = Vec::with_capacity(capped(n));
            for _ in 0..n {
                let id_offset = r.offset();
                let id = StreamId::from_be_bytes(r.read_array::<16>("consumer PEL id")?);
                if !pel_ids.contains(&id) {
                    return Err(crate::connectors::redis::rdb::error::RdbError::Malformed {
                        offset: id_offset,
                        detail: format!("consumer PEL id {id} missing from group PEL"),
                    });
                }
                cpel.push(id);
            }
            consumers.push(Consumer {
                name: cname,
                seen_time_ms,
                active_time_ms,
                pel: cpel,
            });
        }
        s.groups.push(ConsumerGroup {
            name,
            last_id,
            entries_read,
            pel,
            consumers,
        });
    }
    Ok(s)
}

struct Cursor<'a, 'b> {
    elems: &'b [Elem<'a>],
    pos: usize,
}

impl<'a> Cursor<'a, '_> {
    fn next(&mut self, what: &str) -> Result<Elem<'a>, CodecError> {
        let e = self.elems.get(self.pos).copied().ok_or_else(|| {
            CodecError::new(self.pos, format!("stream listpack ends before {what}"))
        })?;
        self.pos += 1;
        Ok(e)
    }

    fn int(&mut self, what: &str) -> Result<i64, CodecError> {
        let pos = self.pos;
        self.next(what)?.as_i64().ok_or_else(|| {
            CodecError::new(pos, format!("stream listpack {what} is not an integer"))
        })
    }

    fn count(&mut self, what: &str) -> Result<usize, CodecError> {
        let pos = self.pos;
        let v = self.int(what)?;
        usize::try_from(v)
            .map_err(|_| CodecError::new(pos, format!("stream listpack {what} is negative")))
    }
}

/// Decodes one stream listpack node (positions in errors are element indexes).
///
/// Layout: master entry `count deleted n-fields field... 0`, then per entry
/// `flags ms-diff seq-diff [n-fields] (field value | value)... lp-count`.
pub(crate) fn parse_node(
    master: StreamId,
    elems: &[Elem<'_>],
    out: &mut Vec<StreamEntry>,
) -> Result<(), CodecError> {
    let mut c = Cursor { elems, pos: 0 };
    let count = c.count("entry count")?;
    let deleted = c.count("deleted count")?;
    let n_master = c.count("master field count")?;
    if n_master > elems.len() {
        return Err(CodecError::new(
            2,
            "master field count exceeds listpack size",
        ));
    }
    let mut master_fields = Vec::with_capacity(n_master);
    for _ in 0..n_master {
        master_fields.push(c.next("master field")?);
    }
    if c.int("master terminator")? != 0 {
        return Err(CodecError::new(
            c.pos - 1,
            "master entry terminator is not 0",
        ));
    }
    let total = count
        .checked_add(deleted)
        .ok_or_else(|| CodecError::new(0, "entry count overflow"))?;
    for _ in 0..total {
        let flags = c.int("entry flags")?;
        let ms_diff = c.int("entry ms delta")?;
        let seq_diff = c.int("entry seq delta")?;
        let id = StreamId {
            ms: master.ms.wrapping_add(ms_diff as u64),
            seq: master.seq.wrapping_add(seq_diff as u64),
        };
        let mut fields = Vec::new();
        if flags & FLAG_SAMEFIELDS != 0 {
            for f in &master_fields {
                let v = c.next("entry value")?;
                fields.push((f.to_vec(), v.to_vec()));
            }
        } else {
            let n = c.count("entry field count")?;
            if n > elems.len() {
                return Err(CodecError::new(
                    c.pos - 1,
                    "entry field count exceeds listpack size",
                ));
            }
            for _ in 0..n {
                let f = c.next("entry field")?;
                let v = c.next("entry value")?;
                fields.push((f.to_vec(), v.to_vec()));
            }
        }
        c.int("entry lp-count")?;
        if flags & FLAG_DELETED == 0 {
            out.push(StreamEntry { id, fields });
        }
    }
    if c.pos != elems.len() {
        return Err(CodecError::new(
            c.pos,
            "trailing elements in stream listpack",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_with_samefields_different_fields_and_deleted() {
        use Elem::*;
        let elems = vec![
            Int(2), // count
            Int(1), // deleted
            Int(2), // master fields
            Bytes(b"a"),
            Bytes(b"b"),
            Int(0),
            // entry 1: same fields, id = master
            Int(2),
            Int(0),
            Int(0),
            Bytes(b"1"),
            Int(2),
            Int(5),
            // entry 2: deleted, same fields, id ms+1
            Int(3),
            Int(1),
            Int(0),
            Bytes(b"x"),
            Bytes(b"y"),
            Int(5),
            // entry 3: own fields, id ms+2 seq 4
            Int(0),
            Int(2),
            Int(4),
            Int(1),
            Bytes(b"c"),
            Bytes(b"z"),
            Int(6),
        ];
        let mut out = Vec::new();
        parse_node(StreamId::new(100, 1), &elems, &mut out).unwrap();
        assert_eq!(
            out,
            vec![
                StreamEntry {
                    id: StreamId::new(100, 1),
                    fields: vec![
                        (b"a".to_vec(), b"1".to_vec()),
                        (b"b".to_vec(), b"2".to_vec())
                    ]
                },
                StreamEntry {
                    id: StreamId::new(102, 5),
                    fields: vec![(b"c".to_vec(), b"z".to_vec())]
                },
            ]
        );
        for cut in 0..elems.len() {
            assert!(parse_node(StreamId::new(1, 1), &elems[..cut], &mut Vec::new()).is_err());
        }
    }
}
