//! `/api/users/{uuid}/integrations/…`: the user's personal GitHub integrations (auth spec Part B),
//! and the browser callback `GET /complete/github-link/` that creates them.
//!
//! Authenticators OAuth → personal key → session (401 says `Bearer`); reads need `user:read`,
//! everything else `user:write`; staff may name other users by uuid. Every action but `start`
//! is subject to the per-key burst/sustained throttles.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Authenticated, BearerFirst, Caller};
use crate::domain::fields::{self, Chars, FieldError};
use crate::domain::scope::ScopeNeed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::api_keys::throttle_key;
use crate::http::body::Body;
use crate::http::users::UserSegment;
use crate::service::activity::{Context, Origin};
use crate::service::github::{self, CallbackQuery, StartLink};
use crate::service::users::{load_caller, resolve_target};
use crate::state::AppState;
use crate::store::UserRecord;
use crate::time::iso_z;

const USER_READ: ScopeNeed = ScopeNeed::Read("user");
const USER_WRITE: ScopeNeed = ScopeNeed::Write("user");
const REPO_FORMAT: &str = "repo must be in owner/repo format";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(github_start))
        .routes(routes!(github_destroy))
        .routes(routes!(github_repos))
        .routes(routes!(github_repos_refresh))
        .routes(routes!(github_branches))
        // A browser page, not part of the API document.
        .route(
            "/complete/github-link/",
            axum::routing::get(github_link_complete),
        )
}

/// The `{installation_id}` path segment: digits only, or the URL matches no route.
pub struct InstallationSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for InstallationSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let no_route = || ApiError::NotFound("Endpoint not found.".into());
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| no_route())?;
        params
            .into_iter()
            .find(|(name, _)| name == "installation_id")
            .map(|(_, value)| value)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .map(InstallationSegment)
            .ok_or_else(no_route)
    }
}

/// The caller, authorised for the action and throttled, and the user the path names.
async fn target_of(
    state: &AppState,
    auth: Authenticated<BearerFirst>,
    need: ScopeNeed,
    segment: &str,
    throttled: bool,
) -> ApiResult<(Caller, UserRecord)> {
    let caller = auth.authorize(need)?;
    if throttled {
        throttle_key(state, &caller).await?;
    }
    let requester = load_caller(state, &caller).await?;
    let target = resolve_target(state, &requester, segment).await?;
    Ok((caller, target))
}

/// One personal integration as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserIntegrationView {
    pub id: String,
    pub kind: String,
    pub installation_id: String,
    pub repository_selection: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub account: Option<Value>,
    pub uses_shared_installation: bool,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserIntegrationList {
    pub results: Vec<UserIntegrationView>,
}

/// List personal integrations
///
/// Every GitHub integration of the user, oldest first (not paginated: `limit` and `offset` are
/// ignored).
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/integrations/",
    operation_id = "users_integrations_list",
    tag = "users",
    params(
        ("uuid" = String, Path, description = "A user's uuid, or `@me`."),
        ("limit" = Option<i64>, Query, description = "Ignored: the list is not paginated."),
        ("offset" = Option<i64>, Query, description = "Ignored: the list is not paginated."),
    ),
    responses(
        (status = 200, body = UserIntegrationList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:read"]))
)]
async fn list(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<BearerFirst>,
) -> ApiResult<axum::Json<UserIntegrationList>> {
    let (_, target) = target_of(&state, auth, USER_READ, &segment, true).await?;
    let shared = github::shared_installations(&state, &target).await?;
    let rows = github::personal_integrations(&state, &target).await?;
    let results = rows
        .into_iter()
        .map(|row| {
            let text = |key: &str| {
                row.config
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            UserIntegrationView {
                id: row.id.to_string(),
                kind: row.kind.clone(),
                repository_selection: text("repository_selection"),
                account: row.config.get("account").filter(|a| a.is_object()).cloned(),
                uses_shared_installation: shared.contains(&row.integration_id),
                installation_id: row.integration_id.clone(),
                created_at: iso_z(row.created_at),
            }
        })
        .collect();
    Ok(axum::Json(UserIntegrationList { results }))
}

/// Start linking GitHub
///
/// Usually returns `install_url` pointing at the App's install page, where the user picks any
/// account or organization. PostHog Code fast path: with `connect_from: "posthog_code"`, when
/// the project already has a GitHub installation the user has not linked, `install_url` is the
/// OAuth authorize page instead (`connect_flow: "oauth_authorize"`), and when it has none, the
/// OAuth page discovers the user's installations (`"oauth_discover"`).
#[utoipa::path(
    post,
    path = "/api/users/{uuid}/integrations/github/start/",
    operation_id = "users_integrations_github_start_create",
    tag = "users",
    params(("uuid" = String, Path, description = "A user's uuid, or `@me`.")),
    request_body(content = Option<crate::http::requests::GithubStartRequest>),
    responses(
        (status = 200, body = StartLink),
        (status = 400, description = "The GitHub App is not configured, `team_id` is not an integer or not a project of the user, or every installation is already linked (`invalid_input`).", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn github_start(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<BearerFirst>,
    body: ApiResult<Body>,
) -> ApiResult<axum::Json<StartLink>> {
    // `start` carries only PostHog's password-attempt throttle, which never applies here.
    let (_, target) = target_of(&state, auth, USER_WRITE, &segment, false).await?;
    let body = match body? {
        Body(Value::Null) => Map::new(),
        other => other.object()?,
    };
    Ok(axum::Json(github::start(&state, &target, &body).await?))
}

/// Remove a GitHub integration
///
/// Deletes the user's integration for this installation (and its tokens).
#[utoipa::path(
    delete,
    path = "/api/users/{uuid}/integrations/github/{installation_id}/",
    operation_id = "users_integrations_github_destroy",
    tag = "users",
    params(
        ("uuid" = String, Path, description = "A user's uuid, or `@me`."),
        ("installation_id" = String, Path, description = "The GitHub installation id (digits)."),
    ),
    responses(
        (status = 204, description = "Integration removed."),
        (status = 404, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn github_destroy(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    InstallationSegment(installation): InstallationSegment,
    auth: Authenticated<BearerFirst>,
    origin: Origin,
) -> ApiResult<StatusCode> {
    let (caller, target) = target_of(&state, auth, USER_WRITE, &segment, true).await?;
    let integration = github::find(&state, target.id, &installation).await?;
    github::unlink(&state, &Context::caller(&caller, origin), &integration).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query string as DRF's `QueryDict.get` reads it (the last value of a repeated name).
struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    fn of(parts: &Parts) -> Self {
        Self(
            parts
                .uri
                .query()
                .and_then(|q| serde_urlencoded::from_str(q).ok())
                .unwrap_or_default(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn search(&self) -> ApiResult<String> {
        match self.get("search") {
            Some(v) => Ok(
                fields::char_field(&Value::String(v.into()), Chars::new().blank_ok())
                    .map_err(field("search"))?
                    .unwrap_or_default(),
            ),
            None => Ok(String::new()),
        }
    }

    fn integer(
        &self,
        name: &'static str,
        default: i64,
        min: i64,
        max: Option<i64>,
    ) -> ApiResult<i64> {
        match self.get(name) {
            Some(v) => {
                fields::integer_field(&Value::String(v.into()), Some(min), max).map_err(field(name))
            }
            None => Ok(default),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(Self::of(parts))
    }
}

fn field(attr: &'static str) -> impl Fn(FieldError) -> ApiError {
    move |e| ApiError::field(attr, e.code, e.detail)
}

/// `offset..offset + limit` of `items`, and whether more follow.
fn page<T: Clone>(items: &[T], offset: i64, limit: i64) -> (Vec<T>, bool) {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(items.len());
    let end = start
        .saturating_add(usize::try_from(limit).unwrap_or(0))
        .min(items.len());
    let has_more = offset.saturating_add(limit) < items.len() as i64;
    (items[start..end].to_vec(), has_more)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GithubRepos {
    #[schema(value_type = Vec<Object>)]
    pub repositories: Vec<Value>,
    pub has_more: bool,
}

/// List repositories of an installation
///
/// Repositories the installation can reach, filtered by `search` (case-insensitive, on
/// `full_name`) and sliced by `limit`/`offset`. Served from a snapshot refreshed hourly.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/integrations/github/{installation_id}/repos/",
    operation_id = "users_integrations_github_repos_retrieve",
    tag = "users",
    params(
        ("uuid" = String, Path, description = "A user's uuid, or `@me`."),
        ("installation_id" = String, Path, description = "The GitHub installation id (digits)."),
        ("search" = Option<String>, Query, description = "Substring of `full_name`."),
        ("limit" = Option<i64>, Query, description = "1 to 500, default 100."),
        ("offset" = Option<i64>, Query, description = "Default 0."),
    ),
    responses(
        (status = 200, body = GithubRepos),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:read"]))
)]
async fn github_repos(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    InstallationSegment(installation): InstallationSegment,
    auth: Authenticated<BearerFirst>,
    query: QueryParams,
) -> ApiResult<axum::Json<GithubRepos>> {
    let (_, target) = target_of(&state, auth, USER_READ, &segment, true).await?;
    let search = query.search()?.to_lowercase();
    let limit = query.integer("limit", 100, 1, Some(500))?;
    let offset = query.integer("offset", 0, 0, None)?;
    let mut integration = github::find(&state, target.id, &installation).await?;
    let repositories = github::repositories(&state, &mut integration).await?;
    let matching: Vec<Value> = repositories
        .into_iter()
        .filter(|r| {
            search.is_empty()
                || r.get("full_name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.to_lowercase().contains(&search))
        })
        .collect();
    let (repositories, has_more) = page(&matching, offset, limit);
    Ok(axum::Json(GithubRepos {
        repositories,
        has_more,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GithubReposRefresh {
    #[schema(value_type = Vec<Object>)]
    pub repositories: Vec<Value>,
}

/// Refresh repositories of an installation
///
/// Re-reads the repository list from GitHub (at most once per 30 seconds) and returns all of it.
#[utoipa::path(
    post,
    path = "/api/users/{uuid}/integrations/github/{installation_id}/repos/refresh/",
    operation_id = "users_integrations_github_repos_refresh_create",
    tag = "users",
    params(
        ("uuid" = String, Path, description = "A user's uuid, or `@me`."),
        ("installation_id" = String, Path, description = "The GitHub installation id (digits)."),
    ),
    responses(
        (status = 200, body = GithubReposRefresh),
        (status = 404, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:write"]))
)]
async fn github_repos_refresh(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    InstallationSegment(installation): InstallationSegment,
    auth: Authenticated<BearerFirst>,
) -> ApiResult<axum::Json<GithubReposRefresh>> {
    let (_, target) = target_of(&state, auth, USER_WRITE, &segment, true).await?;
    let mut integration = github::find(&state, target.id, &installation).await?;
    let repositories = github::refresh_repositories(&state, &mut integration).await?;
    Ok(axum::Json(GithubReposRefresh { repositories }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GithubBranches {
    pub branches: Vec<String>,
    pub default_branch: Option<String>,
    pub has_more: bool,
}

/// `owner/repo`: two parts of `[A-Za-z0-9_.-]+`, neither `.` nor `..`.
fn valid_repo(repo: &str) -> bool {
    let parts: Vec<&str> = repo.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        })
}

/// List branches of a repository
///
/// Branch names of `repo` (`owner/repo`), default branch first, filtered by `search` and sliced
/// by `limit`/`offset`. Cached for ten minutes.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/integrations/github/{installation_id}/branches/",
    operation_id = "users_integrations_github_branches_retrieve",
    tag = "users",
    params(
        ("uuid" = String, Path, description = "A user's uuid, or `@me`."),
        ("installation_id" = String, Path, description = "The GitHub installation id (digits)."),
        ("repo" = String, Query, description = "`owner/repo`."),
        ("search" = Option<String>, Query, description = "Substring of the branch name."),
        ("limit" = Option<i64>, Query, description = "1 to 1000, default 100."),
        ("offset" = Option<i64>, Query, description = "Default 0."),
    ),
    responses(
        (status = 200, body = GithubBranches),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:read"]))
)]
async fn github_branches(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    InstallationSegment(installation): InstallationSegment,
    auth: Authenticated<BearerFirst>,
    query: QueryParams,
) -> ApiResult<axum::Json<GithubBranches>> {
    let (_, target) = target_of(&state, auth, USER_READ, &segment, true).await?;
    let repo = match query.get("repo") {
        Some(v) => fields::char_field(&Value::String(v.into()), Chars::new())
            .map_err(field("repo"))?
            .unwrap_or_default(),
        None => {
            return Err(ApiError::field(
                "repo",
                "required",
                "This field is required.",
            ));
        }
    };
    let search = query.search()?.to_lowercase();
    let limit = query.integer("limit", 100, 1, Some(1000))?;
    let offset = query.integer("offset", 0, 0, None)?;
    if !valid_repo(&repo) {
        return Err(ApiError::non_field("invalid_input", REPO_FORMAT));
    }
    let mut integration = github::find(&state, target.id, &installation).await?;
    let entry = github::branches(&state, &mut integration, &repo).await?;
    let matching: Vec<String> = entry
        .branches
        .into_iter()
        .filter(|b| search.is_empty() || b.to_lowercase().contains(&search))
        .collect();
    let (branches, has_more) = page(&matching, offset, limit);
    Ok(axum::Json(GithubBranches {
        branches,
        default_branch: entry.default_branch,
        has_more,
    }))
}

/// `GET /complete/github-link/`: where GitHub sends the browser back. Needs the browser's
/// session; every outcome is a redirect to the settings page (or PostHog Code's page).
async fn github_link_complete(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let origin = Origin::from_request_parts(&mut parts, &state)
        .await
        .unwrap_or_default();
    let caller = match crate::auth::session::authenticate(&parts, &state).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let user = match caller {
        Some(caller) => match load_caller(&state, &caller).await {
            Ok(user) => Some(user),
            Err(ApiError::NotAuthenticated(_)) => None,
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let Some(user) = user else {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                serde_json::json!({"detail": "Authentication credentials were not provided."}),
            ),
        )
            .into_response();
    };
    let query: CallbackQuery = parts
        .uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    let ctx = Context::anonymous(origin).as_user(user.id);
    let location = github::complete(&state, &ctx, &user, query).await;
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_format() {
        assert!(valid_repo("PostHog/posthog.js"));
        assert!(valid_repo("a_b/c-d"));
        assert!(!valid_repo("owner"));
        assert!(!valid_repo("a/b/c"));
        assert!(!valid_repo("../b"));
        assert!(!valid_repo("a/.."));
        assert!(!valid_repo("a/b c"));
        assert!(!valid_repo("a/"));
    }

    #[test]
    fn pages() {
        let items = [1, 2, 3, 4, 5];
        assert_eq!(page(&items, 0, 2), (vec![1, 2], true));
        assert_eq!(page(&items, 4, 2), (vec![5], false));
        assert_eq!(page(&items, 10, 2), (vec![], false));
        assert_eq!(page(&items, 3, 2), (vec![4, 5], false));
    }
}
