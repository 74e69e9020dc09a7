//! Personal API keys: creating, changing, rolling and deleting them. The API and the admin CLI
//! create keys through [`insert`], so both apply the same limit and the same rules.

use serde_json::json;

use crate::domain::{api_key, fields, scope};
use crate::error::{ApiError, ApiResult};
use crate::service::activity::{self, Activity, Context};
use crate::state::AppState;
use crate::store::{ApiKeyChanges, ApiKeyRecord, DynStore, NewActivity, NewApiKey, StoreError};
use crate::time::Micros;

/// A key to create, validated field by field by its caller.
#[derive(Debug, Default)]
pub struct NewKey {
    pub label: String,
    pub scopes: Vec<String>,
    pub scoped_teams: Option<Vec<i64>>,
    pub scoped_organizations: Option<Vec<String>>,
    pub expires_at: Option<Micros>,
}

/// What a change sets; `None` keeps the stored value.
#[derive(Debug, Default)]
pub struct KeyChanges {
    pub label: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub scoped_teams: Option<Option<Vec<i64>>>,
    pub scoped_organizations: Option<Option<Vec<String>>>,
    pub expires_at: Option<Option<Micros>>,
}

/// The rules every new key obeys, whichever way it comes in: a label of 1 to
/// [`api_key::MAX_LABEL_CHARS`] plain characters and at least one valid scope.
fn check_new_key(key: &NewKey) -> ApiResult<()> {
    fields::check_characters(&key.label, false)
        .map_err(|e| ApiError::field("label", e.code, e.detail))?;
    if key.label.trim().is_empty() {
        return Err(ApiError::field(
            "label",
            "blank",
            "This field may not be blank.",
        ));
    }
    if key.label.chars().count() > api_key::MAX_LABEL_CHARS {
        return Err(ApiError::field(
            "label",
            "max_length",
            format!(
                "Ensure this field has no more than {} characters.",
                api_key::MAX_LABEL_CHARS
            ),
        ));
    }
    if key.scopes.is_empty() {
        return Err(ApiError::field(
            "scopes",
            "invalid_input",
            "At least one scope is required.",
        ));
    }
    if let Some(bad) = key.scopes.iter().find(|s| !scope::is_valid_scope(s)) {
        return Err(ApiError::field(
            "scopes",
            "invalid_input",
            format!("Invalid scope: {bad}"),
        ));
    }
    Ok(())
}

/// Creates a key for the user, unless they have [`api_key::MAX_KEYS_PER_USER`] already; returns
/// it with its value, shown this once.
pub async fn insert(
    store: &DynStore,
    now: Micros,
    ctx: &Context,
    user_id: i64,
    key: NewKey,
) -> ApiResult<Inserted> {
    check_new_key(&key)?;
    let value = api_key::generate_value();
    let id = api_key::generate_id();
    let log = vec![ctx.entry_at(
        now,
        Some(user_id),
        Activity::PersonalApiKeyCreated,
        json!({ "id": id, "label": key.label, "scopes": key.scopes }),
    )];
    let record = store
        .insert_api_key(
            NewApiKey {
                id,
                user_id,
                label: key.label,
                secure_value: api_key::secure_value(&value),
                mask_value: api_key::mask(&value),
                scopes: key.scopes,
                scoped_teams: key.scoped_teams,
                scoped_organizations: key.scoped_organizations,
                expires_at: key.expires_at,
                created_at: now,
            },
            api_key::MAX_KEYS_PER_USER,
            &log,
        )
        .await
        .map_err(|e| match e {
            StoreError::Limit(n) => ApiError::non_field(
                "invalid_input",
                format!("You can only have {n} personal API keys. Remove an existing key before creating a new one."),
            ),
            other => other.into(),
        })?;
    Ok(Inserted { record, value, log })
}

/// A key just created: its record, its value (shown this once) and the log entry recorded
/// with it.
pub struct Inserted {
    pub record: ApiKeyRecord,
    pub value: String,
    pub log: Vec<NewActivity>,
}

/// [`insert`] for a signed-in user; their cached views learn of the new key.
pub async fn create(
    state: &AppState,
    ctx: &Context,
    user_id: i64,
    key: NewKey,
) -> ApiResult<(ApiKeyRecord, String)> {
    let created = insert(&state.store, state.clock.now(), ctx, user_id, key).await?;
    state.caches.invalidate_user(user_id);
    activity::committed(state, &created.log);
    Ok((created.record, created.value))
}

/// The user's keys, newest first.
pub async fn list(state: &AppState, user_id: i64) -> ApiResult<Vec<ApiKeyRecord>> {
    Ok(state.store.api_keys_of(user_id).await?)
}

/// The user's own key by id (another user's key is not found). An id with a control character
/// names no key (ids are generated alphanumerics) and is not looked up: PostgreSQL cannot take NUL.
pub async fn own(state: &AppState, user_id: i64, id: &str) -> ApiResult<ApiKeyRecord> {
    if fields::check_characters(id, false).is_err() {
        return Err(ApiError::not_found());
    }
    state
        .store
        .api_key(id)
        .await?
        .filter(|k| k.user_id == user_id)
        .ok_or_else(ApiError::not_found)
}

/// Writes the changed fields of `current`; the key's cached authentication is dropped.
pub async fn update(
    state: &AppState,
    ctx: &Context,
    current: &ApiKeyRecord,
    changes: KeyChanges,
) -> ApiResult<ApiKeyRecord> {
    let changes = ApiKeyChanges {
        label: changes.label.unwrap_or(current.label.clone()),
        scopes: changes.scopes.unwrap_or(current.scopes.clone()),
        scoped_teams: changes.scoped_teams.unwrap_or(current.scoped_teams.clone()),
        scoped_organizations: changes
            .scoped_organizations
            .unwrap_or(current.scoped_organizations.clone()),
        expires_at: changes.expires_at.unwrap_or(current.expires_at),
    };
    let fields: Vec<&str> = [
        ("label", changes.label != current.label),
        ("scopes", changes.scopes != current.scopes),
        ("scoped_teams", changes.scoped_teams != current.scoped_teams),
        (
            "scoped_organizations",
            changes.scoped_organizations != current.scoped_organizations,
        ),
        ("expires_at", changes.expires_at != current.expires_at),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    let log = vec![ctx.entry(
        state,
        Some(current.user_id),
        Activity::PersonalApiKeyUpdated,
        json!({ "id": current.id, "label": changes.label, "fields": fields }),
    )];
    let updated = state
        .store
        .update_api_key(&current.id, changes, &log)
        .await?;
    state.caches.invalidate_key(&current.secure_value);
    activity::committed(state, &log);
    Ok(updated)
}

/// Deletes the key; it stops working at once.
pub async fn delete(state: &AppState, ctx: &Context, key: &ApiKeyRecord) -> ApiResult<()> {
    let log = vec![ctx.entry(
        state,
        Some(key.user_id),
        Activity::PersonalApiKeyDeleted,
        json!({ "id": key.id, "label": key.label }),
    )];
    let deleted = state.store.delete_api_key(&key.id, &log).await?;
    state.caches.invalidate_key(&key.secure_value);
    state.caches.invalidate_user(key.user_id);
    if deleted.is_some() {
        activity::committed(state, &log);
    }
    Ok(())
}

/// Replaces the key's value (the old one stops working at once); returns the key with its new
/// value, shown this once.
pub async fn roll(
    state: &AppState,
    ctx: &Context,
    key: &ApiKeyRecord,
) -> ApiResult<(ApiKeyRecord, String)> {
    let value = api_key::generate_value();
    let log = vec![ctx.entry(
        state,
        Some(key.user_id),
        Activity::PersonalApiKeyRolled,
        json!({ "id": key.id, "label": key.label }),
    )];
    let (before, after) = state
        .store
        .roll_api_key(
            &key.id,
            &api_key::secure_value(&value),
            &api_key::mask(&value),
            state.clock.now(),
            &log,
        )
        .await?
        .ok_or_else(ApiError::not_found)?;
    state.caches.invalidate_key(&before.secure_value);
    activity::committed(state, &log);
    Ok((after, value))
}

/// The ids of the organizations the user belongs to (what a key may be scoped to).
pub async fn member_organizations(state: &AppState, user_id: i64) -> ApiResult<Vec<uuid::Uuid>> {
    Ok(state
        .store
        .memberships_of(&[user_id])
        .await?
        .iter()
        .map(|m| m.organization.id)
        .collect())
}

/// The ids of the teams of the user's organizations (what a key may be scoped to).
pub async fn member_teams(state: &AppState, user_id: i64) -> ApiResult<Vec<i64>> {
    crate::service::github::accessible_team_ids(state, user_id).await
}
