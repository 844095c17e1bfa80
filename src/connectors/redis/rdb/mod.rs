//! Streaming parser for Redis RDB files and replication payloads.
//!
//! [`RdbParser`] reads an RDB (versions 1 to 12; 9 to 12 tested against real
//! servers, see `DESIGN.md`) from any [`std::io::Read`] and yields [`Item`]s:
//! auxiliary fields, database selection, resize hints, function libraries and
//! key entries whose [`Value`] is independent of the on-disk encoding.
//!
//! Guarantees, for any input:
//! - no panic and no unbounded allocation driven by corrupt lengths;
//! - errors are [`RdbError`]s carrying the stream offset;
//! - memory is bounded by the largest single key (the whole file is never
//!   buffered);
//! - the trailing CRC-64 (Jones) checksum is verified unless stored as 0;
//! - values that cannot be decoded (module types, unknown types) are errors
//!   naming the key, never silently skipped.

#![forbid(unsafe_code)]

mod crc64;
mod decode;
mod error;
mod intset;
mod listpack;
mod parser;
mod reader;
mod stream;
mod string;
mod value;
pub mod write;
mod ziplist;
mod zipmap;

pub use crc64::crc64_update;
pub use error::{RdbError, Result};
pub use parser::{RdbParser, MAX_RDB_VERSION};
pub use value::{
    Consumer, ConsumerGroup, Entry, Item, PendingEntry, Stream, StreamEntry, StreamId, Value,
};

#[cfg(test)]
mod tests;
