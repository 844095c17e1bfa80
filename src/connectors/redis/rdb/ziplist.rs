//! Ziplist decoding (compact encoding of Redis < 7, still found in RDB files
//! written by Redis 6.x and in quicklist v1 nodes).

use crate::connectors::redis::rdb::error::CodecError;
use crate::connectors::redis::rdb::listpack::Elem;

const ZL_HDR_SIZE: usize = 10;
const ZIP_END: u8 = 0xff;
const ZIP_BIG_PREVLEN: u8 = 0xfe;

fn take<'a>(buf: &'a [u8], pos: usize, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
    pos.checked_add(n)
        .and_then(|end| buf.get(pos..end))
        .ok_or_else(|| CodecError::new(pos, format!("ziplist {what} runs past end")))
}

fn int_le(bytes: &[u8]) -> i64 {
    let mut v: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    let bits = bytes.len() * 8;
    if bits < 64 {
        let shift = 64 - bits;
        ((v << shift) as i64) >> shift
    } else {
        v as i64
    }
}

/// Decodes every element of a ziplist, validating the header's total size,
/// prev-length fields, encodings and the terminator.
pub(crate) fn ziplist_entries(buf: &[u8]) -> Result<Vec<Elem<'_>>, CodecError> {
    let hdr = take(buf, 0, ZL_HDR_SIZE, "header")?;
    let total = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if total != buf.len() {
        return Err(CodecError::new(
            0,
            format!("ziplist header says {total} bytes, blob has {}", buf.len()),
        ));
    }
    let declared = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
    let mut out = Vec::with_capacity(declared.min(4096));
    let mut pos = ZL_HDR_SIZE;
    let mut prev_entry_len = 0usize;
    loop {
        let Some(&first) = buf.get(pos) else {
            return Err(CodecError::new(pos, "ziplist missing terminator"));
        };
        if first == ZIP_END {
            if pos + 1 != buf.len() {
                return Err(CodecError::new(pos, "ziplist data after terminator"));
            }
            break;
        }
        let entry_start = pos;
        // prevlen
        let prevlen = if first == ZIP_BIG_PREVLEN {
            let d = take(buf, pos + 1, 4, "prevlen")?;
            pos += 5;
            u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize
        } else {
            pos += 1;
            usize::from(first)
        };
        if prevlen != prev_entry_len {
            return Err(CodecError::new(entry_start, "ziplist prevlen mismatch"));
        }
        let enc = take(buf, pos, 1, "encoding")?[0];
        let elem = match enc >> 6 {
            0 => {
                let len = usize::from(enc & 0x3f);
                let s = take(buf, pos + 1, len, "string")?;
                pos += 1 + len;
                Elem::Bytes(s)
            }
            1 => {
                let d = take(buf, pos + 1, 1, "string length")?;
                let len = (usize::from(enc & 0x3f) << 8) | usize::from(d[0]);
                let s = take(buf, pos + 2, len, "string")?;
                pos += 2 + len;
                Elem::Bytes(s)
            }
            2 => {
                if enc != 0x80 {
                    return Err(CodecError::new(pos, "ziplist invalid string encoding"));
                }
                let d = take(buf, pos + 1, 4, "string length")?;
                let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
                let s = take(buf, pos + 5, len, "string")?;
                pos += 5 + len;
                Elem::Bytes(s)
            }
            _ => {
                let width = match enc {
                    0xc0 => 2,
                    0xd0 => 4,
                    0xe0 => 8,
                    0xf0 => 3,
                    0xfe => 1,
                    0xf1..=0xfd => 0,
                    _ => {
                        return Err(CodecError::new(
                            pos,
                            format!("ziplist invalid encoding byte {enc:#04x}"),
                        ))
                    }
                };
                let v = if width == 0 {
                    i64::from(enc & 0x0f) - 1
                } else {
                    int_le(take(buf, pos + 1, width, "int")?)
                };
                pos += 1 + width;
                Elem::Int(v)
            }
        };
        prev_entry_len = pos - entry_start;
        out.push(elem);
    }
    if declared != 65535 && declared != out.len() {
        return Err(CodecError::new(
            8,
            format!(
                "ziplist header says {declared} elements, found {}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test helper: builds a ziplist the way Redis encodes elements.
    pub(crate) fn build(elems: &[Elem<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut prev = 0usize;
        for e in elems {
            let mut ent = Vec::new();
            if prev < 254 {
                ent.push(prev as u8);
            } else {
                ent.push(0xfe);
                ent.extend_from_slice(&(prev as u32).to_le_bytes());
            }
            match *e {
                Elem::Int(i) if (0..=12).contains(&i) => ent.push(0xf1 + i as u8),
                Elem::Int(i) if i8::try_from(i).is_ok() => {
                    ent.push(0xfe);
                    ent.push(i as i8 as u8);
                }
                Elem::Int(i) if i16::try_from(i).is_ok() => {
                    ent.push(0xc0);
                    ent.extend_from_slice(&(i as i16).to_le_bytes());
                }
                Elem::Int(i) if (-(1 << 23)..(1 << 23)).contains(&i) => {
                    ent.push(0xf0);
                    ent.extend_from_slice(&(i as i32).to_le_bytes()[..3]);
                }
                Elem::Int(i) if i32::try_from(i).is_ok() => {
                    ent.push(0xd0);
                    ent.extend_from_slice(&(i as i32).to_le_bytes());
                }
                Elem::Int(i) => {
                    ent.push(0xe0);
                    ent.extend_from_slice(&i.to_le_bytes());
                }
                Elem::Bytes(b) if b.len() < 64 => {
                    ent.push(b.len() as u8);
                    ent.extend_from_slice(b);
                }
                Elem::Bytes(b) if b.len() < 16384 => {
                    ent.push(0x40 | (b.len() >> 8) as u8);
                    ent.push(b.len() as u8);
                    ent.extend_from_slice(b);
                }
                Elem::Bytes(b) => {
                    ent.push(0x80);
                    ent.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    ent.extend_from_slice(b);
                }
            }
            prev = ent.len();
            body.extend_from_slice(&ent);
        }
        let total = (ZL_HDR_SIZE + body.len() + 1) as u32;
        let mut out = total.to_le_bytes().to_vec();
        out.extend_from_slice(&((ZL_HDR_SIZE + body.len() - prev) as u32).to_le_bytes());
        out.extend_from_slice(&(elems.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out.push(ZIP_END);
        out
    }

    #[test]
    fn roundtrip_all_encodings() {
        let big = vec![b'q'; 20000];
        let mid = vec![b'm'; 300];
        let elems = [
            Elem::Int(0),
            Elem::Int(12),
            Elem::Int(-5),
            Elem::Int(200),
            Elem::Int(-30000),
            Elem::Int(8_000_000),
            Elem::Int(-2_000_000_000),
            Elem::Int(i64::MAX),
            Elem::Bytes(b""),
            Elem::Bytes(b"foo"),
            Elem::Bytes(&mid),
            Elem::Bytes(&big),
            Elem::Bytes(b"after-big-prevlen"),
        ];
        let zl = build(&elems);
        assert_eq!(ziplist_entries(&zl).unwrap(), elems.to_vec());
    }

    #[test]
    fn known_bytes() {
        // zlbytes=15 zltail=12 zllen=2, "ab" (prevlen 0, enc 0x02), int 5
        // (prevlen 4, enc 0xf6), end.
        let zl = [
            15, 0, 0, 0, 14, 0, 0, 0, 2, 0, 0, 2, b'a', b'b', 4, 0xf6, 0xff,
        ];
        let mut zl = zl.to_vec();
        zl[0] = zl.len() as u8;
        assert_eq!(
            ziplist_entries(&zl).unwrap(),
            vec![Elem::Bytes(b"ab"), Elem::Int(5)]
        );
    }

    #[test]
    fn malformed_ziplists() {
        let zl = build(&[Elem::Bytes(b"hello"), Elem::Int(1000)]);
        for cut in 0..zl.len() {
            let mut t = zl[..cut].to_vec();
            if t.len() >= 4 {
                t[..4].copy_from_slice(&(cut as u32).to_le_bytes());
            }
            assert!(ziplist_entries(&t).is_err(), "cut at {cut}");
        }
        let mut bad = zl.clone();
        bad[11] = 0x81; // invalid string encoding
        assert!(ziplist_entries(&bad).is_err());
        let mut bad = zl.clone();
        bad[17] = 3; // wrong prevlen of second entry
        assert!(ziplist_entries(&bad).is_err());
        let mut bad = zl;
        bad[8] = 9; // element count
        assert!(ziplist_entries(&bad).is_err());
    }
}
