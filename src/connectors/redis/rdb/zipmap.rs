//! Zipmap decoding (hash encoding of Redis < 2.6).

use crate::connectors::redis::rdb::error::CodecError;

const ZIPMAP_BIGLEN: u8 = 254;
const ZIPMAP_END: u8 = 255;

fn read_len(buf: &[u8], pos: &mut usize) -> Result<Option<usize>, CodecError> {
    let Some(&b) = buf.get(*pos) else {
        return Err(CodecError::new(*pos, "zipmap missing terminator"));
    };
    match b {
        ZIPMAP_END => Ok(None),
        ZIPMAP_BIGLEN => {
            let Some(d) = buf.get(*pos + 1..*pos + 5) else {
                return Err(CodecError::new(*pos, "zipmap length truncated"));
            };
            *pos += 5;
            Ok(Some(u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as usize))
        }
        n => {
            *pos += 1;
            Ok(Some(usize::from(n)))
        }
    }
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], CodecError> {
    let s = pos
        .checked_add(n)
        .and_then(|end| buf.get(*pos..end))
        .ok_or_else(|| CodecError::new(*pos, "zipmap string runs past end"))?;
    *pos += n;
    Ok(s)
}

/// Borrowed `(field, value)` pairs.
pub(crate) type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Decodes a zipmap into `(field, value)` pairs.
///
/// Layout: `zmlen: u8`, then per pair `len field len free value <free bytes>`
/// where `len` is one byte (< 254) or 254 followed by a u32 LE, and a final
/// 255 byte.
pub(crate) fn zipmap_entries(buf: &[u8]) -> Result<Pairs<'_>, CodecError> {
    if buf.is_empty() {
        return Err(CodecError::new(0, "zipmap empty blob"));
    }
    let mut pos = 1;
    let mut out = Vec::new();
    while let Some(klen) = read_len(buf, &mut pos)? {
        let key = take(buf, &mut pos, klen)?;
        let Some(vlen) = read_len(buf, &mut pos)? else {
            return Err(CodecError::new(pos, "zipmap field without value"));
        };
        let free = usize::from(take(buf, &mut pos, 1)?[0]);
        let value = take(buf, &mut pos, vlen)?;
        take(buf, &mut pos, free)?;
        out.push((key, value));
    }
    if pos + 1 != buf.len() {
        return Err(CodecError::new(pos, "zipmap data after terminator"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode() {
        // From the zipmap.c comment: {"foo" => "bar", "hello" => "world"},
        // with one free byte after "bar".
        let mut zm = vec![2u8, 3];
        zm.extend_from_slice(b"foo");
        zm.extend_from_slice(&[3, 1]);
        zm.extend_from_slice(b"bar");
        zm.push(0); // free byte
        zm.push(5);
        zm.extend_from_slice(b"hello");
        zm.extend_from_slice(&[5, 0]);
        zm.extend_from_slice(b"world");
        zm.push(255);
        assert_eq!(
            zipmap_entries(&zm).unwrap(),
            vec![(&b"foo"[..], &b"bar"[..]), (&b"hello"[..], &b"world"[..])]
        );
    }

    #[test]
    fn big_lengths_and_errors() {
        let val = vec![b'v'; 300];
        let mut zm = vec![1u8, 1, b'k', 254];
        zm.extend_from_slice(&300u32.to_le_bytes());
        zm.push(0);
        zm.extend_from_slice(&val);
        zm.push(255);
        assert_eq!(zipmap_entries(&zm).unwrap(), vec![(&b"k"[..], &val[..])]);
        for cut in 0..zm.len() {
            assert!(zipmap_entries(&zm[..cut]).is_err(), "cut {cut}");
        }
        assert!(zipmap_entries(&[1, 1, b'k', 255]).is_err());
    }
}
