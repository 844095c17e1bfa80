//! Resume tokens and cluster times: what a MongoDB position carries besides the
//! journal's ordinal (see [`crate::position::MongoPosition`]).
//!
//! Tokens stay opaque for ordering. They are read for one thing only: the cluster
//! time of an idle stream's `postBatchResumeToken`, so coverage advances while
//! nothing changes. Two encodings are known: mongod's KeyString (`_data` is hex;
//! its first value is a BSON timestamp, type byte 130, then the 8-byte big-endian
//! timestamp) and the SecantusDB stand-in's (`_data` is hex of a BSON document
//! whose `t` is the timestamp). Anything else gives no time, and coverage then
//! advances with events only.

use mongodb::bson::{self, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;

use super::client::MongoError;

/// `seconds << 32 | increment`.
pub fn ts_u64(t: Timestamp) -> u64 {
    (u64::from(t.time) << 32) | u64::from(t.increment)
}

/// The inverse of [`ts_u64`].
pub fn ts_from_u64(v: u64) -> Timestamp {
    Timestamp {
        time: (v >> 32) as u32,
        increment: (v & 0xffff_ffff) as u32,
    }
}

/// A token as BSON bytes (the whole `{_data: ...}` document) and its `_data`.
pub fn token_bytes(token: &ResumeToken) -> Result<(Vec<u8>, String), MongoError> {
    let doc = match bson::to_bson(token) {
        Ok(Bson::Document(d)) => d,
        Ok(other) => {
            return Err(MongoError::Data(format!(
                "a resume token is a {:?}, not a document; this server's change streams are not supported",
                other.element_type()
            )))
        }
        Err(e) => return Err(MongoError::Data(format!("unreadable resume token: {e}"))),
    };
    token_doc_bytes(&doc)
}

/// [`token_bytes`] for a token already read as a document (an event's `_id`).
pub fn token_doc_bytes(doc: &Document) -> Result<(Vec<u8>, String), MongoError> {
    let data = doc.get_str("_data").unwrap_or_default().to_string();
    let bytes = bson::to_vec(doc).map_err(|e| MongoError::Data(format!("resume token: {e}")))?;
    Ok((bytes, data))
}

/// The token journaled as `bytes`, for `resumeAfter`.
pub fn token_from_bytes(bytes: &[u8]) -> Result<ResumeToken, MongoError> {
    let doc = RawDocumentBuf::from_bytes(bytes.to_vec())
        .and_then(|r| Document::try_from(r.as_ref()))
        .map_err(|e| {
            MongoError::Data(format!(
                "the journal's resume token is not BSON ({e}); the journal is damaged"
            ))
        })?;
    bson::from_bson(Bson::Document(doc))
        .map_err(|e| MongoError::Data(format!("the journal's resume token: {e}")))
}

/// The cluster time inside a token's `_data`, if its encoding is known.
pub fn cluster_time_of(data: &str) -> Option<Timestamp> {
    let raw = unhex(data)?;
    // mongod: KeyString, first value a Timestamp (CType 130), 8 bytes big-endian.
    if raw.len() >= 9 && raw[0] == 130 {
        let v = u64::from_be_bytes(raw[1..9].try_into().ok()?);
        return Some(ts_from_u64(v));
    }
    // The stand-in: hex of a BSON document with the timestamp in `t`.
    let doc = RawDocumentBuf::from_bytes(raw).ok()?;
    doc.get_timestamp("t").ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token in mongod's KeyString shape (version-1 `_data` of an insert on a
    /// replica set: CType 130 timestamp 0x635019A0:1, then the rest of the key).
    /// Not produced by a live mongod here: none can run on these machines.
    const MONGOD_TOKEN: &str = "82635019A0000000012B042C0100296E5A1004AB1154ACACD849A48C61756D70D3B21F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B65790046645F69640064635019A078BE67426D7CF4D2000004";

    #[test]
    fn cluster_time_from_a_mongod_keystring_token() {
        let t = cluster_time_of(MONGOD_TOKEN).expect("KeyString timestamp");
        assert_eq!(t.time, 0x6350_19A0);
        assert_eq!(t.increment, 1);
    }

    #[test]
    fn cluster_time_from_a_stand_in_token() {
        // Seen from SecantusDB 0.7.0b3 (hex of {s, t, n, k}).
        let data = "310000001073000a00000011740009000000d20a116b026e000b0000006170702e70656f706c6500036b00050000000000";
        let t = cluster_time_of(data).expect("stand-in timestamp");
        assert_eq!((t.time, t.increment), (0x6b11_0ad2, 9));
    }

    #[test]
    fn unknown_tokens_give_no_time() {
        assert!(cluster_time_of("").is_none());
        assert!(cluster_time_of("zz").is_none());
        assert!(cluster_time_of("0102").is_none());
    }

    #[test]
    fn tokens_round_trip_with_every_field() {
        // mongod may add `_typeBits`: it must survive the journal.
        let doc = bson::doc! {"_data": MONGOD_TOKEN, "_typeBits": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0x40] })};
        let (bytes, data) = token_doc_bytes(&doc).unwrap();
        assert_eq!(data, MONGOD_TOKEN);
        let token = token_from_bytes(&bytes).unwrap();
        let (again, _) = token_bytes(&token).unwrap();
        assert_eq!(bytes, again);
    }

    #[test]
    fn timestamps_pack_in_order() {
        let a = ts_u64(Timestamp {
            time: 5,
            increment: 9,
        });
        let b = ts_u64(Timestamp {
            time: 6,
            increment: 0,
        });
        assert!(a < b);
        assert_eq!(
            ts_from_u64(a),
            Timestamp {
                time: 5,
                increment: 9
            }
        );
    }
}
