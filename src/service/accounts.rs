//! Rules shared by the account flows: passwords, the second factor, remember-device cookies and
//! client identification.

use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::session::{SetCookies, cookies_with_prefix};
use crate::crypto;
use crate::domain::password;
use crate::domain::totp;
use crate::error::{ApiError, ApiResult};
use crate::store::{TotpDeviceRecord, UserRecord};
use crate::time::{Micros, SECOND};

/// How long a password login may wait for its second factor.
pub const PENDING_LOGIN_AGE: Micros = 600 * SECOND;
/// How long a started TOTP setup stays valid.
pub const TOTP_SETUP_AGE: Micros = 600 * SECOND;
const REMEMBER_COOKIE_PREFIX: &str = "remember-cookie_";
const REMEMBER_AGE_SECONDS: i64 = 30 * 86_400;

/// Runs Django's password validators. Sign-up keeps their codes; other flows report every
/// failure as `invalid_input`, as DRF does when it re-raises Django's errors.
pub fn check_new_password(
    candidate: &str,
    user: Option<&UserRecord>,
    keep_codes: bool,
) -> ApiResult<()> {
    let inputs: Vec<&str> = user
        .map(|u| {
            vec![
                u.email.as_str(),
                u.first_name.as_str(),
                u.last_name.as_str(),
            ]
        })
        .unwrap_or_default();
    password::validate_strength(candidate, &inputs).map_err(|weakness| {
        let code = if keep_codes {
            weakness.code
        } else {
            "invalid_input"
        };
        ApiError::field("password", code, weakness.message)
    })
}

/// Hashes and stores a new password on `user` (not yet saved).
pub async fn set_password(state: &AppState, user: &mut UserRecord, new: &str) -> ApiResult<()> {
    let hash = state.hasher.hash(new).await.map_err(ApiError::internal)?;
    user.password = crate::store::PasswordHash(hash);
    Ok(())
}

/// A JSON value as text, as a `CharField` reads it (`None` for objects, arrays, booleans, null).
pub fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

// --- the second factor ---

fn totp_key(state: &AppState) -> [u8; 32] {
    state.derived_key("totp-secrets")
}

pub fn seal_totp_secret(state: &AppState, secret: &[u8]) -> ApiResult<String> {
    crypto::sealed::seal(&totp_key(state), secret).map_err(ApiError::internal)
}

pub fn open_totp_secret(state: &AppState, sealed: &str) -> ApiResult<Vec<u8>> {
    crypto::sealed::open(&totp_key(state), sealed).map_err(ApiError::internal)
}

/// The keyed hash a backup code is stored as (so a database copy alone cannot be brute-forced).
pub fn backup_code_hash(state: &AppState, user_id: i64, code: &str) -> String {
    let key = state.derived_key("backup-codes");
    hex::encode(crypto::hmac_sha256(
        &key,
        format!("{user_id}:{}", code.trim()).as_bytes(),
    ))
}

/// Ten fresh backup codes for the user (stored hashed; returned in clear this once).
pub async fn regenerate_backup_codes(state: &AppState, user_id: i64) -> ApiResult<Vec<String>> {
    let codes: Vec<String> = (0..totp::BACKUP_CODE_COUNT)
        .map(|_| totp::new_backup_code())
        .collect();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| backup_code_hash(state, user_id, c))
        .collect();
    state.store.replace_backup_codes(user_id, &hashes).await?;
    Ok(codes)
}

/// Result of checking a second-factor code at login.
#[derive(Debug, PartialEq, Eq)]
pub enum SecondFactor {
    Accepted,
    Rejected,
    Throttled,
}

/// Checks a TOTP code (each time step at most once) and then the backup codes. Each attempt is
/// counted as failed and throttles the device for 2^(n−1) s before the code is looked at (PostHog
/// counts a miss twice); an accepted code clears the count. Counting first, in one atomic step,
/// means parallel guesses within one backoff window get one evaluation between them.
pub async fn check_second_factor(
    state: &AppState,
    user: &UserRecord,
    token: &str,
) -> ApiResult<SecondFactor> {
    let now = state.clock.now();
    match state.store.claim_totp_attempt(user.id, now).await? {
        Some(device) => {
            let secret = open_totp_secret(state, &device.secret)?;
            let step = totp::matching_step(&secret, token, state.clock.now_secs());
            if let Some(step) = step.filter(|s| *s > device.last_step)
                && state.store.advance_totp_step(user.id, step).await?
            {
                return Ok(SecondFactor::Accepted);
            }
        }
        None if state.store.totp_device(user.id).await?.is_some() => {
            return Ok(SecondFactor::Throttled);
        }
        None => {}
    }
    let hash = backup_code_hash(state, user.id, token);
    if state.store.consume_backup_code(user.id, &hash).await? {
        state.store.clear_totp_throttle(user.id).await?;
        crate::service::emails::send_notice(
            state,
            &user.email,
            user,
            "A backup code was used to log in",
            "One of your two-factor backup codes was just used to log in to your account.",
        )
        .await;
        return Ok(SecondFactor::Accepted);
    }
    Ok(SecondFactor::Rejected)
}

// --- remember this device ---

/// The remember-device signature covers the user's current password hash and TOTP device (as
/// django-two-factor's does): a password change or reset, or 2FA turned off and on again, voids
/// every remembered device.
fn remember_signature(
    state: &AppState,
    user: &UserRecord,
    device: &TotpDeviceRecord,
    expires: i64,
) -> String {
    let key = state.derived_key("remember-device");
    let signed = format!(
        "{}:{}:{expires}\0{}\0{}",
        user.id, device.created_at, user.password.0, device.secret
    );
    hex::encode(&crypto::hmac_sha256(&key, signed.as_bytes())[..20])
}

/// The cookie that lets this browser skip the second factor for 30 days.
pub fn remember_cookie(
    state: &AppState,
    user: &UserRecord,
    device: &TotpDeviceRecord,
    cookies: &mut SetCookies,
) {
    let expires = state.clock.now_secs() + REMEMBER_AGE_SECONDS;
    let signature = remember_signature(state, user, device, expires);
    let secure = if state.site_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    cookies.add(format!(
        "{REMEMBER_COOKIE_PREFIX}{}={}:{}:{}:{signature}; HttpOnly; Max-Age={REMEMBER_AGE_SECONDS}; Path=/; SameSite=Strict{secure}",
        uuid::Uuid::new_v4().simple(),
        device.user_id,
        device.created_at,
        expires,
    ));
}

/// Whether the request carries a remember-device cookie for the user's current device and
/// password.
pub fn remembered(
    state: &AppState,
    headers: &HeaderMap,
    user: &UserRecord,
    device: &TotpDeviceRecord,
) -> bool {
    let now = state.clock.now_secs();
    cookies_with_prefix(headers, REMEMBER_COOKIE_PREFIX).any(|(_, value)| {
        let parts: Vec<&str> = value.split(':').collect();
        let [user_id, created, expires, signature] = parts.as_slice() else {
            return false;
        };
        let (Ok(user_id), Ok(created), Ok(expires)) = (
            user_id.parse::<i64>(),
            created.parse::<i64>(),
            expires.parse::<i64>(),
        ) else {
            return false;
        };
        user_id == user.id
            && user_id == device.user_id
            && created == device.created_at
            && expires > now
            && crypto::constant_time_eq(
                remember_signature(state, user, device, expires).as_bytes(),
                signature.as_bytes(),
            )
    })
}

/// The reduced hedgehog config "user basic" objects embed: null unless the stored config is a
/// non-empty object; otherwise its profile keys (from `actor_options` for version 2 configs).
pub fn hedgehog_basic(config: Option<&Value>) -> Value {
    let Some(Value::Object(map)) = config else {
        return Value::Null;
    };
    if map.is_empty() {
        return Value::Null;
    }
    let actor = match (map.get("version"), map.get("actor_options")) {
        (Some(v), Some(Value::Object(actor))) if v == &json!(2) => actor,
        _ => map,
    };
    let pick = |key: &str| {
        map.get(key)
            .filter(|_| key == "use_as_profile")
            .or_else(|| actor.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!({
        "use_as_profile": pick("use_as_profile"),
        "color": pick("color"),
        "accessories": pick("accessories"),
        "skin": pick("skin"),
    })
}

/// What a user update did to the login identity, for the effects after it is saved.
#[derive(Debug, Default)]
pub struct IdentityChanges {
    pub password_changed: bool,
    pub email_staged: bool,
    pub email_replaced_from: Option<String>,
}

/// Applies an email change and a password change validated by `apply_update` (session callers
/// only: keys were refused by the identity guard). With email configured, a new address is staged
/// as `pending_email` until verified; otherwise it replaces the login email at once.
pub async fn apply_identity_changes(
    state: &AppState,
    target: &UserRecord,
    user: &mut UserRecord,
    changes: crate::service::users::UserChanges,
) -> ApiResult<IdentityChanges> {
    let mut done = IdentityChanges::default();
    if let Some(password) = changes.new_password.filter(|p| !p.is_empty()) {
        if target.password.is_usable() {
            let current = changes.current_password.ok_or_else(|| {
                ApiError::field(
                    "current_password",
                    "required",
                    "This field is required when updating your password.",
                )
            })?;
            let verified = state
                .hasher
                .verify(&current, Some(&target.password.0))
                .await
                .map_err(ApiError::internal)?;
            if verified == password::Verified::No {
                return Err(ApiError::field(
                    "current_password",
                    "incorrect_password",
                    "Your current password is incorrect.",
                ));
            }
        }
        check_new_password(&password, Some(target), false)?;
        set_password(state, user, &password).await?;
        done.password_changed = true;
    }
    if let Some(email) = changes.new_email {
        if state.mailer.is_configured() {
            user.pending_email = Some(email);
            done.email_staged = true;
        } else {
            done.email_replaced_from = Some(user.email.clone());
            user.email = email;
        }
    }
    Ok(done)
}

/// The effects of a saved identity change: other sessions end after a password change, notices
/// and verification links go out.
pub async fn after_identity_changes(
    state: &AppState,
    caller: &crate::auth::Caller,
    user: &UserRecord,
    done: &IdentityChanges,
) -> ApiResult<()> {
    if done.password_changed {
        let keep = caller
            .session()
            .filter(|_| caller.user_id == user.id)
            .map(|s| s.session_id.as_str());
        state.store.delete_sessions_of(user.id, keep).await?;
        state.caches.invalidate_user(user.id);
        crate::service::emails::send_notice(
            state,
            &user.email,
            user,
            "Your password has been changed",
            "The password of your account was just changed.",
        )
        .await;
    }
    if done.email_staged {
        crate::service::emails::send_verification(state, user).await?;
    }
    Ok(())
}
