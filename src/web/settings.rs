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
use crate::error::ApiError;
use crate::http::body::Body;
use crate::http::users::{RECENT_LOGIN_EXEMPT_FIELDS, USER_WRITE};
use crate::service::users;
use crate::state::AppState;

type PageResult = Result<Response, PageError>;

/// The page's own path, where a login or a re-authentication comes back to (and where a form's
/// address, opened again after a refused change, leads).
pub const USER_PAGE: &str = "/settings/user";

/// The login page that comes back to `path`; with `reauth`, it asks a signed-in user to confirm
/// their password.
fn login_then(path: &str, reauth: bool) -> Response {
    let next = redirect::query_value(path);
    see_other(&if reauth {
        format!("/login?next={next}&reauth=1")
    } else {
        format!("/login?next={next}")
    })
}

/// The session's caller, or the way to the login page (or, for a sensitive change on an old
/// session, the password prompt) that comes back to `path`.
fn authorized(
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    path: &str,
    check: impl FnOnce(Authenticated<SessionOnly>) -> Result<Caller, ApiError>,
) -> Result<Caller, Box<Response>> {
    let auth = match auth {
        Ok(auth) => auth,
        Err(ApiError::NotAuthenticated(_)) => return Err(Box::new(login_then(path, false))),
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

#[derive(Template, WebTemplate)]
#[template(path = "settings_user.html", whitespace = "minimize")]
pub struct UserPage {
    layout: Layout,
    errors: Errors,
    first_name: String,
    last_name: String,
    email: String,
}

/// `GET /settings/user`: the profile.
pub async fn user_page(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let caller = match authorized(auth, USER_PAGE, Authenticated::authorize_unscoped) {
        Ok(caller) => caller,
        Err(done) => return Ok(*done),
    };
    let user = users::load_caller(&state, &caller).await?;
    let (csrf, cookies) = session::page_csrf_token(&state, &headers);
    let page = UserPage {
        layout: Layout::user("Your account", csrf, &user).with_notice(notice(query.as_deref())),
        errors: Errors::none(),
        first_name: user.first_name.clone(),
        last_name: user.last_name.clone(),
        email: user.email.clone(),
    };
    let mut response = page.into_response();
    cookies.apply(response.headers_mut());
    Ok(response)
}

/// `POST /settings/user/profile`: `first_name`, `last_name` through `users::update`.
pub async fn profile(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = body?.object()?;
    let fields: Map<String, Value> = ["first_name", "last_name"]
        .into_iter()
        .filter_map(|name| Some((name.to_string(), form.get(name)?.clone())))
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
    let user = users::load_caller(&state, &caller).await?;
    let saved = users::update(
        &state,
        &caller,
        &user,
        &user,
        Value::Object(fields.clone()),
        true,
    )
    .await;
    match saved {
        Ok(_) => Ok(see_other("/settings/user?notice=profile_saved")),
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => {
            let (csrf, cookies) = session::page_csrf_token(&state, &headers);
            let value = |name: &str| {
                fields
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let page = UserPage {
                layout: Layout::user("Your account", csrf, &user),
                errors: Errors::of(&e, &["first_name", "last_name"]),
                first_name: value("first_name"),
                last_name: value("last_name"),
                email: user.email.clone(),
            };
            let mut response = failed(&e, page);
            cookies.apply(response.headers_mut());
            Ok(response)
        }
    }
}
