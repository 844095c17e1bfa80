//! Top-level streaming parser: header, opcodes, entries, EOF and checksum.

use std::io::{BufRead, BufReader, Read};

use crate::connectors::redis::rdb::decode::read_value;
use crate::connectors::redis::rdb::error::{RdbError, Result};
use crate::connectors::redis::rdb::reader::Reader;
use crate::connectors::redis::rdb::string::read_string;
use crate::connectors::redis::rdb::value::{Entry, Item};

/// Highest RDB version understood (Redis 7.4 writes 12).
pub const MAX_RDB_VERSION: u32 = 12;

const OP_SLOT_INFO: u8 = 244;
const OP_FUNCTION2: u8 = 245;
const OP_FUNCTION_PRE_GA: u8 = 246;
const OP_MODULE_AUX: u8 = 247;
const OP_IDLE: u8 = 248;
const OP_FREQ: u8 = 249;
const OP_AUX: u8 = 250;
const OP_RESIZEDB: u8 = 251;
const OP_EXPIRETIME_MS: u8 = 252;
const OP_EXPIRETIME: u8 = 253;
const OP_SELECTDB: u8 = 254;
const OP_EOF: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body,
    Done,
    Failed,
}

/// Streaming RDB parser.
///
/// Guarantees:
/// - Reads the input strictly sequentially and never seeks. Only the current
///   item is held in memory, so memory use is bounded by the largest single
///   key (plus a bounded read buffer); sizes announced by the stream are never
///   trusted for pre-allocation beyond 1 MiB per buffer.
/// - Never panics on malformed input: every problem is returned as an
///   [`RdbError`] carrying the stream offset. After the first error the
///   iterator yields `None`.
/// - Consumes exactly the bytes of the RDB: on success it stops right after
///   the 8-byte checksum (or after the EOF opcode for RDB < 5), so a
///   replication stream that follows can be read from [`RdbParser::into_inner`].
/// - The trailing CRC-64 is verified unless it is stored as 0 (checksums
///   disabled with `rdbchecksum no`); a mismatch is an error, reported after
///   all entries were yielded (the checksum covers the whole file).
///
/// ```no_run
/// # fn main() -> Result<(), tidemark::connectors::redis::rdb::RdbError> {
/// let file = std::fs::File::open("dump.rdb").expect("open");
/// for item in tidemark::connectors::redis::rdb::RdbParser::from_read(file) {
///     if let tidemark::connectors::redis::rdb::Item::Entry(e) = item? {
///         println!("db {} key {:?}", e.db, String::from_utf8_lossy(&e.key));
///     }
/// }
/// # Ok(()) }
/// ```
pub struct RdbParser<R> {
    r: Reader<R>,
    state: State,
    version: Option<u32>,
    db: u64,
    pending_expire: Option<i64>,
}

impl<R: Read> RdbParser<BufReader<R>> {
    /// Creates a parser over any [`Read`], buffering it internally (64 KiB).
    /// Bytes after the RDB may have been read into the buffer: get them back
    /// through [`RdbParser::into_inner`].
    pub fn from_read(inner: R) -> Self {
        RdbParser::new(BufReader::with_capacity(64 * 1024, inner))
    }
}

impl<R: BufRead> RdbParser<R> {
    /// Creates a parser over a buffered reader positioned at the `REDIS` magic.
    pub fn new(inner: R) -> Self {
        RdbParser {
            r: Reader::new(inner),
            state: State::Header,
            version: None,
            db: 0,
            pending_expire: None,
        }
    }

    /// The RDB version from the header, once the first item was requested.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// Number of bytes consumed from the input so far.
    pub fn offset(&self) -> u64 {
        self.r.offset()
    }

    /// True once the EOF opcode and checksum were read and verified.
    pub fn is_finished(&self) -> bool {
        self.state == State::Done
    }

    /// Returns the underlying reader. After the parser finished, it is
    /// positioned right after the RDB's last byte.
    pub fn into_inner(self) -> R {
        self.r.into_inner()
    }

    fn read_header(&mut self) -> Result<()> {
        let hdr = self.r.read_array::<9>("RDB header")?;
        if &hdr[..5] != b"REDIS" || !hdr[5..].iter().all(u8::is_ascii_digit) {
            return Err(RdbError::BadMagic {
                found: hdr.to_vec(),
            });
        }
        let version = hdr[5..]
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        if version == 0 || version > MAX_RDB_VERSION {
            return Err(RdbError::UnsupportedVersion {
                version,
                max: MAX_RDB_VERSION,
            });
        }
        self.version = Some(version);
        Ok(())
    }

    /// Reads the next item; `Ok(None)` after a verified end of file.
    ///
    /// After an error the parser must not be used again (the [`Iterator`]
    /// implementation enforces this by returning `None`).
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        match self.state {
            State::Done | State::Failed => return Ok(None),
            State::Header => {
                self.read_header()?;
                self.state = State::Body;
            }
            State::Body => {}
        }
        loop {
            let op_offset = self.r.offset();
            let op = self.r.read_u8("opcode")?;
            match op {
                OP_EOF => {
                    self.finish()?;
                    return Ok(None);
                }
                OP_SELECTDB => {
                    self.db = self.r.read_len("database number")?;
                    return Ok(Some(Item::SelectDb(self.db)));
                }
                OP_RESIZEDB => {
                    let db_size = self.r.read_len("resizedb db size")?;
                    let expires_size = self.r.read_len("resizedb expires size")?;
                    return Ok(Some(Item::ResizeDb {
                        db_size,
                        expires_size,
                    }));
                }
                OP_AUX => {
                    let key = read_string(&mut self.r, "aux key")?;
                    let value = read_string(&mut self.r, "aux value")?;
                    return Ok(Some(Item::Aux { key, value }));
                }
                OP_FUNCTION2 => {
                    let code = read_string(&mut self.r, "function library")?;
                    return Ok(Some(Item::FunctionLibrary(code)));
                }
                OP_EXPIRETIME_MS => {
                    self.pending_expire = Some(self.r.read_ms_time("expire time")?);
                }
                OP_EXPIRETIME => {
                    let secs = self.r.read_sec_time("expire time")?;
                    self.pending_expire = Some(i64::from(secs) * 1000);
                }
                OP_IDLE => {
                    self.r.read_len("LRU idle time")?;
                }
                OP_FREQ => {
                    self.r.read_u8("LFU frequency")?;
                }
                OP_SLOT_INFO => {
                    // Cluster slot sizing hint: slot id, keys, keys with expiry.
                    for _ in 0..3 {
                        self.r.read_len("slot info")?;
                    }
                }
                OP_MODULE_AUX => {
                    return Err(RdbError::UnsupportedOpcode {
                        offset: op_offset,
                        opcode: op,
                        name: "module aux data",
                    })
                }
                OP_FUNCTION_PRE_GA => {
                    return Err(RdbError::UnsupportedOpcode {
                        offset: op_offset,
                        opcode: op,
                        name: "pre-GA function (Redis 7.0 release candidates)",
                    })
                }
                t => {
                    let key = read_string(&mut self.r, "key")?;
                    let value = read_value(&mut self.r, t, &key, op_offset)?;
                    return Ok(Some(Item::Entry(Entry {
                        db: self.db,
                        key,
                        expire_at_ms: self.pending_expire.take(),
                        value,
                        rdb_type: t,
                    })));
                }
            }
        }
    }

    fn finish(&mut self) -> Result<()> {
        let computed = self.r.crc();
        if self.version.unwrap_or(0) >= 5 {
            let offset = self.r.offset();
            let stored = u64::from_le_bytes(self.r.read_array::<8>("checksum")?);
            if stored != 0 && stored != computed {
                return Err(RdbError::ChecksumMismatch {
                    offset,
                    stored,
                    computed,
                });
            }
        }
        self.state = State::Done;
        Ok(())
    }
}

impl<R: BufRead> Iterator for RdbParser<R> {
    type Item = Result<Item>;

    /// Yields items in stream order, then `None` after a verified EOF. An
    /// error is yielded once, followed by `None`.
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_item() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                self.state = State::Failed;
                Some(Err(e))
            }
        }
    }
}
