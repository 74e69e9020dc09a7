//! `/api/users/{uuid}/login_sessions/…` (users.md §4.12): the user's signed-in browser sessions,
//! listed and revoked. Browser sessions only (a personal API key is not looked at: 401), and only
//! the caller's own sessions.

use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::session::clear_session_cookies;
use crate::auth::{Authenticated, Caller, SessionOnly};
use crate::domain::scope::ScopeNeed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::users::{USER_WRITE, UserSegment};
use crate::service::activity::{Context, Origin};
use crate::service::login_sessions::{self, LoginSession};
use crate::service::users::{load_caller, resolve_target};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(destroy))
        .routes(routes!(revoke_others))
}

/// The answer of `revoke_others`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RevokedCount {
    /// How many other signed-in sessions ended.
    pub revoked_count: u64,
}

/// The `{id}` path segment of one login session.
pub struct SessionSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SessionSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        RawPathParams::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(name, _)| *name == "id")
                    .map(|(_, value)| SessionSegment(value.to_string()))
            })
            .ok_or_else(|| ApiError::NotFound(login_sessions::NOT_FOUND.into()))
    }
}

/// The caller's stored session id, once the path named the caller themself (`@me` or their
/// uuid; staff too may only see their own sessions).
async fn own_session(state: &AppState, caller: &Caller, segment: &str) -> ApiResult<String> {
    let requester = load_caller(state, caller).await?;
    let target = resolve_target(state, &requester, segment).await?;
    if target.id != caller.user_id {
        return Err(ApiError::forbidden(
            "You can only see and revoke your own login sessions.",
        ));
    }
    caller
        .session()
        .map(|s| s.session_id.clone())
        .ok_or(ApiError::NotAuthenticated(crate::error::Challenge::Session))
}

/// List login sessions
///
/// The caller's signed-in browser sessions, the current one first, then the newest login first.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/login_sessions/",
    operation_id = "users_login_sessions_list",
    tag = "users",
    params(("uuid" = String, Path, description = "The caller's uuid, or `@me`.")),
    responses(
        (status = 200, body = Vec<LoginSession>),
        (status = 401, description = "No browser session (a personal API key is not accepted).", body = ErrorBody),
        (status = 403, description = "Another user's sessions.", body = ErrorBody),
    ),
)]
async fn list(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<SessionOnly>,
) -> ApiResult<axum::Json<Vec<LoginSession>>> {
    let caller = auth.authorize(ScopeNeed::Read("user"))?;
    let current = own_session(&state, &caller, &segment).await?;
    let sessions = login_sessions::list(&state, caller.user_id, &current).await?;
    Ok(axum::Json(sessions))
}

/// Revoke a login session
///
/// Ends the session at once, on every replica. Revoking the current session signs this browser
/// out: the answer also clears its session cookie. Needs a recent login.
#[utoipa::path(
    delete,
    path = "/api/users/{uuid}/login_sessions/{id}/",
    operation_id = "users_login_sessions_destroy",
    tag = "users",
    params(
        ("uuid" = String, Path, description = "The caller's uuid, or `@me`."),
        ("id" = String, Path, description = "A login session's `id`, as listed."),
    ),
    responses(
        (status = 204, description = "Revoked."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "`Login session not found.`", body = ErrorBody),
    ),
)]
async fn destroy(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    SessionSegment(id): SessionSegment,
    auth: Authenticated<SessionOnly>,
    origin: Origin,
) -> ApiResult<Response> {
    let caller = auth.authorize(USER_WRITE)?;
    let current = own_session(&state, &caller, &segment).await?;
    let ctx = Context::caller(&caller, origin);
    let was_current = login_sessions::revoke(&state, &ctx, caller.user_id, &current, &id).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if was_current {
        clear_session_cookies().apply(response.headers_mut());
    }
    Ok(response)
}

/// Revoke every other login session
///
/// Ends every signed-in session of the caller but the current one (and any login still waiting
/// for its second factor), at once on every replica. Needs a recent login.
#[utoipa::path(
    post,
    path = "/api/users/{uuid}/login_sessions/revoke_others/",
    operation_id = "users_login_sessions_revoke_others_create",
    tag = "users",
    params(("uuid" = String, Path, description = "The caller's uuid, or `@me`.")),
    responses(
        (status = 200, body = RevokedCount),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
)]
async fn revoke_others(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<SessionOnly>,
    origin: Origin,
) -> ApiResult<axum::Json<RevokedCount>> {
    let caller = auth.authorize(USER_WRITE)?;
    let current = own_session(&state, &caller, &segment).await?;
    let ctx = Context::caller(&caller, origin);
    let revoked_count =
        login_sessions::revoke_others(&state, &ctx, caller.user_id, &current).await?;
    Ok(axum::Json(RevokedCount { revoked_count }))
}
