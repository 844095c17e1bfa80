//! `tidemark digest redis://...`: an order-independent digest of a whole Redis
//! dataset, equal for logically equal datasets whatever their encodings.
//!
//! Per key: SHA-256 over (db, type, name, canonical value, has-TTL), each part
//! length-prefixed. Canonical values: a string's bytes; a list in order; set
//! members sorted; a sorted set by (score, member) with Redis's own score text;
//! hash pairs sorted by field; a stream's entries (IDs and fields) in order, then
//! its consumer groups by name (last-delivered ID, entries-read where the server
//! reports it, pending entries with owner and delivery count, consumers with
//! their pending counts; idle times are left out).
//! The digest is the sum of the per-key hashes modulo 2^256, so the order of
//! `SCAN` does not matter. Function libraries and hash field TTLs are not part
//! of it.

use std::collections::HashSet;

use sha2::{Digest as _, Sha256};

use super::resp::{Conn, RedisUrl, Reply};
use super::RedisError;

/// A dataset's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetDigest {
    /// 64 hex characters.
    pub digest: String,
    /// Keys per database, ascending.
    pub dbs: Vec<(u32, u64)>,
    /// Keys in all.
    pub keys: u64,
}

/// Databases with keys, from `INFO keyspace`.
pub fn keyspace(conn: &mut Conn) -> Result<Vec<(u32, u64)>, RedisError> {
    let info = conn.call(&["INFO", "keyspace"])?.text().unwrap_or_default();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("db") else {
            continue;
        };
        let Some((n, fields)) = rest.split_once(':') else {
            continue;
        };
        let keys = fields
            .split(',')
            .find_map(|f| f.strip_prefix("keys="))
            .and_then(|k| k.trim().parse().ok())
            .unwrap_or(0);
        if let Ok(db) = n.parse() {
            out.push((db, keys));
        }
    }
    out.sort();
    Ok(out)
}

impl DatasetDigest {
    /// The common shape: one part for the whole dataset (the digest is over every
    /// database at once), the same value overall.
    pub fn to_digest(&self) -> crate::digest::Digest {
        crate::digest::Digest {
            unit: "keys".into(),
            parts: vec![crate::digest::PartDigest {
                name: "dataset".into(),
                rows: self.keys,
                digest: self.digest.clone(),
            }],
            overall: self.digest.clone(),
        }
    }
}

/// Digests the dataset at `url`.
pub fn digest_url(url: &str) -> Result<DatasetDigest, RedisError> {
    digest_with(url, &crate::config::Timeouts::default())
}

/// [`digest_url`] with explicit timeouts. `url` is one server (`redis://`,
/// `rediss://`), or an address list or Sentinel URL: then the primary's dataset.
pub fn digest_with(
    url: &str,
    timeouts: &crate::config::Timeouts,
) -> Result<DatasetDigest, RedisError> {
    let mut conn = super::locate::Locator::parse(url)?.connect(timeouts)?;
    digest(&mut conn)
}

/// [`digest_with`] for a parsed URL.
pub fn digest_at(
    url: &RedisUrl,
    timeouts: &crate::config::Timeouts,
) -> Result<DatasetDigest, RedisError> {
    let mut conn = Conn::connect(url, timeouts.connect)?;
    conn.stream()
        .set_read_timeout(Some(timeouts.read))
        .map_err(|e| RedisError::io(conn.addr(), e))?;
    digest(&mut conn)
}

/// Digests the dataset behind `conn` (it is left in database 0).
pub fn digest(conn: &mut Conn) -> Result<DatasetDigest, RedisError> {
    let mut sum = [0u8; 32];
    let mut dbs = Vec::new();
    let mut total = 0;
    for (db, _) in keyspace(conn)? {
        conn.call(&["SELECT", &db.to_string()])?;
        let mut count = 0;
        scan_pages(conn, |conn, fresh| {
            for h in page_hashes(conn, db, &fresh)? {
                add(&mut sum, &h);
                count += 1;
            }
            Ok(())
        })?;
        dbs.push((db, count));
        total += count;
    }
    conn.call(&["SELECT", "0"])?;
    Ok(DatasetDigest {
        digest: sum.iter().map(|b| format!("{b:02x}")).collect(),
        dbs,
        keys: total,
    })
}

/// Calls `f` with each page of keys `SCAN` returns in the selected database, each
/// key once (a `SCAN` may return a key twice).
pub(crate) fn scan_pages(
    conn: &mut Conn,
    mut f: impl FnMut(&mut Conn, Vec<Vec<u8>>) -> Result<(), RedisError>,
) -> Result<(), RedisError> {
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut cursor = b"0".to_vec();
    loop {
        let mut reply = conn
            .call(&[b"SCAN".as_slice(), &cursor, b"COUNT", b"1000"])?
            .into_array();
        let keys = if reply.len() == 2 {
            reply.pop().map(Reply::into_array).unwrap_or_default()
        } else {
            Vec::new()
        };
        cursor = reply.pop().and_then(Reply::into_bytes).unwrap_or_default();
        let fresh: Vec<Vec<u8>> = keys
            .into_iter()
            .filter_map(Reply::into_bytes)
            .filter(|k| seen.insert(k.clone()))
            .collect();
        f(conn, fresh)?;
        if cursor == b"0" || cursor.is_empty() {
            return Ok(());
        }
    }
}

/// Per-key hashes of one page of keys (two pipelined round trips); keys that
/// vanished meanwhile are left out. (Also used by the cluster digest.)
pub(crate) fn page_hashes(
    conn: &mut Conn,
    db: u32,
    keys: &[Vec<u8>],
) -> Result<Vec<[u8; 32]>, RedisError> {
    let mut req = Vec::new();
    for k in keys {
        crate::connectors::redis::resp::encode_command(&[b"TYPE".as_slice(), k], &mut req);
    }
    conn.send_raw(&req)?;
    let mut types = Vec::with_capacity(keys.len());
    for _ in keys {
        types.push(conn.read_reply()?.text().unwrap_or_default());
    }
    req.clear();
    for (k, t) in keys.iter().zip(&types) {
        let cmd: &[&[u8]] = match t.as_str() {
            "string" => &[b"GET"],
            "list" => &[b"LRANGE", b"", b"0", b"-1"],
            "set" => &[b"SMEMBERS"],
            "zset" => &[b"ZRANGE", b"", b"0", b"-1", b"WITHSCORES"],
            "hash" => &[b"HGETALL"],
            "stream" => &[b"XRANGE", b"", b"-", b"+"],
            "none" => &[b"PING"],
            other => {
                return Err(RedisError::Protocol {
                    addr: conn.addr().to_string(),
                    detail: format!(
                        "key {:?} in db {db} has type `{other}` (a module type?), which tidemark cannot digest",
                        String::from_utf8_lossy(k)
                    ),
                })
            }
        };
        let mut args: Vec<&[u8]> = cmd.to_vec();
        if args.len() == 1 && t != "none" {
            args.push(k);
        } else if args.len() > 1 {
            args[1] = k;
        }
        crate::connectors::redis::resp::encode_command(&args, &mut req);
        crate::connectors::redis::resp::encode_command(&[b"PTTL".as_slice(), k], &mut req);
    }
    conn.send_raw(&req)?;
    let mut replies = Vec::with_capacity(keys.len());
    for _ in keys {
        let value = conn.read_reply()?;
        replies.push((value, conn.read_reply()?));
    }
    let mut out = Vec::with_capacity(keys.len());
    for ((k, t), (value, ttl)) in keys.iter().zip(&types).zip(replies) {
        if let Reply::Error(e) = &value {
            return Err(RedisError::Server {
                addr: conn.addr().to_string(),
                command: format!("reading {t} {:?}", String::from_utf8_lossy(k)),
                detail: e.clone(),
            });
        }
        if t == "none" || matches!(ttl, Reply::Int(-2)) {
            continue;
        }
        let mut h = Sha256::new();
        part(&mut h, &db.to_be_bytes());
        part(&mut h, t.as_bytes());
        part(&mut h, k);
        canonical(&mut h, t, value);
        if t == "stream" {
            stream_groups(conn, &mut h, k)?;
        }
        part(&mut h, &[u8::from(matches!(ttl, Reply::Int(n) if n >= 0))]);
        out.push(h.finalize().into());
    }
    Ok(out)
}

/// A flat `[name, value, name, value...]` reply as pairs with text names.
fn fields(r: Reply) -> Vec<(String, Reply)> {
    let mut it = r.into_array().into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k.text().unwrap_or_default(), v));
    }
    out
}

fn field_bytes(f: &[(String, Reply)], name: &str) -> Option<Vec<u8>> {
    f.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.clone().into_bytes())
}

/// Consumer groups of stream `key`, by name.
fn stream_groups(conn: &mut Conn, h: &mut Sha256, key: &[u8]) -> Result<(), RedisError> {
    let mut groups: Vec<Vec<(String, Reply)>> = conn
        .call(&[b"XINFO".as_slice(), b"GROUPS", key])?
        .into_array()
        .into_iter()
        .map(fields)
        .collect();
    groups.sort_by_key(|g| field_bytes(g, "name"));
    for g in groups {
        let name = field_bytes(&g, "name").unwrap_or_default();
        for f in ["name", "pending", "last-delivered-id", "entries-read"] {
            part(h, &field_bytes(&g, f).unwrap_or_default());
        }
        let pending = conn.call(&[
            b"XPENDING".as_slice(),
            key,
            &name,
            b"-",
            b"+",
            b"1000000000",
        ])?;
        for p in pending.into_array() {
            let p = p.into_array();
            // [id, consumer, idle, deliveries]: idle changes by the millisecond.
            for i in [0, 1, 3] {
                part(
                    h,
                    &p.get(i)
                        .cloned()
                        .and_then(Reply::into_bytes)
                        .unwrap_or_default(),
                );
            }
        }
        let mut consumers: Vec<Vec<(String, Reply)>> = conn
            .call(&[b"XINFO".as_slice(), b"CONSUMERS", key, &name])?
            .into_array()
            .into_iter()
            .map(fields)
            .collect();
        consumers.sort_by_key(|c| field_bytes(c, "name"));
        for c in consumers {
            part(h, &field_bytes(&c, "name").unwrap_or_default());
            part(h, &field_bytes(&c, "pending").unwrap_or_default());
        }
    }
    Ok(())
}

fn part(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn canonical(h: &mut Sha256, t: &str, value: Reply) {
    match t {
        "string" => part(h, &value.into_bytes().unwrap_or_default()),
        "set" => {
            let mut m: Vec<Vec<u8>> = value
                .into_array()
                .into_iter()
                .filter_map(Reply::into_bytes)
                .collect();
            m.sort();
            m.iter().for_each(|x| part(h, x));
        }
        "hash" => {
            let flat: Vec<Vec<u8>> = value
                .into_array()
                .into_iter()
                .filter_map(Reply::into_bytes)
                .collect();
            let mut pairs: Vec<&[Vec<u8>]> = flat.chunks(2).collect();
            pairs.sort();
            for p in pairs {
                p.iter().for_each(|x| part(h, x));
            }
        }
        "stream" => {
            for e in value.into_array() {
                let mut it = e.into_array().into_iter();
                part(
                    h,
                    &it.next().and_then(Reply::into_bytes).unwrap_or_default(),
                );
                for f in it.next().map(Reply::into_array).unwrap_or_default() {
                    part(h, &f.into_bytes().unwrap_or_default());
                }
            }
        }
        // list and zset: the server's order is canonical
        _ => {
            for x in value.into_array() {
                part(h, &x.into_bytes().unwrap_or_default());
            }
        }
    }
}

/// `sum += h` modulo 2^256 (the cluster digest sums over its nodes with it).
pub(crate) fn add_hash(sum: &mut [u8; 32], h: &[u8; 32]) {
    add(sum, h)
}

/// `sum += h` modulo 2^256 (big-endian).
fn add(sum: &mut [u8; 32], h: &[u8; 32]) {
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let v = u16::from(sum[i]) + u16::from(h[i]) + carry;
        sum[i] = v as u8;
        carry = v >> 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_is_order_independent() {
        let (a, b) = ([0xffu8; 32], [1u8; 32]);
        let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
        add(&mut x, &a);
        add(&mut x, &b);
        add(&mut y, &b);
        add(&mut y, &a);
        assert_eq!(x, y);
    }
}
