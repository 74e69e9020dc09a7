//! Account flows around the Users API: sign-up, login (and its second factor), logout, password
//! reset and email verification.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::session::{self, SetCookies};
use crate::auth::{AnyCaller, Authenticated, MaybeAuthenticated, SessionOnly, UserViews};
use crate::domain::fields::{self, Chars, FieldError};
use crate::domain::redirect;
use crate::domain::scope::ScopeNeed;
use crate::domain::user::ROLES_AT_ORGANIZATION;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::body::Body;
use crate::http::links;
use crate::http::paths::Segment;
use crate::service::accounts::{self, EmailVerified as Verified, LoggedIn, SignedUp as SignupDone};
use crate::service::activity::{Context, Origin};
use crate::service::render;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(login_token))
        .routes(routes!(login_precheck))
        .routes(routes!(logout))
        .routes(routes!(api_logout))
        .routes(routes!(request_password_reset))
        .routes(routes!(check_password_reset, complete_password_reset))
        .routes(routes!(request_email_verification))
        .routes(routes!(verify_email))
        .routes(routes!(cancel_email_change_request))
}

/// `{"success": true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

pub const SUCCESS: Success = Success { success: true };

/// The answer of sign-up.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedUp {
    pub id: i64,
    pub uuid: Uuid,
    pub distinct_id: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub is_email_verified: Option<bool>,
    /// The hedgehog's basic settings (any JSON), or null.
    pub hedgehog_config: Value,
    pub role_at_organization: Option<String>,
    /// Where the web app goes next: `/`, or the page asking to verify the email address.
    pub redirect_url: String,
}

/// The answer of the login precheck (hoglet has no SSO).
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginPrecheck {
    pub sso_enforcement: Option<String>,
    pub saml_available: bool,
}

/// The answer of a completed password reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasswordReset {
    pub success: bool,
    pub email: String,
}

/// The answer of a verified email address: the token when the browser was logged in, or
/// `requires_2fa` when the user must still log in with a second factor.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailVerified {
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires_2fa: Option<bool>,
}

/// A JSON response with cookies.
fn respond(status: StatusCode, cookies: SetCookies, body: impl Serialize) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    cookies.apply(response.headers_mut());
    response
}

fn field(attr: &'static str) -> impl Fn(FieldError) -> ApiError {
    move |e| ApiError::field(attr, e.code, e.detail)
}

fn required(body: &Map<String, Value>, attr: &'static str) -> ApiResult<Value> {
    body.get(attr)
        .cloned()
        .ok_or_else(|| ApiError::field(attr, "required", "This field is required."))
}

/// The id of the session the browser holds (logged in or not), if it is still current.
pub(crate) async fn browser_session(
    state: &AppState,
    headers: &HeaderMap,
) -> ApiResult<Option<String>> {
    Ok(session::current_record(headers, state).await?.map(|s| s.id))
}

/// Sign-up's fields read by DRF's rules, in field order (the address is checked for a taken
/// account before the password); shared by the API and the sign-up page.
pub(crate) async fn signup_input(
    state: &AppState,
    body: &Map<String, Value>,
) -> ApiResult<accounts::SignupInput> {
    let first_name = fields::char_field(&required(body, "first_name")?, Chars::new().max(128))
        .map_err(field("first_name"))?
        .unwrap_or_default();
    let last_name = match body.get("last_name") {
        Some(v) => fields::char_field(v, Chars::new().max(128).blank_ok())
            .map_err(field("last_name"))?
            .unwrap_or_default(),
        None => String::new(),
    };
    let email = fields::email_field(&required(body, "email")?).map_err(field("email"))?;
    // DRF reports the first failing field: the address and password rules run in field order.
    accounts::check_signup_email(state, &email).await?;
    let password = fields::char_field(
        &required(body, "password")?,
        Chars::new().max(72).null_ok().controls_ok(),
    )
    .map_err(field("password"))?;
    if let Some(password) = &password {
        accounts::check_new_password(password, None, true)?;
    }
    let organization_name = match body.get("organization_name") {
        Some(v) => fields::char_field(v, Chars::new().max(128).blank_ok().null_ok())
            .map_err(field("organization_name"))?
            .unwrap_or_default(),
        None => String::new(),
    };
    let role_at_organization = match body.get("role_at_organization") {
        Some(v) => fields::choice_field(v, ROLES_AT_ORGANIZATION, true, true)
            .map_err(field("role_at_organization"))?
            .filter(|r| !r.is_empty()),
        None => None,
    };
    let email_opt_in = match body.get("email_opt_in") {
        Some(v) => fields::bool_field(v, true).map_err(field("email_opt_in"))?,
        None => Some(true),
    };
    Ok(accounts::SignupInput {
        first_name,
        last_name,
        email,
        password: password.map(SecretString::from),
        organization_name,
        role_at_organization,
        email_opt_in,
    })
}

/// The login form's `email` and `password`, by the API's field rules.
pub(crate) fn login_fields(body: &Map<String, Value>) -> ApiResult<(String, String)> {
    let email = fields::email_field(&required(body, "email")?).map_err(field("email"))?;
    let password = fields::char_field(&required(body, "password")?, Chars::new().controls_ok())
        .map_err(field("password"))?
        .unwrap_or_default();
    Ok((email, password))
}

/// A body's `email` (password reset), by the API's field rule.
pub(crate) fn email_of(body: &Map<String, Value>) -> ApiResult<String> {
    fields::email_field(&required(body, "email")?).map_err(field("email"))
}

/// A new password from a reset form, by the API's field rule.
pub(crate) fn reset_password_of(body: &Map<String, Value>) -> ApiResult<String> {
    Ok(fields::char_field(
        &required(body, "password")?,
        Chars::new().max(128).controls_ok(),
    )
    .map_err(field("password"))?
    .unwrap_or_default())
}

/// Sign up
///
/// Creates a user with their own organization and default project, and logs them in (or, when
/// email is configured, sends a verification link first).
#[utoipa::path(
    post,
    path = "/api/signup/",
    operation_id = "signup_create",
    tag = "accounts",
    request_body(content = crate::http::requests::SignupRequest),
    responses(
        (status = 201, body = SignedUp),
        (status = 400, body = ErrorBody),
        (status = 403, description = "Sign-up is closed by `HOGLET_SIGNUP` (`permission_denied`).", body = ErrorBody),
    ),
)]
async fn signup(
    State(state): State<AppState>,
    MaybeAuthenticated(_caller, ..): MaybeAuthenticated<AnyCaller>,
    origin: Origin,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    accounts::ensure_signup_open(&state).await?;
    let input = signup_input(&state, &body.object()?).await?;
    let previous = browser_session(&state, &headers).await?;
    let (user, done) = accounts::signup(&state, origin, input, previous.as_deref()).await?;
    let (cookies, redirect_url) = match done {
        SignupDone::VerificationSent => (
            SetCookies::default(),
            format!("/verify_email/{}", user.uuid),
        ),
        SignupDone::LoggedIn(started) => {
            (session::started_cookies(&state, &started), "/".to_string())
        }
    };
    Ok(respond(
        StatusCode::CREATED,
        cookies,
        SignedUp {
            hedgehog_config: accounts::hedgehog_basic(user.hedgehog_config.as_ref()),
            id: user.id,
            uuid: user.uuid,
            distinct_id: user.distinct_id,
            first_name: user.first_name,
            last_name: user.last_name,
            email: user.email,
            is_email_verified: user.is_email_verified,
            role_at_organization: user.role_at_organization,
            redirect_url,
        },
    ))
}

/// Log in
///
/// Email and password. Answers 401 `2fa_required` when the second factor is still needed.
#[utoipa::path(
    post,
    path = "/api/login/",
    operation_id = "login_create",
    tag = "accounts",
    request_body(content = crate::http::requests::LoginRequest),
    responses(
        (status = 200, body = Success),
        (status = 400, description = "Wrong email or password (`invalid_credentials`), or an unverified account while email is configured (`not_verified`).", body = ErrorBody),
        (status = 401, description = "The password was right and the second factor is needed (`2fa_required`): finish with `POST /api/login/token/`.", body = ErrorBody),
        (status = 403, description = "Too many failed logins from this client (`too_many_failed_attempts`, 10 minutes).", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this email address, from any client (`throttled`; after 10 in 10 minutes, a lock of 30 s doubling to 5 minutes; `Retry-After`).", body = ErrorBody),
    ),
)]
async fn login(
    State(state): State<AppState>,
    MaybeAuthenticated(_caller, ..): MaybeAuthenticated<AnyCaller>,
    origin: Origin,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (email, password) = login_fields(&body.object()?)?;
    let previous = browser_session(&state, &headers).await?;
    let input = accounts::LoginInput {
        email,
        password: SecretString::from(password),
        origin,
        previous_session: previous.as_deref(),
        remembered: session::remember_tokens(&headers).collect(),
    };
    match accounts::login(&state, input).await? {
        LoggedIn::Done(started) => Ok(respond(
            StatusCode::OK,
            session::started_cookies(&state, &started),
            SUCCESS,
        )),
        LoggedIn::SecondFactorNeeded(started) => {
            let mut response = ApiError::Envelope {
                status: StatusCode::UNAUTHORIZED,
                kind: "server_error",
                code: "2fa_required",
                detail: "2FA is required.".into(),
            }
            .into_response();
            session::started_cookies(&state, &started).apply(response.headers_mut());
            Ok(response)
        }
    }
}

/// Log in: second factor
///
/// Completes a login that answered `2fa_required`, with a TOTP code or a backup code.
#[utoipa::path(
    post,
    path = "/api/login/token/",
    operation_id = "login_token_create",
    tag = "accounts",
    request_body(content = crate::http::requests::TokenRequest, description = "A TOTP code or a backup code."),
    responses(
        (status = 200, body = Success),
        (status = 400, description = "No login is waiting for its second factor or it is older than the limit (`2fa_expired`), the code is wrong (`2fa_invalid`), or the device is blocked after failures (`2fa_too_many_attempts`).", body = ErrorBody),
    ),
)]
async fn login_token(
    State(state): State<AppState>,
    origin: Origin,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let pending =
        accounts::pending_login(&state, session::current_record(&headers, &state).await?)?;
    let body = body.object()?;
    let token = body.get("token").and_then(accounts::text_of);
    let (started, remember) =
        accounts::login_second_factor(&state, origin, &pending, token).await?;
    let mut cookies = session::started_cookies(&state, &started);
    if let Some(remember) = remember {
        session::add_remember_cookie(&state, &mut cookies, &remember);
    }
    Ok(respond(StatusCode::OK, cookies, SUCCESS))
}

/// Login precheck
///
/// Whether the email's domain enforces SSO (hoglet has no SSO, so never).
#[utoipa::path(
    post,
    path = "/api/login/precheck/",
    operation_id = "login_precheck_create",
    tag = "accounts",
    request_body(content = crate::http::requests::EmailRequest),
    responses((status = 200, body = LoginPrecheck), (status = 400, body = ErrorBody)),
)]
async fn login_precheck(body: Body) -> ApiResult<axum::Json<LoginPrecheck>> {
    let body = body.object()?;
    fields::email_field(&required(&body, "email")?).map_err(field("email"))?;
    Ok(axum::Json(LoginPrecheck {
        sso_enforcement: None,
        saml_available: false,
    }))
}

async fn end_session(
    state: &AppState,
    caller: Option<crate::auth::Caller>,
    origin: Origin,
    next: Option<&str>,
) -> ApiResult<Response> {
    if let Some(caller) = &caller {
        let ctx = Context::caller(caller, origin);
        let session = caller
            .session()
            .map(|s| (s.session_id.as_str(), caller.user_id));
        accounts::logout(state, &ctx, session).await?;
    }
    let location = match next.and_then(redirect::safe_next) {
        Some(next) => format!(
            "/login?next={}",
            redirect::query_value(&links::without_credentials(next))
        ),
        None => "/login".to_string(),
    };
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    session::clear_session_cookies().apply(response.headers_mut());
    Ok(response)
}

/// `next` from the form body, else the query string.
fn next_from(body: &Value, query: Option<&str>) -> Option<String> {
    body.get("next")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(query?)
                .ok()?
                .into_iter()
                .find(|(k, _)| k == "next")
                .map(|(_, v)| v)
        })
}

/// Log out
///
/// Ends the browser session and redirects to `/login` (keeping a safe `next`).
#[utoipa::path(
    post,
    path = "/logout/",
    operation_id = "logout",
    tag = "accounts",
    request_body(content = Option<crate::http::requests::LogoutRequest>, description = "Optional; `next` is also read from the query string."),
    params(("next" = Option<String>, Query, description = "Where to go after logging in again (same-site paths only).")),
    responses((status = 302, description = "Redirect to /login")),
)]
async fn logout(
    State(state): State<AppState>,
    MaybeAuthenticated(caller, ..): MaybeAuthenticated<SessionOnly>,
    origin: Origin,
    RawQuery(query): RawQuery,
    Body(body): Body,
) -> ApiResult<Response> {
    let next = next_from(&body, query.as_deref());
    end_session(&state, caller, origin, next.as_deref()).await
}

/// Log out (API path)
#[utoipa::path(
    post,
    path = "/api/logout/",
    operation_id = "api_logout",
    tag = "accounts",
    request_body(content = Option<crate::http::requests::LogoutRequest>, description = "Optional; `next` is also read from the query string."),
    params(("next" = Option<String>, Query, description = "Where to go after logging in again (same-site paths only).")),
    responses((status = 302, description = "Redirect to /login")),
)]
async fn api_logout(
    State(state): State<AppState>,
    MaybeAuthenticated(caller, ..): MaybeAuthenticated<SessionOnly>,
    origin: Origin,
    RawQuery(query): RawQuery,
    Body(body): Body,
) -> ApiResult<Response> {
    let next = next_from(&body, query.as_deref());
    end_session(&state, caller, origin, next.as_deref()).await
}

/// Request a password reset
///
/// Emails a reset link when the address belongs to an account; answers 204 either way.
#[utoipa::path(
    post,
    path = "/api/reset/",
    operation_id = "reset_create",
    tag = "accounts",
    request_body(content = crate::http::requests::EmailRequest),
    responses(
        (status = 204, description = "Sent if the address has an account."),
        (status = 400, description = "Email is not configured on this instance (`email_not_available`).", body = ErrorBody),
    ),
)]
async fn request_password_reset(
    State(state): State<AppState>,
    MaybeAuthenticated(_caller, ..): MaybeAuthenticated<AnyCaller>,
    origin: Origin,
    body: Body,
) -> ApiResult<StatusCode> {
    let email = email_of(&body.object()?)?;
    accounts::request_reset(&state, origin, &email).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Check a password reset token
#[utoipa::path(
    get,
    path = "/api/reset/{user_uuid}/",
    operation_id = "reset_retrieve",
    tag = "accounts",
    params(("user_uuid" = String, Path), ("token" = String, Query)),
    responses(
        (status = 200, description = "The token is valid."),
        (status = 400, description = "The token is missing (`required`), or it or the user is not valid (`invalid_token`).", body = ErrorBody),
    ),
)]
async fn check_password_reset(
    State(state): State<AppState>,
    Segment(user_uuid): Segment,
    RawQuery(query): RawQuery,
) -> ApiResult<StatusCode> {
    // DRF's `query_params.get`: the last value of a repeated parameter.
    let token = query
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(&q).ok())
        .and_then(|pairs| pairs.into_iter().rev().find(|(k, _)| k == "token"))
        .map(|(_, v)| v)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::field("token", "required", "This field is required."))?;
    accounts::check_reset(&state, &user_uuid, &token).await?;
    Ok(StatusCode::OK)
}

/// Complete a password reset
#[utoipa::path(
    post,
    path = "/api/reset/{user_uuid}/",
    operation_id = "reset_complete",
    tag = "accounts",
    params(("user_uuid" = String, Path)),
    request_body(content = crate::http::requests::PasswordResetRequest),
    responses(
        (status = 200, body = PasswordReset),
        (status = 400, description = "The token or the user is not valid (`invalid_token`), or the password is refused.", body = ErrorBody),
    ),
)]
async fn complete_password_reset(
    State(state): State<AppState>,
    Segment(user_uuid): Segment,
    origin: Origin,
    body: Body,
) -> ApiResult<axum::Json<PasswordReset>> {
    let body = body.object()?;
    let token =
        fields::char_field(&required(&body, "token")?, Chars::new()).map_err(field("token"))?;
    let password = reset_password_of(&body)?;
    let user = accounts::complete_reset(
        &state,
        origin,
        &user_uuid,
        &token.unwrap_or_default(),
        &SecretString::from(password),
    )
    .await?;
    Ok(axum::Json(PasswordReset {
        success: true,
        email: user.email,
    }))
}

/// Request an email verification link
#[utoipa::path(
    post,
    path = "/api/users/request_email_verification/",
    operation_id = "users_request_email_verification_create",
    tag = "users",
    request_body(content = crate::http::requests::EmailVerificationRequest),
    responses(
        (status = 200, body = Success),
        (status = 400, description = "Email is not configured on this instance (`email_not_available`).", body = ErrorBody),
    ),
)]
async fn request_email_verification(
    State(state): State<AppState>,
    MaybeAuthenticated(_caller, ..): MaybeAuthenticated<AnyCaller>,
    body: Body,
) -> ApiResult<axum::Json<Success>> {
    let body = body.object()?;
    let uuid = body
        .get("uuid")
        .and_then(accounts::text_of)
        .ok_or_else(|| ApiError::field("uuid", "required", "This field is required."))?;
    accounts::request_email_verification(&state, &uuid).await?;
    Ok(axum::Json(SUCCESS))
}

/// Verify an email address
///
/// Applies a staged email change, marks the address verified and logs the browser in.
#[utoipa::path(
    post,
    path = "/api/users/verify_email/",
    operation_id = "users_verify_email_create",
    tag = "users",
    request_body(content = crate::http::requests::VerifyEmailRequest),
    responses((status = 200, body = EmailVerified), (status = 400, body = ErrorBody)),
)]
async fn verify_email(
    State(state): State<AppState>,
    MaybeAuthenticated(_caller, ..): MaybeAuthenticated<AnyCaller>,
    origin: Origin,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = body.object()?;
    let token = body
        .get("token")
        .and_then(accounts::text_of)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::field("token", "required", "This field is required."))?;
    let uuid = body.get("uuid").and_then(accounts::text_of);
    let previous = browser_session(&state, &headers).await?;
    let done = accounts::verify_email(&state, origin, uuid.as_deref(), &token, previous.as_deref())
        .await?;
    let (cookies, body) = match done {
        Verified::LoggedIn(started) => (
            session::started_cookies(&state, &started),
            EmailVerified {
                success: true,
                token: Some(token),
                requires_2fa: None,
            },
        ),
        Verified::SecondFactorNeeded => (
            SetCookies::default(),
            EmailVerified {
                success: true,
                token: None,
                requires_2fa: Some(true),
            },
        ),
    };
    Ok(respond(StatusCode::OK, cookies, body))
}

/// Cancel a pending email change
#[utoipa::path(
    patch,
    path = "/api/users/cancel_email_change_request/",
    operation_id = "users_cancel_email_change_request_partial_update",
    tag = "users",
    responses(
        (status = 200, body = render::UserView),
        (status = 400, description = "No email change is pending (`email_change_request_not_found`).", body = ErrorBody),
    ),
)]
async fn cancel_email_change_request(
    State(state): State<AppState>,
    auth: Authenticated<UserViews>,
) -> ApiResult<axum::Json<render::UserView>> {
    let caller = auth.authorize(ScopeNeed::NoKeyAccess)?;
    let user = crate::service::users::load_caller(&state, &caller).await?;
    let user = accounts::cancel_email_change(&state, &user).await?;
    let requester = render::Requester {
        user_id: caller.user_id,
        session_created_at: caller.session().map(|s| s.created_at),
    };
    Ok(axum::Json(
        render::render_user(&state, &requester, user).await?,
    ))
}
