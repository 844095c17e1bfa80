//! RDB string decoding (raw, integer-encoded, LZF-compressed) and an LZF
//! decompressor.

use std::io::BufRead;

use crate::connectors::redis::rdb::error::{CodecError, Result};
use crate::connectors::redis::rdb::reader::{blob_error, Length, Reader};

const ENC_INT8: u8 = 0;
const ENC_INT16: u8 = 1;
const ENC_INT32: u8 = 2;
const ENC_LZF: u8 = 3;

/// Reads one RDB string in any of its encodings and returns its bytes.
/// Integer encodings are rendered as decimal ASCII, as Redis does.
pub(crate) fn read_string<R: BufRead>(r: &mut Reader<R>, ctx: &'static str) -> Result<Vec<u8>> {
    let start = r.offset();
    match r.read_length(ctx)? {
        Length::Len(n) => r.read_vec(n, ctx),
        Length::Encoded(ENC_INT8) => {
            let v = i8::from_le_bytes(r.read_array::<1>(ctx)?);
            Ok(v.to_string().into_bytes())
        }
        Length::Encoded(ENC_INT16) => {
            let v = i16::from_le_bytes(r.read_array::<2>(ctx)?);
            Ok(v.to_string().into_bytes())
        }
        Length::Encoded(ENC_INT32) => {
            let v = i32::from_le_bytes(r.read_array::<4>(ctx)?);
            Ok(v.to_string().into_bytes())
        }
        Length::Encoded(ENC_LZF) => {
            let clen = r.read_len(ctx)?;
            let ulen = r.read_len(ctx)?;
            // LZF cannot expand input by more than ~88x (a 3-byte back
            // reference yields at most 264 bytes); refuse absurd claims before
            // allocating the output.
            if ulen > clen.saturating_mul(90).saturating_add(64) {
                return Err(r.malformed(format!(
                    "{ctx}: LZF claims {ulen} bytes from {clen} compressed bytes"
                )));
            }
            let data_offset = r.offset();
            let compressed = r.read_vec(clen, ctx)?;
            // ulen <= 90 * clen and clen bytes were just read into memory, so
            // it fits in usize.
            let ulen = usize::try_from(ulen).map_err(|_| r.malformed("LZF length overflow"))?;
            lzf_decompress(&compressed, ulen).map_err(|e| blob_error(data_offset, "LZF data", e))
        }
        Length::Encoded(other) => Err(crate::connectors::redis::rdb::error::RdbError::Malformed {
            offset: start,
            detail: format!("{ctx}: unknown string encoding {other}"),
        }),
    }
}

/// Decompresses LZF data (liblzf format as used by Redis) whose decompressed
/// size is exactly `out_len`.
///
/// Never panics: truncated input, back references before the start of the
/// output and output overruns are reported as errors.
pub(crate) fn lzf_decompress(input: &[u8], out_len: usize) -> Result<Vec<u8>, CodecError> {
    let mut out: Vec<u8> = Vec::with_capacity(out_len);
    let mut ip = 0usize;
    while ip < input.len() {
        let ctrl = usize::from(input[ip]);
        ip += 1;
        if ctrl < 32 {
            // Literal run of ctrl + 1 bytes.
            let run = ctrl + 1;
            let end = ip + run;
            if end > input.len() {
                return Err(CodecError::new(ip, "LZF literal run past end of input"));
            }
            if out.len() + run > out_len {
                return Err(CodecError::new(ip, "LZF output exceeds declared length"));
            }
            out.extend_from_slice(&input[ip..end]);
            ip = end;
        } else {
            // Back reference.
            let mut len = ctrl >> 5;
            if len == 7 {
                let Some(&extra) = input.get(ip) else {
                    return Err(CodecError::new(ip, "LZF truncated back reference length"));
                };
                len += usize::from(extra);
                ip += 1;
            }
            let Some(&low) = input.get(ip) else {
                return Err(CodecError::new(ip, "LZF truncated back reference offset"));
            };
            ip += 1;
            let distance = ((ctrl & 0x1f) << 8) + usize::from(low) + 1;
            if distance > out.len() {
                return Err(CodecError::new(
                    ip,
                    "LZF back reference before start of output",
                ));
            }
            let copy = len + 2;
            if out.len() + copy > out_len {
                return Err(CodecError::new(ip, "LZF output exceeds declared length"));
            }
            let start = out.len() - distance;
            // Byte by byte: source and destination may overlap (run-length).
            for from in start..start + copy {
                let b = out[from];
                out.push(b);
            }
        }
    }
    if out.len() != out_len {
        return Err(CodecError::new(
            input.len(),
            format!("LZF produced {} bytes, {} declared", out.len(), out_len),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::redis::rdb::error::RdbError;

    fn s(bytes: &[u8]) -> Result<Vec<u8>> {
        read_string(&mut Reader::new(bytes), "test")
    }

    #[test]
    fn raw_and_int_strings() {
        assert_eq!(s(&[3, b'f', b'o', b'o']).unwrap(), b"foo");
        assert_eq!(s(&[0]).unwrap(), b"");
        assert_eq!(s(&[0xc0, 0xf9]).unwrap(), b"-7");
        assert_eq!(s(&[0xc1, 0x39, 0x30]).unwrap(), b"12345");
        assert_eq!(s(&[0xc2, 0xa0, 0x86, 0x01, 0x00]).unwrap(), b"100000");
        assert_eq!(s(&[0xc2, 0x00, 0x00, 0x00, 0x80]).unwrap(), b"-2147483648");
    }

    #[test]
    fn lzf_literal_and_backref() {
        // "abcabcabcabc": literal "abc" (ctrl 2), then back ref len 9 at
        // distance 3: len-2 = 7 -> ctrl high bits 7, extra byte 0, offset 2.
        let comp = [2u8, b'a', b'b', b'c', 0xe0, 0x00, 0x02];
        assert_eq!(lzf_decompress(&comp, 12).unwrap(), b"abcabcabcabc");
        // Short back reference: len 3 -> ctrl (1 << 5), distance 1.
        let comp = [0u8, b'x', 0x20, 0x00];
        assert_eq!(lzf_decompress(&comp, 4).unwrap(), b"xxxx");
    }

    #[test]
    fn lzf_errors() {
        assert!(lzf_decompress(&[5, b'a'], 6).is_err()); // literal truncated
        assert!(lzf_decompress(&[0x20, 0x00], 3).is_err()); // ref before start
        assert!(lzf_decompress(&[0, b'a', 0xe0], 20).is_err()); // truncated ref
        assert!(lzf_decompress(&[0, b'a'], 2).is_err()); // short output
        assert!(lzf_decompress(&[1, b'a', b'b'], 1).is_err()); // overrun
    }

    #[test]
    fn lzf_string_in_stream() {
        let mut buf = vec![0xc3, 7, 12];
        buf.extend_from_slice(&[2u8, b'a', b'b', b'c', 0xe0, 0x00, 0x02]);
        assert_eq!(s(&buf).unwrap(), b"abcabcabcabc");
        // Absurd uncompressed length is refused without allocating.
        let buf = [0xc3, 1, 0x81, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        assert!(matches!(s(&buf), Err(RdbError::Malformed { .. })));
        // Unknown special encoding.
        assert!(matches!(
            s(&[0xc4]),
            Err(RdbError::Malformed { offset: 0, .. })
        ));
        // Truncated raw string.
        assert!(matches!(
            s(&[5, b'a']),
            Err(RdbError::UnexpectedEof { offset: 2, .. })
        ));
    }
}
