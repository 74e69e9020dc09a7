//! `/settings/user-sessions`: the user's signed-in browser sessions, with "Revoke" for each other
//! one and "Sign out everywhere else" — the use cases behind `/api/users/@me/login_sessions/`.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::layout::{Layout, notice};
use super::{PageError, see_other};
use crate::auth::session;
use crate::auth::{Authenticated, Caller, SessionOnly};
use crate::error::ApiError;
use crate::http::body::Body;
use crate::http::users::USER_WRITE;
use crate::service::activity::{Context, Origin};
use crate::service::login_sessions::{self, LoginSession};
use crate::state::AppState;

type PageResult = Result<Response, PageError>;

pub const PAGE: &str = "/settings/user-sessions";

/// A session as the table shows it.
pub struct SessionRow {
    pub id: String,
    pub device: String,
    pub location: String,
    pub login_method: String,
    pub created: String,
    pub last_active: String,
    pub is_current: bool,
}

/// `2026-05-01T12:00:00.123Z` as `2026-05-01 12:00 UTC`.
fn minute(iso: &str) -> String {
    let head: String = iso.chars().take(16).collect();
    format!("{} UTC", head.replacen('T', " ", 1))
}

fn method_label(method: Option<&str>) -> String {
    match method {
        Some("password") => "Password".into(),
        Some("totp") => "Password and authenticator code".into(),
        Some("backup_code") => "Password and backup code".into(),
        Some("remembered_device") => "Password on a remembered device".into(),
        Some(other) => other.replace('_', " "),
        None => "Unknown".into(),
    }
}

impl SessionRow {
    fn of(s: &LoginSession) -> Self {
        Self {
            id: s.id.clone(),
            device: s.device.clone().unwrap_or_else(|| "Unknown device".into()),
            location: s
                .location
                .clone()
                .unwrap_or_else(|| "Unknown location".into()),
            login_method: method_label(s.login_method.as_deref()),
            created: minute(&s.created_at),
            last_active: s
                .last_activity
                .as_deref()
                .map_or_else(|| "—".into(), minute),
            is_current: s.is_current,
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "settings_sessions.html", whitespace = "minimize")]
pub struct SessionsPage {
    layout: Layout,
    sessions: Vec<SessionRow>,
    /// Whether any session but this one is signed in.
    has_others: bool,
}

fn current_session(caller: &Caller) -> Result<&str, ApiError> {
    caller
        .session()
        .map(|s| s.session_id.as_str())
        .ok_or(ApiError::NotAuthenticated(crate::error::Challenge::Session))
}

/// `GET /settings/user-sessions`.
pub async fn page(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let (caller, user) = signed_in!(&state, auth, PAGE, Authenticated::authorize_unscoped);
    let current = current_session(&caller)?;
    let sessions = login_sessions::list(&state, user.id, current).await?;
    let (csrf, _) = session::page_csrf_token(&state, &headers);
    let page = SessionsPage {
        layout: Layout::user("Sessions", csrf, &user).with_notice(notice(query.as_deref())),
        has_others: sessions.iter().any(|s| !s.is_current),
        sessions: sessions.iter().map(SessionRow::of).collect(),
    };
    Ok(page.into_response())
}

/// `POST /settings/user-sessions/{id}/revoke`: ends that session (needs a recent login). The
/// page offers it for the other sessions; the current one, if sent, signs this browser out.
pub async fn revoke(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    Path(id): Path<String>,
    origin: Origin,
    body: Result<Body, ApiError>,
) -> PageResult {
    body?;
    let (caller, user) = signed_in!(&state, auth, PAGE, |a| a.authorize(USER_WRITE));
    let current = current_session(&caller)?;
    let ctx = Context::caller(&caller, origin);
    match login_sessions::revoke(&state, &ctx, user.id, current, &id).await {
        Ok(true) => {
            let mut response = see_other("/login?notice=logged_out");
            session::clear_session_cookies().apply(response.headers_mut());
            Ok(response)
        }
        Ok(false) => Ok(see_other("/settings/user-sessions?notice=session_revoked")),
        // Ended meanwhile (a second click, a logout there): the list shows what is left.
        Err(ApiError::NotFound(_)) => Ok(see_other("/settings/user-sessions?notice=session_gone")),
        Err(e) => Err(e.into()),
    }
}

/// `POST /settings/user-sessions/revoke-others`: ends every other session (needs a recent login).
pub async fn revoke_others(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    body: Result<Body, ApiError>,
) -> PageResult {
    body?;
    let (caller, user) = signed_in!(&state, auth, PAGE, |a| a.authorize(USER_WRITE));
    let current = current_session(&caller)?;
    let ctx = Context::caller(&caller, origin);
    login_sessions::revoke_others(&state, &ctx, user.id, current).await?;
    Ok(see_other(
        "/settings/user-sessions?notice=other_sessions_revoked",
    ))
}
