//! Sealing payloads at rest: AES-256-GCM with a key the operator keeps outside the
//! journal (a file, or an environment variable named in the config).
//!
//! # Contract
//! - **Confidential and authentic.** A sealed blob reveals nothing of its plaintext
//!   but its length; any changed byte (or a blob moved to another record, through
//!   the associated data) fails to open, never yields other plaintext.
//! - **Self-describing.** A blob carries its format version and the key's id (the
//!   first 8 bytes of SHA-256 of the key), so opening it with no key or another key
//!   says exactly that, naming what to configure.
//! - **Never logged.** [`SealKey`]'s `Debug` shows only the key id; errors never
//!   carry plaintext.
//!
//! Blob layout: `0x01 (version) || key id (8) || nonce (12) || ciphertext || tag (16)`.
//! Nonces are random (96 bits from OpenSSL's CSPRNG): safe for far more blobs than a
//! journal holds under one key (the GCM bound is about 2^32 random nonces per key).
//! Used by the Kubernetes connector for Secrets' data; built for any payload.

use std::fmt;

use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use sha2::{Digest as _, Sha256};

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Why sealing or opening failed. Messages name what to do and never hold plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key material could not be read or is malformed.
    #[error("encryption key from {origin}: {problem}")]
    BadKey {
        /// Where the key came from (`file /etc/tidemark/key`, `environment variable X`).
        origin: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Sealed data and no key to open it.
    #[error("the journal holds {what} sealed with key {key_id} (AES-256-GCM), and no key is configured: set the source's `secrets_key_file` or `secrets_key_env` to the key it was captured with")]
    NoKey {
        /// What is sealed.
        what: String,
        /// The key id in the blob.
        key_id: String,
    },
    /// Sealed with another key.
    #[error("{what} was sealed with key {blob_key}, but the configured key is {configured}: configure the key it was captured with")]
    WrongKey {
        /// What is sealed.
        what: String,
        /// The blob's key id.
        blob_key: String,
        /// The configured key's id.
        configured: String,
    },
    /// Authentication failed: the blob was changed or is not for this record.
    #[error(
        "{what} fails authentication (AES-256-GCM): the journal record was altered or damaged"
    )]
    Tampered {
        /// What is sealed.
        what: String,
    },
    /// OpenSSL failed.
    #[error("encryption failed: {0}")]
    Crypto(String),
}

/// A 256-bit key. `Debug` shows only its id.
#[derive(Clone)]
pub struct SealKey {
    key: [u8; 32],
    id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealKey({})", self.id_hex())
    }
}

impl SealKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> SealKey {
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&Sha256::digest(key)[..KEY_ID_LEN]);
        SealKey { key, id }
    }

    /// Parses key text: 64 hex digits or standard base64 of 32 bytes (surrounding
    /// whitespace ignored). `origin` names the source of the text in errors.
    pub fn parse(text: &str, origin: &str) -> Result<SealKey, SealError> {
        let t = text.trim();
        let bad = |problem: &str| SealError::BadKey {
            origin: origin.to_string(),
            problem: problem.to_string(),
        };
        let bytes: Vec<u8> = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect()
        } else {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| bad("is neither 64 hex digits nor base64 of 32 bytes; make one with `openssl rand -hex 32`"))?
        };
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            bad("is not 32 bytes (AES-256 needs 32); make one with `openssl rand -hex 32`")
        })?;
        Ok(SealKey::from_bytes(key))
    }

    /// Reads the key from `path`.
    pub fn from_file(path: &std::path::Path) -> Result<SealKey, SealError> {
        let origin = format!("file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| SealError::BadKey {
            origin: origin.clone(),
            problem: format!("cannot be read: {e}"),
        })?;
        SealKey::parse(&text, &origin)
    }

    /// Reads the key from environment variable `var`.
    pub fn from_env(var: &str) -> Result<SealKey, SealError> {
        let origin = format!("environment variable {var}");
        let text = std::env::var(var).map_err(|_| SealError::BadKey {
            origin: origin.clone(),
            problem: "is not set".into(),
        })?;
        SealKey::parse(&text, &origin)
    }

    /// The key's id as hex (safe to show).
    pub fn id_hex(&self) -> String {
        crate::digest::hex(&self.id)
    }

    /// Seals `plaintext`, bound to `aad` (which must be given again to open).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| SealError::Crypto(e.to_string()))?;
        let mut tag = [0u8; TAG_LEN];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce),
            aad,
            plaintext,
            &mut tag,
        )
        .map_err(|e| SealError::Crypto(e.to_string()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + ct.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a blob sealed with [`SealKey::seal`] and the same `aad`.
    pub fn open(&self, aad: &[u8], blob: &[u8], what: &str) -> Result<Vec<u8>, SealError> {
        let tampered = || SealError::Tampered {
            what: what.to_string(),
        };
        if blob.len() < HEADER_LEN + TAG_LEN || blob[0] != VERSION {
            return Err(tampered());
        }
        if blob[1..1 + KEY_ID_LEN] != self.id {
            return Err(SealError::WrongKey {
                what: what.to_string(),
                blob_key: key_id_of(blob).unwrap_or_default(),
                configured: self.id_hex(),
            });
        }
        let nonce = &blob[1 + KEY_ID_LEN..HEADER_LEN];
        let (ct, tag) = blob[HEADER_LEN..].split_at(blob.len() - HEADER_LEN - TAG_LEN);
        decrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(nonce), aad, ct, tag)
            .map_err(|_| tampered())
    }
}

/// The key id a blob names, as hex (`None` if it is not a sealed blob).
pub fn key_id_of(blob: &[u8]) -> Option<String> {
    (blob.len() >= HEADER_LEN + TAG_LEN && blob[0] == VERSION)
        .then(|| crate::digest::hex(&blob[1..1 + KEY_ID_LEN]))
}

/// Opens `blob` with `key` if there is one; without a key, the error says so and
/// names the key the blob needs.
pub fn open_with(
    key: Option<&SealKey>,
    aad: &[u8],
    blob: &[u8],
    what: &str,
) -> Result<Vec<u8>, SealError> {
    match key {
        Some(k) => k.open(aad, blob, what),
        None => Err(SealError::NoKey {
            what: what.to_string(),
            key_id: key_id_of(blob).unwrap_or_else(|| "?".into()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SealKey {
        SealKey::from_bytes([b; 32])
    }

    #[test]
    fn round_trip_and_binding() {
        let k = key(7);
        let blob = k.seal(b"ns/name", b"hunter2").unwrap();
        assert!(!blob.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open(b"ns/name", &blob, "x").unwrap(), b"hunter2");
        // Another record's associated data does not open it.
        assert!(matches!(
            k.open(b"ns/other", &blob, "x"),
            Err(SealError::Tampered { .. })
        ));
        // One flipped byte anywhere after the header fails.
        for i in HEADER_LEN..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 1;
            assert!(k.open(b"ns/name", &b, "x").is_err(), "byte {i}");
        }
    }

    #[test]
    fn wrong_or_missing_key_is_named() {
        let blob = key(1).seal(b"", b"v").unwrap();
        let e = key(2).open(b"", &blob, "secret a/b").unwrap_err();
        assert!(matches!(e, SealError::WrongKey { .. }), "{e}");
        let e = open_with(None, b"", &blob, "secret a/b").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&key(1).id_hex()) && msg.contains("secrets_key_file"),
            "{msg}"
        );
    }

    #[test]
    fn parses_hex_and_base64_and_refuses_short_keys() {
        let hex = "00".repeat(32);
        assert_eq!(
            SealKey::parse(&hex, "t").unwrap().id_hex(),
            SealKey::from_bytes([0; 32]).id_hex()
        );
        let b64 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(SealKey::parse(b64, "t").is_ok());
        let e = SealKey::parse("abcd", "file k").unwrap_err().to_string();
        assert!(e.contains("file k") && e.contains("openssl rand"), "{e}");
        assert!(!format!("{:?}", key(9)).contains(&"09".repeat(32)));
    }
}
