//! Order-independent digests of a live source, so a restore can be compared with its
//! source: `tidemark digest URL`. Equal digests mean equal content, whatever the
//! physical order, layout or encoding of the data. Each connector computes its own
//! (`connectors/<kind>/digest.rs`) in the one shape defined here.

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

/// The digest of a whole database (server, cluster): its parts and one overall
/// value. Every kind reports this shape, for `digest --json` and `restore --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Digest {
    /// What a part's `rows` counts: `rows`, `keys`, `records`.
    pub unit: String,
    /// Per-part digests, sorted by name.
    pub parts: Vec<PartDigest>,
    /// One value for the whole: equal overall digests mean equal content.
    pub overall: String,
}

impl Digest {
    /// The same digest with each part renamed by `f` (the overall value recomputed).
    pub fn renamed(self, f: impl Fn(&str) -> String) -> Digest {
        let parts = self
            .parts
            .into_iter()
            .map(|p| PartDigest {
                name: f(&p.name),
                ..p
            })
            .collect();
        Digest::from_parts(&self.unit, parts)
    }

    /// Builds the overall value from the parts.
    pub fn from_parts(unit: &str, mut parts: Vec<PartDigest>) -> Digest {
        parts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = Sha256::new();
        for p in &parts {
            h.update(format!("{}\t{}\t{}\n", p.name, p.rows, p.digest));
        }
        Digest {
            unit: unit.to_string(),
            parts,
            overall: hex(&h.finalize()[..16]),
        }
    }

    /// One line per part, `name unit=rows sha256=digest`, as `digest` prints it.
    pub fn part_lines(&self) -> Vec<String> {
        self.parts
            .iter()
            .map(|p| format!("{} {}={} sha256={}", p.name, self.unit, p.rows, p.digest))
            .collect()
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
