//! Two-factor authentication: setting up a TOTP device, backup codes, turning it off.
//! Each change and what it implies (sessions that never passed the new factor end, a notice
//! goes out) is one transaction.

use serde_json::Value;

use crate::domain::totp;
use crate::error::{ApiError, ApiResult};
use crate::service::accounts::{self, TOTP_SETUP_AGE, commit};
use crate::service::activity::{Activity, Context};
use crate::service::caller::Caller;
use crate::service::emails::{self, Outgoing};
use crate::state::AppState;
use crate::store::{SessionRecord, TotpDeviceRecord, UserRecord, UserWrite};

/// A new TOTP secret, for the authenticator app.
pub struct Setup {
    pub secret_base32: String,
    pub otpauth_uri: String,
}

/// Whether the user has 2FA, and how many backup codes are left.
pub struct Status {
    pub has_totp: bool,
    pub backup_codes_remaining: i64,
}

/// The session record behind a session caller.
async fn session_of(state: &AppState, caller: &Caller) -> ApiResult<SessionRecord> {
    let session = caller.session().ok_or_else(|| {
        ApiError::forbidden("This action does not support Personal API Key access")
    })?;
    state
        .store
        .session(&session.session_id)
        .await?
        .ok_or(ApiError::NotAuthenticated(crate::error::Challenge::Session))
}

fn issuer(state: &AppState) -> String {
    let without_scheme = state
        .site_url
        .split_once("://")
        .map_or(state.site_url.as_str(), |(_, rest)| rest);
    without_scheme
        .split('/')
        .next()
        .unwrap_or("hoglet")
        .to_string()
}

/// Starts a setup in the caller's session: a new secret, valid for ten minutes.
pub async fn start_setup(state: &AppState, caller: &Caller, user: &UserRecord) -> ApiResult<Setup> {
    let mut session = session_of(state, caller).await?;
    let secret = totp::new_secret();
    session.totp_setup_secret = Some(accounts::seal_totp_secret(state, &secret)?);
    session.totp_setup_at = Some(state.clock.now());
    state.store.update_session(&session).await?;
    Ok(setup_of(state, &secret, user))
}

fn setup_of(state: &AppState, secret: &[u8], user: &UserRecord) -> Setup {
    Setup {
        secret_base32: totp::secret_base32(secret),
        otpauth_uri: totp::otpauth_uri(secret, &issuer(state), &user.email),
    }
}

/// The sealed secret of the setup started in `session`, unless none was or it is older than
/// [`TOTP_SETUP_AGE`].
fn fresh_setup_secret(session: &SessionRecord, now: crate::time::Micros) -> Option<String> {
    session.totp_setup_secret.clone().filter(|_| {
        session
            .totp_setup_at
            .is_some_and(|at| now - at <= TOTP_SETUP_AGE)
    })
}

/// The setup started in the caller's session, while it is still fresh (a page shown again keeps
/// the secret the user may have scanned already).
pub async fn pending_setup(
    state: &AppState,
    caller: &Caller,
    user: &UserRecord,
) -> ApiResult<Option<Setup>> {
    let session = session_of(state, caller).await?;
    let Some(sealed) = fresh_setup_secret(&session, state.clock.now()) else {
        return Ok(None);
    };
    let secret = accounts::open_totp_secret(state, &sealed)?;
    Ok(Some(setup_of(state, &secret, user)))
}

/// Completes the setup started in the caller's session with a first code: the device, this
/// session marked as having passed it, the end of every other session and the notice commit
/// together.
pub async fn enable(
    state: &AppState,
    ctx: &Context,
    caller: &Caller,
    user: &UserRecord,
    token: Option<String>,
) -> ApiResult<()> {
    let mut session = session_of(state, caller).await?;
    let now = state.clock.now();
    let pending = fresh_setup_secret(&session, now).ok_or_else(|| {
        ApiError::non_field(
            "setup_expired",
            "2FA setup session expired. Please start setup again.",
        )
    })?;
    let invalid = || ApiError::non_field("token_invalid", "Token is not valid");
    let token = token.ok_or_else(invalid)?;
    let secret = accounts::open_totp_secret(state, &pending)?;
    let step = totp::matching_step(&secret, &token, state.clock.now_secs()).ok_or_else(invalid)?;
    session.two_factor_verified = true;
    session.totp_setup_secret = None;
    session.totp_setup_at = None;
    let mut write = UserWrite {
        totp_device: Some(TotpDeviceRecord {
            user_id: user.id,
            secret: pending,
            last_step: step,
            failures: 0,
            throttled_until: 0,
            created_at: now,
        }),
        // Sessions that never passed the new second factor end here.
        end_sessions: Some(Some(session.id.clone())),
        session: Some(session),
        activity: vec![ctx.entry(
            state,
            Some(user.id),
            Activity::TwoFactorEnabled,
            Value::Null,
        )],
        ..UserWrite::default()
    };
    let mut mail = Outgoing::default();
    let notice = emails::notice(
        &user.email,
        user,
        "Two-factor authentication enabled",
        "Two-factor authentication was turned on for your account.",
    );
    mail.add(state, &mut write, notice)?;
    commit(state, user.id, &write, mail).await?;
    Ok(())
}

pub async fn status(state: &AppState, target: &UserRecord) -> ApiResult<Status> {
    let has_totp = state.store.totp_device(target.id).await?.is_some();
    let backup_codes_remaining = if has_totp {
        state.store.backup_code_count(target.id).await?
    } else {
        0
    };
    Ok(Status {
        has_totp,
        backup_codes_remaining,
    })
}

/// Ten fresh backup codes (stored hashed; returned in clear this once).
pub async fn regenerate_backup_codes(
    state: &AppState,
    ctx: &Context,
    target: &UserRecord,
) -> ApiResult<Vec<String>> {
    if state.store.totp_device(target.id).await?.is_none() {
        return Err(ApiError::non_field(
            "2fa_not_enabled",
            "2FA must be enabled first",
        ));
    }
    let (codes, hashes) = accounts::new_backup_codes(state, target.id);
    let write = UserWrite {
        backup_codes: Some(hashes),
        activity: vec![ctx.entry(
            state,
            Some(target.id),
            Activity::BackupCodesRegenerated,
            Value::Null,
        )],
        ..UserWrite::default()
    };
    commit(state, target.id, &write, Outgoing::default()).await?;
    Ok(codes)
}

/// Removes the device and every backup code; the notice commits with it.
pub async fn disable(state: &AppState, ctx: &Context, target: &UserRecord) -> ApiResult<()> {
    let mut write = UserWrite {
        remove_two_factor: true,
        activity: vec![ctx.entry(
            state,
            Some(target.id),
            Activity::TwoFactorDisabled,
            Value::Null,
        )],
        ..UserWrite::default()
    };
    let mut mail = Outgoing::default();
    let notice = emails::notice(
        &target.email,
        target,
        "Two-factor authentication disabled",
        "Two-factor authentication was turned off for your account.",
    );
    mail.add(state, &mut write, notice)?;
    commit(state, target.id, &write, mail).await?;
    Ok(())
}
