//! Column families and key encodings. All integers are big-endian so that byte order
//! is numeric order; times are biased so that negative values sort first.

/// Format record, source registry, id counters.
pub const CF_META: &str = "meta";
/// `(source u32, seq u64)` → checksummed [`crate::event::ChangeEvent`].
pub const CF_EVENTS: &str = "events";
/// `first_seq u64` → checksummed `(source u32, last_seq u64)`: the index by sequence.
pub const CF_BATCHES: &str = "batches";
/// `(source u32, stream len u16, stream, ordinal)` → `(first seq u64, last seq u64)`:
/// the index by position, one entry per stream per batch (at the stream's first
/// position in the batch).
pub const CF_POS: &str = "by_position";
/// `(source u32, time u64, seq u64)` → empty: the index by time, one entry per batch
/// where the source's time axis first rises in it (lookups walk the rest of the batch).
pub const CF_TIME: &str = "by_time";
/// `(source u32, image id u64)` → checksummed [`crate::event::BaseImageMeta`].
pub const CF_IMAGES: &str = "images";
/// `(image id u64, chunk u64)` → checksummed chunk bytes.
pub const CF_CHUNKS: &str = "image_chunks";
/// Per-source state: checkpoints, coverage, counters.
pub const CF_STATE: &str = "state";

/// Every column family, in creation order (and the key index's, which readers do
/// without: see [`super::keyindex`]).
pub const ALL_CFS: [&str; 8] = [
    CF_META, CF_EVENTS, CF_BATCHES, CF_POS, CF_TIME, CF_IMAGES, CF_CHUNKS, CF_STATE,
];

/// Meta key of the format record.
pub const META_FORMAT: &[u8] = b"format";
/// Meta key prefix of the source registry: `source/<name>` → `(id u32, kind)`.
pub const META_SOURCE_PREFIX: &[u8] = b"source/";
/// Meta key of the journal's identity (random, made when first opened for writing).
pub const META_JOURNAL_ID: &[u8] = b"journal_id";
/// Meta key of the next image id.
pub const META_NEXT_IMAGE: &[u8] = b"next_image_id";

/// State key tags.
const STATE_CHECKPOINT: u8 = b'c';
const STATE_STATS: u8 = b's';
const STATE_HEALTH: u8 = b'h';
const STATE_SUPERVISION: u8 = b'v';
const STATE_NOTE: u8 = b'n';

/// Maps a signed time to an unsigned value with the same order.
pub fn time_to_u64(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

/// Inverse of [`time_to_u64`].
#[cfg(test)]
pub fn u64_to_time(u: u64) -> i64 {
    (u ^ (1 << 63)) as i64
}

/// Reads a big-endian u64 at `at`, if the slice is long enough.
pub fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a big-endian u32 at `at`, if the slice is long enough.
pub fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Key of an event.
pub fn event(src: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&src.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a time index entry.
pub fn time(src: u32, time_us: i64, seq: u64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&src.to_be_bytes());
    k[4..12].copy_from_slice(&time_to_u64(time_us).to_be_bytes());
    k[12..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a base image's metadata.
pub fn image(src: u32, id: u64) -> [u8; 12] {
    event(src, id)
}

/// Key of a base image chunk.
pub fn chunk(image: u64, n: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&image.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Key of a source's checkpoint for one stream.
pub fn checkpoint(src: u32, stream: &[u8]) -> Vec<u8> {
    let mut k = vec![STATE_CHECKPOINT];
    k.extend_from_slice(&src.to_be_bytes());
    k.extend_from_slice(stream);
    k
}

/// Prefix of every checkpoint of one source.
pub fn checkpoint_prefix(src: u32) -> [u8; 5] {
    let mut k = [STATE_CHECKPOINT; 5];
    k[1..].copy_from_slice(&src.to_be_bytes());
    k
}

/// Key of a source's counters, watermark and coverage.
pub fn stats(src: u32) -> [u8; 5] {
    let mut k = [STATE_STATS; 5];
    k[1..].copy_from_slice(&src.to_be_bytes());
    k
}

/// Key of a source's latest health report (JSON, for `status`).
pub fn health(src: u32) -> [u8; 5] {
    let mut k = [STATE_HEALTH; 5];
    k[1..].copy_from_slice(&src.to_be_bytes());
    k
}

/// Key of a source's supervision state (starting, capturing, retrying, stopped).
pub fn supervision(src: u32) -> [u8; 5] {
    let mut k = [STATE_SUPERVISION; 5];
    k[1..].copy_from_slice(&src.to_be_bytes());
    k
}

/// Key of a durable note a connector keeps about its source (`name`).
pub fn note(src: u32, name: &str) -> Vec<u8> {
    let mut k = vec![STATE_NOTE];
    k.extend_from_slice(&src.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// Exclusive upper bound of every key that starts with `src`.
pub fn source_end(src: u32) -> [u8; 4] {
    src.saturating_add(1).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_keys_sort_numerically_across_zero() {
        let ts = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000_000, i64::MAX];
        for w in ts.windows(2) {
            assert!(time(1, w[0], 9) < time(1, w[1], 0));
            assert_eq!(u64_to_time(time_to_u64(w[0])), w[0]);
        }
    }

    #[test]
    fn stream_prefixes_do_not_collide() {
        // Stream "ab" + ordinal must never equal stream "a" + an ordinal starting with 'b':
        // the length prefix keeps them apart.
        let key = |p: crate::position::Position| {
            let mut k = Vec::new();
            p.write_index_key(&mut k).unwrap();
            k
        };
        let ab = key(crate::position::Position::redis("ab", 1));
        let a = key(crate::position::Position::redis(
            "a",
            u64::from_be_bytes(*b"b\0\0\0\0\0\0\0"),
        ));
        assert_ne!(ab, a);
        assert_ne!(&ab[..2], &a[..2]);
    }
}
