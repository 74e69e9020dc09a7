//! Browser sessions: the `sessionid` cookie (the database keeps only its SHA-256), the
//! `posthog_csrftoken` double-submit token checked on unsafe requests, and session creation.

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use cookie::{Cookie, CookieBuilder, SameSite};
use time::{Duration, OffsetDateTime};

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

/// Every cookie of the request's `Cookie` headers as (name, value), parsed by the `cookie` crate
/// (pieces split on `;`, names and values trimmed, pieces without a name or `=` skipped); a value
/// in double quotes (RFC 6265's quoted form, as Django writes an emptied cookie) is unquoted.
fn request_cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(|parsed| {
            let parsed = parsed.ok()?;
            let value = parsed.value_raw()?;
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((parsed.name_raw()?, value))
        })
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    request_cookies(headers)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Every cookie whose name starts with `prefix`.
pub fn cookies_with_prefix<'a>(
    headers: &'a HeaderMap,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    request_cookies(headers).filter(move |(k, _)| k.starts_with(prefix))
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
    let now = state.clock.now();
    enforce_two_factor(&entry, OriginalPath::of(parts), now)?;
    state.caches.note_session_used(&entry, now);
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
        last_activity_at: std::sync::atomic::AtomicI64::new(record.last_activity_at.unwrap_or(0)),
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
    "/_ready/",
];
const TWO_FACTOR_ALLOWED_PREFIXES: &[&str] = &["/static/", "/uploaded_media/"];
/// hoglet's own pages for setting the second factor up (PostHog's app does it within the paths
/// above), open to a member who has none yet — not to a session that has yet to pass one.
const TWO_FACTOR_SETUP_PAGES: &[&str] = &[
    "/settings/user-2fa",
    "/settings/user-2fa/enable",
    "/settings/user-2fa/backup-codes",
];

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
    if matches!(entry.two_factor, TwoFactorGate::SetupRequired)
        && TWO_FACTOR_SETUP_PAGES.contains(&path.strip_suffix('/').unwrap_or(&path))
    {
        return Ok(());
    }
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

/// The token a page puts in its forms' `csrfmiddlewaretoken`: the browser's `posthog_csrftoken`
/// cookie, or a new one set with the page. Forms of visitors without a logged-in session are then
/// checked by [`check_double_submit`]; a logged-in session's are checked by [`authenticate`].
pub fn page_csrf_token(state: &AppState, headers: &HeaderMap) -> (String, SetCookies) {
    let mut cookies = SetCookies::default();
    if let Some(token) = cookie(headers, CSRF_COOKIE).filter(|t| !t.is_empty()) {
        return (token.to_string(), cookies);
    }
    let token = crypto::random_alphanumeric(64);
    cookies.push(
        site_cookie(state, CSRF_COOKIE, token.clone(), SameSite::Lax)
            .max_age(Duration::seconds(CSRF_COOKIE_AGE_SECONDS))
            .build(),
    );
    (token, cookies)
}

/// The double-submit check for unsafe requests without a logged-in session (the pre-login forms):
/// the form's `csrfmiddlewaretoken` (or the `X-CSRFToken` header) must equal the
/// `posthog_csrftoken` cookie, with Django's messages.
pub fn check_double_submit(parts: &Parts) -> ApiResult<()> {
    if !is_unsafe(&parts.method) {
        return Ok(());
    }
    match cookie(&parts.headers, CSRF_COOKIE).filter(|t| !t.is_empty()) {
        Some(expected) => check_csrf(parts, expected),
        None => Err(ApiError::forbidden("CSRF Failed: CSRF cookie not set.")),
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
    /// Adds a cookie built with the `cookie` crate (see [`site_cookie`]).
    pub fn push(&mut self, cookie: Cookie<'_>) {
        self.add(cookie.to_string());
    }

    /// Adds an already written `Set-Cookie` value.
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

/// A cookie for the whole site: `Path=/`, the given `SameSite`, and `Secure` when the site is
/// served over https. Callers add `HttpOnly` and the lifetime.
pub fn site_cookie<'c>(
    state: &AppState,
    name: &'c str,
    value: impl Into<Cow<'c, str>>,
    same_site: SameSite,
) -> CookieBuilder<'c> {
    Cookie::build((name, value))
        .path("/")
        .same_site(same_site)
        .secure(state.site_url.starts_with("https://"))
}

/// The cookies of a new session.
fn session_cookies(state: &AppState, token: &str, csrf: &str) -> SetCookies {
    let mut cookies = SetCookies::default();
    cookies.push(
        site_cookie(state, SESSION_COOKIE, token, SameSite::Lax)
            .http_only(true)
            .max_age(Duration::seconds(SESSION_AGE / SECOND))
            .build(),
    );
    cookies.push(
        site_cookie(state, CSRF_COOKIE, csrf, SameSite::Lax)
            .max_age(Duration::seconds(CSRF_COOKIE_AGE_SECONDS))
            .build(),
    );
    cookies
}

/// Cookies that end the browser's session (as Django's `delete_cookie` writes them: an empty
/// quoted value, expired in 1970, `Max-Age=0`).
pub fn clear_session_cookies() -> SetCookies {
    let mut cookies = SetCookies::default();
    cookies.push(
        Cookie::build((SESSION_COOKIE, "\"\""))
            .path("/")
            .same_site(SameSite::Lax)
            .max_age(Duration::ZERO)
            .expires(OffsetDateTime::UNIX_EPOCH)
            .build(),
    );
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
    let name = format!("{REMEMBER_COOKIE_PREFIX}{}", token.id);
    cookies.push(
        site_cookie(state, &name, token.value.as_str(), SameSite::Strict)
            .http_only(true)
            .max_age(Duration::seconds(REMEMBER_AGE_SECONDS))
            .build(),
    );
}

/// The cookies that carry a session just started (see [`crate::service::sessions::start`]).
pub fn started_cookies(state: &AppState, started: &StartedSession) -> SetCookies {
    session_cookies(
        state,
        started.token.expose_secret(),
        &started.record.csrf_token,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for c in cookies {
            headers.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        headers
    }

    #[test]
    fn request_cookies_are_found_by_name_or_prefix() {
        let h = headers(&[
            "a=1; sessionid=tok; junk; =nameless; remember-cookie_x=1:2",
            "posthog_csrftoken=\"quoted\"; remember-cookie_y=3:4",
        ]);
        assert_eq!(cookie(&h, "sessionid"), Some("tok"));
        assert_eq!(cookie(&h, "posthog_csrftoken"), Some("quoted"));
        assert_eq!(cookie(&h, "junk"), None);
        assert_eq!(cookie(&h, "missing"), None);
        let remembered: Vec<_> = cookies_with_prefix(&h, "remember-cookie_").collect();
        assert_eq!(
            remembered,
            [("remember-cookie_x", "1:2"), ("remember-cookie_y", "3:4")]
        );
        assert_eq!(cookie(&headers(&["sessionid=\"\""]), "sessionid"), Some(""));
    }

    /// Each attribute of a written cookie, by name (the order of attributes carries no meaning).
    fn attributes(value: &HeaderValue) -> Vec<String> {
        let mut parts: Vec<String> = value
            .to_str()
            .unwrap()
            .split("; ")
            .map(str::to_ascii_lowercase)
            .collect();
        parts.sort();
        parts
    }

    #[test]
    fn the_cleared_session_cookie_is_djangos() {
        let cleared = clear_session_cookies();
        assert_eq!(cleared.0.len(), 1);
        assert_eq!(
            attributes(&cleared.0[0]),
            [
                "expires=thu, 01 jan 1970 00:00:00 gmt",
                "max-age=0",
                "path=/",
                "samesite=lax",
                "sessionid=\"\"",
            ]
        );
    }
}
