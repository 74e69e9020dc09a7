//! A user's signed-in browser sessions as PostHog's `login_sessions` shows them: listing, and
//! ending one or every other one. Each session is named by an opaque id derived from its stored
//! id with the secret key: never the stored id (the cookie's hash, also the cache key).

use serde_json::json;

use crate::crypto;
use crate::error::{ApiError, ApiResult};
use crate::service::activity::{self, Activity, Context};
use crate::state::AppState;
use crate::store::SessionRecord;
use crate::time::{Micros, iso_z};

/// The purpose the public ids' key is derived for.
const ID_PURPOSE: &str = "login-session-id";
/// Hex characters of a public id (128 bits).
const ID_CHARS: usize = 32;

pub const NOT_FOUND: &str = "Login session not found.";

/// One session as the API and the page show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LoginSession {
    /// Opaque and stable for the session's life.
    pub id: String,
    /// When the session signed in.
    pub created_at: String,
    /// When the session was last used (recorded at most once a minute).
    pub last_activity: Option<String>,
    /// "City, Country" or "Country" when a GeoIP database is configured, else null.
    pub location: Option<String>,
    /// The browser and system named by the session's `User-Agent` ("Chrome on macOS"), or null.
    pub device: Option<String>,
    /// How it signed in: `password`, `totp`, `backup_code`, `remembered_device`, …
    pub login_method: Option<String>,
    /// Whether this is the session making the request.
    pub is_current: bool,
}

/// The public ids of sessions: a keyed hash of the stored id.
struct Ids([u8; 32]);

impl Ids {
    fn new(state: &AppState) -> Self {
        Ids(state.derived_key(ID_PURPOSE))
    }

    fn of(&self, stored_id: &str) -> String {
        let mut id = hex::encode(crypto::hmac_sha256(&self.0, stored_id.as_bytes()));
        id.truncate(ID_CHARS);
        id
    }
}

/// The user's signed-in sessions, `current` (the caller's stored session id) first, then the
/// newest login first.
pub async fn list(state: &AppState, user_id: i64, current: &str) -> ApiResult<Vec<LoginSession>> {
    let now = state.clock.now();
    let records = state.store.sessions_of(user_id, now).await?;
    let ids = Ids::new(state);
    let mut sessions: Vec<LoginSession> = records
        .iter()
        .map(|record| view(state, &ids, record, current, now))
        .collect();
    // Stable: the store's order (newest login first) stays among the others.
    sessions.sort_by_key(|s| !s.is_current);
    Ok(sessions)
}

fn view(
    state: &AppState,
    ids: &Ids,
    record: &SessionRecord,
    current: &str,
    now: Micros,
) -> LoginSession {
    let is_current = record.id == current;
    let signed_in = record.login_at.unwrap_or(record.created_at);
    // The request being answered is the current session's latest activity (its own write is
    // still queued).
    let last_activity = if is_current {
        Some(now)
    } else {
        record.last_activity_at.or(Some(signed_in))
    };
    LoginSession {
        id: ids.of(&record.id),
        created_at: iso_z(signed_in),
        last_activity: last_activity.map(iso_z),
        location: location(state, record.client.ip.as_deref()),
        device: record.client.user_agent.as_deref().and_then(device),
        login_method: record.client.login_method.clone(),
        is_current,
    }
}

fn location(state: &AppState, ip: Option<&str>) -> Option<String> {
    let geoip = state.geoip.as_ref()?;
    geoip.locate(ip?.parse().ok()?)
}

/// "Browser on System" from a `User-Agent` (woothee's names, with Apple's systems renamed to
/// what people call them); one of the two when only it is known; `None` when neither is.
pub fn device(user_agent: &str) -> Option<String> {
    let parsed = woothee::parser::Parser::new().parse(user_agent)?;
    let known = |s: &str| !s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN;
    let browser = Some(parsed.name).filter(|s| known(s));
    let os = Some(parsed.os).filter(|s| known(s)).map(|os| match os {
        "Mac OSX" => "macOS",
        "iPhone" | "iPad" | "iPod" => "iOS",
        other => other,
    });
    match (browser, os) {
        (Some(browser), Some(os)) => Some(format!("{browser} on {os}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_string()),
        (None, None) => None,
    }
}

/// The stored session behind a public id, among the user's signed-in sessions.
async fn find(state: &AppState, user_id: i64, public_id: &str) -> ApiResult<SessionRecord> {
    let ids = Ids::new(state);
    let wanted = public_id.trim().to_ascii_lowercase();
    state
        .store
        .sessions_of(user_id, state.clock.now())
        .await?
        .into_iter()
        .find(|s| crypto::constant_time_eq(ids.of(&s.id).as_bytes(), wanted.as_bytes()))
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.into()))
}

/// Ends the user's session named `public_id` (the caller's own, `current`, included: its cookie
/// then stops working); returns whether it was the current one. Recorded as `session_revoked`.
pub async fn revoke(
    state: &AppState,
    ctx: &Context,
    user_id: i64,
    current: &str,
    public_id: &str,
) -> ApiResult<bool> {
    let session = find(state, user_id, public_id).await?;
    let is_current = session.id == current;
    let log = [ctx.entry(
        state,
        Some(user_id),
        Activity::SessionRevoked,
        json!({
            "scope": "one",
            "revoked_count": 1,
            "current": is_current,
            "device": session.client.user_agent.as_deref().and_then(device),
            "login_method": session.client.login_method,
        }),
    )];
    let deleted = state.store.delete_session(&session.id, &log).await?;
    state.caches.invalidate_session(&session.id);
    if !deleted {
        // Ended meanwhile (another request, a logout): as if it had not been listed.
        return Err(ApiError::NotFound(NOT_FOUND.into()));
    }
    activity::committed(state, &log);
    Ok(is_current)
}

/// Ends every session of the user but `current`; returns how many signed-in sessions ended (the
/// ones the list showed). Logins of the user still waiting for their second factor end too, but
/// are not counted: they were never signed in. Recorded as one `session_revoked` with the count
/// (nothing is recorded when no other session was signed in).
pub async fn revoke_others(
    state: &AppState,
    ctx: &Context,
    user_id: i64,
    current: &str,
) -> ApiResult<u64> {
    let others = state
        .store
        .sessions_of(user_id, state.clock.now())
        .await?
        .iter()
        .filter(|s| s.id != current)
        .count() as u64;
    let log = if others == 0 {
        Vec::new()
    } else {
        vec![ctx.entry(
            state,
            Some(user_id),
            Activity::SessionRevoked,
            json!({"scope": "others", "revoked_count": others}),
        )]
    };
    state
        .store
        .delete_sessions_of(user_id, Some(current), &log)
        .await?;
    state.caches.invalidate_user(user_id);
    activity::committed(state, &log);
    Ok(others)
}

#[cfg(test)]
mod tests {
    use super::device;

    #[test]
    fn devices_are_named_from_the_user_agent() {
        let cases = [
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                Some("Chrome on macOS"),
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
                Some("Firefox on Windows 10"),
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
                Some("Safari on iOS"),
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                Some("Chrome on Linux"),
            ),
            ("", None),
            ("-", None),
            ("something nobody knows", None),
        ];
        for (user_agent, expected) in cases {
            assert_eq!(device(user_agent).as_deref(), expected, "{user_agent}");
        }
    }
}
