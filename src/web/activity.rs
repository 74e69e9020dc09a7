//! `/settings/user-activity`: the user's activity log (what `GET /api/users/@me/activity/`
//! lists), newest first, with a filter by kind and older/newer pages.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::PageError;
use super::layout::{Layout, query_param};
use crate::auth::session;
use crate::auth::{Authenticated, SessionOnly};
use crate::error::ApiError;
use crate::service::activity::{self, Activity, Cursor, PageRequest};
use crate::state::AppState;
use crate::store::ActivityRecord;
use crate::time::iso_z;

pub const PAGE: &str = "/settings/user-activity";

/// An entry as the table shows it.
pub struct ActivityRow {
    pub when: String,
    pub activity: &'static str,
    pub by: String,
    pub ip: String,
    pub user_agent: String,
    pub detail: String,
}

/// The words for each kind (the filter's options and the table's first column).
fn words(activity: Activity) -> &'static str {
    match activity {
        Activity::LoggedIn => "Signed in",
        Activity::LoginFailed => "Failed sign-in",
        Activity::LoggedOut => "Signed out",
        Activity::SessionRevoked => "Session revoked",
        Activity::PasswordChanged => "Password changed",
        Activity::PasswordResetRequested => "Password reset requested",
        Activity::PasswordReset => "Password reset",
        Activity::EmailChangeRequested => "Email change requested",
        Activity::EmailChanged => "Email changed",
        Activity::EmailVerified => "Email verified",
        Activity::TwoFactorEnabled => "Two-factor turned on",
        Activity::TwoFactorDisabled => "Two-factor turned off",
        Activity::BackupCodesRegenerated => "New backup codes",
        Activity::BackupCodeUsed => "Backup code used",
        Activity::PersonalApiKeyCreated => "API key created",
        Activity::PersonalApiKeyUpdated => "API key changed",
        Activity::PersonalApiKeyRolled => "API key rolled",
        Activity::PersonalApiKeyDeleted => "API key deleted",
        Activity::GithubIntegrationLinked => "GitHub connected",
        Activity::GithubIntegrationUnlinked => "GitHub disconnected",
        Activity::UserUpdated => "Profile changed",
        Activity::UserDeactivated => "Account deactivated",
        Activity::UserActivated => "Account activated",
        Activity::UserDataExported => "Data exported",
        Activity::OrganizationMemberRemoved => "Removed from an organization",
    }
}

impl ActivityRow {
    fn of(entry: ActivityRecord, email: &str) -> Self {
        let by = match (entry.actor.kind.as_str(), entry.actor.label) {
            ("user", _) if entry.actor.id == entry.user_id.map(|id| id.to_string()) => {
                email.to_string()
            }
            ("personal_api_key", Some(label)) => format!("API key “{label}”"),
            ("cli", _) => "An administrator (command line)".into(),
            (_, Some(label)) if label == "anonymous" => "Someone not signed in".into(),
            (kind, label) => label.unwrap_or_else(|| kind.to_string()),
        };
        let detail = detail_words(&entry.detail);
        ActivityRow {
            when: iso_z(entry.created_at)
                .replace('T', " ")
                .chars()
                .take(19)
                .collect(),
            activity: Activity::parse(&entry.activity).map_or("Other", words),
            by,
            ip: entry.ip.unwrap_or_default(),
            user_agent: entry.user_agent.unwrap_or_default(),
            detail,
        }
    }
}

/// `key: value` pairs (a list joined by commas, text without quotes) for the table.
fn detail_words(detail: &Value) -> String {
    fn value_words(value: &Value) -> String {
        match value {
            Value::String(text) => text.clone(),
            Value::Array(items) => items.iter().map(value_words).collect::<Vec<_>>().join(", "),
            Value::Null => "none".into(),
            other => other.to_string(),
        }
    }
    match detail {
        Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !matches!(v, Value::Object(o) if o.is_empty()))
            .map(|(k, v)| format!("{k}: {}", value_words(v)))
            .collect::<Vec<_>>()
            .join("; "),
        other => value_words(other),
    }
}

/// One option of the filter.
pub struct FilterOption {
    pub value: &'static str,
    pub words: &'static str,
    pub selected: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "settings_activity.html", whitespace = "minimize")]
pub struct ActivityPage {
    layout: Layout,
    rows: Vec<ActivityRow>,
    options: Vec<FilterOption>,
    older: Option<String>,
    newer: Option<String>,
}

/// The link to another page, keeping the filter.
fn page_link(filter: Option<Activity>, cursor: Cursor) -> String {
    let mut pairs = vec![("cursor", cursor.encode())];
    if let Some(activity) = filter {
        pairs.push(("activity", activity.as_str().to_string()));
    }
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    format!("{PAGE}?{query}")
}

/// `GET /settings/user-activity[?activity=KIND][&cursor=…]`. An unknown kind shows everything;
/// a cursor hoglet did not make shows the first page.
pub async fn page(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let (_, user) = signed_in!(&state, auth, PAGE, Authenticated::authorize_unscoped);
    let query = query.as_deref();
    let filter = query_param(query, "activity").and_then(|a| Activity::parse(&a));
    let request = PageRequest {
        activity: filter,
        cursor: query_param(query, "cursor").and_then(|c| Cursor::decode(&c).ok()),
        limit: None,
    };
    let page = activity::page(&state, &user, &request).await?;
    let (csrf, _) = session::page_csrf_token(&state, &headers);
    let options = Activity::ALL
        .iter()
        .map(|&a| FilterOption {
            value: a.as_str(),
            words: words(a),
            selected: filter == Some(a),
        })
        .collect();
    Ok(ActivityPage {
        layout: Layout::user("Activity", csrf, &user),
        rows: page
            .entries
            .into_iter()
            .map(|e| ActivityRow::of(e, &user.email))
            .collect(),
        options,
        older: page.next.map(|c| page_link(filter, c)),
        newer: page.previous.map(|c| page_link(filter, c)),
    }
    .into_response())
}
