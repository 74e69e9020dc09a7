//! Browser sessions as records: starting one (a fresh id at every login, as Django rotates the
//! key) and ending one. The cookies that carry them are the HTTP layer's (`auth::session`).

use secrecy::SecretString;

use crate::crypto;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::store::{SessionClient, SessionRecord};
use crate::time::{Micros, SECOND};

/// Django's `SESSION_COOKIE_AGE`: 14 days.
pub const SESSION_AGE: Micros = 14 * 86_400 * SECOND;

/// The id a session is stored under: the SHA-256 of its cookie value.
pub fn session_id(token: &str) -> String {
    crypto::sha256_hex(token.as_bytes())
}

/// What a new session is for.
pub enum NewSession {
    /// Logged in as this user; `second_factor` when the login passed one (a TOTP or backup code,
    /// or a remembered device).
    LoggedIn { user_id: i64, second_factor: bool },
    /// Waiting for the second factor of this user's login.
    PendingTwoFactor { user_id: i64 },
}

/// A session just stored, with the token its cookie carries (the store keeps only its hash).
pub struct StartedSession {
    pub record: SessionRecord,
    pub token: SecretString,
}

/// Starts a fresh session, ending `previous` (the session id the browser had).
pub async fn start(
    state: &AppState,
    kind: NewSession,
    previous: Option<&str>,
) -> ApiResult<StartedSession> {
    if let Some(previous) = previous {
        end(state, previous).await?;
    }
    let now = state.clock.now();
    let token = crypto::random_token(32);
    let (user_id, login_at, pending_user_id, pending_at, two_factor_verified) = match kind {
        NewSession::LoggedIn {
            user_id,
            second_factor,
        } => (Some(user_id), Some(now), None, None, second_factor),
        NewSession::PendingTwoFactor { user_id } => (None, None, Some(user_id), Some(now), false),
    };
    let record = SessionRecord {
        id: session_id(&token),
        user_id,
        created_at: now,
        login_at,
        expires_at: now + SESSION_AGE,
        csrf_token: crypto::random_alphanumeric(64),
        two_factor_verified,
        pending_user_id,
        pending_at,
        totp_setup_secret: None,
        totp_setup_at: None,
        client: SessionClient::default(),
        last_activity_at: None,
    };
    state.store.insert_session(&record).await?;
    Ok(StartedSession {
        record,
        token: SecretString::from(token),
    })
}

/// Ends a session.
pub async fn end(state: &AppState, id: &str) -> ApiResult<()> {
    state.store.delete_session(id, &[]).await?;
    state.caches.invalidate_session(id);
    Ok(())
}
