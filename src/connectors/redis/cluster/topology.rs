//! A Redis Cluster's shape: the `redis+cluster://` URL, the slot of a key, and the
//! slot map (which primary serves which slots) as the cluster reports it.

use std::collections::BTreeMap;

use crate::config::Timeouts;
use crate::connectors::redis::resp::{Conn, RedisUrl, Reply};
use crate::connectors::redis::RedisError;
use crate::event::{RedisShardSlots, RedisSlotMap};

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The URL scheme of a cluster.
pub const SCHEME: &str = "redis+cluster";

/// `redis+cluster://[user:password@]host:port[,host:port...]`: seed nodes (any
/// nodes of the cluster; the rest is discovered) and the credentials for every
/// node. `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct ClusterUrl {
    /// Seed nodes, each with the URL's credentials.
    pub seeds: Vec<RedisUrl>,
}

impl std::fmt::Debug for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addrs: Vec<String> = self.seeds.iter().map(RedisUrl::addr).collect();
        write!(f, "{SCHEME}://{}", addrs.join(","))
    }
}

/// True when `url` names a cluster (`redis+cluster://`).
pub fn is_cluster_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(s, _)| s == SCHEME)
}

impl ClusterUrl {
    /// Parses the URL; connects to nothing.
    pub fn parse(url: &str) -> Result<ClusterUrl, RedisError> {
        let bad = |reason: &str| RedisError::Url {
            url: crate::config::redact_url(url),
            reason: format!(
                "{reason} (a cluster is redis+cluster://[user:password@]host:port[,host:port...])"
            ),
        };
        let rest = url
            .strip_prefix("redis+cluster://")
            .ok_or_else(|| bad("the scheme must be redis+cluster://"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.len() != rest.len() && !rest[authority.len()..].trim_matches('/').is_empty() {
            return Err(bad(
                "a cluster has database 0 only and takes no path or query",
            ));
        }
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let mut seeds = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let one = match userinfo {
                Some(ui) => format!("redis://{ui}@{h}"),
                None => format!("redis://{h}"),
            };
            // The per-node parser checks host, port and %-escapes; its error is
            // about the one node URL, so re-phrase it for the whole URL.
            let u = RedisUrl::parse(&one).map_err(|e| match e {
                RedisError::Url { reason, .. } => bad(&reason),
                other => other,
            })?;
            seeds.push(u);
        }
        if seeds.is_empty() {
            return Err(bad("no host"));
        }
        Ok(ClusterUrl { seeds })
    }

    /// The URL of node `host:port` with this URL's credentials.
    pub fn node(&self, host: &str, port: u16) -> RedisUrl {
        let mut u = self.seeds[0].clone();
        u.host = host.to_string();
        u.port = port;
        u
    }
}

/// One primary and the slots it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Node id (40 hex characters).
    pub node_id: String,
    /// Host the node announces.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Inclusive slot ranges, ascending.
    pub ranges: Vec<(u16, u16)>,
}

impl Shard {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `0-5460,10923-16383`: the shard's name in digests.
    pub fn ranges_text(&self) -> String {
        ranges_text(&self.ranges)
    }
}

/// `0-5460,10923-16383`.
pub fn ranges_text(ranges: &[(u16, u16)]) -> String {
    let v: Vec<String> = ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    v.join(",")
}

/// The primaries of a cluster, by node id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotMap {
    /// Primaries serving at least one slot, by node id.
    pub shards: Vec<Shard>,
}

impl SlotMap {
    /// Slot → index into `shards`, for every slot served.
    pub fn owners(&self) -> Vec<Option<usize>> {
        let mut out = vec![None; SLOTS];
        for (i, s) in self.shards.iter().enumerate() {
            for &(a, b) in &s.ranges {
                for slot in a..=b {
                    out[usize::from(slot)] = Some(i);
                }
            }
        }
        out
    }

    /// Slots no primary serves (an unhealthy or half-made cluster).
    pub fn unserved(&self) -> usize {
        self.owners().iter().filter(|o| o.is_none()).count()
    }

    /// The journaled form.
    pub fn to_event(&self) -> RedisSlotMap {
        RedisSlotMap {
            shards: self
                .shards
                .iter()
                .map(|s| RedisShardSlots {
                    node_id: s.node_id.clone(),
                    addr: s.addr(),
                    ranges: s
                        .ranges
                        .iter()
                        .flat_map(|&(a, b)| [u32::from(a), u32::from(b)])
                        .collect(),
                    moving: Vec::new(),
                })
                .collect(),
        }
    }

    /// From the journaled form.
    pub fn from_event(m: &RedisSlotMap) -> SlotMap {
        let shards = m
            .shards
            .iter()
            .map(|s| {
                let (host, port) = s
                    .addr
                    .rsplit_once(':')
                    .map(|(h, p)| (h.to_string(), p.parse().unwrap_or(0)))
                    .unwrap_or_default();
                Shard {
                    node_id: s.node_id.clone(),
                    host,
                    port,
                    ranges: s
                        .ranges
                        .chunks(2)
                        .filter(|r| r.len() == 2)
                        .map(|r| (r[0].min(16383) as u16, r[1].min(16383) as u16))
                        .collect(),
                }
            })
            .collect();
        SlotMap { shards }
    }

    /// The same shards and slots, ignoring announced addresses.
    pub fn same_slots(&self, other: &SlotMap) -> bool {
        let key = |m: &SlotMap| {
            m.shards
                .iter()
                .map(|s| (s.node_id.clone(), s.ranges.clone()))
                .collect::<Vec<_>>()
        };
        key(self) == key(other)
    }
}

/// The slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (the bytes
/// between the first `{` and the next `}`, when not empty), modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS as u16
}

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), as Redis Cluster uses.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Asks the seeds, in turn, for the slot map (`CLUSTER SLOTS`, which every
/// version since 3.0 answers, with node ids since 4.0). The first seed that
/// answers decides; the error of the last one is returned when none does.
pub fn discover(
    url: &ClusterUrl,
    extra: &[RedisUrl],
    timeouts: &Timeouts,
) -> Result<SlotMap, RedisError> {
    let mut last = None;
    for seed in extra.iter().chain(&url.seeds) {
        match discover_at(seed, timeouts) {
            Ok(m) => return Ok(m),
            Err(e @ RedisError::Auth { .. }) => return Err(e),
            Err(e @ RedisError::NotCluster { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(RedisError::Url {
        url: url.to_string(),
        reason: "no seed node".into(),
    }))
}

fn discover_at(seed: &RedisUrl, timeouts: &Timeouts) -> Result<SlotMap, RedisError> {
    let mut conn = Conn::connect(seed, timeouts.connect)?;
    conn.stream()
        .set_read_timeout(Some(timeouts.read))
        .map_err(|e| RedisError::io(conn.addr(), e))?;
    let reply = match conn.request(&["CLUSTER", "SLOTS"])? {
        Reply::Error(e) if e.contains("cluster support disabled") || e.contains("not enabled") => {
            return Err(RedisError::NotCluster { addr: seed.addr() })
        }
        Reply::Error(e) => {
            return Err(RedisError::Server {
                addr: seed.addr(),
                command: "CLUSTER SLOTS".into(),
                detail: e,
            })
        }
        r => r,
    };
    let proto = |detail: &str| RedisError::Protocol {
        addr: seed.addr(),
        detail: format!("CLUSTER SLOTS: {detail}"),
    };
    let mut by_node: BTreeMap<String, Shard> = BTreeMap::new();
    for range in reply.into_array() {
        let mut it = range.into_array().into_iter();
        let (Some(Reply::Int(a)), Some(Reply::Int(b)), Some(primary)) =
            (it.next(), it.next(), it.next())
        else {
            return Err(proto("malformed slot range"));
        };
        let mut p = primary.into_array().into_iter();
        let host = p.next().and_then(|h| h.text()).unwrap_or_default();
        let port = match p.next() {
            Some(Reply::Int(n)) => u16::try_from(n).map_err(|_| proto("bad port"))?,
            _ => return Err(proto("no port")),
        };
        let node_id = p
            .next()
            .and_then(|h| h.text())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| proto("no node id (Redis before 4.0 is not supported)"))?;
        // An empty host means "the address you reached me on" (cluster-announce).
        let host = if host.is_empty() || host == "?" {
            seed.host.clone()
        } else {
            host
        };
        let (a, b) = (
            u16::try_from(a).map_err(|_| proto("bad slot"))?,
            u16::try_from(b).map_err(|_| proto("bad slot"))?,
        );
        by_node
            .entry(node_id.clone())
            .or_insert_with(|| Shard {
                node_id,
                host,
                port,
                ranges: Vec::new(),
            })
            .ranges
            .push((a, b));
    }
    let mut shards: Vec<Shard> = by_node.into_values().collect();
    for s in &mut shards {
        s.ranges.sort();
        // Adjacent ranges reported apart are one range.
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for &(a, b) in &s.ranges {
            match merged.last_mut() {
                Some(last) if u32::from(last.1) + 1 == u32::from(a) => last.1 = b,
                _ => merged.push((a, b)),
            }
        }
        s.ranges = merged;
    }
    Ok(SlotMap { shards })
}

/// Slots `node` is migrating away or importing right now, from its own line of
/// `CLUSTER NODES` (`[slot->-id]`, `[slot-<-id]`). Keys of such slots are moving
/// between shards.
pub fn moving_slots(conn: &mut Conn) -> Result<Vec<u16>, RedisError> {
    let text = conn.call(&["CLUSTER", "NODES"])?.text().unwrap_or_default();
    let mine = text
        .lines()
        .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")));
    Ok(mine
        .map(|l| {
            l.split(' ')
                .filter_map(|w| w.strip_prefix('['))
                .filter_map(|w| w.split('-').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn urls() {
        let u = ClusterUrl::parse("redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2:7001").unwrap();
        assert_eq!(u.seeds.len(), 2);
        assert_eq!(u.seeds[1].password.as_deref(), Some("p@ss"));
        assert_eq!(u.to_string(), "redis+cluster://10.0.0.1:7000,10.0.0.2:7001");
        assert!(!format!("{u:?}").contains("p@ss"));
        assert!(ClusterUrl::parse("redis+cluster://").is_err());
        assert!(ClusterUrl::parse("redis+cluster://h:1/3").is_err());
        assert!(ClusterUrl::parse("redis+cluster://h:x").is_err());
    }
}
