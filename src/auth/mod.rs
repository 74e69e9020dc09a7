//! Authentication as an extractor, authorisation as a gate.
//!
//! A handler takes `Authenticated<P>`, where `P` lists the authenticators of the view in PostHog's
//! order (the first one names the `WWW-Authenticate` challenge). It cannot reach the caller without
//! calling [`Authenticated::authorize`] with the scope its action needs, so a scope check cannot be
//! forgotten. Session authentication plugs in here without touching handlers.

pub mod api_key;
pub mod session;

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::Method as HttpMethod;
use axum::http::request::Parts;
use serde_json::{Map, Value};

use crate::domain::scope::ScopeNeed;
use crate::error::{ApiError, ApiResult, Challenge};
use crate::state::AppState;

pub use session::SessionAuth;

/// The credentials a request body may carry, for the authenticators: the body middleware
/// (`http::body`) parses each body once and leaves this in the request's extensions.
#[derive(Clone, Debug, Default)]
pub struct BodyCredentials {
    /// `personal_api_key` in a JSON or form body (a non-string value as its JSON text).
    pub personal_api_key: Option<String>,
    /// A form's `csrfmiddlewaretoken`.
    pub csrf_token: Option<String>,
}

impl BodyCredentials {
    /// Picks the credentials out of a body's fields.
    pub fn from_fields(fields: &Map<String, Value>) -> Self {
        Self {
            personal_api_key: fields
                .get("personal_api_key")
                .map(|value| match value.as_str() {
                    Some(text) => text.to_string(),
                    None => value.to_string(),
                }),
            csrf_token: fields
                .get("csrfmiddlewaretoken")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }
    }
}

/// The request path exactly as the client sent it, recorded by the router when it adds the
/// trailing slash (the 2FA enforcement allow-list matches exact paths).
#[derive(Clone, Debug)]
pub struct OriginalPath(pub String);

impl OriginalPath {
    /// The path as sent: the recorded one when normalisation changed it, else the request's own.
    pub fn of(parts: &Parts) -> &str {
        parts
            .extensions
            .get::<OriginalPath>()
            .map_or(parts.uri.path(), |p| p.0.as_str())
    }
}

/// One way of proving who the caller is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Session,
    PersonalApiKey,
    /// OAuth access tokens (`Bearer pha_…`). hoglet issues none, so any such token is invalid.
    OAuth,
}

pub use crate::service::caller::{Caller, Credential, SENSITIVE_SESSION_AGE};

/// The authenticators of a view, in order.
pub trait Authenticators: Send + Sync + 'static {
    const ORDER: &'static [Method];
    /// PostHog's `TimeSensitiveActionPermission`: unsafe session requests need a recent login.
    const TIME_SENSITIVE: bool = false;

    fn challenge() -> Challenge {
        match Self::ORDER.first() {
            Some(Method::Session) => Challenge::Session,
            _ => Challenge::Bearer,
        }
    }
}

/// `/api/users/…` (PostHog: Session, OAuth, PersonalAPIKey) and signal autonomy.
pub struct UserViews;
impl Authenticators for UserViews {
    const ORDER: &'static [Method] = &[Method::Session, Method::OAuth, Method::PersonalApiKey];
    const TIME_SENSITIVE: bool = true;
}

/// `DELETE /api/users/…`: a key is ignored, only a browser session counts.
pub struct SessionOnly;
impl Authenticators for SessionOnly {
    const ORDER: &'static [Method] = &[Method::Session];
    const TIME_SENSITIVE: bool = true;
}

/// `/api/users/{id}/signal_autonomy/`: Session, PersonalAPIKey, OAuth; no recent-login rule.
pub struct SignalViews;
impl Authenticators for SignalViews {
    const ORDER: &'static [Method] = &[Method::Session, Method::PersonalApiKey, Method::OAuth];
}

/// Views that any caller may use (sign-up, login, email verification), but where a valid
/// session still authenticates (and must pass CSRF) and a bad key is still refused.
pub struct AnyCaller;
impl Authenticators for AnyCaller {
    const ORDER: &'static [Method] = &[Method::Session, Method::PersonalApiKey];
}

/// `/api/users/{u}/integrations/…`: OAuth, PersonalAPIKey, Session.
pub struct BearerFirst;
impl Authenticators for BearerFirst {
    const ORDER: &'static [Method] = &[Method::OAuth, Method::PersonalApiKey, Method::Session];
}

/// `/api/personal_api_keys/…`: PersonalAPIKey, Session (no OAuth).
pub struct KeyThenSession;
impl Authenticators for KeyThenSession {
    const ORDER: &'static [Method] = &[Method::PersonalApiKey, Method::Session];
    const TIME_SENSITIVE: bool = true;
}

/// Whether an action needs a recent login (for time-sensitive views, unsafe session requests).
#[derive(Clone, Copy, Debug)]
pub enum Freshness<'a> {
    Required,
    /// Needed even for a safe request (reading what a stolen session should not: the data
    /// export).
    Always,
    /// The action never needs it (`hedgehog_config`, `scene_personalisation`).
    Exempt,
    /// Needed unless the body is non-empty and touches only these fields.
    UnlessOnly(&'a Map<String, Value>, &'static [&'static str]),
}

/// The caller, authenticated but not yet authorised for the action.
pub struct Authenticated<P> {
    caller: Caller,
    method: HttpMethod,
    now: crate::time::Micros,
    _views: PhantomData<P>,
}

impl<P: Authenticators> Authenticated<P> {
    /// Checks the scope the action needs (keys only: sessions are not scope-checked), then the
    /// recent-login rule of time-sensitive views.
    pub fn authorize(self, need: ScopeNeed) -> ApiResult<Caller> {
        self.authorize_with(need, Freshness::Required)
    }

    /// For views without scope checks (PostHog's personal-key views): only the recent-login rule.
    pub fn authorize_unscoped(self) -> ApiResult<Caller> {
        self.check(None, Freshness::Required)
    }

    pub fn authorize_with(self, need: ScopeNeed, freshness: Freshness<'_>) -> ApiResult<Caller> {
        self.check(Some(need), freshness)
    }

    fn check(self, need: Option<ScopeNeed>, freshness: Freshness<'_>) -> ApiResult<Caller> {
        match &self.caller.credential {
            Credential::ApiKey(key) => {
                if let Some(need) = need {
                    key.allows(need)
                        .map_err(|denied| ApiError::forbidden(denied.detail()))?;
                }
            }
            Credential::Session(session) => {
                let unsafe_method = !matches!(
                    self.method,
                    HttpMethod::GET | HttpMethod::HEAD | HttpMethod::OPTIONS
                );
                let always = matches!(freshness, Freshness::Always);
                let exempt = match freshness {
                    Freshness::Required | Freshness::Always => false,
                    Freshness::Exempt => true,
                    Freshness::UnlessOnly(body, allowed) => {
                        !body.is_empty() && body.keys().all(|k| allowed.contains(&k.as_str()))
                    }
                };
                let stale = session.created_at == 0
                    || self.now - session.created_at > SENSITIVE_SESSION_AGE;
                if (always || P::TIME_SENSITIVE && unsafe_method) && !exempt && stale {
                    return Err(ApiError::PermissionDenied {
                        code: "sensitive_action_required_reauth",
                        detail: "This action requires you to be recently authenticated.".into(),
                    });
                }
            }
        }
        Ok(self.caller)
    }
}

impl<P: Authenticators> FromRequestParts<AppState> for Authenticated<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        authenticate(parts, state, P::ORDER)
            .await?
            .map(|caller| Self {
                caller,
                method: parts.method.clone(),
                now: state.clock.now(),
                _views: PhantomData,
            })
            .ok_or(ApiError::NotAuthenticated(P::challenge()))
    }
}

/// Like [`Authenticated`], but anonymous callers pass through (AllowAny views that still honour
/// a session or reject a bad key).
pub struct MaybeAuthenticated<P>(pub Option<Caller>, pub PhantomData<P>);

impl<P: Authenticators> FromRequestParts<AppState> for MaybeAuthenticated<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        Ok(Self(
            authenticate(parts, state, P::ORDER).await?,
            PhantomData,
        ))
    }
}

/// Tries each authenticator in turn; the first that recognises its credential decides (a bad
/// credential is an error, not a fall-through).
async fn authenticate(
    parts: &Parts,
    state: &AppState,
    order: &[Method],
) -> ApiResult<Option<Caller>> {
    let challenge = match order.first() {
        Some(Method::Session) => Challenge::Session,
        _ => Challenge::Bearer,
    };
    for method in order {
        let caller = match method {
            Method::Session => session::authenticate(parts, state).await?,
            Method::PersonalApiKey => api_key::authenticate(parts, state, challenge).await?,
            Method::OAuth => oauth_token(parts, challenge)?,
        };
        if caller.is_some() {
            return Ok(caller);
        }
    }
    Ok(None)
}

/// hoglet issues no OAuth tokens, so a `Bearer pha_…` token can only be invalid.
fn oauth_token(parts: &Parts, challenge: Challenge) -> ApiResult<Option<Caller>> {
    match api_key::bearer_token(parts) {
        Some(token) if token.starts_with("pha_") => Err(ApiError::AuthenticationFailed {
            detail: "Invalid access token.".into(),
            challenge,
        }),
        _ => Ok(None),
    }
}
