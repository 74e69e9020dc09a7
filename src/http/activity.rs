//! `GET /api/users/{uuid}/activity/` (a hoglet addition): a user's activity log, newest first,
//! cursor-paginated like DRF's `CursorPagination`. The user themself, or staff for anyone; a
//! session or a personal API key with `user:read`.

use axum::extract::State;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Authenticated, UserViews};
use crate::domain::scope::ScopeNeed;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::links;
use crate::http::users::{RequestTarget, UserSegment};
use crate::service::activity::{self, Activity, Cursor, PageRequest};
use crate::service::users::{load_caller, resolve_target};
use crate::state::AppState;
use crate::store::ActivityRecord;
use crate::time::iso_z;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// Who performed the action.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorView {
    /// `user`, `personal_api_key`, `cli` or `system`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The user's id, or the key's id; null for `cli` and `system`.
    pub id: Option<String>,
    /// The user's email, or the key's label.
    pub label: Option<String>,
}

/// One entry of the activity log.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityView {
    pub id: i64,
    /// What happened, e.g. `logged_in`, `password_changed`, `personal_api_key_created`.
    pub activity: String,
    pub created_at: String,
    /// The client address (behind trusted proxies, the one they recorded).
    pub ip: Option<String>,
    /// The client's `User-Agent`, cut to 512 characters.
    pub user_agent: Option<String>,
    pub actor: ActorView,
    /// What the entry is about (field names, a login method, a key's id and label…); never a
    /// secret.
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// A page of the log.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaginatedActivityList {
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<ActivityView>,
}

/// The entries as shown: a user actor labelled with their current email.
pub fn views(
    entries: Vec<ActivityRecord>,
    labels: &std::collections::HashMap<String, String>,
) -> Vec<ActivityView> {
    entries
        .into_iter()
        .map(|e| {
            let label = match (e.actor.kind.as_str(), &e.actor.id) {
                ("user", Some(id)) => labels.get(id).cloned(),
                _ => e.actor.label,
            };
            ActivityView {
                id: e.id,
                activity: e.activity,
                created_at: iso_z(e.created_at),
                ip: e.ip,
                user_agent: e.user_agent,
                actor: ActorView {
                    kind: e.actor.kind,
                    id: e.actor.id,
                    label,
                },
                detail: e.detail,
            }
        })
        .collect()
}

/// Reads `?activity=`, `?cursor=` and `?limit=` (the last of each, as Django does).
fn page_request(params: &[(String, String)]) -> ApiResult<PageRequest> {
    let last = |name: &str| links::last_param(params, name).filter(|v| !v.is_empty());
    let activity = last("activity")
        .map(|name| {
            Activity::parse(name).ok_or_else(|| {
                ApiError::field(
                    "activity",
                    "invalid_choice",
                    format!("Select a valid choice. {name} is not one of the available choices."),
                )
            })
        })
        .transpose()?;
    Ok(PageRequest {
        activity,
        cursor: last("cursor").map(Cursor::decode).transpose()?,
        limit: last("limit")
            .and_then(links::page_bound)
            .map(|l| l.clamp(1, activity::MAX_PAGE as i64) as usize),
    })
}

/// List a user's activity log
///
/// hoglet addition: what happened to the account (logins and failed logins, password, email,
/// 2FA, key, integration and profile changes), who did it and from where, newest first. Entries
/// older than `HOGLET_ACTIVITY_RETENTION_DAYS` are deleted.
#[utoipa::path(
    get,
    path = "/api/users/{uuid}/activity/",
    operation_id = "users_activity_list",
    tag = "users",
    params(
        ("uuid" = String, Path, description = "A user's uuid, or `@me` (others: staff only)."),
        ("activity" = Option<String>, Query, description = "Only entries of this kind."),
        ("cursor" = Option<String>, Query, description = "The page to read, from `next` or `previous`."),
        ("limit" = Option<i64>, Query, description = "Entries per page (1 to 100; default 50)."),
    ),
    responses(
        (status = 200, body = PaginatedActivityList),
        (status = 400, description = "An unknown `activity` (`invalid_choice`).", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such user, or a `cursor` hoglet did not make.", body = ErrorBody),
    ),
    security(("PersonalAPIKeyAuth" = ["user:read"]))
)]
async fn list(
    State(state): State<AppState>,
    UserSegment(segment): UserSegment,
    auth: Authenticated<UserViews>,
    target_uri: RequestTarget,
) -> ApiResult<axum::Json<PaginatedActivityList>> {
    let caller = auth.authorize(ScopeNeed::Read("user"))?;
    let requester = load_caller(&state, &caller).await?;
    let target = resolve_target(&state, &requester, &segment).await?;
    let params = target_uri.query_pairs();
    let page = activity::page(&state, &target, &page_request(&params)?).await?;
    let labels = activity::actor_labels(&state, &target, &page.entries).await?;
    let base = format!("{}{}", state.site_url, target_uri.path());
    let link = |cursor: Cursor| links::cursor_link(&base, &params, cursor.encode());
    Ok(axum::Json(PaginatedActivityList {
        next: page.next.map(link),
        previous: page.previous.map(link),
        results: views(page.entries, &labels),
    }))
}
