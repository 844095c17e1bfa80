//! The digest of a Redis Cluster: the single-server per-key digest (see
//! `redis/digest.rs`) of every key on every primary, summed modulo 2^256 (so it
//! equals the digest of a single server holding the same keys in database 0,
//! whatever the cluster's shape), with one part per shard.
//!
//! Parts are named `shard <slot ranges>`. By default they are the cluster's own
//! primaries; a restore reports them by the *source's* shards at the restored
//! moment (the keys of each source shard's slots, wherever they landed), so the
//! parts of a restore and of the source compare one to one.

use super::topology::{self, key_slot, ClusterUrl, SlotMap};
use crate::config::Timeouts;
use crate::connectors::redis::digest::{add_hash, page_hashes, scan_pages};
use crate::connectors::redis::resp::Conn;
use crate::connectors::redis::RedisError;
use crate::digest::{hex, Digest, PartDigest};

/// Digests every key of the cluster at `url`, with parts by the shards of
/// `groups` (default: the cluster's own primaries).
pub fn digest(
    url: &ClusterUrl,
    groups: Option<&SlotMap>,
    timeouts: &Timeouts,
) -> Result<Digest, RedisError> {
    let map = topology::discover(url, &[], timeouts)?;
    let groups = groups.unwrap_or(&map);
    let owner = groups.owners();
    let mut sums = vec![([0u8; 32], 0u64); groups.shards.len()];
    let mut unowned = ([0u8; 32], 0u64);
    let mut total = [0u8; 32];
    for s in &map.shards {
        let mut conn = Conn::connect(&url.node(&s.host, s.port), timeouts.connect)?;
        conn.stream()
            .set_read_timeout(Some(timeouts.read))
            .map_err(|e| RedisError::io(conn.addr(), e))?;
        scan_pages(&mut conn, |conn, fresh| {
            // Keys of one page grouped by part, so each hash lands in its part.
            let mut by_group: Vec<(Option<usize>, Vec<Vec<u8>>)> = Vec::new();
            for k in fresh {
                let g = owner[usize::from(key_slot(&k))];
                match by_group.iter_mut().find(|(x, _)| *x == g) {
                    Some((_, v)) => v.push(k),
                    None => by_group.push((g, vec![k])),
                }
            }
            for (g, keys) in by_group {
                let slot = match g {
                    Some(i) => &mut sums[i],
                    None => &mut unowned,
                };
                for h in page_hashes(conn, 0, &keys)? {
                    add_hash(&mut slot.0, &h);
                    add_hash(&mut total, &h);
                    slot.1 += 1;
                }
            }
            Ok(())
        })?;
    }
    let mut parts: Vec<PartDigest> = groups
        .shards
        .iter()
        .zip(&sums)
        .map(|(s, (sum, n))| PartDigest {
            name: format!("shard {}", s.ranges_text()),
            rows: *n,
            digest: hex(sum),
        })
        .collect();
    if unowned.1 > 0 {
        parts.push(PartDigest {
            name: "slots no source shard served".into(),
            rows: unowned.1,
            digest: hex(&unowned.0),
        });
    }
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Digest {
        unit: "keys".into(),
        parts,
        overall: hex(&total),
    })
}

/// The cluster's identity: its lowest primary node id (a restore refuses a target
/// that is a captured cluster).
pub fn identity(url: &ClusterUrl, timeouts: &Timeouts) -> Result<String, RedisError> {
    let map = topology::discover(url, &[], timeouts)?;
    Ok(map
        .shards
        .iter()
        .map(|s| s.node_id.clone())
        .min()
        .unwrap_or_else(|| url.to_string()))
}
