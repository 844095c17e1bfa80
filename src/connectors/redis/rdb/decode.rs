//! Decoding of one value, given its RDB type byte, into a logical [`Value`].

use std::io::BufRead;

use crate::connectors::redis::rdb::error::{RdbError, Result};
use crate::connectors::redis::rdb::intset::intset_entries;
use crate::connectors::redis::rdb::listpack::{listpack_entries, parse_f64, Elem};
use crate::connectors::redis::rdb::reader::{blob_error, capped, Reader};
use crate::connectors::redis::rdb::stream::{
    read_stream, STREAM_LISTPACKS, STREAM_LISTPACKS_2, STREAM_LISTPACKS_3,
};
use crate::connectors::redis::rdb::string::read_string;
use crate::connectors::redis::rdb::value::Value;
use crate::connectors::redis::rdb::ziplist::ziplist_entries;
use crate::connectors::redis::rdb::zipmap::zipmap_entries;

pub(crate) const TYPE_STRING: u8 = 0;
pub(crate) const TYPE_LIST: u8 = 1;
pub(crate) const TYPE_SET: u8 = 2;
pub(crate) const TYPE_ZSET: u8 = 3;
pub(crate) const TYPE_HASH: u8 = 4;
pub(crate) const TYPE_ZSET_2: u8 = 5;
pub(crate) const TYPE_MODULE_PRE_GA: u8 = 6;
pub(crate) const TYPE_MODULE_2: u8 = 7;
pub(crate) const TYPE_HASH_ZIPMAP: u8 = 9;
pub(crate) const TYPE_LIST_ZIPLIST: u8 = 10;
pub(crate) const TYPE_SET_INTSET: u8 = 11;
pub(crate) const TYPE_ZSET_ZIPLIST: u8 = 12;
pub(crate) const TYPE_HASH_ZIPLIST: u8 = 13;
pub(crate) const TYPE_LIST_QUICKLIST: u8 = 14;
pub(crate) const TYPE_HASH_LISTPACK: u8 = 16;
pub(crate) const TYPE_ZSET_LISTPACK: u8 = 17;
pub(crate) const TYPE_LIST_QUICKLIST_2: u8 = 18;
pub(crate) const TYPE_SET_LISTPACK: u8 = 20;
pub(crate) const TYPE_HASH_METADATA_PRE_GA: u8 = 22;
pub(crate) const TYPE_HASH_LISTPACK_EX_PRE_GA: u8 = 23;
pub(crate) const TYPE_HASH_METADATA: u8 = 24;
pub(crate) const TYPE_HASH_LISTPACK_EX: u8 = 25;

const QUICKLIST_NODE_PLAIN: u64 = 1;
const QUICKLIST_NODE_PACKED: u64 = 2;

/// Largest hash-field expiry Redis accepts (48 bits of milliseconds).
const HFE_MAX: u64 = 0x0000_FFFF_FFFF_FFFF;

/// Short human-readable name of an RDB type byte, for error messages.
pub(crate) fn type_name(t: u8) -> &'static str {
    match t {
        TYPE_MODULE_PRE_GA => "module (pre-GA)",
        TYPE_MODULE_2 => "module",
        8 => "unused type 8",
        _ => "unknown",
    }
}

type Hash = Vec<(Vec<u8>, Vec<u8>, Option<i64>)>;

/// Reads an encoded blob (an RDB string) and remembers where it started.
fn read_blob<R: BufRead>(r: &mut Reader<R>, ctx: &'static str) -> Result<(u64, Vec<u8>)> {
    let offset = r.offset();
    Ok((offset, read_string(r, ctx)?))
}

fn pairs_to_hash(offset: u64, what: &str, elems: &[Elem<'_>]) -> Result<Hash> {
    if !elems.len().is_multiple_of(2) {
        return Err(RdbError::Malformed {
            offset,
            detail: format!("{what} has an odd number of elements"),
        });
    }
    Ok(elems
        .chunks_exact(2)
        .map(|p| (p[0].to_vec(), p[1].to_vec(), None))
        .collect())
}

fn pairs_to_zset(offset: u64, what: &str, elems: &[Elem<'_>]) -> Result<Value> {
    if !elems.len().is_multiple_of(2) {
        return Err(RdbError::Malformed {
            offset,
            detail: format!("{what} has an odd number of elements"),
        });
    }
    let mut out = Vec::with_capacity(elems.len() / 2);
    for p in elems.chunks_exact(2) {
        let score = p[1].as_f64().ok_or_else(|| RdbError::Malformed {
            offset,
            detail: format!("{what} has a non-numeric score"),
        })?;
        out.push((p[0].to_vec(), score));
    }
    Ok(Value::SortedSet(out))
}

fn triples_to_hash(offset: u64, elems: &[Elem<'_>]) -> Result<Hash> {
    if !elems.len().is_multiple_of(3) {
        return Err(RdbError::Malformed {
            offset,
            detail: "hash listpack-ex element count is not a multiple of 3".into(),
        });
    }
    let mut out = Vec::with_capacity(elems.len() / 3);
    for t in elems.chunks_exact(3) {
        let ttl = t[2].as_i64().ok_or_else(|| RdbError::Malformed {
            offset,
            detail: "hash listpack-ex TTL is not an integer".into(),
        })?;
        if ttl < 0 || ttl as u64 > HFE_MAX {
            return Err(RdbError::Malformed {
                offset,
                detail: format!("hash listpack-ex TTL {ttl} out of range"),
            });
        }
        out.push((t[0].to_vec(), t[1].to_vec(), (ttl != 0).then_some(ttl)));
    }
    Ok(out)
}

/// Reads `n` RDB strings.
fn read_strings<R: BufRead>(r: &mut Reader<R>, ctx: &'static str) -> Result<Vec<Vec<u8>>> {
    let n = r.read_len(ctx)?;
    let mut out = Vec::with_capacity(capped(n));
    for _ in 0..n {
        out.push(read_string(r, ctx)?);
    }
    Ok(out)
}

/// Reads a legacy `ZSET` score: length byte then ASCII, with 253/254/255
/// meaning NaN, +inf and -inf.
fn read_string_double<R: BufRead>(r: &mut Reader<R>) -> Result<f64> {
    let offset = r.offset();
    match r.read_u8("zset score")? {
        253 => Ok(f64::NAN),
        254 => Ok(f64::INFINITY),
        255 => Ok(f64::NEG_INFINITY),
        n => {
            let b = r.read_vec(u64::from(n), "zset score")?;
            parse_f64(&b).ok_or_else(|| RdbError::Malformed {
                offset,
                detail: "zset score is not a number".into(),
            })
        }
    }
}

/// Reads a value of RDB type `t` for `key`. `type_offset` is where the type
/// byte was, for error reporting.
pub(crate) fn read_value<R: BufRead>(
    r: &mut Reader<R>,
    t: u8,
    key: &[u8],
    type_offset: u64,
) -> Result<Value> {
    Ok(match t {
        TYPE_STRING => Value::String(read_string(r, "string value")?),
        TYPE_LIST => Value::List(read_strings(r, "list element")?),
        TYPE_SET => Value::Set(read_strings(r, "set member")?),
        TYPE_ZSET | TYPE_ZSET_2 => {
            let n = r.read_len("zset size")?;
            let mut out = Vec::with_capacity(capped(n));
            for _ in 0..n {
                let member = read_string(r, "zset member")?;
                let score = if t == TYPE_ZSET_2 {
                    r.read_binary_double("zset score")?
                } else {
                    read_string_double(r)?
                };
                out.push((member, score));
            }
            Value::SortedSet(out)
        }
        TYPE_HASH => {
            let n = r.read_len("hash size")?;
            let mut out = Vec::with_capacity(capped(n));
            for _ in 0..n {
                let f = read_string(r, "hash field")?;
                let v = read_string(r, "hash value")?;
                out.push((f, v, None));
            }
            Value::Hash(out)
        }
        TYPE_HASH_METADATA | TYPE_HASH_METADATA_PRE_GA => {
            let min_expire = if t == TYPE_HASH_METADATA {
                Some(r.read_ms_time("hash min expire")? as u64)
            } else {
                None
            };
            let n = r.read_len("hash size")?;
            let mut out = Vec::with_capacity(capped(n));
            for _ in 0..n {
                let ttl_offset = r.offset();
                let ttl = r.read_len("hash field ttl")?;
                let expire = match (ttl, min_expire) {
                    (0, _) => None,
                    // Relative to the minimum, shifted by one so 0 means none.
                    (ttl, Some(min)) => Some(ttl.wrapping_add(min).wrapping_sub(1)),
                    (ttl, None) => Some(ttl),
                };
                if let Some(e) = expire {
                    if e > HFE_MAX {
                        return Err(RdbError::Malformed {
                            offset: ttl_offset,
                            detail: format!("hash field expire time {e} out of range"),
                        });
                    }
                }
                let f = read_string(r, "hash field")?;
                let v = read_string(r, "hash value")?;
                // In range per the check above, so the cast is lossless.
                out.push((f, v, expire.map(|e| e as i64)));
            }
            Value::Hash(out)
        }
        TYPE_HASH_ZIPMAP => {
            let (off, blob) = read_blob(r, "zipmap")?;
            let pairs = zipmap_entries(&blob).map_err(|e| blob_error(off, "zipmap", e))?;
            Value::Hash(
                pairs
                    .into_iter()
                    .map(|(f, v)| (f.to_vec(), v.to_vec(), None))
                    .collect(),
            )
        }
        TYPE_LIST_ZIPLIST => {
            let (off, blob) = read_blob(r, "list ziplist")?;
            let elems = ziplist_entries(&blob).map_err(|e| blob_error(off, "list ziplist", e))?;
            Value::List(elems.into_iter().map(Elem::to_vec).collect())
        }
        TYPE_SET_INTSET => {
            let (off, blob) = read_blob(r, "intset")?;
            let ints = intset_entries(&blob).map_err(|e| blob_error(off, "intset", e))?;
            Value::Set(
                ints.into_iter()
                    .map(|i| i.to_string().into_bytes())
                    .collect(),
            )
        }
        TYPE_SET_LISTPACK => {
            let (off, blob) = read_blob(r, "set listpack")?;
            let elems = listpack_entries(&blob).map_err(|e| blob_error(off, "set listpack", e))?;
            Value::Set(elems.into_iter().map(Elem::to_vec).collect())
        }
        TYPE_ZSET_ZIPLIST => {
            let (off, blob) = read_blob(r, "zset ziplist")?;
            let elems = ziplist_entries(&blob).map_err(|e| blob_error(off, "zset ziplist", e))?;
            pairs_to_zset(off, "zset ziplist", &elems)?
        }
        TYPE_ZSET_LISTPACK => {
            let (off, blob) = read_blob(r, "zset listpack")?;
            let elems = listpack_entries(&blob).map_err(|e| blob_error(off, "zset listpack", e))?;
            pairs_to_zset(off, "zset listpack", &elems)?
        }
        TYPE_HASH_ZIPLIST => {
            let (off, blob) = read_blob(r, "hash ziplist")?;
            let elems = ziplist_entries(&blob).map_err(|e| blob_error(off, "hash ziplist", e))?;
            Value::Hash(pairs_to_hash(off, "hash ziplist", &elems)?)
        }
        TYPE_HASH_LISTPACK => {
            let (off, blob) = read_blob(r, "hash listpack")?;
            let elems = listpack_entries(&blob).map_err(|e| blob_error(off, "hash listpack", e))?;
            Value::Hash(pairs_to_hash(off, "hash listpack", &elems)?)
        }
        TYPE_HASH_LISTPACK_EX | TYPE_HASH_LISTPACK_EX_PRE_GA => {
            if t == TYPE_HASH_LISTPACK_EX {
                // Minimum field expiry: redundant with the per-field TTLs.
                r.read_ms_time("hash min expire")?;
            }
            let (off, blob) = read_blob(r, "hash listpack-ex")?;
            let elems =
                listpack_entries(&blob).map_err(|e| blob_error(off, "hash listpack-ex", e))?;
            Value::Hash(triples_to_hash(off, &elems)?)
        }
        TYPE_LIST_QUICKLIST => {
            let n = r.read_len("quicklist node count")?;
            let mut out = Vec::new();
            for _ in 0..n {
                let (off, blob) = read_blob(r, "quicklist ziplist")?;
                let elems =
                    ziplist_entries(&blob).map_err(|e| blob_error(off, "quicklist ziplist", e))?;
                out.extend(elems.into_iter().map(Elem::to_vec));
            }
            Value::List(out)
        }
        TYPE_LIST_QUICKLIST_2 => {
            let n = r.read_len("quicklist node count")?;
            let mut out = Vec::new();
            for _ in 0..n {
                let c_offset = r.offset();
                match r.read_len("quicklist container")? {
                    QUICKLIST_NODE_PLAIN => out.push(read_string(r, "quicklist plain node")?),
                    QUICKLIST_NODE_PACKED => {
                        let (off, blob) = read_blob(r, "quicklist listpack")?;
                        let elems = listpack_entries(&blob)
                            .map_err(|e| blob_error(off, "quicklist listpack", e))?;
                        out.extend(elems.into_iter().map(Elem::to_vec));
                    }
                    other => {
                        return Err(RdbError::Malformed {
                            offset: c_offset,
                            detail: format!("unknown quicklist container {other}"),
                        })
                    }
                }
            }
            Value::List(out)
        }
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => {
            Value::Stream(Box::new(read_stream(r, t)?))
        }
        other => {
            return Err(RdbError::UnsupportedType {
                offset: type_offset,
                type_id: other,
                type_name: type_name(other),
                key: String::from_utf8_lossy(key).into_owned(),
            })
        }
    })
}
