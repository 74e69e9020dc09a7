//! Password hashing: Argon2id for everything hoglet writes, Django's PBKDF2 form accepted on read.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;

use crate::crypto;

/// OWASP's recommended Argon2id parameters: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// An Argon2id PHC string for `password`. CPU-heavy: call it off the async workers.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?
        .to_string())
}

/// Result of checking a password against a stored hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, but stored in an older scheme: re-hash with [`hash`].
    YesButUpgrade,
}

/// Checks `password` against an Argon2 PHC string or a Django `pbkdf2_sha256$…` hash.
pub fn verify(password: &str, stored: &str) -> Verified {
    if stored.starts_with("$argon2") {
        let Ok(parsed) = argon2::password_hash::PasswordHash::new(stored) else {
            return Verified::No;
        };
        return match argon2().verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Verified::Yes,
            Err(_) => Verified::No,
        };
    }
    if let Some(rest) = stored.strip_prefix("pbkdf2_sha256$") {
        let mut parts = rest.splitn(3, '$');
        let (Some(iterations), Some(salt), Some(_)) = (parts.next(), parts.next(), parts.next())
        else {
            return Verified::No;
        };
        let Ok(iterations) = iterations.parse::<u32>() else {
            return Verified::No;
        };
        let candidate = django_pbkdf2(password, salt, iterations);
        return if crypto::constant_time_eq(candidate.as_bytes(), stored.as_bytes()) {
            Verified::YesButUpgrade
        } else {
            Verified::No
        };
    }
    Verified::No
}

/// Django's `PBKDF2PasswordHasher.encode`: `pbkdf2_sha256$<iterations>$<salt>$<base64 digest>`.
pub fn django_pbkdf2(password: &str, salt: &str, iterations: u32) -> String {
    let mut digest = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
        password.as_bytes(),
        salt.as_bytes(),
        iterations,
        &mut digest,
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
    format!("pbkdf2_sha256${iterations}${salt}${encoded}")
}

/// A hash no password matches, verified against when the user is unknown so both paths cost the
/// same time.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("hoglet-dummy-password").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(verify("correct horse", &h), Verified::Yes);
        assert_eq!(verify("wrong", &h), Verified::No);
    }

    #[test]
    fn django_hashes_are_accepted_and_flagged_for_upgrade() {
        // Django 4.x: make_password("password", salt="seasalt", hasher="pbkdf2_sha256") with 1000 rounds.
        let stored = django_pbkdf2("password", "seasalt", 1000);
        assert_eq!(verify("password", &stored), Verified::YesButUpgrade);
        assert_eq!(verify("Password", &stored), Verified::No);
        assert_eq!(verify("x", "!unusable"), Verified::No);
    }

    #[test]
    fn pbkdf2_matches_a_known_vector() {
        // RFC 7914 §11 test vector for PBKDF2-HMAC-SHA256 (c=1, dkLen=64), first 32 bytes.
        let out = django_pbkdf2("passwd", "salt", 1);
        let expected = base64::engine::general_purpose::STANDARD.encode(
            hex::decode("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc")
                .unwrap(),
        );
        assert_eq!(out, format!("pbkdf2_sha256$1$salt${expected}"));
    }
}

/// Why a new password is refused: Django's validator code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Weakness {
    pub code: &'static str,
    pub message: String,
}

pub const MIN_LENGTH: usize = 8;

/// Django's `MinimumLengthValidator` then PostHog's `ZxcvbnValidator` (score below 3 refused).
pub fn validate_strength(password: &str, user_inputs: &[&str]) -> Result<(), Weakness> {
    if password.chars().count() < MIN_LENGTH {
        return Err(Weakness {
            code: "password_too_short",
            message: format!(
                "This password is too short. It must contain at least {MIN_LENGTH} characters."
            ),
        });
    }
    let entropy = zxcvbn::zxcvbn(password, user_inputs);
    if (entropy.score() as u8) < 3 {
        let suggestions: Vec<String> = entropy
            .feedback()
            .map(|f| f.suggestions().iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        let message = if suggestions.is_empty() {
            "This password is too weak.".to_string()
        } else {
            suggestions.join(" ")
        };
        return Err(Weakness {
            code: "password_too_weak",
            message,
        });
    }
    Ok(())
}

#[cfg(test)]
mod strength_tests {
    use super::*;

    #[test]
    fn validators_in_order() {
        assert_eq!(
            validate_strength("123", &[]).unwrap_err().code,
            "password_too_short"
        );
        let weak = validate_strength("password", &[]).unwrap_err();
        assert_eq!(weak.code, "password_too_weak");
        assert_eq!(
            weak.message,
            "Add another word or two. Uncommon words are better."
        );
        assert!(validate_strength("correct horse battery staple 91", &[]).is_ok());
    }
}
