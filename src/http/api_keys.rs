//! `/api/personal_api_keys/`: create, list, retrieve (`@current` for the calling key), update,
//! delete and roll personal API keys. Managed from a browser session; a key may only read itself.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Authenticated, Caller, KeyThenSession};
use crate::domain::api_key::MAX_LABEL_CHARS;
use crate::domain::fields::{self, Chars};
use crate::domain::python::py_type_name;
use crate::domain::scope::is_valid_scope;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::http::body::Body;
use crate::http::paths::Segment;
use crate::ratelimit::Rate;
use crate::service::activity::{Context, Origin};
use crate::service::api_keys;
use crate::state::AppState;
use crate::store::ApiKeyRecord;
use crate::time::{iso_z, parse_rfc3339};

const NO_KEY_ACCESS: &str = "This action does not support Personal API Key access";
/// PostHog's default throttles for personal-key requests.
pub const BURST: Rate = Rate::per_minute("burst", 480);
pub const SUSTAINED: Rate = Rate::per_hour("sustained", 4800);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(retrieve, update, partial_update, destroy))
        .routes(routes!(roll))
}

/// The representation of a key (`value` only right after create and roll).
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonalApiKeyView {
    pub id: String,
    pub label: String,
    pub value: Option<String>,
    pub mask_value: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub user_id: i64,
    pub scopes: Vec<String>,
    pub scoped_teams: Vec<i64>,
    pub scoped_organizations: Vec<String>,
    pub last_rolled_at: Option<String>,
    /// hoglet addition: after this the key is refused (null: never).
    pub expires_at: Option<String>,
}

fn view(record: &ApiKeyRecord, value: Option<String>) -> PersonalApiKeyView {
    PersonalApiKeyView {
        id: record.id.clone(),
        label: record.label.clone(),
        value,
        mask_value: record.mask_value.clone(),
        created_at: iso_z(record.created_at),
        last_used_at: record.last_used_at.map(iso_z),
        user_id: record.user_id,
        scopes: record.scopes.clone(),
        scoped_teams: record.scoped_teams.clone().unwrap_or_default(),
        scoped_organizations: record.scoped_organizations.clone().unwrap_or_default(),
        last_rolled_at: record.last_rolled_at.map(iso_z),
        expires_at: record.expires_at.map(iso_z),
    }
}

/// PostHog's burst and sustained limits, for requests made with a personal key.
pub async fn throttle_key(state: &AppState, caller: &Caller) -> ApiResult<()> {
    if !state.config.rate_limit_keys {
        return Ok(());
    }
    let Some(key) = caller.api_key() else {
        return Ok(());
    };
    for rate in [BURST, SUSTAINED] {
        state
            .limiter
            .check(rate, &key.id)
            .await
            .map_err(ApiError::Throttled)?;
    }
    Ok(())
}

/// Session callers only (`PersonalApiKeySelfAccess` refuses keys everything but reading themselves).
fn session_only(caller: &Caller) -> ApiResult<()> {
    if caller.api_key().is_some() {
        return Err(ApiError::forbidden(NO_KEY_ACCESS));
    }
    Ok(())
}

/// The caller's own key by id (another user's key is not found). An id with a control character
/// names no key (ids are generated alphanumerics) and is not looked up: PostgreSQL cannot take NUL.
async fn own_key(state: &AppState, caller: &Caller, id: &str) -> ApiResult<ApiKeyRecord> {
    api_keys::own(state, caller.user_id, id).await
}

/// List personal API keys
///
/// The caller's keys, newest first (not paginated).
#[utoipa::path(
    get,
    path = "/api/personal_api_keys/",
    operation_id = "personal_api_keys_list",
    tag = "personal_api_keys",
    responses((status = 200, body = Vec<PersonalApiKeyView>), (status = 403, body = ErrorBody)),
)]
async fn list(
    State(state): State<AppState>,
    auth: Authenticated<KeyThenSession>,
) -> ApiResult<axum::Json<Vec<PersonalApiKeyView>>> {
    let caller = auth.authorize_unscoped()?;
    throttle_key(&state, &caller).await?;
    session_only(&caller)?;
    let keys = api_keys::list(&state, caller.user_id).await?;
    Ok(axum::Json(keys.iter().map(|k| view(k, None)).collect()))
}

/// Validated writable fields; `None` means "not sent".
#[derive(Default)]
struct KeyInput {
    label: Option<String>,
    scopes: Option<Vec<String>>,
    scoped_teams: Option<Option<Vec<i64>>>,
    scoped_organizations: Option<Option<Vec<String>>>,
    expires_at: Option<Option<i64>>,
}

/// A new key's fields, checked with the API's rules and messages (also the web page's form).
pub async fn new_key(
    state: &AppState,
    caller: &Caller,
    body: Map<String, Value>,
) -> ApiResult<api_keys::NewKey> {
    let input = read_input(state, caller, body, false).await?;
    Ok(api_keys::NewKey {
        label: input.label.unwrap_or_default(),
        scopes: input.scopes.unwrap_or_default(),
        scoped_teams: input.scoped_teams.flatten(),
        scoped_organizations: input.scoped_organizations.flatten(),
        expires_at: input.expires_at.flatten(),
    })
}

async fn read_input(
    state: &AppState,
    caller: &Caller,
    body: Map<String, Value>,
    partial: bool,
) -> ApiResult<KeyInput> {
    let mut input = KeyInput::default();
    match body.get("label") {
        Some(v) => {
            input.label = fields::char_field(v, Chars::new().max(MAX_LABEL_CHARS))
                .map_err(|e| ApiError::field("label", e.code, e.detail))?;
        }
        None if !partial => {
            return Err(ApiError::field(
                "label",
                "required",
                "This field is required.",
            ));
        }
        None => {}
    }
    match body.get("scopes") {
        Some(Value::Array(items)) => {
            let mut scopes = Vec::with_capacity(items.len());
            for item in items {
                let scope = item
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| item.to_string());
                if !is_valid_scope(&scope) {
                    return Err(ApiError::field(
                        "scopes",
                        "invalid_input",
                        format!("Invalid scope: {scope}"),
                    ));
                }
                scopes.push(scope);
            }
            // PostHog accepts `[]` and then lets the key do everything; hoglet refuses it.
            if scopes.is_empty() {
                return Err(ApiError::field(
                    "scopes",
                    "empty",
                    "This list may not be empty.",
                ));
            }
            input.scopes = Some(scopes);
        }
        Some(Value::Null) => {
            return Err(ApiError::field(
                "scopes",
                "null",
                "This field may not be null.",
            ));
        }
        Some(other) => {
            return Err(ApiError::field(
                "scopes",
                "not_a_list",
                format!(
                    "Expected a list of items but got type \"{}\".",
                    py_type_name(other)
                ),
            ));
        }
        None if !partial => {
            return Err(ApiError::field(
                "scopes",
                "required",
                "This field is required.",
            ));
        }
        None => {}
    }
    if let Some(value) = body.get("scoped_teams") {
        input.scoped_teams = Some(scoped_teams(state, caller, value).await?);
    }
    if let Some(value) = body.get("scoped_organizations") {
        input.scoped_organizations = Some(scoped_organizations(state, caller, value).await?);
    }
    if let Some(value) = body.get("expires_at") {
        input.expires_at = Some(match value {
            Value::Null => None,
            Value::String(text) => {
                let at = parse_rfc3339(text).ok_or_else(|| {
                    ApiError::field(
                        "expires_at",
                        "invalid_input",
                        "Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].",
                    )
                })?;
                if at <= state.clock.now() {
                    return Err(ApiError::field(
                        "expires_at",
                        "invalid_input",
                        "The expiry must be in the future.",
                    ));
                }
                Some(at)
            }
            _ => {
                return Err(ApiError::field(
                    "expires_at",
                    "invalid_input",
                    "Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].",
                ));
            }
        });
    }
    Ok(input)
}

async fn scoped_teams(
    state: &AppState,
    caller: &Caller,
    value: &Value,
) -> ApiResult<Option<Vec<i64>>> {
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        other => {
            return Err(ApiError::field(
                "scoped_teams",
                "not_a_list",
                format!(
                    "Expected a list of items but got type \"{}\".",
                    py_type_name(other)
                ),
            ));
        }
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        ids.push(
            fields::integer_field(item, None, None)
                .map_err(|e| ApiError::field("scoped_teams", e.code, e.detail))?,
        );
    }
    let reachable = api_keys::member_teams(state, caller.user_id).await?;
    if ids.iter().any(|id| !reachable.contains(id)) {
        return Err(ApiError::field(
            "scoped_teams",
            "invalid_input",
            "You must be a member of all teams that you are scoping the key to.",
        ));
    }
    Ok(Some(ids))
}

async fn scoped_organizations(
    state: &AppState,
    caller: &Caller,
    value: &Value,
) -> ApiResult<Option<Vec<String>>> {
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        other => {
            return Err(ApiError::field(
                "scoped_organizations",
                "not_a_list",
                format!(
                    "Expected a list of items but got type \"{}\".",
                    py_type_name(other)
                ),
            ));
        }
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let uuid = item
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| {
                ApiError::field(
                    "scoped_organizations",
                    "invalid_input",
                    "Invalid organization UUID",
                )
            })?;
        ids.push(uuid);
    }
    let memberships = api_keys::member_organizations(state, caller.user_id).await?;
    if ids.iter().any(|id| !memberships.contains(id)) {
        return Err(ApiError::field(
            "scoped_organizations",
            "invalid_input",
            "You must be a member of all organizations that you are scoping the key to.",
        ));
    }
    Ok(Some(ids.iter().map(Uuid::to_string).collect()))
}

/// Create a personal API key
///
/// The response is the only time the key's value is shown.
#[utoipa::path(
    post,
    path = "/api/personal_api_keys/",
    operation_id = "personal_api_keys_create",
    tag = "personal_api_keys",
    request_body(content = crate::http::requests::PersonalApiKeyRequest),
    responses((status = 201, body = PersonalApiKeyView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
)]
async fn create(
    State(state): State<AppState>,
    auth: Authenticated<KeyThenSession>,
    origin: Origin,
    body: Body,
) -> ApiResult<Response> {
    let caller = auth.authorize_unscoped()?;
    throttle_key(&state, &caller).await?;
    session_only(&caller)?;
    let key = new_key(&state, &caller, body.object()?).await?;
    let (record, value) = api_keys::create(
        &state,
        &Context::caller(&caller, origin),
        caller.user_id,
        key,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(view(&record, Some(value)))).into_response())
}

/// Retrieve a personal API key
///
/// `@current` is the key making the request.
#[utoipa::path(
    get,
    path = "/api/personal_api_keys/{id}/",
    operation_id = "personal_api_keys_retrieve",
    tag = "personal_api_keys",
    params(("id" = String, Path, description = "A key id, or `@current`.")),
    responses((status = 200, body = PersonalApiKeyView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
)]
async fn retrieve(
    State(state): State<AppState>,
    auth: Authenticated<KeyThenSession>,
    Segment(id): Segment,
) -> ApiResult<axum::Json<PersonalApiKeyView>> {
    let caller = auth.authorize_unscoped()?;
    throttle_key(&state, &caller).await?;
    let id = match caller.api_key() {
        Some(key) if id == "@current" || id == key.id => key.id.clone(),
        Some(_) => return Err(ApiError::forbidden(NO_KEY_ACCESS)),
        None if id == "@current" => return Err(ApiError::not_found()),
        None => id,
    };
    Ok(axum::Json(view(
        &own_key(&state, &caller, &id).await?,
        None,
    )))
}

async fn write(
    state: AppState,
    auth: Authenticated<KeyThenSession>,
    origin: Origin,
    id: String,
    body: Body,
    partial: bool,
) -> ApiResult<axum::Json<PersonalApiKeyView>> {
    let caller = auth.authorize_unscoped()?;
    throttle_key(&state, &caller).await?;
    session_only(&caller)?;
    let body = body.object()?;
    let current = own_key(&state, &caller, &id).await?;
    let input = read_input(&state, &caller, body, partial).await?;
    let changes = api_keys::KeyChanges {
        label: input.label,
        scopes: input.scopes,
        scoped_teams: input.scoped_teams,
        scoped_organizations: input.scoped_organizations,
        expires_at: input.expires_at,
    };
    let updated =
        api_keys::update(&state, &Context::caller(&caller, origin), &current, changes).await?;
    Ok(axum::Json(view(&updated, None)))
}

/// Update a personal API key (all fields)
#[utoipa::path(
    put,
    path = "/api/personal_api_keys/{id}/",
    operation_id = "personal_api_keys_update",
    tag = "personal_api_keys",
    params(("id" = String, Path)),
    request_body(content = crate::http::requests::PersonalApiKeyRequest),
    responses((status = 200, body = PersonalApiKeyView), (status = 400, body = ErrorBody)),
)]
async fn update(
    State(state): State<AppState>,
    auth: Authenticated<KeyThenSession>,
    Segment(id): Segment,
    origin: Origin,
    body: Body,
) -> ApiResult<axum::Json<PersonalApiKeyView>> {
    write(state, auth, origin, id, body, false).await
}

/// Update a personal API key
#[utoipa::path(
    patch,
    path = "/api/personal_api_keys/{id}/",
    operation_id = "personal_api_keys_partial_update",
    tag = "personal_api_keys",
    params(("id" = String, Path)),
    request_body(content = crate::http::requests::PersonalApiKeyPatch),
    responses((status = 200, body = PersonalApiKeyView), (status = 400, body = ErrorBody)),
)]
async fn partial_update(
    State(state): State<AppState>,
    auth: Authenticated<KeyThenSession>,
    Segment(id): Segment,
    origin: Origin,
    body: Body,
) -> ApiResult<axum::Json<PersonalApiKeyView>> {
    write(state, auth, origin, id, body, true).await
}

/// Delete a personal API key
///
/// The key stops working at once.
#[utoipa::path(
    delete,
    path = "/api/personal_api_keys/{id}/",
    operation_id = "personal_api_keys_destroy",
    tag = "personal_api_keys",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
)]
async fn destroy(
    State(state): State<AppState>,
    auth: Authenticated<KeyThenSession>,
    Segment(id): Segment,
    origin: Origin,
) -> ApiResult<StatusCode> {
    let caller = auth.authorize_unscoped()?;
    throttle_key(&state, &caller).await?;
    session_only(&caller)?;
    let key = own_key(&state, &caller, &id).await?;
    api_keys::delete(&state, &Context::caller(&caller, origin), &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Roll a personal API key
///
/// A new value replaces the old one, which stops working at once.
#[utoipa::path(
    post,
    path = "/api/personal_api_keys/{id}/roll/",
    operation_id = "personal_api_keys_roll_create",
    tag = "personal_api_keys",
    params(("id" = String, Path)),
    responses((status = 200, body = PersonalApiKeyView), (status = 404, body = ErrorBody)),
)]
async fn roll(
    State(state): State<AppState>,
    auth: Authenticated<KeyThenSession>,
    Segment(id): Segment,
    origin: Origin,
) -> ApiResult<axum::Json<PersonalApiKeyView>> {
    let caller = auth.authorize_unscoped()?;
    throttle_key(&state, &caller).await?;
    session_only(&caller)?;
    let key = own_key(&state, &caller, &id).await?;
    let (after, value) = api_keys::roll(&state, &Context::caller(&caller, origin), &key).await?;
    Ok(axum::Json(view(&after, Some(value))))
}
