//! The pages of signing in and recovering an account: login (and its second factor), sign-up,
//! email verification and password reset. Each calls the use case the JSON API calls.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde_json::{Map, Value};

use super::layout::{Errors, Layout, notice, query_param};
use super::{PageError, Visitor, failed, see_other, text};
use crate::auth::session::{self, SetCookies};
use crate::domain::redirect;
use crate::error::ApiError;
use crate::http::accounts as api;
use crate::http::body::Body;
use crate::service::accounts::{self, EmailVerified, LoggedIn, SignedUp};
use crate::service::activity::Origin;
use crate::state::AppState;

type PageResult = Result<Response, PageError>;

/// Where a signed-in user lands.
pub const HOME: &str = "/settings/user";

/// The response with the cookies added.
fn with_cookies(mut response: Response, cookies: SetCookies) -> Response {
    cookies.apply(response.headers_mut());
    response
}

/// `next` when it is a safe same-site path (see [`redirect::safe_next`]), else nothing.
fn safe_next(next: Option<&str>) -> Option<String> {
    next.filter(|n| !n.is_empty())
        .and_then(redirect::safe_next)
        .map(str::to_string)
}

/// `path` with `?next=…` when there is a next.
fn with_next(path: &str, next: &Option<String>) -> String {
    match next {
        Some(next) => format!("{path}?next={}", redirect::query_value(next)),
        None => path.to_string(),
    }
}

/// The body's fields; a body that is not a form answers as the API would.
fn form(body: Result<Body, ApiError>) -> Result<Map<String, Value>, PageError> {
    Ok(body?.object()?)
}

/// `GET /`: signed in → the settings, else the login page.
pub async fn home(Visitor(caller): Visitor) -> Response {
    see_other(if caller.is_some() { HOME } else { "/login" })
}

// --- login ---

#[derive(Template, WebTemplate)]
#[template(path = "login.html", whitespace = "minimize")]
pub struct LoginPage {
    layout: Layout,
    errors: Errors,
    email: String,
    next: String,
    reauth: bool,
}

/// `GET /login`: the form (a signed-in user goes on, unless asked to confirm the password).
pub async fn login_page(
    State(state): State<AppState>,
    Visitor(caller): Visitor,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let next = safe_next(query_param(query.as_deref(), "next").as_deref());
    let reauth = query_param(query.as_deref(), "reauth").is_some_and(|v| v == "1");
    if caller.is_some() && !reauth {
        return see_other(next.as_deref().unwrap_or(HOME));
    }
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let page = LoginPage {
        layout: Layout::anonymous("Log in", csrf).with_notice(notice(query.as_deref())),
        errors: Errors::none(),
        email: String::new(),
        next: next.unwrap_or_default(),
        reauth,
    };
    with_cookies(page.into_response(), cookies)
}

/// `POST /login`: `email`, `password` (and `next`) through `accounts::login`.
pub async fn login(
    State(state): State<AppState>,
    _visitor: Visitor,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = form(body)?;
    let next = safe_next(form.get("next").and_then(Value::as_str));
    let reauth = text(&form, "reauth") == "1";
    let outcome = match api::login_fields(&form) {
        Ok((email, password)) => {
            let previous = api::browser_session(&state, &headers).await?;
            let input = accounts::LoginInput {
                email,
                password: SecretString::from(password),
                origin,
                previous_session: previous.as_deref(),
                remembered: session::remember_tokens(&headers).collect(),
            };
            accounts::login(&state, input).await
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(LoggedIn::Done(started)) => Ok(with_cookies(
            see_other(next.as_deref().unwrap_or(HOME)),
            session::started_cookies(&state, &started),
        )),
        Ok(LoggedIn::SecondFactorNeeded(started)) => Ok(with_cookies(
            see_other(&with_next("/login/2fa", &next)),
            session::started_cookies(&state, &started),
        )),
        Err(e) if is_internal(&e) => Err(e.into()),
        Err(e) => {
            let (csrf, cookies) = session::page_csrf_token(&state, &headers);
            let page = LoginPage {
                layout: Layout::anonymous("Log in", csrf),
                errors: Errors::of(&e, &["email", "password"]),
                email: text(&form, "email"),
                next: next.unwrap_or_default(),
                reauth,
            };
            Ok(with_cookies(failed(&e, page), cookies))
        }
    }
}

/// Failures that are not about what the person typed: shown as an error page.
fn is_internal(e: &ApiError) -> bool {
    e.status().is_server_error()
}

// --- the second factor ---

#[derive(Template, WebTemplate)]
#[template(path = "login_2fa.html", whitespace = "minimize")]
pub struct SecondFactorPage {
    layout: Layout,
    errors: Errors,
    next: String,
}

/// `GET /login/2fa`: the code form, while a login waits for its second factor.
pub async fn second_factor_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let pending = accounts::pending_login(&state, session::current_record(&headers, &state).await?);
    let errors = match &pending {
        Ok(_) => Errors::none(),
        Err(e) => Errors::of(e, &[]),
    };
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let page = SecondFactorPage {
        layout: Layout::anonymous("Two-factor authentication", csrf),
        errors,
        next: safe_next(query_param(query.as_deref(), "next").as_deref()).unwrap_or_default(),
    };
    let status = match pending {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    Ok(with_cookies((status, page).into_response(), cookies))
}

/// `POST /login/2fa`: `token` (TOTP or backup code) and `remember` through
/// `accounts::login_second_factor`.
pub async fn second_factor(
    State(state): State<AppState>,
    _visitor: Visitor,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = form(body)?;
    let next = safe_next(form.get("next").and_then(Value::as_str));
    let outcome =
        match accounts::pending_login(&state, session::current_record(&headers, &state).await?) {
            Ok(pending) => {
                let token = form.get("token").and_then(accounts::text_of);
                accounts::login_second_factor(&state, origin, &pending, token).await
            }
            Err(e) => Err(e),
        };
    match outcome {
        Ok((started, remember)) => {
            let mut cookies = session::started_cookies(&state, &started);
            if let Some(remember) = remember.filter(|_| !text(&form, "remember").is_empty()) {
                session::add_remember_cookie(&state, &mut cookies, &remember);
            }
            Ok(with_cookies(
                see_other(next.as_deref().unwrap_or(HOME)),
                cookies,
            ))
        }
        Err(e) if is_internal(&e) => Err(e.into()),
        Err(e) => {
            let (csrf, cookies) = session::page_csrf_token(&state, &headers);
            let page = SecondFactorPage {
                layout: Layout::anonymous("Two-factor authentication", csrf),
                errors: Errors::of(&e, &["token"]),
                next: next.unwrap_or_default(),
            };
            Ok(with_cookies(failed(&e, page), cookies))
        }
    }
}

// --- sign-up ---

#[derive(Template, WebTemplate)]
#[template(path = "signup.html", whitespace = "minimize")]
pub struct SignupPage {
    layout: Layout,
    errors: Errors,
    /// Whether sign-up is open (else only why not).
    open: bool,
    first_name: String,
    email: String,
    organization_name: String,
}

const SIGNUP_FIELDS: &[&str] = &["first_name", "email", "password", "organization_name"];

/// `GET /signup`: the form, or why sign-up is closed.
pub async fn signup_page(State(state): State<AppState>, headers: HeaderMap) -> PageResult {
    let (status, errors, open) = match accounts::ensure_signup_open(&state).await {
        Ok(()) => (StatusCode::OK, Errors::none(), true),
        Err(e) if is_internal(&e) => return Err(e.into()),
        Err(e) => (e.status(), Errors::of(&e, &[]), false),
    };
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let page = SignupPage {
        layout: Layout::anonymous("Sign up", csrf),
        errors,
        open,
        first_name: String::new(),
        email: String::new(),
        organization_name: String::new(),
    };
    Ok(with_cookies((status, page).into_response(), cookies))
}

#[derive(Template, WebTemplate)]
#[template(path = "message.html", whitespace = "minimize")]
pub struct MessagePage {
    layout: Layout,
    heading: &'static str,
    text: String,
    /// Whether `text` is an error.
    alert: bool,
    /// A link onwards: (href, label).
    link: Option<(&'static str, &'static str)>,
    /// A button that asks for another verification link for this user uuid.
    resend: Option<String>,
}

/// `POST /signup`: `first_name`, `email`, `password`, `organization_name` through
/// `accounts::signup`; signs in (303 `/`) or asks to check the inbox.
pub async fn signup(
    State(state): State<AppState>,
    _visitor: Visitor,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = form(body)?;
    let outcome = async {
        accounts::ensure_signup_open(&state).await?;
        let input = api::signup_input(&state, &form).await?;
        let previous = api::browser_session(&state, &headers).await?;
        accounts::signup(&state, origin, input, previous.as_deref()).await
    }
    .await;
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    match outcome {
        Ok((_, SignedUp::LoggedIn(started))) => Ok(with_cookies(
            see_other("/"),
            session::started_cookies(&state, &started),
        )),
        Ok((user, SignedUp::VerificationSent)) => {
            let page = check_inbox(
                Layout::anonymous("Check your inbox", csrf),
                &user.email,
                user.uuid.to_string(),
            );
            Ok(with_cookies(page.into_response(), cookies))
        }
        Err(e) if is_internal(&e) => Err(e.into()),
        Err(e) => {
            let page = SignupPage {
                layout: Layout::anonymous("Sign up", csrf),
                errors: Errors::of(&e, SIGNUP_FIELDS),
                open: true,
                first_name: text(&form, "first_name"),
                email: text(&form, "email"),
                organization_name: text(&form, "organization_name"),
            };
            Ok(with_cookies(failed(&e, page), cookies))
        }
    }
}

fn check_inbox(layout: Layout, email: &str, uuid: String) -> MessagePage {
    MessagePage {
        layout,
        heading: "Check your inbox",
        text: format!(
            "We sent a link to {email}. Open it to verify your address, then you are signed in."
        ),
        alert: false,
        link: None,
        resend: Some(uuid),
    }
}

// --- email verification ---

#[derive(Template, WebTemplate)]
#[template(path = "verify.html", whitespace = "minimize")]
pub struct VerifyPage {
    layout: Layout,
    errors: Errors,
    uuid: String,
}

/// `GET /verify_email/{uuid}`: where the API's sign-up sends the web app: check the inbox, or ask
/// for another link.
pub async fn verify_pending_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> Response {
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let page = MessagePage {
        layout: Layout::anonymous("Check your inbox", csrf),
        heading: "Check your inbox",
        text: "Open the link we emailed you to verify your address.".into(),
        alert: false,
        link: None,
        resend: Some(uuid),
    };
    with_cookies(page.into_response(), cookies)
}

/// `POST /verify_email/{uuid}`: another verification link, through
/// `accounts::request_email_verification`.
pub async fn resend_verification(
    State(state): State<AppState>,
    _visitor: Visitor,
    headers: HeaderMap,
    Path(uuid): Path<String>,
) -> PageResult {
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let outcome = accounts::request_email_verification(&state, &uuid).await;
    let page = |text: String, alert: bool| MessagePage {
        layout: Layout::anonymous("Check your inbox", csrf),
        heading: "Check your inbox",
        text,
        alert,
        link: None,
        resend: None,
    };
    let response = match outcome {
        Ok(()) => page(
            "If this account is waiting for verification, a new link is on its way.".into(),
            false,
        )
        .into_response(),
        Err(e) if is_internal(&e) => return Err(e.into()),
        Err(e) => failed(&e, page(e.detail(), true)),
    };
    Ok(with_cookies(response, cookies))
}

/// `GET /verify_email/{uuid}/{token}`: one button. Opening the link never uses the token (mail
/// scanners open links); pressing the button does.
pub async fn verify_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((uuid, _token)): Path<(String, String)>,
) -> Response {
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let page = VerifyPage {
        layout: Layout::anonymous("Verify your email address", csrf),
        errors: Errors::none(),
        uuid,
    };
    with_cookies(page.into_response(), cookies)
}

/// `POST /verify_email/{uuid}/{token}`: `accounts::verify_email`, then signed in (or, with 2FA,
/// on to the login page).
pub async fn verify(
    State(state): State<AppState>,
    _visitor: Visitor,
    origin: Origin,
    headers: HeaderMap,
    Path((uuid, token)): Path<(String, String)>,
) -> PageResult {
    let previous = api::browser_session(&state, &headers).await?;
    match accounts::verify_email(&state, origin, Some(&uuid), &token, previous.as_deref()).await {
        Ok(EmailVerified::LoggedIn(started)) => Ok(with_cookies(
            see_other(HOME),
            session::started_cookies(&state, &started),
        )),
        Ok(EmailVerified::SecondFactorNeeded) => Ok(see_other("/login?notice=verified")),
        Err(e) if is_internal(&e) => Err(e.into()),
        Err(e) => {
            let (csrf, cookies) = session::page_csrf_token(&state, &headers);
            let page = VerifyPage {
                layout: Layout::anonymous("Verify your email address", csrf),
                errors: Errors::of(&e, &[]),
                uuid,
            };
            Ok(with_cookies(failed(&e, page), cookies))
        }
    }
}

// --- password reset ---

#[derive(Template, WebTemplate)]
#[template(path = "reset.html", whitespace = "minimize")]
pub struct ResetPage {
    layout: Layout,
    errors: Errors,
    email: String,
}

/// `GET /reset`: the form asking for the address.
pub async fn reset_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let page = ResetPage {
        layout: Layout::anonymous("Reset your password", csrf),
        errors: Errors::none(),
        email: String::new(),
    };
    with_cookies(page.into_response(), cookies)
}

/// `POST /reset`: `email` through `accounts::request_reset`; the same answer whether or not the
/// address has an account.
pub async fn reset(
    State(state): State<AppState>,
    _visitor: Visitor,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = form(body)?;
    let outcome = match api::email_of(&form) {
        Ok(email) => accounts::request_reset(&state, origin, &email).await,
        Err(e) => Err(e),
    };
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    match outcome {
        Ok(()) => {
            let page = MessagePage {
                layout: Layout::anonymous("Check your inbox", csrf),
                heading: "Check your inbox",
                text: "If an account exists for this address, a link to reset its password is on its way.".into(),
                alert: false,
                link: Some(("/login", "Back to log in")),
                resend: None,
            };
            Ok(with_cookies(page.into_response(), cookies))
        }
        Err(e) if is_internal(&e) => Err(e.into()),
        Err(e) => {
            let page = ResetPage {
                layout: Layout::anonymous("Reset your password", csrf),
                errors: Errors::of(&e, &["email"]),
                email: text(&form, "email"),
            };
            Ok(with_cookies(failed(&e, page), cookies))
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "reset_confirm.html", whitespace = "minimize")]
pub struct NewPasswordPage {
    layout: Layout,
    errors: Errors,
    /// Whether the link is still good (else only the error and a way to ask again).
    valid: bool,
}

/// `GET /reset/{uuid}/{token}`: the new-password form, or why the link no longer works.
pub async fn new_password_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((uuid, token)): Path<(String, String)>,
) -> PageResult {
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let (status, errors, valid) = match accounts::check_reset(&state, &uuid, &token).await {
        Ok(_) => (StatusCode::OK, Errors::none(), true),
        Err(e) if is_internal(&e) => return Err(e.into()),
        Err(e) => (e.status(), Errors::of(&e, &[]), false),
    };
    let page = NewPasswordPage {
        layout: Layout::anonymous("Choose a new password", csrf),
        errors,
        valid,
    };
    Ok(with_cookies((status, page).into_response(), cookies))
}

/// `POST /reset/{uuid}/{token}`: `password` and `password_confirm`, through
/// `accounts::complete_reset`; then 303 to the login page with a notice.
pub async fn new_password(
    State(state): State<AppState>,
    _visitor: Visitor,
    origin: Origin,
    headers: HeaderMap,
    Path((uuid, token)): Path<(String, String)>,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = form(body)?;
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let render = |errors: Errors, valid: bool, status: StatusCode| {
        let page = NewPasswordPage {
            layout: Layout::anonymous("Choose a new password", csrf.clone()),
            errors,
            valid,
        };
        (status, page).into_response()
    };
    if text(&form, "password") != text(&form, "password_confirm") {
        let errors = Errors::field("password_confirm", "The two passwords do not match.");
        return Ok(with_cookies(
            render(errors, true, StatusCode::BAD_REQUEST),
            cookies,
        ));
    }
    let outcome = match api::reset_password_of(&form) {
        Ok(password) => {
            accounts::complete_reset(&state, origin, &uuid, &token, &SecretString::from(password))
                .await
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(_) => Ok(see_other("/login?notice=password_reset")),
        Err(e) if is_internal(&e) => Err(e.into()),
        Err(e) => {
            let valid = !matches!(&e, ApiError::Validation { attr: Some(a), .. } if a == "token");
            let errors = Errors::of(&e, &["password"]);
            Ok(with_cookies(render(errors, valid, e.status()), cookies))
        }
    }
}
