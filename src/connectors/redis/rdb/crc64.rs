//! CRC-64/Jones as used by Redis for the RDB trailer checksum.
//!
//! Parameters: reflected polynomial 0x95ac9329ac4bc9b5 (normal form
//! 0xad93d23594c935a9), initial value 0, reflected input and output, no final
//! xor. Check value for `b"123456789"` is `0xe9c6d914c4b8d9ca`.

const POLY_REFLECTED: u64 = 0x95ac_9329_ac4b_c9b5;

const fn make_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static TABLE: [u64; 256] = make_table();

/// Continues a CRC-64/Jones computation over `data`. Start with `crc = 0`.
pub fn crc64_update(mut crc: u64, data: &[u8]) -> u64 {
    for &b in data {
        crc = TABLE[((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(crc64_update(0, b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data = b"hello world, this is redis";
        let one = crc64_update(0, data);
        let two = crc64_update(crc64_update(0, &data[..7]), &data[7..]);
        assert_eq!(one, two);
    }
}
