//! Error type of the parser.

use thiserror::Error;

/// Everything that can go wrong while parsing an RDB stream.
///
/// Every variant caused by the bytes of the stream carries `offset`, the number
/// of bytes consumed from the start of the stream (offset 0 is the `R` of the
/// `REDIS` magic) at the point the problem was detected or, for problems found
/// inside an encoded blob (ziplist, listpack, intset, zipmap, stream listpack),
/// the offset at which that blob's string encoding starts.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RdbError {
    /// The underlying reader failed.
    #[error("I/O error at offset {offset}: {source}")]
    Io {
        /// Stream offset at which the read was attempted.
        offset: u64,
        /// The error returned by the reader.
        #[source]
        source: std::io::Error,
    },
    /// The stream ended before the RDB was complete (before EOF and checksum).
    #[error("unexpected end of stream at offset {offset} while reading {context}")]
    UnexpectedEof {
        /// Stream offset at which more bytes were needed.
        offset: u64,
        /// What was being read.
        context: &'static str,
    },
    /// The stream does not start with `REDIS` followed by four ASCII digits.
    #[error("not an RDB stream: bad header {found:?}")]
    BadMagic {
        /// The first nine bytes found.
        found: Vec<u8>,
    },
    /// The RDB version in the header is outside the supported range.
    #[error("unsupported RDB version {version} (supported: 1..={max})")]
    UnsupportedVersion {
        /// Version found in the header.
        version: u32,
        /// Highest version this parser understands.
        max: u32,
    },
    /// The bytes do not follow the RDB format.
    #[error("malformed RDB at offset {offset}: {detail}")]
    Malformed {
        /// See the type-level documentation.
        offset: u64,
        /// Human readable description of the problem.
        detail: String,
    },
    /// A key has a value type this parser cannot decode (unknown type byte,
    /// module value, or a type reserved for pre-release formats).
    #[error("unsupported value type {type_id} ({type_name}) for key {key:?} at offset {offset}")]
    UnsupportedType {
        /// Offset of the type byte.
        offset: u64,
        /// The RDB type byte.
        type_id: u8,
        /// A short name for the type, or "unknown".
        type_name: &'static str,
        /// The key, decoded as lossy UTF-8.
        key: String,
    },
    /// An opcode that cannot be decoded without the generating code
    /// (module auxiliary data, pre-GA function format).
    #[error("unsupported opcode {opcode} ({name}) at offset {offset}")]
    UnsupportedOpcode {
        /// Offset of the opcode byte.
        offset: u64,
        /// The opcode byte.
        opcode: u8,
        /// A short name for the opcode.
        name: &'static str,
    },
    /// The CRC-64 stored after the EOF opcode differs from the computed one.
    #[error(
        "checksum mismatch at offset {offset}: stored {stored:#018x}, computed {computed:#018x}"
    )]
    ChecksumMismatch {
        /// Offset of the stored checksum.
        offset: u64,
        /// Checksum stored in the stream.
        stored: u64,
        /// Checksum computed over all bytes up to and including the EOF opcode.
        computed: u64,
    },
}

/// Result alias used throughout the crate.
pub type Result<T, E = RdbError> = std::result::Result<T, E>;

/// An error found while decoding an in-memory encoded blob; converted to
/// [`RdbError::Malformed`] by the stream parser, which knows the blob's offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodecError {
    /// Byte position inside the blob.
    pub pos: usize,
    /// What is wrong.
    pub msg: String,
}

impl CodecError {
    pub(crate) fn new(pos: usize, msg: impl Into<String>) -> Self {
        CodecError {
            pos,
            msg: msg.into(),
        }
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {} of the blob)", self.msg, self.pos)
    }
}
