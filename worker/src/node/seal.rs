//! Sealing bytes with a 256-bit key: XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`), an AEAD whose 192-bit nonce is drawn at random for
//! every message. A random nonce that long never repeats in practice
//! (2^96 messages before a collision is likely), so nothing about nonces has
//! to survive a restart: no counter to persist, none to get wrong after a
//! crash. Used for the raft files at rest (the manager's storage) and for
//! gossip datagrams.
//!
//! Sealed bytes: `[24-byte nonce][ciphertext][16-byte tag]`. The
//! associated data (`aad`) binds a sealed value to what it is, so one cannot
//! be passed off as another (a log entry as a snapshot, say).

use std::fmt;
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// What sealing adds to a message.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// How a key is written for people: `SHKEY-1-` and 64 hex digits.
const KEY_PREFIX: &str = "SHKEY-1-";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Wrong key, or bytes that were changed (or never sealed).
    #[error("cannot unseal: wrong key or damaged data")]
    Unseal,
    #[error("sealed value too short ({0} bytes)")]
    TooShort(usize),
    #[error("not a key: expected {KEY_PREFIX} and 64 hex digits")]
    BadKey,
}

/// A 256-bit key. `Debug` hides it; the text form is for the operator.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; KEY_LEN]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> SealKey {
        let mut k = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        SealKey(k)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SealKey {
        SealKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The text an operator keeps: `SHKEY-1-<64 hex digits>`.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(KEY_PREFIX.len() + 2 * KEY_LEN);
        s.push_str(KEY_PREFIX);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// `[nonce][ciphertext][tag]` of `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        // Encryption fails only for messages past 256 GiB.
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("XChaCha20-Poly1305 encrypts any message under 256 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of what [`SealKey::seal`] made with this key and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < OVERHEAD {
            return Err(SealError::TooShort(sealed.len()));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad }).map_err(|_| SealError::Unseal)
    }
}

impl FromStr for SealKey {
    type Err = SealError;
    fn from_str(s: &str) -> Result<SealKey, SealError> {
        let hex = s.trim().strip_prefix(KEY_PREFIX).ok_or(SealError::BadKey)?;
        if hex.len() != 2 * KEY_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SealError::BadKey);
        }
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| SealError::BadKey)?;
        }
        Ok(SealKey(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_with_the_key_and_aad_only() {
        let key = SealKey::generate();
        let sealed = key.seal(b"entry", b"the CA key");
        assert_eq!(sealed.len(), b"the CA key".len() + OVERHEAD);
        assert!(!sealed.windows(10).any(|w| w == b"the CA key"), "no plaintext in the sealed bytes");
        assert_eq!(key.open(b"entry", &sealed).unwrap(), b"the CA key");
        assert_eq!(key.open(b"snapshot", &sealed), Err(SealError::Unseal), "other aad");
        assert_eq!(SealKey::generate().open(b"entry", &sealed), Err(SealError::Unseal), "other key");
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert_eq!(key.open(b"entry", &flipped), Err(SealError::Unseal), "changed byte");
        assert_eq!(key.open(b"entry", &sealed[..39]), Err(SealError::TooShort(39)));
        // A fresh nonce every time: the same message never seals the same.
        assert_ne!(key.seal(b"entry", b"x"), key.seal(b"entry", b"x"));
    }

    #[test]
    fn keys_read_back_from_their_text_and_stay_out_of_debug() {
        let key = SealKey::generate();
        let text = key.to_text();
        assert!(text.starts_with("SHKEY-1-") && text.len() == 8 + 64, "{text}");
        assert_eq!(text.parse::<SealKey>(), Ok(key.clone()));
        assert_eq!(format!(" {text}\n").parse::<SealKey>(), Ok(key.clone()), "whitespace around is fine");
        assert!(!format!("{key:?}").contains(&text[8..16]));
        for bad in ["", "SHKEY-1-", "SHKEY-1-zz", &text[..70], &text.replace("SHKEY", "SWMKEY")] {
            assert_eq!(bad.parse::<SealKey>(), Err(SealError::BadKey), "{bad:?}");
        }
    }
}
