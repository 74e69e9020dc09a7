//! Stateless, timestamped tokens for email links (verification, password reset), like Django's
//! `PasswordResetTokenGenerator`: `<base36 timestamp>-<hmac>`, where the HMAC covers the user's
//! current state, so a token dies as soon as that state changes (it is used, or superseded).

use crate::crypto;

/// How long an emailed link stays valid.
pub const VALIDITY_SECONDS: i64 = 86_400;

/// Mints a token for `state` (everything that must be unchanged for the token to stay valid).
pub fn mint(key: &[u8; 32], purpose: &str, state: &str, now_secs: i64) -> String {
    let ts = to_base36(now_secs.max(0) as u64);
    format!("{ts}-{}", signature(key, purpose, state, &ts))
}

/// Checks a token against the user's current state.
pub fn verify(key: &[u8; 32], purpose: &str, state: &str, token: &str, now_secs: i64) -> bool {
    let Some((ts, sig)) = token.split_once('-') else {
        return false;
    };
    let Some(issued) = from_base36(ts) else {
        return false;
    };
    let age = now_secs - issued as i64;
    if !(0..=VALIDITY_SECONDS).contains(&age) {
        return false;
    }
    let expected = signature(key, purpose, state, ts);
    crypto::constant_time_eq(expected.as_bytes(), sig.as_bytes())
}

fn signature(key: &[u8; 32], purpose: &str, state: &str, ts: &str) -> String {
    let mac = crypto::hmac_sha256(key, format!("{purpose}\u{0}{state}\u{0}{ts}").as_bytes());
    hex::encode(&mac[..20])
}

fn to_base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn from_base36(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    u64::from_str_radix(s, 36).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_state_and_expire() {
        let key = [1u8; 32];
        let token = mint(&key, "reset", "user=1;pw=x", 1_000_000);
        assert!(verify(&key, "reset", "user=1;pw=x", &token, 1_000_000 + 10));
        assert!(
            !verify(&key, "reset", "user=1;pw=y", &token, 1_000_010),
            "state changed"
        );
        assert!(
            !verify(&key, "verify", "user=1;pw=x", &token, 1_000_010),
            "other purpose"
        );
        assert!(
            !verify(&key, "reset", "user=1;pw=x", &token, 1_000_000 + 86_401),
            "expired"
        );
        assert!(!verify(&key, "reset", "user=1;pw=x", "garbage", 1_000_000));
        assert!(!verify(
            &key,
            "reset",
            "user=1;pw=x",
            &token[..token.len() - 2],
            1_000_000
        ));
    }
}
