//! The rules of `/api/users/…`: who may act on whom, and PATCH/PUT validation as PostHog's
//! `UserSerializer` applies it (first error in field order wins; nothing is written on error).

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::domain::fields::{self, Chars, FieldError, FieldResult};
use crate::domain::user::{
    ROLES_AT_ORGANIZATION, SHORTCUT_POSITIONS, THEME_MODES, TOOLBAR_MODES,
    merge_notification_settings,
};
use crate::error::{ApiError, ApiResult};
use crate::service::accounts::{self, IdentityChanges, IdentityRequest};
use crate::service::activity::{Activity, Context, Origin};
use crate::service::caller::Caller;
use crate::service::emails::{self, Outgoing};
use crate::state::AppState;
use crate::store::{NewActivity, UserChanges, UserDeletion, UserRecord, UserWrite};

pub const NON_STAFF_ME_ONLY: &str =
    "As a non-staff user you're only allowed to access the `@me` user instance.";
const NOT_STAFF: &str = "You are not a staff user, contact your instance admin.";
const IDENTITY_BY_TOKEN: &str = "You can only change your email or password from the PostHog app, not with an API key or token.";
use crate::service::accounts::EMAIL_TAKEN;

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
) -> ApiResult<(UserRecord, IdentityRequest)> {
    let body = serializer_data(body)?;
    guard_identity_change(caller, target, &body)?;
    if body.contains_key("is_staff") && !requester.is_staff {
        return Err(ApiError::forbidden(NOT_STAFF));
    }

    let mut user = target.clone();
    let mut changes = IdentityRequest::default();
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

/// `PATCH`/`PUT /api/users/{uuid}/`: validates the body against `target`, then writes exactly
/// the columns it changes, with what a credential change implies (the caller's other sessions
/// end after a password change; notices and a verification link go out) in the same transaction.
pub async fn update(
    state: &AppState,
    caller: &Caller,
    origin: Origin,
    requester: &UserRecord,
    target: &UserRecord,
    body: Value,
    partial: bool,
) -> ApiResult<UserRecord> {
    let (mut user, changes) = apply_update(state, caller, requester, target, body, partial).await?;
    let identity = accounts::apply_identity_changes(state, target, &mut user, changes).await?;
    let mut write = UserWrite {
        changes: UserChanges::between(target, &user),
        ..UserWrite::default()
    };
    let mut mail = Outgoing::default();
    let IdentityChanges {
        password_changed,
        email_staged,
        ..
    } = identity;
    if password_changed {
        let keep = caller
            .session()
            .filter(|_| caller.user_id == user.id)
            .map(|s| s.session_id.clone());
        write.end_sessions = Some(keep);
        let notice = emails::notice(
            &user.email,
            &user,
            "Your password has been changed",
            "The password of your account was just changed.",
        );
        mail.add(state, &mut write, notice)?;
    }
    if email_staged {
        // The link is minted from the record as this write leaves it.
        mail.add(state, &mut write, emails::verification(state, &user))?;
    }
    let ctx = Context::caller(caller, origin);
    write.activity = update_entries(state, &ctx, target, &user, password_changed, email_staged);
    accounts::commit(state, user.id, &write, mail).await
}

/// What a change of the user records: `password_changed`, `email_change_requested` (with the
/// address staged), `user_deactivated`/`user_activated`, and `user_updated` for the rest.
fn update_entries(
    state: &AppState,
    ctx: &Context,
    before: &UserRecord,
    after: &UserRecord,
    password_changed: bool,
    email_staged: bool,
) -> Vec<NewActivity> {
    let entry = |activity, detail| ctx.entry(state, Some(after.id), activity, detail);
    let mut entries = Vec::new();
    if password_changed {
        entries.push(entry(Activity::PasswordChanged, Value::Null));
    }
    if email_staged {
        entries.push(entry(
            Activity::EmailChangeRequested,
            json!({ "email": after.pending_email }),
        ));
    }
    if before.is_active != after.is_active {
        let activity = match after.is_active {
            true => Activity::UserActivated,
            false => Activity::UserDeactivated,
        };
        entries.push(entry(activity, Value::Null));
    }
    if let Some(detail) = updated_fields(before, after) {
        entries.push(entry(Activity::UserUpdated, detail));
    }
    entries
}

/// `{"fields": [names], "values": {name: new value}}` of what a change touched, or `None`. Values
/// only for settings that are neither credentials, addresses nor free-form documents; the
/// password, the staged address and `is_active` have entries of their own.
pub fn updated_fields(before: &UserRecord, after: &UserRecord) -> Option<Value> {
    let mut fields = Vec::new();
    let mut values = Map::new();
    macro_rules! compare {
        (shown: $($shown:ident),*; named: $($named:ident),*) => {
            $(if before.$shown != after.$shown {
                fields.push(stringify!($shown));
                values.insert(stringify!($shown).into(), json!(after.$shown));
            })*
            $(if before.$named != after.$named {
                fields.push(stringify!($named));
            })*
        };
    }
    compare!(
        shown: first_name, last_name, is_staff, current_organization_id, current_team_id,
            anonymize_data, allow_impersonation, toolbar_mode, theme_mode, role_at_organization,
            allow_sidebar_suggestions, shortcut_position, passkeys_enabled_for_2fa, hide_mcp_hints,
            email_opt_in;
        named: email, distinct_id, partial_notification_settings, hedgehog_config,
            events_column_config, has_seen_product_intro_for, ui_configuration
    );
    (!fields.is_empty()).then(|| json!({ "fields": fields, "values": values }))
}

/// `PATCH /api/users/{uuid}/hedgehog_config/`: the body replaces the stored configuration.
pub async fn set_hedgehog_config(
    state: &AppState,
    ctx: &Context,
    target: &UserRecord,
    config: Value,
) -> ApiResult<UserRecord> {
    let write = UserWrite {
        changes: UserChanges {
            hedgehog_config: Some(Some(config)),
            ..UserChanges::default()
        },
        activity: vec![ctx.entry(
            state,
            Some(target.id),
            Activity::UserUpdated,
            json!({ "fields": ["hedgehog_config"], "values": {} }),
        )],
        ..UserWrite::default()
    };
    accounts::commit(state, target.id, &write, Outgoing::default()).await
}

/// One page of users as the query asks (the caller's rules are in the query).
pub async fn list(
    state: &AppState,
    query: &crate::store::UserQuery,
) -> ApiResult<crate::store::UserPage> {
    Ok(state.store.list_users(query).await?)
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

/// DRF's `PrimaryKeyRelatedField` for a dashboard of the target's current team.
pub async fn validate_dashboard(
    state: &AppState,
    target: &UserRecord,
    value: &Value,
) -> ApiResult<i64> {
    let err = |code: &'static str, detail: String| ApiError::field("dashboard", code, detail);
    let incorrect = |v: &Value| {
        err(
            "incorrect_type",
            format!(
                "Incorrect type. Expected pk value, received {}.",
                crate::domain::python::py_type_name(v)
            ),
        )
    };
    let id = match value {
        Value::Null => return Err(err("null", "This field may not be null.".into())),
        Value::Number(n) => n.as_i64().ok_or_else(|| incorrect(value))?,
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| incorrect(value))?,
        other => return Err(incorrect(other)),
    };
    let dashboard = state
        .store
        .dashboard(id)
        .await?
        .filter(|d| !d.deleted)
        .ok_or_else(|| {
            err(
                "does_not_exist",
                format!(
                    "Invalid pk \"{}\" - object does not exist.",
                    crate::domain::python::py_str(value)
                ),
            )
        })?;
    if Some(dashboard.team_id) != target.current_team_id {
        return Err(err(
            "invalid_input",
            "Dashboard must belong to the user's current team.".into(),
        ));
    }
    Ok(dashboard.id)
}

/// Pins `dashboard` for `scene` in the target's current project.
pub async fn personalise_scene(
    state: &AppState,
    target: &UserRecord,
    scene: String,
    dashboard: i64,
) -> ApiResult<()> {
    state
        .store
        .upsert_scene_personalisation(crate::store::NewScene {
            user_id: target.id,
            team_id: target.current_team_id,
            scene,
            dashboard_id: dashboard,
        })
        .await?;
    state.caches.invalidate_user(target.id);
    Ok(())
}
