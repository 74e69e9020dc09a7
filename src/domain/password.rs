//! Password hashing: Argon2id for everything hoglet writes, Django's PBKDF2 form accepted on read.

use argon2::password_hash::PasswordHash as Phc;
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;

use crate::crypto;

const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;
const OUTPUT_LEN: usize = 32;

/// OWASP's recommended Argon2id parameters: 19 MiB, 2 passes, 1 lane.
fn params() -> Params {
    Params::new(MEMORY_KIB, PASSES, LANES, Some(OUTPUT_LEN)).unwrap_or_default()
}

/// Argon2's working memory, kept between hashes: allocating (and page-faulting) 19 MiB per hash
/// costs a third of the hash again and leaves freed arenas behind in the process's memory.
pub struct Workspace {
    blocks: Vec<Block>,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// Empty until the first hash, so an idle server does not hold 19 MiB per hashing thread.
    pub fn new() -> Self {
        Self { blocks: Vec::new() }
    }

    /// Computes the Argon2id output for `password` and `salt` with `params` into `out`.
    fn compute(
        &mut self,
        params: Params,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> anyhow::Result<()> {
        let needed = params.block_count();
        if self.blocks.len() < needed {
            // The first hash, or a stored hash with larger parameters than ours: grow once, keep it.
            self.blocks.resize(needed, Block::default());
        }
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into_with_memory(password, salt, out, &mut self.blocks[..needed])
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    }

    /// An Argon2id PHC string for `password`.
    pub fn hash(&mut self, password: &str) -> anyhow::Result<String> {
        let salt: [u8; 16] = crypto::random_bytes();
        let mut out = [0u8; OUTPUT_LEN];
        self.compute(params(), password.as_bytes(), &salt, &mut out)?;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        Ok(format!(
            "$argon2id$v=19$m={MEMORY_KIB},t={PASSES},p={LANES}${}${}",
            b64.encode(salt),
            b64.encode(out)
        ))
    }

    /// Checks `password` against an Argon2 PHC string or a Django `pbkdf2_sha256$…` hash.
    pub fn verify(&mut self, password: &str, stored: &str) -> Verified {
        if stored.starts_with("$argon2") {
            return if self.verify_argon2(password, stored).unwrap_or(false) {
                Verified::Yes
            } else {
                Verified::No
            };
        }
        verify_django(password, stored)
    }

    fn verify_argon2(&mut self, password: &str, stored: &str) -> anyhow::Result<bool> {
        let phc = Phc::new(stored).map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(phc.algorithm.as_str() == "argon2id", "not argon2id");
        let params = Params::try_from(&phc).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut salt_buf = [0u8; 64];
        let salt = phc
            .salt
            .ok_or_else(|| anyhow::anyhow!("no salt"))?
            .decode_b64(&mut salt_buf)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let expected = phc.hash.ok_or_else(|| anyhow::anyhow!("no hash"))?;
        let mut out = vec![0u8; expected.len()];
        self.compute(params, password.as_bytes(), salt, &mut out)?;
        Ok(crypto::constant_time_eq(&out, expected.as_bytes()))
    }
}

/// An Argon2id PHC string for `password`. CPU-heavy: call it off the async workers.
pub fn hash(password: &str) -> anyhow::Result<String> {
    Workspace::new().hash(password)
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
    Workspace::new().verify(password, stored)
}

fn verify_django(password: &str, stored: &str) -> Verified {
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
    fn hashes_interoperate_with_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
        let ours = hash("interop").unwrap();
        let parsed = Phc::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"interop", &parsed)
                .is_ok()
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
            .hash_password(b"interop", &salt)
            .unwrap()
            .to_string();
        assert_eq!(verify("interop", &theirs), Verified::Yes);
        assert_eq!(verify("other", &theirs), Verified::No);
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
