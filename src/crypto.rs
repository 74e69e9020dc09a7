//! Random tokens and digests shared by keys, sessions and ids.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Base62 without the look-alike characters `0 1 O I l`, as PostHog's newer tokens use.
const BASE57: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `nbytes` random bytes (top bit forced, so the length is stable) written in base57.
pub fn random_token(nbytes: usize) -> String {
    let mut bytes = vec![0u8; nbytes];
    rand::rng().fill_bytes(&mut bytes);
    if let Some(first) = bytes.first_mut() {
        *first |= 0x80;
    }
    encode_base(&bytes, BASE57)
}

/// `len` characters drawn uniformly from `[A-Za-z0-9]`.
pub fn random_alphanumeric(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHANUMERIC[rng.random_range(0..ALPHANUMERIC.len())]))
        .collect()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

/// Big-endian bytes as a number written in `alphabet` (most significant digit first).
fn encode_base(bytes: &[u8], alphabet: &[u8]) -> String {
    let base = alphabet.len() as u32;
    let mut digits: Vec<u8> = Vec::new();
    let mut number: Vec<u32> = bytes.iter().map(|b| u32::from(*b)).collect();
    while number.iter().any(|d| *d != 0) {
        let mut remainder = 0u32;
        for d in number.iter_mut() {
            let acc = remainder * 256 + *d;
            *d = acc / base;
            remainder = acc % base;
        }
        digits.push(alphabet[remainder as usize]);
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Compares two byte strings in time that depends only on their lengths (`subtle`'s
/// `ConstantTimeEq`, which also keeps the compiler from short-circuiting the comparison).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_stable_lengths_and_alphabet() {
        for _ in 0..200 {
            let t = random_token(35);
            assert!(t.len() == 48 || t.len() == 49, "{t}");
            assert!(t.bytes().all(|c| BASE57.contains(&c)));
        }
        assert_eq!(random_alphanumeric(48).len(), 48);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
    }

    #[test]
    fn base_encoding_is_positional() {
        assert_eq!(encode_base(&[0, 57], BASE57), "32");
        assert_eq!(encode_base(&[1], BASE57), "3");
    }
}

/// Authenticated encryption of small secrets at rest (TOTP secrets, GitHub tokens):
/// ChaCha20-Poly1305 with a random nonce, stored as `v1:<base64(nonce ‖ ciphertext)>`.
pub mod sealed {
    use base64::Engine;
    use chacha20poly1305::aead::{Aead, KeyInit};
    use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

    const PREFIX: &str = "v1:";

    pub fn seal(key: &[u8; 32], plaintext: &[u8]) -> anyhow::Result<String> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
        let nonce_bytes: [u8; 12] = super::random_bytes();
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce_bytes), plaintext)
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut blob = nonce_bytes.to_vec();
        blob.extend_from_slice(&ciphertext);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        ))
    }

    pub fn open(key: &[u8; 32], sealed: &str) -> anyhow::Result<Vec<u8>> {
        let encoded = sealed
            .strip_prefix(PREFIX)
            .ok_or_else(|| anyhow::anyhow!("unknown sealed format"))?;
        let blob = base64::engine::general_purpose::STANDARD.decode(encoded)?;
        anyhow::ensure!(blob.len() > 12, "sealed value too short");
        let (nonce, ciphertext) = blob.split_at(12);
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| {
                anyhow::anyhow!("cannot decrypt: wrong HOGLET_SECRET_KEY or corrupted value")
            })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trip_and_tamper_detection() {
            let key = [7u8; 32];
            let sealed = seal(&key, b"secret").unwrap();
            assert!(sealed.starts_with("v1:"));
            assert_eq!(open(&key, &sealed).unwrap(), b"secret");
            assert!(open(&[8u8; 32], &sealed).is_err());
        }
    }
}

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{Mac, SimpleHmac};
    let mut mac = match SimpleHmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}
