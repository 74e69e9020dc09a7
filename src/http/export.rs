//! `GET /api/users/@me/export/`: the signed-in user's data as a JSON file (a hoglet addition;
//! the document is `service::export`'s, described in `docs/export-format.md`).

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Authenticated, Caller, Freshness, SessionOnly};
use crate::domain::scope::ScopeNeed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::users::UserSegment;
use crate::ratelimit::Rate;
use crate::service::activity::{Context, Origin};
use crate::service::{export, users};
use crate::state::AppState;
use crate::store::UserRecord;

/// The export document, for the OpenAPI document only (the service builds it as JSON);
/// `docs/export-format.md` describes every field of every section.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UserExport {
    /// Always `hoglet-export`.
    format: String,
    /// The format's version: `1`.
    version: i64,
    #[schema(format = DateTime)]
    exported_at: String,
    /// Every stored field of the user but the password hash.
    #[schema(value_type = Object)]
    user: serde_json::Value,
    /// Memberships with their level and the organizations' teams.
    #[schema(value_type = Vec<Object>)]
    organizations: Vec<serde_json::Value>,
    /// Key metadata: label, mask, scopes, created, last used, rolled, expires.
    #[schema(value_type = Vec<Object>)]
    personal_api_keys: Vec<serde_json::Value>,
    /// `enabled`, `enabled_at`, `backup_codes_remaining`.
    #[schema(value_type = Object)]
    two_factor: serde_json::Value,
    /// Signed-in sessions: created, last activity, expires, ip, user agent, login method.
    #[schema(value_type = Vec<Object>)]
    login_sessions: Vec<serde_json::Value>,
    /// Personal integrations: kind, installation, account, created; no tokens.
    #[schema(value_type = Vec<Object>)]
    integrations: Vec<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    signal_autonomy: Option<serde_json::Value>,
    /// Every entry of the user's activity log, newest first.
    #[schema(value_type = Vec<Object>)]
    activity: Vec<serde_json::Value>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_data))
}

/// The session's caller, authorised for an export: a browser session that logged in recently.
pub fn authorize(auth: Authenticated<SessionOnly>) -> ApiResult<Caller> {
    auth.authorize_with(ScopeNeed::NoKeyAccess, Freshness::Always)
}

/// Exports per user and hour: each reads the whole activity log, so a session must not be able
/// to make it a load generator.
const EXPORT_RATE: Rate = Rate::per_hour("user_data_export", 10);

/// The document as a download named `hoglet-export-YYYY-MM-DD.json` (the export's date).
pub async fn download(
    state: &AppState,
    caller: &Caller,
    user: &UserRecord,
    origin: Origin,
) -> ApiResult<Response> {
    state
        .limiter
        .check(EXPORT_RATE, &user.id.to_string())
        .await
        .map_err(ApiError::Throttled)?;
    let ctx = Context::caller(caller, origin);
    let document = export::export(state, &ctx, user).await?;
    let body = serde_json::to_vec_pretty(&document).map_err(ApiError::internal)?;
    let date: String = crate::time::iso_z(state.clock.now())
        .chars()
        .take(10)
        .collect();
    let disposition = format!("attachment; filename=\"hoglet-export-{date}.json\"");
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).map_err(ApiError::internal)?,
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Download my data
///
/// hoglet addition (not in PostHog's API): a copy of everything hoglet stores about the
/// signed-in user, as a versioned JSON document (`format` `hoglet-export`, `version` 1) sent as
/// a file download. Browser sessions only, logged in within the last two hours; only `@me` (or
/// the caller's own uuid); at most 10 exports an hour. The export is recorded in the user's activity log
/// (`user_data_exported`). It never holds a password hash, key value, TOTP secret, backup code,
/// session id, CSRF token or integration token.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/export/",
    operation_id = "users_export_retrieve",
    tag = "users",
    params(("uuid" = String, Path, description = "`@me` (or the caller's own uuid).")),
    responses(
        (status = 200, description = "The export document, with `Content-Disposition: attachment; filename=\"hoglet-export-YYYY-MM-DD.json\"`.", body = UserExport),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The session logged in more than two hours ago (`sensitive_action_required_reauth`), or another user than the caller is named (`permission_denied`).", body = ErrorBody),
    ),
)]
async fn export_data(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<SessionOnly>,
    origin: Origin,
) -> ApiResult<Response> {
    let caller = authorize(auth)?;
    let user = users::load_caller(&state, &caller).await?;
    if segment != "@me" && segment != user.uuid.to_string() {
        return Err(ApiError::forbidden("You can only export your own data."));
    }
    download(&state, &caller, &user, origin).await
}
