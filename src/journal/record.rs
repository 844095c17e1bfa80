//! Checksummed record framing: every value the journal stores (except empty index
//! values) is `crc32c(payload) as u32 little-endian || payload`, verified on read.

use super::JournalError;

/// Frames `payload` with its checksum.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 4);
    v.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Encodes a protobuf message and frames it.
pub fn seal_msg<M: prost::Message>(msg: &M) -> Vec<u8> {
    let mut v = Vec::with_capacity(msg.encoded_len() + 4);
    v.extend_from_slice(&[0; 4]);
    // Encoding into a Vec cannot run out of space.
    let _ = msg.encode(&mut v);
    let crc = crc32c::crc32c(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    v
}

/// Verifies a framed value and returns its payload. `what` names the record in the
/// error (e.g. `events/3:1042`).
pub fn open<'a>(value: &'a [u8], what: &dyn Fn() -> String) -> Result<&'a [u8], JournalError> {
    let corrupt = |detail: &str| JournalError::Corrupt {
        record: what(),
        detail: detail.to_string(),
    };
    if value.len() < 4 {
        return Err(corrupt("record shorter than its checksum"));
    }
    let (crc, payload) = value.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(payload) != stored {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(payload)
}

/// Verifies a framed value and decodes the protobuf message inside.
pub fn open_msg<M: prost::Message + Default>(
    value: &[u8],
    what: &dyn Fn() -> String,
) -> Result<M, JournalError> {
    let payload = open(value, what)?;
    M::decode(payload).map_err(|e| JournalError::Corrupt {
        record: what(),
        detail: format!("checksum ok but undecodable: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_bit_flip_is_caught() {
        let sealed = seal(b"a journal record of some length");
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut v = sealed.clone();
                v[byte] ^= 1 << bit;
                assert!(
                    open(&v, &|| "t".into()).is_err(),
                    "flip at {byte}:{bit} not caught"
                );
            }
        }
        assert_eq!(
            open(&sealed, &|| "t".into()).unwrap(),
            b"a journal record of some length"
        );
    }
}
