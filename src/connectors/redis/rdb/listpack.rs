//! Listpack decoding (Redis >= 7 compact encoding) and the element type shared
//! with the ziplist decoder.

use crate::connectors::redis::rdb::error::CodecError;

/// One element of a ziplist or listpack: either a byte string or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

impl Elem<'_> {
    /// The logical (string) value: integers become decimal ASCII.
    pub(crate) fn to_vec(self) -> Vec<u8> {
        match self {
            Elem::Bytes(b) => b.to_vec(),
            Elem::Int(i) => i.to_string().into_bytes(),
        }
    }

    /// The element as an integer, parsing decimal strings.
    pub(crate) fn as_i64(self) -> Option<i64> {
        match self {
            Elem::Int(i) => Some(i),
            Elem::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        }
    }

    /// The element as a double (sorted-set scores stored in compact encodings).
    pub(crate) fn as_f64(self) -> Option<f64> {
        match self {
            // Scores stored as integers are exact for |i| < 2^53, which is
            // all Redis stores this way.
            Elem::Int(i) => Some(i as f64),
            Elem::Bytes(b) => parse_f64(b),
        }
    }
}

/// Parses a score as written by Redis (`%.17g`, `inf`, `-inf`, `nan`).
pub(crate) fn parse_f64(b: &[u8]) -> Option<f64> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

const LP_HDR_SIZE: usize = 6;
const LP_EOF: u8 = 0xff;

fn take<'a>(buf: &'a [u8], pos: usize, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
    pos.checked_add(n)
        .and_then(|end| buf.get(pos..end))
        .ok_or_else(|| CodecError::new(pos, format!("listpack {what} runs past end")))
}

fn backlen_size(l: usize) -> usize {
    match l {
        0..=127 => 1,
        128..=16382 => 2,
        16383..=2097150 => 3,
        2097151..=268435454 => 4,
        _ => 5,
    }
}

fn int_le(bytes: &[u8]) -> i64 {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    let bits = bytes.len() * 8;
    if bits < 64 {
        // Sign-extend.
        let shift = 64 - bits;
        ((v << shift) as i64) >> shift
    } else {
        v as i64
    }
}

/// Decodes every element of a listpack, validating the header's total size,
/// element encodings, back-lengths and the terminator.
pub(crate) fn listpack_entries(buf: &[u8]) -> Result<Vec<Elem<'_>>, CodecError> {
    let hdr = take(buf, 0, LP_HDR_SIZE, "header")?;
    let total = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if total != buf.len() {
        return Err(CodecError::new(
            0,
            format!("listpack header says {total} bytes, blob has {}", buf.len()),
        ));
    }
    let declared = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
    let mut out = Vec::with_capacity(declared.min(4096));
    let mut pos = LP_HDR_SIZE;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Err(CodecError::new(pos, "listpack missing terminator"));
        };
        if b == LP_EOF {
            if pos + 1 != buf.len() {
                return Err(CodecError::new(pos, "listpack data after terminator"));
            }
            break;
        }
        let (elem, enc_len) = if b & 0x80 == 0 {
            (Elem::Int(i64::from(b & 0x7f)), 1)
        } else if b & 0xc0 == 0x80 {
            let len = usize::from(b & 0x3f);
            (Elem::Bytes(take(buf, pos + 1, len, "string")?), 1 + len)
        } else if b & 0xe0 == 0xc0 {
            let d = take(buf, pos + 1, 1, "int")?;
            let raw = (u16::from(b & 0x1f) << 8) | u16::from(d[0]);
            // 13-bit two's complement.
            let v = ((raw << 3) as i16) >> 3;
            (Elem::Int(i64::from(v)), 2)
        } else if b & 0xf0 == 0xe0 {
            let d = take(buf, pos + 1, 1, "string length")?;
            let len = (usize::from(b & 0x0f) << 8) | usize::from(d[0]);
            (Elem::Bytes(take(buf, pos + 2, len, "string")?), 2 + len)
        } else {
            match b {
                0xf0 => {
                    let d = take(buf, pos + 1, 4, "string length")?;
                    let len = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize;
                    (Elem::Bytes(take(buf, pos + 5, len, "string")?), 5 + len)
                }
                0xf1 => (Elem::Int(int_le(take(buf, pos + 1, 2, "int")?)), 3),
                0xf2 => (Elem::Int(int_le(take(buf, pos + 1, 3, "int")?)), 4),
                0xf3 => (Elem::Int(int_le(take(buf, pos + 1, 4, "int")?)), 5),
                0xf4 => (Elem::Int(int_le(take(buf, pos + 1, 8, "int")?)), 9),
                _ => {
                    return Err(CodecError::new(
                        pos,
                        format!("listpack invalid encoding byte {b:#04x}"),
                    ))
                }
            }
        };
        let bl_size = backlen_size(enc_len);
        let bl = take(buf, pos + enc_len, bl_size, "back-length")?;
        if decode_backlen(bl) != Some(enc_len as u64) {
            return Err(CodecError::new(
                pos + enc_len,
                "listpack back-length mismatch",
            ));
        }
        out.push(elem);
        pos += enc_len + bl_size;
    }
    if declared != 65535 && declared != out.len() {
        return Err(CodecError::new(
            4,
            format!(
                "listpack header says {declared} elements, found {}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// Decodes a back-length field laid out left to right (most significant
/// group first, every byte but the first with the high bit set).
fn decode_backlen(bytes: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        let cont = b & 0x80 != 0;
        if (i == 0) == cont {
            return None;
        }
        v = (v << 7) | u64::from(b & 0x7f);
    }
    Some(v)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test helper: builds a listpack from elements, encoding as Redis does.
    pub(crate) fn build(elems: &[Elem<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        for e in elems {
            let mut enc = Vec::new();
            match *e {
                Elem::Int(i) if (0..=127).contains(&i) => enc.push(i as u8),
                Elem::Int(i) if (-4096..=4095).contains(&i) => {
                    let u = (i as u16) & 0x1fff;
                    enc.push(0xc0 | (u >> 8) as u8);
                    enc.push(u as u8);
                }
                Elem::Int(i) if i16::try_from(i).is_ok() => {
                    enc.push(0xf1);
                    enc.extend_from_slice(&(i as i16).to_le_bytes());
                }
                Elem::Int(i) if (-(1 << 23)..(1 << 23)).contains(&i) => {
                    enc.push(0xf2);
                    enc.extend_from_slice(&(i as i32).to_le_bytes()[..3]);
                }
                Elem::Int(i) if i32::try_from(i).is_ok() => {
                    enc.push(0xf3);
                    enc.extend_from_slice(&(i as i32).to_le_bytes());
                }
                Elem::Int(i) => {
                    enc.push(0xf4);
                    enc.extend_from_slice(&i.to_le_bytes());
                }
                Elem::Bytes(b) if b.len() < 64 => {
                    enc.push(0x80 | b.len() as u8);
                    enc.extend_from_slice(b);
                }
                Elem::Bytes(b) if b.len() < 4096 => {
                    enc.push(0xe0 | (b.len() >> 8) as u8);
                    enc.push(b.len() as u8);
                    enc.extend_from_slice(b);
                }
                Elem::Bytes(b) => {
                    enc.push(0xf0);
                    enc.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    enc.extend_from_slice(b);
                }
            }
            let l = enc.len() as u64;
            let n = backlen_size(enc.len());
            for k in (0..n).rev() {
                let group = ((l >> (7 * k)) & 0x7f) as u8;
                enc.push(if k == n - 1 { group } else { group | 0x80 });
            }
            body.extend_from_slice(&enc);
        }
        let total = (LP_HDR_SIZE + body.len() + 1) as u32;
        let mut out = total.to_le_bytes().to_vec();
        out.extend_from_slice(&(elems.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out.push(LP_EOF);
        out
    }

    #[test]
    fn roundtrip_all_encodings() {
        let long = vec![b'z'; 5000];
        let mid = vec![b'y'; 300];
        let elems = [
            Elem::Int(0),
            Elem::Int(127),
            Elem::Int(-1),
            Elem::Int(4095),
            Elem::Int(-4096),
            Elem::Int(30000),
            Elem::Int(-8_000_000),
            Elem::Int(2_000_000_000),
            Elem::Int(i64::MIN),
            Elem::Bytes(b""),
            Elem::Bytes(b"hello"),
            Elem::Bytes(&mid),
            Elem::Bytes(&long),
        ];
        let lp = build(&elems);
        assert_eq!(listpack_entries(&lp).unwrap(), elems.to_vec());
    }

    #[test]
    fn known_bytes_from_redis() {
        // lpNew + lpAppend("a") + lpAppendInteger(1024): hand-assembled.
        let lp = [
            14, 0, 0, 0, 2, 0, 0x81, b'a', 2, 0xc4, 0x00, 2, 0xff, // 13 bytes
        ];
        let mut lp = lp.to_vec();
        lp[0] = lp.len() as u8;
        assert_eq!(
            listpack_entries(&lp).unwrap(),
            vec![Elem::Bytes(b"a"), Elem::Int(1024)]
        );
    }

    #[test]
    fn malformed_listpacks() {
        let lp = build(&[Elem::Bytes(b"hello"), Elem::Int(5)]);
        for cut in 0..lp.len() {
            let mut t = lp[..cut].to_vec();
            if t.len() >= 4 {
                t[..4].copy_from_slice(&(cut as u32).to_le_bytes());
            }
            assert!(listpack_entries(&t).is_err(), "cut at {cut}");
        }
        let mut bad = lp.clone();
        bad[6] = 0xf5; // invalid encoding
        assert!(listpack_entries(&bad).is_err());
        let mut bad = lp.clone();
        bad[12] ^= 1; // back-length of first element
        assert!(listpack_entries(&bad).is_err());
        let mut bad = lp;
        bad[4] = 7; // element count
        assert!(listpack_entries(&bad).is_err());
    }

    #[test]
    fn elem_conversions() {
        assert_eq!(Elem::Int(-12).to_vec(), b"-12");
        assert_eq!(Elem::Bytes(b"42").as_i64(), Some(42));
        assert_eq!(Elem::Bytes(b"x").as_i64(), None);
        assert_eq!(Elem::Bytes(b"1.5").as_f64(), Some(1.5));
        assert_eq!(Elem::Bytes(b"-inf").as_f64(), Some(f64::NEG_INFINITY));
        assert_eq!(Elem::Int(3).as_f64(), Some(3.0));
    }
}
