//! Browser session authentication (the `sessionid` cookie).

use axum::http::request::Parts;

use super::Caller;
use crate::app::AppState;
use crate::error::ApiResult;
use crate::time::Micros;

/// A logged-in browser session as the request sees it.
#[derive(Debug)]
pub struct SessionAuth {
    pub session_id: String,
    /// When the user last logged in with this session (PostHog's `session_created_at`).
    pub created_at: Micros,
}

/// Looks for a session cookie. Sessions arrive with the accounts work; until then none match.
pub async fn authenticate(_parts: &Parts, _state: &AppState) -> ApiResult<Option<Caller>> {
    Ok(None)
}
