//! Personal API key values: generation, the stored hash and the mask, as PostHog does them.

use crate::crypto;
use crate::domain::password;

pub const KEY_PREFIX: &str = "phx_";
/// Keys a user may hold at once.
pub const MAX_KEYS_PER_USER: usize = 10;
/// Longest label accepted.
pub const MAX_LABEL_CHARS: usize = 40;
/// PostHog's legacy key hashes: PBKDF2 with a constant salt, tried in this order.
pub const LEGACY_ITERATIONS: [u32; 2] = [260_000, 390_000];
const LEGACY_SALT: &str = "posthog_personal_api_key";

/// A new plaintext key: `phx_` and 35 random bytes in base57.
pub fn generate_value() -> String {
    format!("{KEY_PREFIX}{}", crypto::random_token(35))
}

/// A new key id (the `id` of the API representation).
pub fn generate_id() -> String {
    crypto::random_token(32)
}

/// The stored form: `sha256$<hex digest>` (unsalted, so it can be looked up directly).
pub fn secure_value(key: &str) -> String {
    format!("sha256${}", crypto::sha256_hex(key.as_bytes()))
}

/// The legacy stored form for the given iteration count.
pub fn legacy_secure_value(key: &str, iterations: u32) -> String {
    password::django_pbkdf2(key, LEGACY_SALT, iterations)
}

/// The prefix every legacy hash with this iteration count starts with.
pub fn legacy_prefix(iterations: u32) -> String {
    format!("pbkdf2_sha256${iterations}${LEGACY_SALT}$")
}

/// First four and last four characters, e.g. `phx_...abcd`; short values are fully masked.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 16 {
        return "********".into();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_masks_and_hashes() {
        let key = generate_value();
        assert!(key.starts_with("phx_"));
        assert!(key.len() == 52 || key.len() == 53);
        let masked = mask(&key);
        assert_eq!(masked.len(), 11);
        assert!(masked.starts_with("phx_..."));
        assert_eq!(mask("short"), "********");
        assert_eq!(
            secure_value("phx_abc"),
            format!("sha256${}", crate::crypto::sha256_hex(b"phx_abc"))
        );
        assert!(legacy_secure_value("k", 260_000).starts_with(&legacy_prefix(260_000)));
    }
}
