//! TOTP (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps, ±1 step of drift) and backup codes.

use data_encoding::BASE32_NOPAD;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use totp_rs::{Algorithm, TOTP};

use crate::crypto;

pub const STEP_SECONDS: i64 = 30;
pub const BACKUP_CODE_COUNT: usize = 10;

/// A new 20-byte secret.
pub fn new_secret() -> [u8; 20] {
    crypto::random_bytes()
}

/// The secret as shown to users: 32 characters of unpadded RFC 4648 base32.
pub fn secret_base32(secret: &[u8]) -> String {
    BASE32_NOPAD.encode(secret)
}

/// What stays unescaped in the URI: RFC 3986's unreserved characters, as Python's `quote`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The `otpauth://` URI authenticator apps scan (django-two-factor's format).
pub fn otpauth_uri(secret: &[u8], issuer: &str, account: &str) -> String {
    let label = format!("{issuer}: {account}");
    format!(
        "otpauth://totp/{}?secret={}&digits=6&issuer={}",
        utf8_percent_encode(&label, UNRESERVED),
        secret_base32(secret),
        utf8_percent_encode(issuer, UNRESERVED)
    )
}

fn totp(secret: &[u8]) -> Option<TOTP> {
    TOTP::new(Algorithm::SHA1, 6, 1, STEP_SECONDS as u64, secret.to_vec()).ok()
}

/// The code for the step containing `unix_seconds`.
pub fn code_at(secret: &[u8], unix_seconds: i64) -> Option<String> {
    totp(secret).map(|t| t.generate(unix_seconds.max(0) as u64))
}

/// The step a code belongs to, if it matches the current step or one either side. Accepts
/// surrounding whitespace and leading zeros, as django-otp parses the token as an integer.
pub fn matching_step(secret: &[u8], token: &str, unix_seconds: i64) -> Option<i64> {
    let number: u32 = token.trim().parse().ok()?;
    if number > 999_999 {
        return None;
    }
    let candidate = format!("{number:06}");
    let generator = totp(secret)?;
    let now_step = unix_seconds.div_euclid(STEP_SECONDS);
    [now_step, now_step - 1, now_step + 1]
        .into_iter()
        .find(|step| {
            let expected = generator.generate((step * STEP_SECONDS).max(0) as u64);
            crypto::constant_time_eq(expected.as_bytes(), candidate.as_bytes())
        })
}

/// A backup code: 5 random bytes as 8 lower-case base32 characters.
pub fn new_backup_code() -> String {
    BASE32_NOPAD
        .encode(&crypto::random_bytes::<5>())
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", T = 59 s → 94287082 (8 digits).
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59).unwrap(), "287082");
        assert_eq!(matching_step(secret, " 287082 ", 59), Some(1));
        assert_eq!(
            matching_step(secret, "287082", 59 + 30),
            Some(1),
            "one step of drift"
        );
        assert_eq!(matching_step(secret, "287082", 59 + 90), None);
        assert_eq!(matching_step(secret, "abc", 59), None);
    }

    #[test]
    fn shapes() {
        assert_eq!(secret_base32(&new_secret()).len(), 32);
        let code = new_backup_code();
        assert_eq!(code.len(), 8);
        assert!(
            code.chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(
            otpauth_uri(
                b"12345678901234567890",
                "hoglet.example",
                "jane@example.com"
            ),
            "otpauth://totp/hoglet.example%3A%20jane%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&digits=6&issuer=hoglet.example"
        );
        // Every byte outside `[A-Za-z0-9_.~-]` is escaped, UTF-8 byte by byte, in upper case.
        assert_eq!(
            otpauth_uri(b"12345678901234567890", "Ünï co~_.-", "a+b/c?d&e=f#g"),
            "otpauth://totp/%C3%9Cn%C3%AF%20co~_.-%3A%20a%2Bb%2Fc%3Fd%26e%3Df%23g?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&digits=6&issuer=%C3%9Cn%C3%AF%20co~_.-"
        );
    }
}
