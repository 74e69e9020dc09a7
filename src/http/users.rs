//! `/api/users/…`: list, retrieve (`@me` on the hot path), update, delete, hedgehog config and
//! scene personalisation.

use axum::extract::{FromRequestParts, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::OriginalPath;
use crate::auth::{Authenticated, Caller, Freshness, SessionOnly, UserViews};
use crate::domain::fields::{self, Chars};
use crate::domain::scope::ScopeNeed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::body::Body;
use crate::http::links;
use crate::ratelimit::Rate;
use crate::service::activity::{Context, Origin};
use crate::service::render::{self, PaginatedUserList, Requester, UserView};
use crate::service::users::{self as users_service, load_caller, resolve_target};
use crate::state::AppState;
use crate::store::UserQuery;

const USER_READ: ScopeNeed = ScopeNeed::Read("user");
pub(crate) const USER_WRITE: ScopeNeed = ScopeNeed::Write("user");
/// A stale session may still change only these (PostHog's `time_sensitive_allow_if_only_fields`).
pub(crate) const RECENT_LOGIN_EXEMPT_FIELDS: &[&str] = &[
    "theme_mode",
    "set_current_organization",
    "set_current_team",
    "allow_sidebar_suggestions",
    "shortcut_position",
    "has_seen_product_intro_for",
    "events_column_config",
    "role_at_organization",
    "ui_configuration",
];
/// PostHog's `UserAuthenticationThrottle`: writes carrying `current_password`, per user.
const PASSWORD_ATTEMPTS: Rate = Rate::per_minute("user_authentication", 5);
const DEFAULT_PAGE_SIZE: i64 = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(retrieve, update, partial_update, destroy))
        .routes(routes!(hedgehog_config, hedgehog_config_update))
        .routes(routes!(scene_personalisation))
        .routes(routes!(github_login))
}

/// The `{uuid}` path segment. One that is not valid UTF-8 once decoded names no user: it is
/// kept as U+FFFD, which `@me`-only callers are refused and staff find no user for.
///
/// PostHog's router matches this segment with `[^/.]+`, so a value with a dot matches no route
/// at all: `404 Endpoint not found.`, decided (like any routing miss) before authentication —
/// which is why handlers take this extractor before `Authenticated`.
pub struct UserSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for UserSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let segment = match RawPathParams::from_request_parts(parts, state).await {
            Ok(params) => params
                .iter()
                .find(|(name, _)| *name == "uuid")
                .map(|(_, value)| value.to_string())
                .ok_or_else(ApiError::not_found)?,
            Err(_) => char::REPLACEMENT_CHARACTER.to_string(),
        };
        if segment.contains('.') {
            return Err(ApiError::NotFound("Endpoint not found.".into()));
        }
        Ok(UserSegment(segment))
    }
}

fn requester_of(caller: &Caller) -> Requester {
    Requester {
        user_id: caller.user_id,
        session_created_at: caller.session().map(|s| s.created_at),
    }
}

fn json_bytes(body: Bytes) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn to_json(view: &impl serde::Serialize) -> ApiResult<Bytes> {
    serde_json::to_vec(view)
        .map(Bytes::from)
        .map_err(ApiError::internal)
}

/// List users
///
/// Staff see every active user; everyone else sees only themselves.
#[utoipa::path(
    get,
    path = "/api/users/",
    operation_id = "users_list",
    tag = "users",
    params(
        ("email" = Option<String>, Query, description = "Exact email address."),
        ("is_staff" = Option<bool>, Query, description = "Only staff (`true`) or non-staff (`false`)."),
        ("limit" = Option<i64>, Query, description = "Number of results to return per page."),
        ("offset" = Option<i64>, Query, description = "The initial index from which to return the results."),
    ),
    responses(
        (status = 200, body = PaginatedUserList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:read"]))
)]
async fn list(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    parts: RequestTarget,
) -> ApiResult<Response> {
    let caller = auth.authorize(USER_READ)?;
    let requester = load_caller(&state, &caller).await?;
    let params = parts.query_pairs();
    let last = |name: &str| links::last_param(&params, name);
    // Both clamped (`links::page_bound`), so `offset + limit` cannot overflow.
    let limit = last("limit")
        .and_then(links::page_bound)
        .filter(|l| *l > 0)
        .unwrap_or(DEFAULT_PAGE_SIZE);
    let offset = last("offset").and_then(links::page_bound).unwrap_or(0);
    let is_staff = last("is_staff").and_then(|v| match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    });
    // django-filter skips a filter whose value is empty.
    let email = last("email").filter(|e| !e.is_empty());
    if let Some(email) = email {
        fields::check_characters(email, false)
            .map_err(|e| ApiError::field("email", e.code, e.detail))?;
    }
    let query = UserQuery {
        only_user: (!requester.is_staff).then_some(requester.id),
        email: email.map(str::to_string),
        is_staff,
        limit,
        offset,
        ..UserQuery::default()
    };
    let page = users_service::list(&state, &query).await?;
    let results = render::render_users(&state, &requester_of(&caller), page.users).await?;
    let base = format!("{}{}", state.site_url, parts.path);
    let next_offset = offset.saturating_add(limit);
    let next = (next_offset < page.count)
        .then(|| links::page_link(&base, &params, limit, Some(next_offset)));
    let previous = (offset > 0).then(|| {
        let previous_offset = offset.saturating_sub(limit);
        links::page_link(
            &base,
            &params,
            limit,
            (previous_offset > 0).then_some(previous_offset),
        )
    });
    let body = to_json(&PaginatedUserList {
        count: page.count,
        next,
        previous,
        results,
    })?;
    Ok(json_bytes(body))
}

/// The request path as sent and its query string.
pub struct RequestTarget {
    path: String,
    query: Option<String>,
}

impl RequestTarget {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestTarget {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(Self {
            path: OriginalPath::of(parts).to_string(),
            query: parts.uri.query().map(str::to_string),
        })
    }
}

/// Retrieve a user
///
/// Pass `@me` to fetch the authenticated user; non-staff callers may only access their own account.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/",
    operation_id = "users_retrieve",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    responses(
        (status = 200, body = UserView),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:read"]))
)]
async fn retrieve(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<UserViews>,
) -> ApiResult<Response> {
    let caller = auth.authorize(USER_READ)?;
    // The hot path: a key reading its own user is served from the rendered cache.
    let cacheable = segment == "@me" && caller.api_key().is_some();
    if cacheable && let Some(body) = state.caches.me(caller.user_id) {
        return Ok(json_bytes(body));
    }
    let generation = state.caches.generation();
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let view = render::render_user(&state, &requester_of(&caller), target).await?;
    let body = to_json(&view)?;
    if cacheable {
        state
            .caches
            .put_me(caller.user_id, body.clone(), generation);
    }
    Ok(json_bytes(body))
}

/// Update a user (all fields)
///
/// Prefer PATCH: PUT requires `email` and `password`.
#[utoipa::path(
    put,
    path = "/api/users/{uuid}/",
    operation_id = "users_update",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    request_body(content = crate::http::schemas::UserUpdate, description = "Every writable user field; `email` and `password` are required."),
    responses(
        (status = 200, body = UserView),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn update(
    state: State<AppState>,
    segment: UserSegment,
    auth: Authenticated<UserViews>,
    origin: Origin,
    body: ApiResult<Body>,
) -> ApiResult<Json> {
    write_user(state, auth, segment, origin, body, false).await
}

/// Update a user
///
/// Update one or more of the user's profile fields or settings.
#[utoipa::path(
    patch,
    path = "/api/users/{uuid}/",
    operation_id = "users_partial_update",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    request_body(content = crate::http::schemas::PatchedUser, description = "Any subset of the writable user fields."),
    responses(
        (status = 200, body = UserView),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn partial_update(
    state: State<AppState>,
    segment: UserSegment,
    auth: Authenticated<UserViews>,
    origin: Origin,
    body: ApiResult<Body>,
) -> ApiResult<Json> {
    write_user(state, auth, segment, origin, body, true).await
}

type Json = axum::Json<UserView>;

// Handlers that read a body take it as `ApiResult<Body>` and open it only after the scope check
// and the target lookup, so a malformed body never hides a 403/404 (PostHog parses the body
// lazily, when the action first reads `request.data`).

async fn write_user(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
    UserSegment(segment): UserSegment,
    origin: Origin,
    body: ApiResult<Body>,
    partial: bool,
) -> ApiResult<Json> {
    let fields = match &body {
        Ok(Body(Value::Object(map))) => Some(map),
        _ => None,
    };
    let freshness = match fields {
        Some(map) => Freshness::UnlessOnly(map, RECENT_LOGIN_EXEMPT_FIELDS),
        None => Freshness::Required,
    };
    let caller = auth.authorize_with(USER_WRITE, freshness)?;
    if fields.is_some_and(|m| m.contains_key("current_password")) {
        state
            .limiter
            .check(PASSWORD_ATTEMPTS, &caller.user_id.to_string())
            .await
            .map_err(ApiError::Throttled)?;
    }
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let Body(body) = body?;
    let user =
        users_service::update(&state, &caller, origin, &requester, &target, body, partial).await?;
    let view = render::render_user(&state, &requester_of(&caller), user).await?;
    Ok(axum::Json(view))
}

/// Delete a user
///
/// Only possible with a browser session, and only for users without organization memberships.
#[utoipa::path(
    delete,
    path = "/api/users/{uuid}/",
    operation_id = "users_destroy",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "The user is still a member of an organization (`conflict`).", body = ErrorBody),
    ),
)]
async fn destroy(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<SessionOnly>,
) -> ApiResult<StatusCode> {
    let caller = auth.authorize(ScopeNeed::Write("user"))?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    users_service::delete(&state, &target).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Retrieve a user's hedgehog config
///
/// The stored configuration, or `{}` when none is set.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/hedgehog_config/",
    operation_id = "users_hedgehog_config_retrieve",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    responses(
        (status = 200, description = "Any JSON (`{}` when none is stored).", body = Value),
        (status = 401, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:read"]))
)]
async fn hedgehog_config(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<UserViews>,
) -> ApiResult<axum::Json<Value>> {
    let caller = auth.authorize(USER_READ)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    // PostHog answers `hedgehog_config or {}`: any empty stored value reads as `{}`.
    Ok(axum::Json(
        target
            .hedgehog_config
            .filter(crate::domain::python::py_truthy)
            .unwrap_or_else(|| Value::Object(Map::new())),
    ))
}

/// Replace a user's hedgehog config
///
/// The request body becomes the stored configuration (a replacement, not a merge).
#[utoipa::path(
    patch,
    path = "/api/users/{uuid}/hedgehog_config/",
    operation_id = "users_hedgehog_config_partial_update",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    request_body(content = crate::http::schemas::HedgehogConfig, description = "Any JSON object: it is stored as sent, replacing the previous config."),
    responses(
        (status = 200, description = "The stored configuration, as sent.", body = Value),
        (status = 403, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn hedgehog_config_update(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<UserViews>,
    origin: Origin,
    body: ApiResult<Body>,
) -> ApiResult<axum::Json<Value>> {
    let caller = auth.authorize_with(USER_WRITE, Freshness::Exempt)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let Body(body) = body?;
    let ctx = Context::caller(&caller, origin);
    users_service::set_hedgehog_config(&state, &ctx, &target, body.clone()).await?;
    Ok(axum::Json(body))
}

/// Pin a dashboard to a scene
///
/// Upserts the dashboard shown for `scene` in the user's current project.
#[utoipa::path(
    post,
    path = "/api/users/{uuid}/scene_personalisation/",
    operation_id = "users_scene_personalisation_create",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    request_body(content = crate::http::requests::SceneRequest),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody)),
)]
async fn scene_personalisation(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<UserViews>,
    body: ApiResult<Body>,
) -> ApiResult<Json> {
    let caller = auth.authorize_with(ScopeNeed::NoKeyAccess, Freshness::Exempt)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let Body(body) = body?;
    let body = users_service::serializer_data(body)?;
    let scene = match body.get("scene") {
        Some(v) => fields::char_field(v, Chars::new().max(200))
            .map_err(|e| ApiError::field("scene", e.code, e.detail))?,
        None => None,
    };
    let dashboard = match body.get("dashboard") {
        Some(v) => Some(users_service::validate_dashboard(&state, &target, v).await?),
        None => None,
    };
    let Some(dashboard) = dashboard else {
        return Err(ApiError::non_field(
            "invalid_input",
            "Dashboard must be provided.",
        ));
    };
    let Some(scene) = scene else {
        return Err(ApiError::non_field(
            "invalid_input",
            "Scene must be provided.",
        ));
    };
    users_service::personalise_scene(&state, &target, scene, dashboard).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let view = render::render_user(&state, &requester_of(&caller), target).await?;
    Ok(axum::Json(view))
}

/// The answer of `github_login`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct UserGithubLogin {
    /// The user's resolved GitHub login, or null when no GitHub identity is linked.
    pub github_login: Option<String>,
}

/// Retrieve a user's GitHub login
///
/// The login of the user's personal GitHub integration (the newest one with tokens first), else
/// of a project GitHub integration they connected, else null.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/github_login/",
    operation_id = "users_github_login_retrieve",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    responses(
        (status = 200, body = UserGithubLogin),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:read"]))
)]
async fn github_login(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<UserViews>,
) -> ApiResult<axum::Json<UserGithubLogin>> {
    let caller = auth.authorize(USER_READ)?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let github_login = crate::service::github::github_login(&state, target.id).await?;
    Ok(axum::Json(UserGithubLogin { github_login }))
}
