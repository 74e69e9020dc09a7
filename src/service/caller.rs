//! Who is acting: an authenticated caller as the use cases see it (the HTTP layer's `auth`
//! module proves it; the use cases only read it).

use std::sync::Arc;

use crate::cache::KeyEntry;
use crate::time::Micros;

/// A logged-in browser session as the request sees it.
#[derive(Debug)]
pub struct SessionAuth {
    pub session_id: String,
    /// When the user last logged in with this session (PostHog's `session_created_at`).
    pub created_at: Micros,
}

/// How long after login a session may perform sensitive actions (`SESSION_SENSITIVE_ACTIONS_AGE`).
pub const SENSITIVE_SESSION_AGE: crate::time::Micros = 7200 * crate::time::SECOND;

/// How the caller proved who they are.
#[derive(Clone, Debug)]
pub enum Credential {
    Session(Arc<SessionAuth>),
    ApiKey(Arc<KeyEntry>),
}

/// An authenticated caller whose access to the action has been checked.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: i64,
    pub credential: Credential,
}

impl Caller {
    pub fn is_session(&self) -> bool {
        matches!(self.credential, Credential::Session(_))
    }

    pub fn session(&self) -> Option<&SessionAuth> {
        match &self.credential {
            Credential::Session(s) => Some(s),
            Credential::ApiKey(_) => None,
        }
    }

    pub fn api_key(&self) -> Option<&KeyEntry> {
        match &self.credential {
            Credential::ApiKey(k) => Some(k),
            Credential::Session(_) => None,
        }
    }
}
