//! `/settings/user-api-keys`: the user's personal API keys; create (the value shown once), roll
//! and delete — through the use cases and the field rules of `/api/personal_api_keys/`.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::layout::{Errors, Layout, day, notice};
use super::{PageError, see_other, text};
use crate::auth::session;
use crate::auth::{Authenticated, SessionOnly};
use crate::domain::scope::SCOPE_OBJECTS;
use crate::error::ApiError;
use crate::http::api_keys::new_key;
use crate::http::body::{Body, FormLists};
use crate::service::activity::{Context, Origin};
use crate::service::api_keys;
use crate::state::AppState;
use crate::store::{ApiKeyRecord, UserRecord};

type PageResult = Result<Response, PageError>;

pub const PAGE: &str = "/settings/user-api-keys";
/// The form's inputs, for tying an error to its field.
const INPUTS: &[&str] = &["label", "scopes", "expires_at"];

/// A key as the table shows it (never its value).
pub struct KeyRow {
    pub id: String,
    pub label: String,
    pub mask: String,
    pub scopes: String,
    pub created: String,
    pub last_used: String,
    pub expires: String,
}

impl KeyRow {
    fn of(key: &ApiKeyRecord) -> Self {
        Self {
            id: key.id.clone(),
            label: key.label.clone(),
            mask: key.mask_value.clone(),
            scopes: key.scopes.join(", "),
            created: day(key.created_at),
            last_used: key.last_used_at.map_or_else(|| "never".into(), day),
            expires: key.expires_at.map_or_else(|| "never".into(), day),
        }
    }
}

/// A checkbox of the scope list.
pub struct ScopeBox {
    pub value: String,
    pub checked: bool,
}

/// A key value made just now, shown this once.
pub struct NewValue {
    pub label: String,
    pub value: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "settings_api_keys.html", whitespace = "minimize")]
pub struct ApiKeysPage {
    layout: Layout,
    errors: Errors,
    keys: Vec<KeyRow>,
    new_value: Option<NewValue>,
    /// A key whose deletion waits for confirmation.
    confirm_delete: Option<KeyRow>,
    /// The label typed (not `label`: the field macro has a parameter of that name).
    typed_label: String,
    expires_at: String,
    /// `*`, `user:read` and `user:write`, shown first.
    common_scopes: Vec<ScopeBox>,
    /// Every other scope.
    other_scopes: Vec<ScopeBox>,
    /// The script behind the "Copy" button (the page works without it).
    copy_script: &'static str,
}

fn scope_boxes(checked: &[String]) -> (Vec<ScopeBox>, Vec<ScopeBox>) {
    let make = |value: String| ScopeBox {
        checked: checked.contains(&value),
        value,
    };
    let common = ["*", "user:read", "user:write"]
        .into_iter()
        .map(|s| make(s.to_string()))
        .collect();
    let others = SCOPE_OBJECTS
        .iter()
        .filter(|object| **object != "user")
        .flat_map(|object| [format!("{object}:read"), format!("{object}:write")])
        .map(make)
        .collect();
    (common, others)
}

/// What the page shows beside the key list.
#[derive(Default)]
struct Shown {
    errors: Errors,
    new_value: Option<NewValue>,
    confirm_delete: Option<KeyRow>,
    label: String,
    expires_at: String,
    checked: Vec<String>,
}

async fn render(
    state: &AppState,
    user: &UserRecord,
    headers: &HeaderMap,
    layout_notice: Option<&'static str>,
    shown: Shown,
) -> Result<ApiKeysPage, ApiError> {
    let keys = api_keys::list(state, user.id).await?;
    let (csrf, _) = session::page_csrf_token(state, headers);
    let (common_scopes, other_scopes) = scope_boxes(&shown.checked);
    Ok(ApiKeysPage {
        layout: Layout::user("Personal API keys", csrf, user).with_notice(layout_notice),
        errors: shown.errors,
        keys: keys.iter().map(KeyRow::of).collect(),
        new_value: shown.new_value,
        confirm_delete: shown.confirm_delete,
        typed_label: shown.label,
        expires_at: shown.expires_at,
        common_scopes,
        other_scopes,
        copy_script: &super::assets::COPY_SCRIPT.url,
    })
}

/// `GET /settings/user-api-keys`.
pub async fn page(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> PageResult {
    let (_, user) = signed_in!(&state, auth, PAGE, Authenticated::authorize_unscoped);
    let shown = Shown::default();
    let page = render(&state, &user, &headers, notice(query.as_deref()), shown).await?;
    Ok(page.into_response())
}

/// A date input's `YYYY-MM-DD` as the API's datetime (the start of that day, UTC); anything
/// else is passed on for the API's message.
fn expiry(date: &str) -> Value {
    let is_date = date.len() == 10
        && date.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    Value::String(if is_date {
        format!("{date}T00:00:00Z")
    } else {
        date.to_string()
    })
}

/// `POST /settings/user-api-keys`: `label`, `scopes` (one checkbox per scope), optional
/// `expires_at` (a date).
pub async fn create(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: HeaderMap,
    lists: FormLists,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = body?.object()?;
    let (caller, user) = signed_in!(&state, auth, PAGE, Authenticated::authorize_unscoped);
    let label = text(&form, "label");
    let expires_at = text(&form, "expires_at").trim().to_string();
    let checked = lists.all("scopes");
    let mut fields = Map::new();
    fields.insert("label".into(), Value::String(label.clone()));
    fields.insert(
        "scopes".into(),
        Value::Array(checked.iter().cloned().map(Value::String).collect()),
    );
    if !expires_at.is_empty() {
        fields.insert("expires_at".into(), expiry(&expires_at));
    }
    let created = async {
        let key = new_key(&state, &caller, fields).await?;
        let ctx = Context::caller(&caller, origin);
        api_keys::create(&state, &ctx, caller.user_id, key).await
    }
    .await;
    match created {
        Ok((record, value)) => {
            let shown = Shown {
                new_value: Some(NewValue {
                    label: record.label,
                    value,
                }),
                ..Shown::default()
            };
            Ok(render(&state, &user, &headers, None, shown)
                .await?
                .into_response())
        }
        Err(e) if e.status().is_server_error() => Err(e.into()),
        Err(e) => {
            let status = e.status();
            let shown = Shown {
                errors: Errors::of(&e, INPUTS),
                label,
                expires_at,
                checked,
                ..Shown::default()
            };
            let page = render(&state, &user, &headers, None, shown).await?;
            Ok((status, page).into_response())
        }
    }
}

/// `POST /settings/user-api-keys/{id}/roll`: a new value, shown once; the old one stops working.
pub async fn roll(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body, ApiError>,
) -> PageResult {
    body?;
    let (caller, user) = signed_in!(&state, auth, PAGE, Authenticated::authorize_unscoped);
    let key = api_keys::own(&state, caller.user_id, &id).await?;
    let (after, value) = api_keys::roll(&state, &Context::caller(&caller, origin), &key).await?;
    let shown = Shown {
        new_value: Some(NewValue {
            label: after.label,
            value,
        }),
        ..Shown::default()
    };
    Ok(render(&state, &user, &headers, None, shown)
        .await?
        .into_response())
}

/// `POST /settings/user-api-keys/{id}/delete`: without `confirm=yes`, asks first.
pub async fn delete(
    State(state): State<AppState>,
    auth: Result<Authenticated<SessionOnly>, ApiError>,
    origin: Origin,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Body, ApiError>,
) -> PageResult {
    let form = body?.object()?;
    let (caller, user) = signed_in!(&state, auth, PAGE, Authenticated::authorize_unscoped);
    let key = api_keys::own(&state, caller.user_id, &id).await?;
    if text(&form, "confirm") != "yes" {
        let shown = Shown {
            confirm_delete: Some(KeyRow::of(&key)),
            ..Shown::default()
        };
        return Ok(render(&state, &user, &headers, None, shown)
            .await?
            .into_response());
    }
    api_keys::delete(&state, &Context::caller(&caller, origin), &key).await?;
    Ok(see_other("/settings/user-api-keys?notice=key_deleted"))
}
