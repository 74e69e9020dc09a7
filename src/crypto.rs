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

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn base_encoding_is_positional() {
        assert_eq!(encode_base(&[0, 57], BASE57), "32");
        assert_eq!(encode_base(&[1], BASE57), "3");
    }
}
