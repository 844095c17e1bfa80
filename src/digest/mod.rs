//! Order-independent digests of a live source, so a restore can be compared with its
//! source: `tidemark digest URL`. Equal digests mean equal content, whatever the
//! physical order, layout or encoding of the data.
//!
//! - [`postgres`]: per table and overall;
//! - [`redis`]: the whole dataset (every database, type, value and TTL);
//! - [`kafka`]: per partition (keys, values, headers, timestamps; not offsets).

pub mod kafka;
pub mod postgres;
pub mod redis;

use sha2::{Digest as _, Sha256};

/// The digest of one table (or collection, keyspace, partition).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartDigest {
    /// What was digested (e.g. `public.orders`).
    pub name: String,
    /// Rows (records, keys) in it.
    pub rows: u64,
    /// Hex digest of its content.
    pub digest: String,
}

/// The digest of a whole database: its parts and one overall value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Digest {
    /// Per-part digests, sorted by name.
    pub parts: Vec<PartDigest>,
    /// Digest over every part's name, row count and digest.
    pub overall: String,
}

impl Digest {
    /// Builds the overall value from the parts.
    pub fn from_parts(mut parts: Vec<PartDigest>) -> Digest {
        parts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = Sha256::new();
        for p in &parts {
            h.update(format!("{}\t{}\t{}\n", p.name, p.rows, p.digest));
        }
        Digest {
            parts,
            overall: hex(&h.finalize()[..16]),
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `s`, first 16 bytes, as hex.
pub fn short_sha(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes())[..16])
}
