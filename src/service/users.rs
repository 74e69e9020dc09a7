//! The rules of `/api/users/…`: who may act on whom, and PATCH/PUT validation as PostHog's
//! `UserSerializer` applies it (first error in field order wins; nothing is written on error).

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::domain::fields::{self, Chars, FieldError, FieldResult};
use crate::domain::user::{
    ROLES_AT_ORGANIZATION, SHORTCUT_POSITIONS, THEME_MODES, TOOLBAR_MODES,
    merge_notification_settings,
};
use crate::error::{ApiError, ApiResult};
use crate::store::{StoreError, Unique, UserDeletion, UserRecord};

pub const NON_STAFF_ME_ONLY: &str =
    "As a non-staff user you're only allowed to access the `@me` user instance.";
const NOT_STAFF: &str = "You are not a staff user, contact your instance admin.";
const IDENTITY_BY_TOKEN: &str = "You can only change your email or password from the PostHog app, not with an API key or token.";
const EMAIL_TAKEN: &str = "There is already an account with this email address.";

/// Loads the caller's own record; a caller whose user vanished is no longer authenticated.
pub async fn load_caller(state: &AppState, caller: &Caller) -> ApiResult<UserRecord> {
    state
        .store
        .user_by_id(caller.user_id)
        .await?
        .filter(|u| u.is_active)
        .ok_or(ApiError::NotAuthenticated(crate::error::Challenge::Session))
}

/// Resolves the `{uuid}` path segment (`@me`, or any active user's uuid for staff).
pub async fn resolve_target(
    state: &AppState,
    requester: &UserRecord,
    segment: &str,
) -> ApiResult<UserRecord> {
    if segment == "@me" {
        return Ok(requester.clone());
    }
    if !requester.is_staff {
        return Err(ApiError::forbidden(NON_STAFF_ME_ONLY));
    }
    let uuid = Uuid::parse_str(segment).map_err(|_| ApiError::not_found())?;
    state
        .store
        .user_by_uuid(uuid)
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(ApiError::not_found)
}

/// Everything a valid PATCH/PUT will change, computed before anything is written.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub new_email: Option<String>,
    pub new_password: Option<String>,
    pub current_password: Option<String>,
}

/// PostHog's identity guard: keys and tokens may not change the email or touch the password.
fn guard_identity_change(
    caller: &Caller,
    target: &UserRecord,
    body: &Map<String, Value>,
) -> ApiResult<()> {
    if caller.is_session() {
        return Ok(());
    }
    let changes_email = match body.get("email") {
        None => false,
        Some(Value::String(s)) => s.trim().to_lowercase() != target.email.trim().to_lowercase(),
        Some(_) => true,
    };
    if changes_email || body.contains_key("password") {
        return Err(ApiError::forbidden(IDENTITY_BY_TOKEN));
    }
    Ok(())
}

fn field_err(attr: &'static str) -> impl Fn(FieldError) -> ApiError {
    move |e| ApiError::field(attr, e.code, e.detail)
}

/// Reads an optional field through `parse`, attaching the field name to its error.
fn optional<T>(
    body: &Map<String, Value>,
    attr: &'static str,
    parse: impl FnOnce(&Value) -> FieldResult<T>,
) -> ApiResult<Option<T>> {
    body.get(attr)
        .map(parse)
        .transpose()
        .map_err(field_err(attr))
}

/// The body as a DRF serializer takes it: an object, else the serializer's own refusal (a JSON
/// `null` is "No data provided", anything else names its type).
pub fn serializer_data(body: Value) -> ApiResult<Map<String, Value>> {
    match body {
        Value::Object(map) => Ok(map),
        Value::Null => Err(ApiError::non_field("null", "No data provided")),
        other => Err(ApiError::non_field(
            "invalid_input",
            format!(
                "Invalid data. Expected a dictionary, but got {}.",
                crate::domain::python::py_type_name(&other)
            ),
        )),
    }
}

/// Validates a PATCH (`partial`) or PUT body against `target` and returns the updated record.
/// The caller's own record (`requester`) decides staff-only fields and membership checks.
pub async fn apply_update(
    state: &AppState,
    caller: &Caller,
    requester: &UserRecord,
    target: &UserRecord,
    body: Value,
    partial: bool,
) -> ApiResult<(UserRecord, UserChanges)> {
    let body = serializer_data(body)?;
    guard_identity_change(caller, target, &body)?;
    if body.contains_key("is_staff") && !requester.is_staff {
        return Err(ApiError::forbidden(NOT_STAFF));
    }

    let mut user = target.clone();
    let mut changes = UserChanges::default();
    let name = Chars::new().max(150).blank_ok();
    if let Some(v) = optional(&body, "first_name", |v| fields::char_field(v, name))? {
        user.first_name = v.unwrap_or_default();
    }
    if let Some(v) = optional(&body, "last_name", |v| fields::char_field(v, name))? {
        user.last_name = v.unwrap_or_default();
    }
    match body.get("email") {
        Some(value) => {
            let email = fields::email_field(value).map_err(field_err("email"))?;
            if email.to_lowercase() != target.email.to_lowercase() {
                if let Some(other) = state.store.user_by_email(&email).await?
                    && other.id != target.id
                {
                    return Err(ApiError::field("email", "unique", EMAIL_TAKEN));
                }
                changes.new_email = Some(email);
            } else {
                // A change of case only is stored as sent, without verification.
                user.email = email;
            }
        }
        None if !partial => {
            return Err(ApiError::field(
                "email",
                "required",
                "This field is required.",
            ));
        }
        None => {}
    }
    if let Some(value) = body.get("notification_settings") {
        let incoming = match value {
            Value::Object(map) => map,
            Value::Null => {
                return Err(ApiError::field(
                    "notification_settings",
                    "null",
                    "This field may not be null.",
                ));
            }
            other => {
                return Err(ApiError::field(
                    "notification_settings",
                    "not_a_dict",
                    format!(
                        "Expected a dictionary of items but got type \"{}\".",
                        crate::domain::python::py_type_name(other)
                    ),
                ));
            }
        };
        let merged =
            merge_notification_settings(user.partial_notification_settings.as_ref(), incoming)
                .map_err(|detail| {
                    ApiError::field("notification_settings", "invalid_input", detail)
                })?;
        user.partial_notification_settings = Some(Value::Object(merged));
    }
    if let Some(v) = optional(&body, "anonymize_data", |v| fields::bool_field(v, true))? {
        user.anonymize_data = v;
    }
    if let Some(v) = optional(&body, "allow_impersonation", |v| {
        fields::bool_field(v, true)
    })? {
        user.allow_impersonation = v;
    }
    if let Some(v) = optional(&body, "toolbar_mode", |v| {
        fields::choice_field(v, TOOLBAR_MODES, true, true)
    })? {
        user.toolbar_mode = v;
    }
    if let Some(v) = optional(&body, "is_staff", |v| fields::bool_field(v, false))? {
        user.is_staff = v.unwrap_or(false);
    }
    let organization = match body.get("set_current_organization") {
        Some(value) => Some(validate_current_organization(state, requester, value).await?),
        None => None,
    };
    let team = match body.get("set_current_team") {
        Some(value) => Some(validate_current_team(state, requester, value).await?),
        None => None,
    };
    match optional(&body, "password", |v| {
        fields::char_field(v, Chars::new().max(128).controls_ok())
    })? {
        Some(password) => changes.new_password = password,
        None if !partial => {
            return Err(ApiError::field(
                "password",
                "required",
                "This field is required.",
            ));
        }
        None => {}
    }
    if let Some(v) = optional(&body, "current_password", |v| {
        fields::char_field(v, Chars::new().controls_ok())
    })? {
        changes.current_password = v;
    }
    if let Some(value) = body.get("events_column_config") {
        if value.is_null() {
            return Err(ApiError::field(
                "events_column_config",
                "null",
                "This field may not be null.",
            ));
        }
        user.events_column_config = value.clone();
    }
    if let Some(value) = body.get("has_seen_product_intro_for") {
        user.has_seen_product_intro_for = (!value.is_null()).then(|| value.clone());
    }
    if let Some(v) = optional(&body, "theme_mode", |v| {
        fields::choice_field(v, THEME_MODES, true, true)
    })? {
        user.theme_mode = v;
    }
    if let Some(value) = body.get("hedgehog_config") {
        user.hedgehog_config = (!value.is_null()).then(|| value.clone());
    }
    if let Some(v) = optional(&body, "allow_sidebar_suggestions", |v| {
        fields::bool_field(v, true)
    })? {
        user.allow_sidebar_suggestions = v;
    }
    if let Some(v) = optional(&body, "shortcut_position", |v| {
        fields::choice_field(v, SHORTCUT_POSITIONS, true, true)
    })? {
        user.shortcut_position = v;
    }
    if let Some(v) = optional(&body, "role_at_organization", |v| {
        fields::choice_field(v, ROLES_AT_ORGANIZATION, false, false)
    })? {
        user.role_at_organization = v;
    }
    if let Some(v) = optional(&body, "passkeys_enabled_for_2fa", |v| {
        fields::bool_field(v, true)
    })? {
        if v == Some(true) {
            // hoglet has no passkeys, so there is never one to enable.
            return Err(ApiError::field(
                "passkeys_enabled_for_2fa",
                "no_passkeys",
                "You must have at least one passkey set up before enabling passkeys for 2FA.",
            ));
        }
        user.passkeys_enabled_for_2fa = v;
    }
    if let Some(v) = optional(&body, "hide_mcp_hints", |v| fields::bool_field(v, false))? {
        user.hide_mcp_hints = v.unwrap_or(false);
    }
    if let Some(value) = body.get("ui_configuration") {
        match value {
            Value::Null => user.ui_configuration = None,
            Value::Object(_) => user.ui_configuration = Some(value.clone()),
            _ => {
                return Err(ApiError::field(
                    "ui_configuration",
                    "invalid_input",
                    "Does not match the UserUIConfiguration schema: root: Input should be a valid dictionary",
                ));
            }
        }
    }

    // The organization/team pair, then the switch itself.
    match (organization, team) {
        (Some(org), Some(team)) => {
            if team.1 != org {
                return Err(ApiError::field(
                    "set_current_team",
                    "invalid_input",
                    "Team must belong to the same organization in set_current_organization.",
                ));
            }
            user.current_organization_id = Some(org);
            user.current_team_id = Some(team.0);
        }
        (Some(org), None) => {
            let teams = state.store.teams_of(&[org]).await?;
            user.current_organization_id = Some(org);
            user.current_team_id = teams.first().map(|t| t.id);
        }
        (None, Some((team_id, org))) => {
            user.current_organization_id = Some(org);
            user.current_team_id = Some(team_id);
        }
        (None, None) => {}
    }
    Ok((user, changes))
}

/// `set_current_organization`: an organization the requester belongs to.
async fn validate_current_organization(
    state: &AppState,
    requester: &UserRecord,
    value: &Value,
) -> ApiResult<Uuid> {
    let text = fields::char_field(value, Chars::new())
        .map_err(field_err("set_current_organization"))?
        .unwrap_or_default();
    let uuid = Uuid::parse_str(&text).map_err(|_| {
        ApiError::field(
            "set_current_organization",
            "invalid_input",
            format!("\u{201c}{text}\u{201d} is not a valid UUID."),
        )
    })?;
    let member = state
        .store
        .memberships_of(&[requester.id])
        .await?
        .iter()
        .any(|m| m.organization.id == uuid);
    if !member {
        return Err(ApiError::field(
            "set_current_organization",
            "does_not_exist",
            format!("Object with id={text} does not exist."),
        ));
    }
    Ok(uuid)
}

/// `set_current_team`: a team of one of the requester's organizations; returns (team, its org).
async fn validate_current_team(
    state: &AppState,
    requester: &UserRecord,
    value: &Value,
) -> ApiResult<(i64, Uuid)> {
    let text = fields::char_field(value, Chars::new())
        .map_err(field_err("set_current_team"))?
        .unwrap_or_default();
    let missing = || {
        ApiError::field(
            "set_current_team",
            "does_not_exist",
            format!("Object with id={text} does not exist."),
        )
    };
    let id: i64 = text.parse().map_err(|_| missing())?;
    let team = state.store.team(id).await?.ok_or_else(missing)?;
    let member = state
        .store
        .memberships_of(&[requester.id])
        .await?
        .iter()
        .any(|m| m.organization.id == team.organization_id);
    if !member {
        return Err(missing());
    }
    Ok((team.id, team.organization_id))
}

/// Writes an updated record, mapping a lost race on the email to the same 400 as the check.
pub async fn save(state: &AppState, user: &UserRecord) -> ApiResult<()> {
    state.store.update_user(user).await.map_err(|e| match e {
        StoreError::Unique(Unique::Email) => ApiError::field("email", "unique", EMAIL_TAKEN),
        other => other.into(),
    })?;
    state.caches.invalidate_user(user.id);
    Ok(())
}

/// `DELETE /api/users/{uuid}/`: only users without organization memberships can be deleted.
pub async fn delete(state: &AppState, target: &UserRecord) -> ApiResult<()> {
    match state.store.delete_user(target.id).await? {
        UserDeletion::Deleted => {
            state.caches.invalidate_user(target.id);
            Ok(())
        }
        UserDeletion::HasMemberships => Err(ApiError::Conflict(
            "Cannot delete user with organization memberships.".into(),
        )),
        UserDeletion::Missing => Err(ApiError::not_found()),
    }
}
