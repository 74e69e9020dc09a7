//! Account flows around the Users API: sign-up, login (and its second factor), logout, password
//! reset and email verification.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::session::{self, NewSession, SetCookies};
use crate::auth::{AnyCaller, Authenticated, MaybeAuthenticated, SessionOnly, UserViews};
use crate::config::SignupPolicy;
use crate::crypto;
use crate::domain::fields::{self, Chars, FieldError};
use crate::domain::password::Verified;
use crate::domain::redirect;
use crate::domain::scope::ScopeNeed;
use crate::domain::user::ROLES_AT_ORGANIZATION;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::body::Body;
use crate::http::client::ClientIp;
use crate::http::links;
use crate::http::paths::Segment;
use crate::ratelimit::{Backoff, Rate};
use crate::service::accounts::{self, PENDING_LOGIN_AGE, SecondFactor};
use crate::service::emails;
use crate::service::render;
use crate::store::{NewSignup, NewUser, PasswordHash, StoreError, Unique, UserRecord};

const NO_NEW_ORGANIZATIONS: &str = "New organizations cannot be created in this instance. Contact your administrator if you think this is a mistake.";
const EMAIL_TAKEN: &str = "There is already an account with this email address.";
const LOCKOUT_SCOPE: &str = "login";
const LOCKOUT_COOL_OFF: std::time::Duration = std::time::Duration::from_secs(600);
/// Failed logins per account, from any address: the per-IP limit alone lets a botnet guess one
/// account's password without end. Keyed by the address typed, known or not, so the answer never
/// tells whether the account exists.
const ACCOUNT_LOCKOUT: Backoff = Backoff {
    scope: "login_account",
    threshold: 10,
    window: std::time::Duration::from_secs(600),
    base: std::time::Duration::from_secs(30),
    cap: std::time::Duration::from_secs(300),
};
const EMAIL_VERIFICATION_RATE: Rate = Rate::per_day("user_email_verification", 6);
const PASSWORD_RESET_RATE: Rate = Rate::per_day("password_reset_email", 6);

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

/// A 429 for a throttled request.
async fn throttle(state: &AppState, rate: Rate, ident: &str) -> ApiResult<()> {
    state
        .limiter
        .check(rate, ident)
        .await
        .map_err(ApiError::Throttled)
}

/// What the per-address limits (mail throttles, the per-account login lock) count by: the
/// address as mail servers treat it (trimmed, case folded), hashed. Keyed by what the client
/// typed, `" bob@a.test"` and `BOB@a.test` each got their own six mails a day.
fn address_ident(address: &str) -> String {
    crypto::sha256_hex(address.trim().to_lowercase().as_bytes())
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
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let allowed = match state.config.signup {
        SignupPolicy::Closed => false,
        SignupPolicy::Open => true,
        SignupPolicy::FirstUser => state.store.count_users().await? == 0,
    };
    if !allowed {
        return Err(ApiError::forbidden(NO_NEW_ORGANIZATIONS));
    }
    let body = body.object()?;
    let first_name = fields::char_field(&required(&body, "first_name")?, Chars::new().max(128))
        .map_err(field("first_name"))?
        .unwrap_or_default();
    let last_name = match body.get("last_name") {
        Some(v) => fields::char_field(v, Chars::new().max(128).blank_ok())
            .map_err(field("last_name"))?
            .unwrap_or_default(),
        None => String::new(),
    };
    let email = fields::email_field(&required(&body, "email")?)
        .map_err(field("email"))?
        .to_lowercase();
    if state.store.user_by_email(&email).await?.is_some() {
        return Err(ApiError::field("email", "unique", EMAIL_TAKEN));
    }
    let password = fields::char_field(
        &required(&body, "password")?,
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
    let organization_name = if organization_name.is_empty() {
        format!("{first_name}'s Organization")
    } else {
        organization_name
    };
    let role = match body.get("role_at_organization") {
        Some(v) => fields::choice_field(v, ROLES_AT_ORGANIZATION, true, true)
            .map_err(field("role_at_organization"))?
            .filter(|r| !r.is_empty()),
        None => None,
    };
    let email_opt_in = match body.get("email_opt_in") {
        Some(v) => fields::bool_field(v, true).map_err(field("email_opt_in"))?,
        None => Some(true),
    };

    let password_hash = match &password {
        Some(p) => state.hasher.hash(p).await.map_err(ApiError::internal)?,
        None => format!("!{}", crypto::random_token(30)),
    };
    let (mut user, _, _) = state
        .store
        .signup(NewSignup {
            user: NewUser {
                uuid: Uuid::now_v7(),
                email,
                password: PasswordHash(password_hash),
                first_name,
                last_name,
                distinct_id: crypto::random_token(32),
                is_staff: false,
                is_email_verified: Some(false),
                role_at_organization: role,
                email_opt_in,
                date_joined: state.clock.now(),
            },
            organization_name,
            team_name: crate::admin::DEFAULT_TEAM_NAME.into(),
            only_first_user: state.config.signup == SignupPolicy::FirstUser,
        })
        .await
        .map_err(|e| match e {
            StoreError::Unique(Unique::FirstUser) => ApiError::forbidden(NO_NEW_ORGANIZATIONS),
            StoreError::Unique(Unique::Email) => ApiError::field("email", "unique", EMAIL_TAKEN),
            other => other.into(),
        })?;

    let mut cookies = SetCookies::default();
    let redirect_url = if state.mailer.is_configured() {
        emails::send_verification(&state, &user).await?;
        format!("/verify_email/{}", user.uuid)
    } else {
        let previous = session::current_record(&headers, &state).await?;
        let (_, new_cookies) = session::start(
            &state,
            NewSession::LoggedIn {
                user_id: user.id,
                second_factor: false,
            },
            previous.as_ref(),
        )
        .await?;
        cookies = new_cookies;
        user.last_login = Some(state.clock.now());
        state.store.update_user(&user).await?;
        "/".to_string()
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
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = body.object()?;
    let email = fields::email_field(&required(&body, "email")?).map_err(field("email"))?;
    let password = fields::char_field(&required(&body, "password")?, Chars::new().controls_ok())
        .map_err(field("password"))?
        .unwrap_or_default();

    let ip = ip.to_string();
    if state.limiter.failures(LOCKOUT_SCOPE, &ip).await >= state.config.login_failure_limit {
        return Err(ApiError::PermissionDenied {
            code: "too_many_failed_attempts",
            detail: "Too many failed login attempts. Please try again in 10 minutes.".into(),
        });
    }
    let account = address_ident(&email);
    if let Some(wait) = state.limiter.backoff_wait(ACCOUNT_LOCKOUT, &account).await {
        return Err(ApiError::Throttled(wait));
    }
    let user = state
        .store
        .user_by_email(&email)
        .await?
        .filter(|u| u.is_active);
    let stored = user
        .as_ref()
        .filter(|u| u.password.is_usable())
        .map(|u| u.password.0.as_str());
    let verified = state
        .hasher
        .verify(&password, stored)
        .await
        .map_err(ApiError::internal)?;
    let mut user = match (user, verified) {
        (Some(user), Verified::Yes | Verified::YesButUpgrade) => user,
        _ => {
            state
                .limiter
                .add_failure(LOCKOUT_SCOPE, &ip, LOCKOUT_COOL_OFF)
                .await;
            state
                .limiter
                .backoff_failure(ACCOUNT_LOCKOUT, &account)
                .await;
            return Err(ApiError::non_field(
                "invalid_credentials",
                "Invalid email or password.",
            ));
        }
    };
    state.limiter.backoff_clear(ACCOUNT_LOCKOUT, &account).await;
    if verified == Verified::YesButUpgrade {
        // A Django PBKDF2 hash: store Argon2id from now on.
        accounts::set_password(&state, &mut user, &password).await?;
        state.store.update_user(&user).await?;
    }
    if state.mailer.is_configured() && user.is_email_verified != Some(true) {
        emails::send_verification(&state, &user).await?;
        if user.is_email_verified == Some(false) {
            return Err(ApiError::non_field(
                "not_verified",
                "Your account is awaiting verification. Please check your email for a verification link.",
            ));
        }
    }
    let previous = session::current_record(&headers, &state).await?;
    let device = state.store.totp_device(user.id).await?;
    if let Some(device) = &device
        && !accounts::remembered(&state, &headers, &user, device)
    {
        let (_, cookies) = session::start(
            &state,
            NewSession::PendingTwoFactor { user_id: user.id },
            previous.as_ref(),
        )
        .await?;
        let mut response = ApiError::Envelope {
            status: StatusCode::UNAUTHORIZED,
            kind: "server_error",
            code: "2fa_required",
            detail: "2FA is required.".into(),
        }
        .into_response();
        cookies.apply(response.headers_mut());
        return Ok(response);
    }
    // A remembered device counts as the second factor, as django-two-factor's cookie does.
    let second_factor = device.is_some();
    let cookies = complete_login(&state, &mut user, previous.as_ref(), second_factor).await?;
    Ok(respond(StatusCode::OK, cookies, SUCCESS))
}

/// Starts the logged-in session and records the login; `second_factor` says whether this login
/// passed one (organization-enforced 2FA asks).
async fn complete_login(
    state: &AppState,
    user: &mut UserRecord,
    previous: Option<&crate::store::SessionRecord>,
    second_factor: bool,
) -> ApiResult<SetCookies> {
    let (_, cookies) = session::start(
        state,
        NewSession::LoggedIn {
            user_id: user.id,
            second_factor,
        },
        previous,
    )
    .await?;
    user.last_login = Some(state.clock.now());
    state.store.update_user(user).await?;
    Ok(cookies)
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
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let expired = || {
        ApiError::non_field(
            "2fa_expired",
            "Login attempt has expired. Re-enter username/password.",
        )
    };
    let pending = session::current_record(&headers, &state)
        .await?
        .filter(|s| s.pending_user_id.is_some())
        .ok_or_else(expired)?;
    let now = state.clock.now();
    if pending
        .pending_at
        .is_none_or(|at| now - at > PENDING_LOGIN_AGE)
    {
        return Err(expired());
    }
    let invalid = || ApiError::non_field("2fa_invalid", "Invalid authentication code");
    let body = body.object()?;
    let token = body
        .get("token")
        .and_then(accounts::text_of)
        .ok_or_else(invalid)?;
    let mut user = match pending.pending_user_id {
        Some(id) => state.store.user_by_id(id).await?.filter(|u| u.is_active),
        None => None,
    }
    .ok_or_else(expired)?;
    match accounts::check_second_factor(&state, &user, &token).await? {
        SecondFactor::Accepted => {}
        SecondFactor::Throttled => {
            return Err(ApiError::non_field(
                "2fa_too_many_attempts",
                "Too many attempts.",
            ));
        }
        SecondFactor::Rejected => return Err(invalid()),
    }
    let mut cookies = complete_login(&state, &mut user, Some(&pending), true).await?;
    if let Some(device) = state.store.totp_device(user.id).await? {
        accounts::remember_cookie(&state, &user, &device, &mut cookies);
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
    next: Option<&str>,
) -> ApiResult<Response> {
    if let Some(session) = caller.as_ref().and_then(|c| c.session()) {
        session::end(state, &session.session_id).await?;
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
    RawQuery(query): RawQuery,
    Body(body): Body,
) -> ApiResult<Response> {
    let next = next_from(&body, query.as_deref());
    end_session(&state, caller, next.as_deref()).await
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
    RawQuery(query): RawQuery,
    Body(body): Body,
) -> ApiResult<Response> {
    let next = next_from(&body, query.as_deref());
    end_session(&state, caller, next.as_deref()).await
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
    body: Body,
) -> ApiResult<StatusCode> {
    let body = body.object()?;
    let email = fields::email_field(&required(&body, "email")?).map_err(field("email"))?;
    throttle(&state, PASSWORD_RESET_RATE, &address_ident(&email)).await?;
    if !state.mailer.is_configured() {
        return Err(ApiError::non_field(
            "email_not_available",
            "Cannot reset passwords because email is not configured for your instance. Please contact your administrator.",
        ));
    }
    if let Some(user) = state
        .store
        .user_by_email(&email)
        .await?
        .filter(|u| u.is_active)
    {
        emails::send_password_reset(&state, &user).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

fn invalid_reset_token() -> ApiError {
    ApiError::field(
        "token",
        "invalid_token",
        "This reset token is invalid or has expired.",
    )
}

/// The user a reset link names, if the token is valid for them.
async fn reset_target(state: &AppState, uuid: &str, token: &str) -> ApiResult<UserRecord> {
    let uuid = Uuid::parse_str(uuid).map_err(|_| invalid_reset_token())?;
    let user = state
        .store
        .user_by_uuid(uuid)
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(invalid_reset_token)?;
    if emails::reset_token_is_valid(state, &user, token) {
        Ok(user)
    } else {
        Err(invalid_reset_token())
    }
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
    reset_target(&state, &user_uuid, &token).await?;
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
    body: Body,
) -> ApiResult<axum::Json<PasswordReset>> {
    let body = body.object()?;
    let token =
        fields::char_field(&required(&body, "token")?, Chars::new()).map_err(field("token"))?;
    let password = fields::char_field(
        &required(&body, "password")?,
        Chars::new().max(128).controls_ok(),
    )
    .map_err(field("password"))?
    .unwrap_or_default();
    let mut user = reset_target(&state, &user_uuid, &token.unwrap_or_default()).await?;
    accounts::check_new_password(&password, Some(&user), false)?;
    accounts::set_password(&state, &mut user, &password).await?;
    user.requested_password_reset_at = None;
    crate::service::users::save(&state, &user).await?;
    // Whoever held the old password may hold a session too.
    state.store.delete_sessions_of(user.id, None).await?;
    state.caches.invalidate_user(user.id);
    emails::send_notice(
        &state,
        &user.email,
        &user,
        "Your password has been changed",
        "The password of your account was just reset.",
    )
    .await;
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
    let user = match Uuid::parse_str(&uuid) {
        Ok(uuid) => state
            .store
            .user_by_uuid(uuid)
            .await?
            .filter(|u| u.is_active),
        Err(_) => None,
    };
    // Counted by the address the link goes to (a staged change's, else the login email); a uuid
    // that names nobody gets no mail and is counted by itself, so both answer alike.
    let ident = match &user {
        Some(user) => address_ident(user.pending_email.as_deref().unwrap_or(&user.email)),
        None => address_ident(&uuid),
    };
    throttle(&state, EMAIL_VERIFICATION_RATE, &ident).await?;
    if !state.mailer.is_configured() {
        return Err(ApiError::non_field(
            "email_not_available",
            "Cannot verify email address because email is not configured for your instance. Please contact your administrator.",
        ));
    }
    if let Some(user) = user {
        emails::send_verification(&state, &user).await?;
    }
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
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = body.object()?;
    let token = body
        .get("token")
        .and_then(accounts::text_of)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::field("token", "required", "This field is required."))?;
    let invalid = || {
        ApiError::field(
            "token",
            "invalid_token",
            "This verification token is invalid or has expired.",
        )
    };
    let uuid = body
        .get("uuid")
        .and_then(accounts::text_of)
        .and_then(|u| Uuid::parse_str(&u).ok())
        .ok_or_else(invalid)?;
    let mut user = state
        .store
        .user_by_uuid(uuid)
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(invalid)?;
    if !emails::verification_token_is_valid(&state, &user, &token) {
        return Err(invalid());
    }
    let old_email = user.email.clone();
    let changed = user.pending_email.take();
    if let Some(new_email) = &changed {
        if let Some(other) = state.store.user_by_email(new_email).await?
            && other.id != user.id
        {
            return Err(ApiError::field(
                "email",
                "email_taken",
                "Another account now uses this email address. Start the change again with a different address.",
            ));
        }
        user.email = new_email.clone();
    }
    user.is_email_verified = Some(true);
    let two_factor = state.store.totp_device(user.id).await?.is_some();
    let mut cookies = SetCookies::default();
    if two_factor {
        crate::service::users::save(&state, &user).await?;
    } else {
        let previous = session::current_record(&headers, &state).await?;
        cookies = complete_login(&state, &mut user, previous.as_ref(), false).await?;
    }
    if let Some(new_email) = &changed {
        let what = format!(
            "The email address of your account was changed from {old_email} to {new_email}."
        );
        emails::send_notice(
            &state,
            &old_email,
            &user,
            "Your email address has been changed",
            &what,
        )
        .await;
        emails::send_notice(
            &state,
            new_email,
            &user,
            "Your email address has been changed",
            &what,
        )
        .await;
    }
    let body = EmailVerified {
        success: true,
        requires_2fa: two_factor.then_some(true),
        token: (!two_factor).then_some(token),
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
    let mut user = crate::service::users::load_caller(&state, &caller).await?;
    if user.pending_email.is_none() {
        return Err(ApiError::non_field(
            "email_change_request_not_found",
            "No active email change requests found.",
        ));
    }
    user.pending_email = None;
    crate::service::users::save(&state, &user).await?;
    let requester = render::Requester {
        user_id: caller.user_id,
        session_created_at: caller.session().map(|s| s.created_at),
    };
    Ok(axum::Json(
        render::render_user(&state, &requester, user).await?,
    ))
}
