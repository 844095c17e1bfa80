//! Intset decoding (compact encoding of sets of integers).

use crate::connectors::redis::rdb::error::CodecError;

/// Decodes an intset into its integers, in stored (ascending) order.
///
/// Layout: `encoding: u32 LE` (2, 4 or 8 bytes per element), `length: u32 LE`,
/// then `length` little-endian signed integers.
pub(crate) fn intset_entries(buf: &[u8]) -> Result<Vec<i64>, CodecError> {
    let Some(hdr) = buf.get(..8) else {
        return Err(CodecError::new(0, "intset header truncated"));
    };
    let width = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if !matches!(width, 2 | 4 | 8) {
        return Err(CodecError::new(
            0,
            format!("intset invalid encoding {width}"),
        ));
    }
    let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    let body = &buf[8..];
    if Some(body.len()) != len.checked_mul(width) {
        return Err(CodecError::new(
            4,
            format!(
                "intset of {len} x {width}-byte elements in a {}-byte blob",
                buf.len()
            ),
        ));
    }
    Ok(body
        .chunks_exact(width)
        .map(|c| match *c {
            [a, b] => i64::from(i16::from_le_bytes([a, b])),
            [a, b, c, d] => i64::from(i32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => i64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => 0, // unreachable: width checked above
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(width: u32, vals: &[i64]) -> Vec<u8> {
        let mut v = width.to_le_bytes().to_vec();
        v.extend_from_slice(&(vals.len() as u32).to_le_bytes());
        for x in vals {
            v.extend_from_slice(&x.to_le_bytes()[..width as usize]);
        }
        v
    }

    #[test]
    fn widths() {
        assert_eq!(
            intset_entries(&build(2, &[-3, 1, 300])).unwrap(),
            vec![-3, 1, 300]
        );
        assert_eq!(
            intset_entries(&build(4, &[-70000, 70000])).unwrap(),
            vec![-70000, 70000]
        );
        assert_eq!(
            intset_entries(&build(8, &[i64::MIN, i64::MAX])).unwrap(),
            vec![i64::MIN, i64::MAX]
        );
        assert_eq!(intset_entries(&build(2, &[])).unwrap(), Vec::<i64>::new());
    }

    #[test]
    fn malformed() {
        assert!(intset_entries(&[2, 0, 0]).is_err());
        assert!(intset_entries(&build(3, &[1])).is_err());
        let mut b = build(4, &[1, 2]);
        b.pop();
        assert!(intset_entries(&b).is_err());
        let mut b = build(2, &[1]);
        b[4] = 0xff;
        b[7] = 0xff; // huge length, no overflow panic
        assert!(intset_entries(&b).is_err());
    }
}
