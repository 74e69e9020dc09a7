//! The signed-in user's settings pages. Each change goes through the use case the API's
//! `PATCH /api/users/@me/` calls, behind the same authorisation (and recent-login rule).

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::layout::{Errors, Layout, notice};
use super::{PageError, failed, see_other};
use crate::auth::session;
use crate::auth::{Authenticated, Caller, Freshness, SessionOnly};
use crate::domain::redirect;
use crate::domain::scope::ScopeNeed;
use crate::error::ApiError;
use crate::http::body::Body;
use crate::http::users::{RECENT_LOGIN_EXEMPT_FIELDS, USER_WRITE};
use crate::service::activity::Origin;
use crate::service::{accounts, users};
use crate::state::AppState;
use crate::store::UserRecord;

type PageResult = Result<Response, PageError>;

/// The page's own path, where a login or a re-authentication comes back to (and where a form's
/// address, opened again after a refused change, leads).
pub const USER_PAGE: &str = "/settings/user";

/// The login page that comes back to `path`; with `reauth`, it asks a signed-in user to confirm
/// their password.
pub(crate) fn login_then(path: &str, reauth: bool) -> Response {
    let next = redirect::query_value(path);
    see_other(&if reauth {
        format!("/login?next={next}&reauth=1")
    } else {
        format!("/login?next={next}")
    })
}

/// The session's caller, or the way to the login page (or, for a sensitive change on an old
/// session, the password prompt) that comes back to `path`.
pub(crate) fn authorized(
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    path: &str,
    check: impl FnOnce(Authenticated<SessionOnly>) -> Result<Caller, ApiError>,
) -> Result<Caller, Box<Response>> {
    let auth = match auth {
        Ok(auth) => auth,
        Err(ApiError::NotAuthenticated(_)) => return Err(Box::new(login_then(path, false))),
        // A member of an organization that enforces 2FA, without it yet: to its set-up page.
        Err(ApiError::PermissionDenied {
            code: "two_factor_setup_required",
            ..
        }) => return Err(Box::new(see_other(super::two_factor::PAGE))),
        Err(e) => return Err(Box::new(PageError(e).into_response())),
    };
    match check(auth) {
        Ok(caller) => Ok(caller),
        Err(ApiError::PermissionDenied {
            code: "sensitive_action_required_reauth",
            ..
        }) => Err(Box::new(login_then(path, true))),
        Err(e) => Err(Box::new(PageError(e).into_response())),
    }
}

/// The signed-in caller and their user, authorised by `check`; otherwise what the page answers
/// instead (the way to log in or to confirm the password, back to `path`, or an error page).
pub(crate) async fn signed_in(
    state: &AppState,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    path: &str,
    check: impl FnOnce(Authenticated<SessionOnly>) -> Result<Caller, ApiError>,
) -> Result<(Caller, UserRecord), PageResult> {
    let caller = authorized(auth, path, check).map_err(|done| Ok(*done))?;
    let user = users::load_caller(state, &caller)
        .await
        .map_err(|e| Err(e.into()))?;
    Ok((caller, user))
}

#[derive(Template, WebTemplate)]
#[template(path = "settings_user.html", whitespace = "minimize")]
pub struct UserPage {
    layout: Layout,
    /// The messages of each of the page's three forms.
    profile_errors: Errors,
    email_errors: Errors,
    password_errors: Errors,
    first_name: String,
    last_name: String,
    email: String,
    /// The address waiting for its verification link, if a change is pending.
    pending_email: Option<String>,
    /// The new address typed (kept when it is refused).
    new_email: String,
}

/// One of the page's forms: the fields it sends to `PATCH @me`, where it goes on success.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Profile,
    Email,
    Password,
}

impl Form {
    fn inputs(self) -> &'static [&'static str] {
        match self {
            Form::Profile => &["first_name", "last_name"],
            Form::Email => &["email"],
            Form::Password => &["current_password", "password"],
        }
    }
}

fn user_page_of(user: &UserRecord, layout: Layout) -> UserPage {
    UserPage {
        layout,
        profile_errors: Errors::none(),
        email_errors: Errors::none(),
        password_errors: Errors::none(),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        email: user.email.clone(),
        pending_email: user.pending_email.clone(),
        new_email: String::new(),
    }
}

/// `GET /settings/user`: profile, email address and password.
pub async fn user_page(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let (_, user) = signed_in!(&state, auth, USER_PAGE, Authenticated::authorize_unscoped);
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let layout = Layout::user("Your account", csrf, &user).with_notice(notice(query.as_deref()));
    let mut response = user_page_of(&user, layout).into_response();
    cookies.apply(response.headers_mut());
    Ok(response)
}

/// Sends one form's fields through `users::update` (the API's `PATCH @me`), behind the API's
/// authorisation and recent-login rule; 303 to the page with a notice, or the page with the
/// form's messages.
async fn save(
    state: &AppState,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: &HeaderMap,
    form: Form,
    body: Result<Body, ApiError>,
) -> PageResult {
    let sent = body?.object()?;
    let fields: Map<String, Value> = form
        .inputs()
        .iter()
        .filter_map(|name| Some((name.to_string(), sent.get(*name)?.clone())))
        .collect();
    let caller = match authorized(auth, USER_PAGE, |auth| {
        auth.authorize_with(
            USER_WRITE,
            Freshness::UnlessOnly(&fields, RECENT_LOGIN_EXEMPT_FIELDS),
        )
    }) {
        Ok(caller) => caller,
        Err(done) => return Ok(*done),
    };
    let user = users::load_caller(state, &caller).await?;
    let saved = users::update(
        state,
        &caller,
        origin,
        &user,
        &user,
        Value::Object(fields.clone()),
        true,
    )
    .await;
    let value = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match saved {
        Ok(after) => Ok(see_other(&format!(
            "{USER_PAGE}?notice={}",
            match form {
                Form::Profile => "profile_saved",
                Form::Email if after.pending_email.is_some() => "email_change_requested",
                Form::Email => "email_changed",
                Form::Password => "password_changed",
            }
        ))),
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => {
            let (csrf, cookies) = session::page_csrf_token(state, headers);
            let mut page = user_page_of(&user, Layout::user("Your account", csrf, &user));
            let errors = Errors::of(&e, form.inputs());
            match form {
                Form::Profile => {
                    page.profile_errors = errors;
                    page.first_name = value("first_name");
                    page.last_name = value("last_name");
                }
                Form::Email => {
                    page.email_errors = errors;
                    page.new_email = value("email");
                }
                // Passwords are never sent back.
                Form::Password => page.password_errors = errors,
            }
            let mut response = failed(&e, page);
            cookies.apply(response.headers_mut());
            Ok(response)
        }
    }
}

/// `POST /settings/user/profile`: `first_name`, `last_name`.
pub async fn profile(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    save(&state, auth, origin, &headers, Form::Profile, body).await
}

/// `POST /settings/user/email`: `email`. With email configured the address waits for its
/// verification link (the page shows it pending); otherwise it changes at once.
pub async fn email(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    save(&state, auth, origin, &headers, Form::Email, body).await
}

/// `POST /settings/user/password`: `current_password`, `password`. Every other session ends.
pub async fn password(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    save(&state, auth, origin, &headers, Form::Password, body).await
}

/// `POST /settings/user/email/cancel`: forgets the pending address (its link stops working).
pub async fn cancel_email(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    body: Result<Body, ApiError>,
) -> PageResult {
    body?;
    let caller = match authorized(auth, USER_PAGE, |auth| {
        auth.authorize(ScopeNeed::NoKeyAccess)
    }) {
        Ok(caller) => caller,
        Err(done) => return Ok(*done),
    };
    let user = users::load_caller(&state, &caller).await?;
    match accounts::cancel_email_change(&state, &user).await {
        // Nothing pending (already cancelled or verified elsewhere) ends the same way.
        Ok(_) | Err(ApiError::Validation { .. }) => {
            Ok(see_other("/settings/user?notice=email_change_cancelled"))
        }
        Err(e) => Err(e.into()),
    }
}
