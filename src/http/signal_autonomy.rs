//! `GET|POST|DELETE /api/users/{user_id}/signal_autonomy/` (auth spec Part A): a user's opt-in to
//! auto-started implementation tasks, at most one row per user.
//!
//! Authenticators Session → personal key → OAuth; `user:write` for every method, GET included;
//! staff may name other users by **integer id** (any user, active or not).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::auth::{Authenticated, Caller, SignalViews};
use crate::domain::fields;
use crate::domain::scope::ScopeNeed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::api_keys::throttle_key;
use crate::http::body::Body;
use crate::http::paths::Segment;
use crate::service::signal_autonomy;
use crate::service::users::{load_caller, serializer_data};
use crate::state::AppState;
use crate::store::{SignalAutonomyRecord, UserRecord};
use crate::time::iso_z;

const STAFF_ONLY: &str = "Only staff can access other users' autonomy config.";
pub const PRIORITIES: &[&str] = &["P0", "P1", "P2", "P3", "P4"];

// The route is registered as `{uuid}` (the name every `/api/users/{…}` route shares, as the
// router requires one name per position); the document keeps PostHog's `{user_id}`.
#[derive(OpenApi)]
#[openapi(paths(retrieve, create, destroy))]
struct SignalAutonomyDoc;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(SignalAutonomyDoc::openapi()).route(
        "/api/users/{uuid}/signal_autonomy/",
        axum::routing::get(retrieve).post(create).delete(destroy),
    )
}

/// The user embedded in the representation.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignalAutonomyUser {
    pub id: i64,
    pub uuid: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
}

/// The signal autonomy config of a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignalUserAutonomy {
    pub id: Uuid,
    pub user: SignalAutonomyUser,
    /// `P0`…`P4`, or null for the team's default.
    pub autostart_priority: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn view(record: SignalAutonomyRecord, user: &UserRecord) -> SignalUserAutonomy {
    SignalUserAutonomy {
        id: record.id,
        user: SignalAutonomyUser {
            id: user.id,
            uuid: user.uuid,
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            email: user.email.clone(),
        },
        autostart_priority: record.autostart_priority,
        created_at: iso_z(record.created_at),
        updated_at: iso_z(record.updated_at),
    }
}

/// Authorises the caller (`user:write` always), applies the key throttles and resolves the path's
/// `{user_id}`: any text (PostHog matches it with `<user_id>`, dots included).
async fn target(
    state: &AppState,
    auth: Authenticated<SignalViews>,
    segment: &str,
) -> ApiResult<UserRecord> {
    let caller: Caller = auth.authorize(ScopeNeed::Write("user"))?;
    throttle_key(state, &caller).await?;
    let requester = load_caller(state, &caller).await?;
    if segment == "@me" {
        return Ok(requester);
    }
    if !requester.is_staff {
        return Err(ApiError::forbidden(STAFF_ONLY));
    }
    // PostHog looks staff targets up by primary key, without an `is_active` filter; a value that
    // is not an integer (a 500 there) finds no user here.
    let id: i64 = segment.parse().map_err(|_| ApiError::not_found())?;
    signal_autonomy::user_by_id(state, id).await
}

/// Retrieve a user's signal autonomy config
///
/// The config, or 404 with an empty body when the user has not opted in.
#[utoipa::path(
    get,
    path = "/api/users/{user_id}/signal_autonomy/",
    operation_id = "users_signal_autonomy_retrieve",
    tag = "users",
    params(("user_id" = String, Path, description = "`@me`, or (staff only) a user's integer id.")),
    responses(
        (status = 200, body = SignalUserAutonomy),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "Not opted in: an empty body. (A user that does not exist answers the error envelope.)"),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn retrieve(
    State(state): State<AppState>,
    Segment(segment): Segment,
    auth: Authenticated<SignalViews>,
) -> ApiResult<Response> {
    let user = target(&state, auth, &segment).await?;
    Ok(match signal_autonomy::get(&state, &user).await? {
        Some(record) => axum::Json(view(record, &user)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

/// Create or update a user's signal autonomy config
///
/// Opts the user in. Only the fields sent are written; `autostart_priority: null` means the
/// team's default. Always 200.
#[utoipa::path(
    post,
    path = "/api/users/{user_id}/signal_autonomy/",
    operation_id = "users_signal_autonomy_create",
    tag = "users",
    params(("user_id" = String, Path, description = "`@me`, or (staff only) a user's integer id.")),
    request_body(content = Option<crate::http::requests::SignalAutonomyRequest>, description = "Optional: only the fields sent are written."),
    responses(
        (status = 200, body = SignalUserAutonomy),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn create(
    State(state): State<AppState>,
    Segment(segment): Segment,
    auth: Authenticated<SignalViews>,
    body: ApiResult<Body>,
) -> ApiResult<axum::Json<SignalUserAutonomy>> {
    let user = target(&state, auth, &segment).await?;
    let Body(body) = body?;
    let body = serializer_data(body)?;
    let priority = match body.get("autostart_priority") {
        Some(value) => Some(
            fields::choice_field(value, PRIORITIES, false, true)
                .map_err(|e| ApiError::field("autostart_priority", e.code, e.detail))?,
        ),
        None => None,
    };
    let record = signal_autonomy::set(&state, &user, priority).await?;
    Ok(axum::Json(view(record, &user)))
}

/// Delete a user's signal autonomy config
///
/// Opts the user out; 204 whether or not a config existed.
#[utoipa::path(
    delete,
    path = "/api/users/{user_id}/signal_autonomy/",
    operation_id = "users_signal_autonomy_destroy",
    tag = "users",
    params(("user_id" = String, Path, description = "`@me`, or (staff only) a user's integer id.")),
    responses(
        (status = 204, description = "Opted out."),
        (status = 403, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn destroy(
    State(state): State<AppState>,
    Segment(segment): Segment,
    auth: Authenticated<SignalViews>,
) -> ApiResult<StatusCode> {
    let user = target(&state, auth, &segment).await?;
    signal_autonomy::clear(&state, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}
