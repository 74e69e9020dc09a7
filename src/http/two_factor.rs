//! Two-factor authentication management under `/api/users/{uuid}/…` (browser sessions only).

use axum::extract::State;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::{Authenticated, Caller, UserViews};
use crate::domain::scope::ScopeNeed;
use crate::domain::totp;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::accounts::{SUCCESS, Success};
use crate::http::body::Body;
use crate::http::users::UserSegment;
use crate::service::accounts::{self, TOTP_SETUP_AGE};
use crate::service::emails;
use crate::service::users::{load_caller, resolve_target};
use crate::store::{SessionRecord, TotpDeviceRecord};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(two_factor_start_setup))
        .routes(routes!(start_2fa_setup))
        .routes(routes!(two_factor_validate))
        .routes(routes!(validate_2fa))
        .routes(routes!(two_factor_status))
        .routes(routes!(two_factor_backup_codes))
        .routes(routes!(two_factor_disable))
}

/// A new TOTP secret, as text and as an `otpauth://` URI for authenticator apps.
#[derive(Debug, Serialize, ToSchema)]
pub struct TwoFactorSetup {
    pub success: bool,
    pub secret: String,
    pub otpauth_uri: String,
}

/// Whether the user has 2FA, and how many backup codes are left.
#[derive(Debug, Serialize, ToSchema)]
pub struct TwoFactorStatus {
    pub is_enabled: bool,
    /// Always empty: backup codes are stored hashed and shown only when generated.
    pub backup_codes: Vec<String>,
    pub backup_codes_remaining: i64,
    /// `TOTP`, or null without 2FA.
    pub method: Option<String>,
    pub has_passkeys: bool,
    pub has_totp: bool,
    pub passkeys_enabled_for_2fa: bool,
}

/// New backup codes, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupCodes {
    pub backup_codes: Vec<String>,
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

async fn start_setup(
    state: &AppState,
    auth: Authenticated<UserViews>,
) -> ApiResult<axum::Json<TwoFactorSetup>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let user = load_caller(state, &caller).await?;
    let mut session = session_of(state, &caller).await?;
    let secret = totp::new_secret();
    session.totp_setup_secret = Some(accounts::seal_totp_secret(state, &secret)?);
    session.totp_setup_at = Some(state.clock.now());
    state.store.update_session(&session).await?;
    Ok(axum::Json(TwoFactorSetup {
        success: true,
        secret: totp::secret_base32(&secret),
        otpauth_uri: totp::otpauth_uri(&secret, &issuer(state), &user.email),
    }))
}

/// Start 2FA setup
///
/// A new TOTP secret for the requesting user, valid for ten minutes until validated.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/two_factor_start_setup/",
    operation_id = "users_two_factor_start_setup_retrieve",
    tag = "users",
    params(("uuid" = String, Path)),
    responses((status = 200, body = TwoFactorSetup), (status = 403, body = ErrorBody)),
)]
async fn two_factor_start_setup(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    _segment: UserSegment,
) -> ApiResult<axum::Json<TwoFactorSetup>> {
    start_setup(&state, auth).await
}

/// Start 2FA setup (deprecated alias)
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/start_2fa_setup/",
    operation_id = "users_start_2fa_setup_retrieve",
    tag = "users",
    params(("uuid" = String, Path)),
    responses((status = 200, body = TwoFactorSetup), (status = 403, body = ErrorBody)),
)]
async fn start_2fa_setup(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    _segment: UserSegment,
) -> ApiResult<axum::Json<TwoFactorSetup>> {
    start_setup(&state, auth).await
}

async fn validate(
    state: &AppState,
    auth: Authenticated<UserViews>,
    body: Value,
) -> ApiResult<axum::Json<Success>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let user = load_caller(state, &caller).await?;
    let mut session = session_of(state, &caller).await?;
    let now = state.clock.now();
    let pending = session
        .totp_setup_secret
        .clone()
        .filter(|_| {
            session
                .totp_setup_at
                .is_some_and(|at| now - at <= TOTP_SETUP_AGE)
        })
        .ok_or_else(|| {
            ApiError::non_field(
                "setup_expired",
                "2FA setup session expired. Please start setup again.",
            )
        })?;
    let invalid = || ApiError::non_field("token_invalid", "Token is not valid");
    let token = body
        .get("token")
        .and_then(accounts::text_of)
        .ok_or_else(invalid)?;
    let secret = accounts::open_totp_secret(state, &pending)?;
    let step = totp::matching_step(&secret, &token, state.clock.now_secs()).ok_or_else(invalid)?;
    state
        .store
        .put_totp_device(&TotpDeviceRecord {
            user_id: user.id,
            secret: pending,
            last_step: step,
            failures: 0,
            throttled_until: 0,
            created_at: now,
        })
        .await?;
    session.two_factor_verified = true;
    session.totp_setup_secret = None;
    session.totp_setup_at = None;
    state.store.update_session(&session).await?;
    // Sessions that never passed the new second factor end here.
    state
        .store
        .delete_sessions_of(user.id, Some(&session.id))
        .await?;
    state.caches.invalidate_user(user.id);
    emails::send_notice(
        state,
        &user.email,
        &user,
        "Two-factor authentication enabled",
        "Two-factor authentication was turned on for your account.",
    )
    .await;
    Ok(axum::Json(SUCCESS))
}

/// Validate 2FA setup
///
/// Enables TOTP with a code from the authenticator app.
#[utoipa::path(
    post,
    path = "/api/users/{uuid}/two_factor_validate/",
    operation_id = "users_two_factor_validate_create",
    tag = "users",
    params(("uuid" = String, Path)),
    request_body(content = crate::http::requests::TokenRequest, description = "A code from the authenticator app."),
    responses(
        (status = 200, body = Success),
        (status = 400, description = "No setup was started in this session or it is older than ten minutes (`setup_expired`), or the code is wrong (`token_invalid`).", body = ErrorBody),
    ),
)]
async fn two_factor_validate(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    _segment: UserSegment,
    Body(body): Body,
) -> ApiResult<axum::Json<Success>> {
    validate(&state, auth, body).await
}

/// Validate 2FA setup (deprecated alias)
#[utoipa::path(
    post,
    path = "/api/users/{uuid}/validate_2fa/",
    operation_id = "users_validate_2fa_create",
    tag = "users",
    params(("uuid" = String, Path)),
    request_body(content = crate::http::requests::TokenRequest, description = "A code from the authenticator app."),
    responses(
        (status = 200, body = Success),
        (status = 400, description = "No setup was started in this session or it is older than ten minutes (`setup_expired`), or the code is wrong (`token_invalid`).", body = ErrorBody),
    ),
)]
async fn validate_2fa(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    _segment: UserSegment,
    Body(body): Body,
) -> ApiResult<axum::Json<Success>> {
    validate(&state, auth, body).await
}

/// 2FA status
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/two_factor_status/",
    operation_id = "users_two_factor_status_retrieve",
    tag = "users",
    params(("uuid" = String, Path)),
    responses((status = 200, body = TwoFactorStatus), (status = 403, body = ErrorBody)),
)]
async fn two_factor_status(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    UserSegment(segment): UserSegment,
) -> ApiResult<axum::Json<TwoFactorStatus>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let has_totp = state.store.totp_device(target.id).await?.is_some();
    let remaining = if has_totp {
        state.store.backup_code_count(target.id).await?
    } else {
        0
    };
    // Backup codes are stored hashed, so they are shown only when generated.
    Ok(axum::Json(TwoFactorStatus {
        is_enabled: has_totp,
        backup_codes: Vec::new(),
        backup_codes_remaining: remaining,
        method: has_totp.then(|| "TOTP".to_string()),
        has_passkeys: false,
        has_totp,
        passkeys_enabled_for_2fa: false,
    }))
}

/// Regenerate backup codes
///
/// Replaces every backup code with ten new ones, shown this once.
#[utoipa::path(
    post,
    path = "/api/users/{uuid}/two_factor_backup_codes/",
    operation_id = "users_two_factor_backup_codes_create",
    tag = "users",
    params(("uuid" = String, Path)),
    responses(
        (status = 200, body = BackupCodes),
        (status = 400, description = "2FA is not enabled (`2fa_not_enabled`).", body = ErrorBody),
    ),
)]
async fn two_factor_backup_codes(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    UserSegment(segment): UserSegment,
) -> ApiResult<axum::Json<BackupCodes>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    if state.store.totp_device(target.id).await?.is_none() {
        return Err(ApiError::non_field(
            "2fa_not_enabled",
            "2FA must be enabled first",
        ));
    }
    let codes = accounts::regenerate_backup_codes(&state, target.id).await?;
    Ok(axum::Json(BackupCodes {
        backup_codes: codes,
    }))
}

/// Disable 2FA
#[utoipa::path(
    post,
    path = "/api/users/{uuid}/two_factor_disable/",
    operation_id = "users_two_factor_disable_create",
    tag = "users",
    params(("uuid" = String, Path)),
    responses((status = 200, body = Success), (status = 403, body = ErrorBody)),
)]
async fn two_factor_disable(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    UserSegment(segment): UserSegment,
) -> ApiResult<axum::Json<Success>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    state.store.delete_two_factor(target.id).await?;
    state.caches.invalidate_user(target.id);
    emails::send_notice(
        &state,
        &target.email,
        &target,
        "Two-factor authentication disabled",
        "Two-factor authentication was turned off for your account.",
    )
    .await;
    Ok(axum::Json(SUCCESS))
}
