//! Web pages for people: server-rendered HTML (askama templates under `templates/`) around the
//! same use cases the JSON API calls. A page handler reads its form, calls one use case and
//! renders the outcome; errors carry the API's wording. Pages share the API's sessions, cookies
//! and CSRF token (a form's `csrfmiddlewaretoken`).
//!
//! Every route is registered with a trailing slash, as the router adds one before routing
//! (see [`crate::http::paths`]). None of them is in the OpenAPI document.

/// `let (caller, user) = signed_in!(&state, auth, PAGE, check);` in a page handler: the
/// signed-in caller and user, or the handler returns what [`settings::signed_in`] answers instead.
macro_rules! signed_in {
    ($state:expr, $auth:expr, $page:expr, $check:expr) => {
        match $crate::web::settings::signed_in($state, $auth, $page, $check).await {
            Ok(found) => found,
            Err(done) => return done,
        }
    };
}

pub mod accounts;
pub mod activity;
pub mod api_docs;
pub mod api_keys;
pub mod assets;
pub mod integrations;
pub mod layout;
pub mod sessions;
pub mod settings;
pub mod two_factor;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::FutureExt;

use crate::auth::Caller;
use crate::auth::session;
use crate::error::{ApiError, ErrorCause};
use crate::state::AppState;

/// Every page, with the security headers they all carry.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(accounts::home))
        .route("/login/", get(accounts::login_page).post(accounts::login))
        .route(
            "/login/2fa/",
            get(accounts::second_factor_page).post(accounts::second_factor),
        )
        .route(
            "/signup/",
            get(accounts::signup_page).post(accounts::signup),
        )
        .route(
            "/verify_email/{uuid}/",
            get(accounts::verify_pending_page).post(accounts::resend_verification),
        )
        .route(
            "/verify_email/{uuid}/{token}/",
            get(accounts::verify_page).post(accounts::verify),
        )
        .route("/reset/", get(accounts::reset_page).post(accounts::reset))
        .route(
            "/reset/{uuid}/{token}/",
            get(accounts::new_password_page).post(accounts::new_password),
        )
        .route("/settings/user/", get(settings::user_page))
        .route("/settings/user/export/", get(settings::export))
        // A form's address reopened (after a refused change, say) leads back to its page.
        .route(
            "/settings/user/profile/",
            back_to(settings::USER_PAGE).post(settings::profile),
        )
        .route(
            "/settings/user/email/",
            back_to(settings::USER_PAGE).post(settings::email),
        )
        .route(
            "/settings/user/email/cancel/",
            back_to(settings::USER_PAGE).post(settings::cancel_email),
        )
        .route(
            "/settings/user/password/",
            back_to(settings::USER_PAGE).post(settings::password),
        )
        .route("/settings/user-2fa/", get(two_factor::page))
        .route(
            "/settings/user-2fa/enable/",
            back_to(two_factor::PAGE).post(two_factor::enable),
        )
        .route(
            "/settings/user-2fa/backup-codes/",
            back_to(two_factor::PAGE).post(two_factor::backup_codes),
        )
        .route(
            "/settings/user-2fa/disable/",
            back_to(two_factor::PAGE).post(two_factor::disable),
        )
        .route(
            "/settings/user-api-keys/",
            get(api_keys::page).post(api_keys::create),
        )
        .route(
            "/settings/user-api-keys/{id}/roll/",
            back_to(api_keys::PAGE).post(api_keys::roll),
        )
        .route(
            "/settings/user-api-keys/{id}/delete/",
            back_to(api_keys::PAGE).post(api_keys::delete),
        )
        .route("/settings/user-sessions/", get(sessions::page))
        .route(
            "/settings/user-sessions/revoke-others/",
            back_to(sessions::PAGE).post(sessions::revoke_others),
        )
        .route(
            "/settings/user-sessions/{id}/revoke/",
            back_to(sessions::PAGE).post(sessions::revoke),
        )
        .route(
            "/settings/user-personal-integrations/",
            get(integrations::page),
        )
        .route(
            "/settings/user-personal-integrations/github/",
            back_to(integrations::PAGE).post(integrations::connect),
        )
        .route(
            "/settings/user-personal-integrations/github/{installation_id}/delete/",
            back_to(integrations::PAGE).post(integrations::disconnect),
        )
        .route("/settings/user-activity/", get(activity::page))
        .route(
            "/account-connected/github-integration/",
            get(integrations::account_connected),
        )
        .layer(axum::middleware::from_fn(page_headers))
        .route("/static/{file}/", get(assets::serve))
        .route("/api/schema/swagger-ui/", get(api_docs::swagger_ui))
        .route("/api/schema/redoc/", get(api_docs::redoc))
}

/// A GET of a form's address: a 303 to the page the form is on.
fn back_to(page: &'static str) -> axum::routing::MethodRouter<AppState> {
    get(move || async move { see_other(page) })
}

/// `Content-Security-Policy` of every page: only this origin, no inline script or style, never
/// framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; frame-ancestors 'none'";

/// Adds the security headers of a page. Pages are personal and may show a secret (a reset link's
/// token, later keys and backup codes), so none is stored by a cache.
pub fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Every page's headers; a page handler that panics answers the 500 page (the API's own
/// layer would answer JSON), with the cause kept for the request log.
async fn page_headers(request: Request, next: Next) -> Response {
    let response = match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => PageError(ApiError::internal(anyhow::anyhow!(
            "page handler panicked: {}",
            crate::http::telemetry::panic_message(panic.as_ref())
        )))
        .into_response(),
    };
    secure(response)
}

/// The HTML answer for a path no route matches (outside `/api/`).
pub fn not_found() -> Response {
    PageError(ApiError::NotFound("Page not found.".into())).into_response()
}

/// A failure shown as a page with the API's wording and status (the cause of a 5xx stays in the
/// response's extensions for the request log, as the API's errors do).
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let detail = self.0.detail();
        let api = self.0.into_response();
        let page = layout::ErrorPage {
            layout: layout::Layout::anonymous(status_title(status), String::new()),
            status: status.as_u16(),
            detail,
        };
        let mut response = (status, page).into_response();
        if let Some(cause) = api.extensions().get::<ErrorCause>() {
            response.extensions_mut().insert(cause.clone());
        }
        if let Some(retry) = api.headers().get(header::RETRY_AFTER) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry.clone());
        }
        secure(response)
    }
}

fn status_title(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "Page not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
        s if s.is_server_error() => "Something went wrong",
        _ => "Cannot do that",
    }
}

/// Who is looking at a page: the logged-in session's caller, if any. An unsafe request must
/// carry the CSRF token: the session's when logged in (checked exactly as the API checks it),
/// else the `posthog_csrftoken` cookie's (double submit).
pub struct Visitor(pub Option<Caller>);

impl FromRequestParts<AppState> for Visitor {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        let caller = match session::authenticate(parts, state).await {
            // A session held back by its organization's 2FA rule (its CSRF token already
            // checked) browses the sign-in pages as a visitor.
            Err(ApiError::PermissionDenied {
                code: "two_factor_setup_required" | "two_factor_verification_required",
                ..
            }) => return Ok(Visitor(None)),
            other => other?,
        };
        if caller.is_none() {
            session::check_double_submit(parts)?;
        }
        Ok(Visitor(caller))
    }
}

/// A form shown again with the error `e`: its status, and `Retry-After` when it is a throttle.
pub fn failed(e: &ApiError, page: impl IntoResponse) -> Response {
    let mut response = (e.status(), page).into_response();
    if let ApiError::Throttled(wait) = e {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*wait));
    }
    response
}

/// A 303 to `location` (after a form, the browser follows with a GET).
pub fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A form's text field (absent or not text reads as empty).
pub fn text(form: &serde_json::Map<String, serde_json::Value>, name: &str) -> String {
    form.get(name)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    /// A panic in a page handler is the HTML 500 page with the pages' headers, and the cause is
    /// kept for the request log. (No page panics on purpose, so this drives the page layer with
    /// a handler that does.)
    async fn boom() -> Response {
        panic!("on purpose")
    }

    #[tokio::test]
    async fn a_panicking_page_answers_the_500_page() {
        let pages = Router::new()
            .route("/boom/", get(boom))
            .layer(axum::middleware::from_fn(page_headers));
        let response = pages
            .oneshot(Request::get("/boom/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert!(
            response.extensions().get::<ErrorCause>().is_some(),
            "the cause is kept for the log"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains("Something went wrong"), "{html}");
        assert!(!html.contains("on purpose"), "the cause is not shown");
    }
}
