//! Two-factor authentication management under `/api/users/{uuid}/…` (browser sessions only).

use axum::extract::State;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Authenticated, UserViews};
use crate::domain::scope::ScopeNeed;
use crate::error::{ApiResult, ErrorBody};
use crate::http::accounts::{SUCCESS, Success};
use crate::http::body::Body;
use crate::http::users::UserSegment;
use crate::service::accounts;
use crate::service::activity::{Context, Origin};
use crate::service::two_factor;
use crate::service::users::{load_caller, resolve_target};
use crate::state::AppState;

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

async fn start_setup(
    state: &AppState,
    auth: Authenticated<UserViews>,
) -> ApiResult<axum::Json<TwoFactorSetup>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let user = load_caller(state, &caller).await?;
    let setup = two_factor::start_setup(state, &caller, &user).await?;
    Ok(axum::Json(TwoFactorSetup {
        success: true,
        secret: setup.secret_base32,
        otpauth_uri: setup.otpauth_uri,
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
    origin: Origin,
    body: Value,
) -> ApiResult<axum::Json<Success>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let user = load_caller(state, &caller).await?;
    let token = body.get("token").and_then(accounts::text_of);
    let ctx = Context::caller(&caller, origin);
    two_factor::enable(state, &ctx, &caller, &user, token).await?;
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
    origin: Origin,
    Body(body): Body,
) -> ApiResult<axum::Json<Success>> {
    validate(&state, auth, origin, body).await
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
    origin: Origin,
    Body(body): Body,
) -> ApiResult<axum::Json<Success>> {
    validate(&state, auth, origin, body).await
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
    let status = two_factor::status(&state, &target).await?;
    let has_totp = status.has_totp;
    let remaining = status.backup_codes_remaining;
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
    origin: Origin,
) -> ApiResult<axum::Json<BackupCodes>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let codes =
        two_factor::regenerate_backup_codes(&state, &Context::caller(&caller, origin), &target)
            .await?;
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
    origin: Origin,
) -> ApiResult<axum::Json<Success>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    two_factor::disable(&state, &Context::caller(&caller, origin), &target).await?;
    Ok(axum::Json(SUCCESS))
}
