//! Browser sessions as records: starting one (a fresh id at every login, as Django rotates the
//! key) and ending one. The cookies that carry them are the HTTP layer's (`auth::session`).

use secrecy::SecretString;

use crate::crypto;
use crate::error::ApiResult;
use crate::service::activity::{self, Origin};
use crate::state::AppState;
use crate::store::{NewActivity, SessionClient, SessionRecord};
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

/// How a session's user proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginMethod {
    Password,
    Totp,
    BackupCode,
    /// A remember-device cookie stood in for the second factor.
    RememberedDevice,
    /// A verification link (the address was just verified).
    EmailLink,
}

impl LoginMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginMethod::Password => "password",
            LoginMethod::Totp => "totp",
            LoginMethod::BackupCode => "backup_code",
            LoginMethod::RememberedDevice => "remembered_device",
            LoginMethod::EmailLink => "email_link",
        }
    }
}

/// What a new session records about its client.
pub fn client(origin: &Origin, method: Option<LoginMethod>) -> SessionClient {
    SessionClient {
        ip: origin.ip_text(),
        user_agent: origin.user_agent.clone(),
        login_method: method.map(|m| m.as_str().to_string()),
    }
}

/// A session just stored, with the token its cookie carries (the store keeps only its hash).
pub struct StartedSession {
    pub record: SessionRecord,
    pub token: SecretString,
}

/// A session record not stored yet, with the token its cookie will carry.
pub fn new_session(state: &AppState, kind: NewSession, client: SessionClient) -> StartedSession {
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
        last_activity_at: login_at,
        client,
    };
    StartedSession {
        record,
        token: SecretString::from(token),
    }
}

/// Starts a fresh session, ending `previous` (the session id the browser had).
pub async fn start(
    state: &AppState,
    kind: NewSession,
    client: SessionClient,
    previous: Option<&str>,
) -> ApiResult<StartedSession> {
    if let Some(previous) = previous {
        end(state, previous, &[]).await?;
    }
    let started = new_session(state, kind, client);
    state.store.insert_session(&started.record).await?;
    Ok(started)
}

/// Ends a session, recording `log` if there was one; whether there was.
pub async fn end(state: &AppState, id: &str, log: &[NewActivity]) -> ApiResult<bool> {
    let ended = state.store.delete_session(id, log).await?;
    state.caches.invalidate_session(id);
    if ended {
        activity::committed(state, log);
    }
    Ok(ended)
}
