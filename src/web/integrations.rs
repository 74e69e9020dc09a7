//! `/settings/user-personal-integrations`: the user's GitHub integrations, connecting one (to
//! GitHub's install page, through the use case of the API's `…/integrations/github/start/`) and
//! disconnecting; and `/account-connected/github-integration`, where PostHog Code's flow ends.
//! GitHub sends the browser back to these pages with `github_link_success` / `github_link_error`.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::layout::{Errors, Layout, day, notice, query_param};
use super::settings::authorized;
use super::{PageError, see_other};
use crate::auth::session;
use crate::auth::{Authenticated, SessionOnly};
use crate::error::ApiError;
use crate::http::body::Body;
use crate::service::activity::{Context, Origin};
use crate::service::github;
use crate::state::AppState;
use crate::store::{UserIntegrationRecord, UserRecord};

type PageResult = Result<Response, PageError>;

pub const PAGE: &str = "/settings/user-personal-integrations";

/// The words for a `github_link_error` reason (hoglet's and PostHog's callback reasons).
pub fn link_error_words(reason: &str) -> &'static str {
    match reason {
        "access_denied" => "You cancelled the connection on GitHub.",
        "github_oauth_error" => "GitHub refused the sign-in. Try again.",
        "missing_params" => "GitHub sent the browser back without the details needed. Try again.",
        "invalid_state" => {
            "This connection attempt expired or was already used. Start it again from this page."
        }
        "invalid_installation" | "invalid_installation_id" => {
            "GitHub named an installation that is not valid."
        }
        "installation_not_authorized" => {
            "Your GitHub account cannot access that installation of the app."
        }
        "installation_verify_failed" => {
            "GitHub could not confirm your access to the installation. Try again later."
        }
        "installation_fetch_failed" => {
            "GitHub could not be reached to read the installation. Try again later."
        }
        "installation_token_failed" => {
            "GitHub did not give hoglet access to the installation. Try again later."
        }
        _ => "GitHub could not be connected. Try again.",
    }
}

/// An integration as the table shows it.
pub struct IntegrationRow {
    pub installation_id: String,
    pub account: String,
    pub repositories: String,
    pub connected: String,
}

impl IntegrationRow {
    fn of(record: &UserIntegrationRecord) -> Self {
        let account = record
            .config
            .get("account")
            .and_then(|a| a.get("login").or_else(|| a.get("name")))
            .and_then(Value::as_str)
            .unwrap_or("(unknown account)")
            .to_string();
        let repositories = match (&record.repository_cache, record.repository_cache_updated_at) {
            (Value::Array(list), Some(_)) => list.len().to_string(),
            _ => "not listed yet".into(),
        };
        Self {
            installation_id: record.integration_id.clone(),
            account,
            repositories,
            connected: day(record.created_at),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "settings_integrations.html", whitespace = "minimize")]
pub struct IntegrationsPage {
    layout: Layout,
    errors: Errors,
    rows: Vec<IntegrationRow>,
    linked: bool,
    link_error: Option<&'static str>,
}

async fn render(
    state: &AppState,
    user: &UserRecord,
    headers: &HeaderMap,
    query: Option<&str>,
    errors: Errors,
) -> Result<IntegrationsPage, ApiError> {
    let rows = github::personal_integrations(state, user).await?;
    let (csrf, _) = session::page_csrf_token(state, headers);
    Ok(IntegrationsPage {
        layout: Layout::user("Integrations", csrf, user).with_notice(notice(query)),
        errors,
        rows: rows.iter().map(IntegrationRow::of).collect(),
        linked: query_param(query, "github_link_success").is_some(),
        link_error: query_param(query, "github_link_error").map(|r| link_error_words(&r)),
    })
}

/// `GET /settings/user-personal-integrations`.
pub async fn page(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let (_, user) = signed_in!(&state, auth, PAGE, Authenticated::authorize_unscoped);
    let page = render(&state, &user, &headers, query.as_deref(), Errors::none()).await?;
    Ok(page.into_response())
}

/// `POST /settings/user-personal-integrations/github`: on to GitHub's install (or authorize)
/// page, with a one-time state that brings the browser back here.
pub async fn connect(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    body: Result<Body, ApiError>,
) -> PageResult {
    body?;
    let (_, user) = signed_in!(&state, auth, PAGE, Authenticated::authorize_unscoped);
    match github::start(&state, &user, &Map::new()).await {
        Ok(link) => Ok(see_other(&link.install_url)),
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => {
            let status = e.status();
            let page = render(&state, &user, &headers, None, Errors::of(&e, &[])).await?;
            Ok((status, page).into_response())
        }
    }
}

/// `POST /settings/user-personal-integrations/github/{installation_id}/delete`.
pub async fn disconnect(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    Path(installation): Path<String>,
    body: Result<Body, ApiError>,
) -> PageResult {
    body?;
    let caller = match authorized(auth, PAGE, Authenticated::authorize_unscoped) {
        Ok(caller) => caller,
        Err(done) => return Ok(*done),
    };
    let integration = github::find(&state, caller.user_id, &installation).await?;
    github::unlink(&state, &Context::caller(&caller, origin), &integration).await?;
    Ok(see_other(
        "/settings/user-personal-integrations?notice=github_disconnected",
    ))
}

#[derive(Template, WebTemplate)]
#[template(path = "account_connected.html", whitespace = "minimize")]
pub struct ConnectedPage {
    layout: Layout,
    error: Option<&'static str>,
}

/// `GET /account-connected/github-integration`: the end of PostHog Code's connect flow, for
/// whoever opens it (it shows only fixed words).
pub async fn account_connected(RawQuery(query): RawQuery) -> Response {
    let page = ConnectedPage {
        layout: Layout::anonymous("GitHub", String::new()),
        error: query_param(query.as_deref(), "error").map(|r| link_error_words(&r)),
    };
    page.into_response()
}
