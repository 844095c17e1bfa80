//! Byte-level reader: offset tracking, running checksum, RDB length encoding,
//! fixed-width integers and timestamps.

use std::io::{BufRead, ErrorKind};

use crate::connectors::redis::rdb::crc64::crc64_update;
use crate::connectors::redis::rdb::error::{CodecError, RdbError, Result};

/// Largest buffer pre-allocated on the strength of a length read from the
/// stream. Larger values grow as bytes actually arrive, so a corrupt length
/// cannot make the parser allocate far more than the input holds.
const PREALLOC_LIMIT: usize = 1 << 20;

/// Largest element count used to pre-size collections, for the same reason.
const COUNT_PREALLOC_LIMIT: u64 = 4096;

/// Capacity to reserve for `n` elements announced by the stream.
pub(crate) fn capped(n: u64) -> usize {
    // Fits in usize on every platform: at most COUNT_PREALLOC_LIMIT.
    n.min(COUNT_PREALLOC_LIMIT) as usize
}

/// A decoded RDB length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// A plain length.
    Len(u64),
    /// A special encoding marker (`11xxxxxx`): the low six bits.
    Encoded(u8),
}

/// Wraps a [`BufRead`], counting consumed bytes and updating the CRC-64 over them.
pub(crate) struct Reader<R> {
    inner: R,
    offset: u64,
    crc: u64,
}

impl<R: BufRead> Reader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Reader {
            inner,
            offset: 0,
            crc: 0,
        }
    }

    /// Bytes consumed so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// CRC-64 of all bytes consumed so far.
    pub(crate) fn crc(&self) -> u64 {
        self.crc
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Builds a [`RdbError::Malformed`] at the current offset.
    pub(crate) fn malformed(&self, detail: impl Into<String>) -> RdbError {
        RdbError::Malformed {
            offset: self.offset,
            detail: detail.into(),
        }
    }

    /// Appends up to `max` available bytes to `out`; errors at end of stream.
    fn take_some(&mut self, out: &mut Vec<u8>, max: usize, ctx: &'static str) -> Result<usize> {
        let buf = loop {
            match self.inner.fill_buf() {
                Ok(b) => break b,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(RdbError::Io {
                        offset: self.offset,
                        source: e,
                    })
                }
            }
        };
        if buf.is_empty() {
            return Err(RdbError::UnexpectedEof {
                offset: self.offset,
                context: ctx,
            });
        }
        let n = buf.len().min(max);
        out.extend_from_slice(&buf[..n]);
        self.crc = crc64_update(self.crc, &buf[..n]);
        self.inner.consume(n);
        self.offset += n as u64;
        Ok(n)
    }

    /// Fills `out` completely from the stream.
    fn take_into(&mut self, out: &mut [u8], ctx: &'static str) -> Result<()> {
        let mut filled = 0;
        while filled < out.len() {
            let buf = loop {
                match self.inner.fill_buf() {
                    Ok(b) => break b,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(RdbError::Io {
                            offset: self.offset,
                            source: e,
                        })
                    }
                }
            };
            if buf.is_empty() {
                return Err(RdbError::UnexpectedEof {
                    offset: self.offset,
                    context: ctx,
                });
            }
            let n = buf.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&buf[..n]);
            self.crc = crc64_update(self.crc, &buf[..n]);
            self.inner.consume(n);
            self.offset += n as u64;
            filled += n;
        }
        Ok(())
    }

    /// Reads exactly `N` bytes.
    pub(crate) fn read_array<const N: usize>(&mut self, ctx: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        self.take_into(&mut out, ctx)?;
        Ok(out)
    }

    pub(crate) fn read_u8(&mut self, ctx: &'static str) -> Result<u8> {
        Ok(self.read_array::<1>(ctx)?[0])
    }

    /// Reads exactly `len` bytes into a new vector, growing it as data arrives.
    pub(crate) fn read_vec(&mut self, len: u64, ctx: &'static str) -> Result<Vec<u8>> {
        let len = usize::try_from(len)
            .map_err(|_| self.malformed(format!("{ctx}: length {len} exceeds address space")))?;
        let mut out = Vec::with_capacity(len.min(PREALLOC_LIMIT));
        while out.len() < len {
            let need = len - out.len();
            self.take_some(&mut out, need, ctx)?;
        }
        Ok(out)
    }

    /// Reads an RDB length field (`00`: 6 bit, `01`: 14 bit, `0x80`: 32 bit
    /// big endian, `0x81`: 64 bit big endian, `11`: special encoding).
    pub(crate) fn read_length(&mut self, ctx: &'static str) -> Result<Length> {
        let start = self.offset;
        let b = self.read_u8(ctx)?;
        match b >> 6 {
            0 => Ok(Length::Len(u64::from(b & 0x3f))),
            1 => {
                let b2 = self.read_u8(ctx)?;
                Ok(Length::Len((u64::from(b & 0x3f) << 8) | u64::from(b2)))
            }
            3 => Ok(Length::Encoded(b & 0x3f)),
            _ => match b {
                0x80 => Ok(Length::Len(u64::from(u32::from_be_bytes(
                    self.read_array::<4>(ctx)?,
                )))),
                0x81 => Ok(Length::Len(u64::from_be_bytes(self.read_array::<8>(ctx)?))),
                _ => Err(RdbError::Malformed {
                    offset: start,
                    detail: format!("{ctx}: invalid length prefix byte {b:#04x}"),
                }),
            },
        }
    }

    /// Reads a length that must not be a special encoding.
    pub(crate) fn read_len(&mut self, ctx: &'static str) -> Result<u64> {
        let start = self.offset;
        match self.read_length(ctx)? {
            Length::Len(n) => Ok(n),
            Length::Encoded(e) => Err(RdbError::Malformed {
                offset: start,
                detail: format!("{ctx}: expected a length, found special encoding {e}"),
            }),
        }
    }

    /// Reads a 64-bit little-endian millisecond timestamp.
    pub(crate) fn read_ms_time(&mut self, ctx: &'static str) -> Result<i64> {
        Ok(i64::from_le_bytes(self.read_array::<8>(ctx)?))
    }

    /// Reads a 32-bit little-endian second timestamp.
    pub(crate) fn read_sec_time(&mut self, ctx: &'static str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.read_array::<4>(ctx)?))
    }

    /// Reads an 8-byte little-endian IEEE 754 double (`ZSET_2` scores).
    pub(crate) fn read_binary_double(&mut self, ctx: &'static str) -> Result<f64> {
        Ok(f64::from_le_bytes(self.read_array::<8>(ctx)?))
    }
}

/// Converts a blob decoding error into a stream error located at the blob start.
pub(crate) fn blob_error(blob_offset: u64, what: &str, e: CodecError) -> RdbError {
    RdbError::Malformed {
        offset: blob_offset,
        detail: format!("invalid {what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_of(bytes: &[u8]) -> Result<Length> {
        Reader::new(bytes).read_length("test")
    }

    #[test]
    fn length_encodings() {
        assert_eq!(len_of(&[0x0a]).unwrap(), Length::Len(10));
        assert_eq!(len_of(&[0x3f]).unwrap(), Length::Len(63));
        assert_eq!(len_of(&[0x41, 0x02]).unwrap(), Length::Len(0x102));
        assert_eq!(len_of(&[0x7f, 0xff]).unwrap(), Length::Len(16383));
        assert_eq!(
            len_of(&[0x80, 0x00, 0x01, 0x00, 0x00]).unwrap(),
            Length::Len(65536)
        );
        assert_eq!(
            len_of(&[0x81, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap(),
            Length::Len(1 << 32)
        );
        assert_eq!(len_of(&[0xc0]).unwrap(), Length::Encoded(0));
        assert_eq!(len_of(&[0xc3]).unwrap(), Length::Encoded(3));
    }

    #[test]
    fn invalid_and_truncated_lengths() {
        assert!(matches!(
            len_of(&[0x82]),
            Err(RdbError::Malformed { offset: 0, .. })
        ));
        assert!(matches!(
            len_of(&[0x41]),
            Err(RdbError::UnexpectedEof { offset: 1, .. })
        ));
        assert!(matches!(
            len_of(&[0x80, 0, 0]),
            Err(RdbError::UnexpectedEof { offset: 3, .. })
        ));
        assert!(matches!(
            len_of(&[]),
            Err(RdbError::UnexpectedEof { offset: 0, .. })
        ));
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        let mut r = Reader::new(&[1u8, 2, 3][..]);
        let e = r.read_vec(1 << 50, "blob").unwrap_err();
        assert!(matches!(e, RdbError::UnexpectedEof { offset: 3, .. }));
    }

    #[test]
    fn offset_and_crc_track_consumed_bytes() {
        let data = b"123456789";
        let mut r = Reader::new(&data[..]);
        assert_eq!(r.read_vec(9, "x").unwrap(), data.to_vec());
        assert_eq!(r.offset(), 9);
        assert_eq!(r.crc(), 0xe9c6_d914_c4b8_d9ca);
    }
}
