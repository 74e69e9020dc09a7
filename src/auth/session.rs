//! Browser sessions: the `sessionid` cookie (the database keeps only its SHA-256), the
//! `posthog_csrftoken` double-submit token checked on unsafe requests, and session creation.

use std::sync::Arc;

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};

use super::{BodyCredentials, OriginalPath};
use super::{Caller, Credential};
use crate::cache::{SessionEntry, TwoFactorGate};
use crate::crypto;
use crate::error::{ApiError, ApiResult};
use crate::service::accounts::{REMEMBER_AGE_SECONDS, RememberToken};
use crate::service::sessions::StartedSession;
use crate::state::AppState;
use crate::store::{SessionRecord, UserRecord};
use crate::time::{Micros, SECOND};
use secrecy::ExposeSecret;

pub const SESSION_COOKIE: &str = "sessionid";
pub const CSRF_COOKIE: &str = "posthog_csrftoken";
pub const CSRF_HEADER: &str = "x-csrftoken";
pub use crate::service::sessions::SESSION_AGE;
/// Django's `CSRF_COOKIE_AGE`: one year.
const CSRF_COOKIE_AGE_SECONDS: i64 = 31_449_600;

pub use crate::service::caller::SessionAuth;

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// Every cookie whose name starts with `prefix`.
pub fn cookies_with_prefix<'a>(
    headers: &'a HeaderMap,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| k.starts_with(prefix))
}

pub use crate::service::sessions::session_id;

fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Authenticates the request by its session cookie. An unknown or expired cookie is simply no
/// session; a valid session making an unsafe request must present its CSRF token.
pub async fn authenticate(parts: &Parts, state: &AppState) -> ApiResult<Option<Caller>> {
    let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(entry) = logged_in_session(state, &session_id(token)).await? else {
        return Ok(None);
    };
    if is_unsafe(&parts.method) {
        check_csrf(parts, &entry.csrf_token)?;
    }
    enforce_two_factor(&entry, OriginalPath::of(parts), state.clock.now())?;
    Ok(Some(Caller {
        user_id: entry.user_id,
        credential: Credential::Session(Arc::new(SessionAuth {
            session_id: entry.id.clone(),
            created_at: entry.login_at.unwrap_or(0),
        })),
    }))
}

/// A logged-in, unexpired session of an active user (cached briefly).
async fn logged_in_session(state: &AppState, id: &str) -> ApiResult<Option<Arc<SessionEntry>>> {
    let now = state.clock.now();
    if let Some(entry) = state.caches.session(id) {
        return Ok((entry.expires_at > now).then_some(entry));
    }
    let generation = state.caches.generation();
    let Some(record) = state.store.session(id).await? else {
        return Ok(None);
    };
    let Some(user_id) = record.user_id else {
        return Ok(None);
    };
    if record.expires_at <= now {
        return Ok(None);
    }
    let Some(user) = state
        .store
        .user_by_id(user_id)
        .await?
        .filter(|u| u.is_active)
    else {
        return Ok(None);
    };
    let two_factor = two_factor_gate(state, &user, record.two_factor_verified).await?;
    let entry = Arc::new(SessionEntry {
        id: record.id,
        user_id,
        created_at: record.created_at,
        login_at: record.login_at,
        expires_at: record.expires_at,
        csrf_token: record.csrf_token,
        two_factor,
    });
    state.caches.put_session(entry.clone(), generation);
    Ok(Some(entry))
}

/// Whether the user's current organization (else their first one, as PostHog's
/// `User.organization` picks it) enforces 2FA, and where this session stands with it.
async fn two_factor_gate(
    state: &AppState,
    user: &UserRecord,
    session_verified: bool,
) -> ApiResult<TwoFactorGate> {
    let organization = match user.current_organization_id {
        Some(id) => Some(id),
        None => state
            .store
            .memberships_of(&[user.id])
            .await?
            .first()
            .map(|m| m.organization.id),
    };
    let enforced = match organization {
        Some(id) => state
            .store
            .organization(id)
            .await?
            .is_some_and(|o| o.enforce_2fa == Some(true)),
        None => false,
    };
    if !enforced {
        return Ok(TwoFactorGate::NotEnforced);
    }
    Ok(match state.store.totp_device(user.id).await? {
        None => TwoFactorGate::SetupRequired,
        Some(_) => TwoFactorGate::Enforced {
            verified: session_verified,
        },
    })
}

/// Sessions PostHog started before its 2FA enforcement shipped are exempt (2025-08-25 UTC).
const TWO_FACTOR_ENFORCED_SINCE: Micros = 1_756_080_000 * SECOND;

/// What a session of a member of an organization that enforces 2FA may still reach, exactly as
/// PostHog's `two_factor_session.py` lists it (trailing slashes included: `/api/users/@me` is
/// not on the list).
pub const TWO_FACTOR_ALLOWED_PATHS: &[&str] = &[
    "/api/users/@me/two_factor_start_setup/",
    "/api/users/@me/two_factor_validate/",
    "/api/users/@me/two_factor_status/",
    "/api/users/@me/two_factor_backup_codes/",
    "/api/users/@me/two_factor_disable/",
    "/logout/",
    "/api/logout/",
    "/api/login/",
    "/api/login/token/",
    "/api/users/@me/",
    "/_health/",
];
const TWO_FACTOR_ALLOWED_PREFIXES: &[&str] = &["/static/", "/uploaded_media/"];

/// users.md §2.8: a session of a member of an organization that enforces 2FA reaches only the
/// paths that let them set it up or log out, until it has passed the second factor. `path` is
/// the path as sent (Django compares its decoded `request.path`).
fn enforce_two_factor(entry: &SessionEntry, path: &str, now: Micros) -> ApiResult<()> {
    let pending = match entry.two_factor {
        TwoFactorGate::NotEnforced => return Ok(()),
        TwoFactorGate::SetupRequired => ("two_factor_setup_required", "2FA setup required"),
        TwoFactorGate::Enforced { verified } => {
            let login_at = entry.login_at.unwrap_or(entry.created_at);
            if verified && now - login_at <= SESSION_AGE {
                return Ok(());
            }
            (
                "two_factor_verification_required",
                "2FA verification required",
            )
        }
    };
    if entry.created_at < TWO_FACTOR_ENFORCED_SINCE {
        return Ok(());
    }
    let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    if TWO_FACTOR_ALLOWED_PATHS.contains(&path.as_ref())
        || TWO_FACTOR_ALLOWED_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
    {
        return Ok(());
    }
    let (code, detail) = pending;
    Err(ApiError::PermissionDenied {
        code,
        detail: detail.into(),
    })
}

/// Django's CSRF check for session-authenticated unsafe requests: the token from the
/// `X-CSRFToken` header (or a form's `csrfmiddlewaretoken`) must be the session's.
fn check_csrf(parts: &Parts, expected: &str) -> ApiResult<()> {
    let from_header = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let from_form = parts
        .extensions
        .get::<BodyCredentials>()
        .and_then(|body| body.csrf_token.as_deref());
    let Some(presented) = from_header.or(from_form) else {
        return Err(ApiError::forbidden("CSRF Failed: CSRF token missing."));
    };
    if crypto::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::forbidden("CSRF Failed: CSRF token incorrect."))
    }
}

/// The session named by the request's cookie, logged in or not (for the 2FA login step and
/// pending 2FA setup), if it has not expired.
pub async fn current_record(
    parts_headers: &HeaderMap,
    state: &AppState,
) -> ApiResult<Option<SessionRecord>> {
    let Some(token) = cookie(parts_headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let now = state.clock.now();
    Ok(state
        .store
        .session(&session_id(token))
        .await?
        .filter(|s| s.expires_at > now))
}

/// `Set-Cookie` values a response carries.
#[derive(Debug, Default)]
pub struct SetCookies(pub Vec<HeaderValue>);

impl SetCookies {
    pub fn add(&mut self, value: String) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.0.push(v);
        }
    }

    pub fn apply(self, headers: &mut HeaderMap) {
        for v in self.0 {
            headers.append(SET_COOKIE, v);
        }
    }
}

fn secure_attribute(state: &AppState) -> &'static str {
    if state.site_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// The cookies of a new session.
fn session_cookies(state: &AppState, token: &str, csrf: &str) -> SetCookies {
    let secure = secure_attribute(state);
    let mut cookies = SetCookies::default();
    cookies.add(format!(
        "{SESSION_COOKIE}={token}; HttpOnly; Max-Age={}; Path=/; SameSite=Lax{secure}",
        SESSION_AGE / SECOND
    ));
    cookies.add(format!(
        "{CSRF_COOKIE}={csrf}; Max-Age={CSRF_COOKIE_AGE_SECONDS}; Path=/; SameSite=Lax{secure}"
    ));
    cookies
}

/// Cookies that end the browser's session.
pub fn clear_session_cookies() -> SetCookies {
    let mut cookies = SetCookies::default();
    cookies.add(format!(
        "{SESSION_COOKIE}=\"\"; expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/; SameSite=Lax"
    ));
    cookies
}

const REMEMBER_COOKIE_PREFIX: &str = "remember-cookie_";

/// The remember-device tokens the browser presents.
pub fn remember_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    cookies_with_prefix(headers, REMEMBER_COOKIE_PREFIX).map(|(_, value)| value)
}

/// The cookie that lets this browser skip the second factor (see
/// [`crate::service::accounts::remember_token`]).
pub fn add_remember_cookie(state: &AppState, cookies: &mut SetCookies, token: &RememberToken) {
    cookies.add(format!(
        "{REMEMBER_COOKIE_PREFIX}{}={}; HttpOnly; Max-Age={REMEMBER_AGE_SECONDS}; Path=/; SameSite=Strict{}",
        token.id,
        token.value,
        secure_attribute(state),
    ));
}

/// The cookies that carry a session just started (see [`crate::service::sessions::start`]).
pub fn started_cookies(state: &AppState, started: &StartedSession) -> SetCookies {
    session_cookies(
        state,
        started.token.expose_secret(),
        &started.record.csrf_token,
    )
}
