//! The copy of a user's data they may take with them (GDPR Art. 15 and 20): one versioned JSON
//! document, built here for both `GET /api/users/@me/export/` and `hoglet user export`. Its format
//! is described in `docs/export-format.md`. It holds no hash, secret or token (no password hash,
//! no key value or hash, no TOTP secret or backup code, no session id or CSRF token, no GitHub
//! token, no project API token) and nothing about other users beyond what names them as actors.

use serde_json::{Value, json};

use crate::error::ApiResult;
use crate::service::activity::{self, Activity, Context};
use crate::service::login_sessions;
use crate::state::AppState;
use crate::store::{
    ActivityRecord, ApiKeyRecord, MembershipWithOrg, SessionRecord, TeamRecord,
    UserIntegrationRecord, UserRecord,
};
use crate::time::iso_z;

pub const FORMAT: &str = "hoglet-export";
pub const VERSION: i64 = 1;
/// The kinds of personal integration hoglet stores.
const INTEGRATION_KINDS: &[&str] = &[crate::service::github::KIND];

/// Records the export in the user's activity log, then builds the document (which lists that
/// entry too).
pub async fn export(state: &AppState, ctx: &Context, user: &UserRecord) -> ApiResult<Value> {
    let entries = [ctx.entry(
        state,
        Some(user.id),
        Activity::UserDataExported,
        json!({"format": FORMAT, "version": VERSION}),
    )];
    state.store.record_activity(&entries).await?;
    activity::committed(state, &entries);
    document(state, user).await
}

/// The document for `user`, as stored now.
pub async fn document(state: &AppState, user: &UserRecord) -> ApiResult<Value> {
    let store = &state.store;
    let memberships = store.memberships_of(&[user.id]).await?;
    let organization_ids: Vec<_> = memberships.iter().map(|m| m.organization.id).collect();
    let teams = store.teams_of(&organization_ids).await?;
    let keys = store.api_keys_of(user.id).await?;
    let sessions = store.sessions_of(user.id, state.clock.now()).await?;
    let scenes = store.scene_personalisations_of(&[user.id]).await?;
    let signal = store.signal_autonomy(user.id).await?;
    let mut integrations = Vec::new();
    for kind in INTEGRATION_KINDS {
        integrations.extend(store.user_integrations(user.id, kind).await?);
    }
    let activity = activity::all(state, user).await?;
    let mut user_json = user_fields(user);
    user_json["scene_personalisation"] = scenes
        .iter()
        .map(|s| json!({"scene": s.scene, "team_id": s.team_id, "dashboard_id": s.dashboard_id}))
        .collect();
    Ok(json!({
        "format": FORMAT,
        "version": VERSION,
        "exported_at": iso_z(state.clock.now()),
        "user": user_json,
        "organizations": memberships.iter().map(|m| organization(m, &teams)).collect::<Vec<_>>(),
        "personal_api_keys": keys.iter().map(api_key).collect::<Vec<_>>(),
        "two_factor": two_factor(state, user.id).await?,
        "login_sessions": sessions.iter().map(session).collect::<Vec<_>>(),
        "integrations": integrations.iter().map(integration).collect::<Vec<_>>(),
        "signal_autonomy": signal.map(|s| json!({
            "autostart_priority": s.autostart_priority,
            "created_at": iso_z(s.created_at),
            "updated_at": iso_z(s.updated_at),
        })),
        "activity": activity.iter().map(|e| entry(e, user, &keys)).collect::<Vec<_>>(),
    }))
}

/// Every stored field of the user but the password hash (whether a usable one is set instead).
fn user_fields(u: &UserRecord) -> Value {
    json!({
        "id": u.id,
        "uuid": u.uuid,
        "email": u.email,
        "pending_email": u.pending_email,
        "first_name": u.first_name,
        "last_name": u.last_name,
        "distinct_id": u.distinct_id,
        "has_password": u.password.is_usable(),
        "is_active": u.is_active,
        "is_staff": u.is_staff,
        "is_email_verified": u.is_email_verified,
        "date_joined": iso_z(u.date_joined),
        "last_login": u.last_login.map(iso_z),
        "requested_password_reset_at": u.requested_password_reset_at.map(iso_z),
        "current_organization_id": u.current_organization_id,
        "current_team_id": u.current_team_id,
        "notification_settings": u.partial_notification_settings,
        "anonymize_data": u.anonymize_data,
        "allow_impersonation": u.allow_impersonation,
        "toolbar_mode": u.toolbar_mode,
        "theme_mode": u.theme_mode,
        "hedgehog_config": u.hedgehog_config,
        "events_column_config": u.events_column_config,
        "has_seen_product_intro_for": u.has_seen_product_intro_for,
        "role_at_organization": u.role_at_organization,
        "allow_sidebar_suggestions": u.allow_sidebar_suggestions,
        "shortcut_position": u.shortcut_position,
        "passkeys_enabled_for_2fa": u.passkeys_enabled_for_2fa,
        "hide_mcp_hints": u.hide_mcp_hints,
        "ui_configuration": u.ui_configuration,
        "email_opt_in": u.email_opt_in,
        "credentials_reviewed_at": u.credentials_reviewed_at.map(iso_z),
    })
}

pub fn level_name(level: crate::store::MembershipLevel) -> &'static str {
    match level {
        crate::store::MembershipLevel::Member => "member",
        crate::store::MembershipLevel::Admin => "admin",
        crate::store::MembershipLevel::Owner => "owner",
    }
}

/// A membership with its organization and that organization's teams (no project API token).
fn organization(m: &MembershipWithOrg, teams: &[TeamRecord]) -> Value {
    let org = &m.organization;
    let teams: Vec<Value> = teams
        .iter()
        .filter(|t| t.organization_id == org.id)
        .map(|t| json!({"id": t.id, "uuid": t.uuid, "name": t.name, "created_at": iso_z(t.created_at)}))
        .collect();
    json!({
        "id": org.id,
        "name": org.name,
        "slug": org.slug,
        "level": level_name(m.membership.level),
        "joined_at": iso_z(m.membership.joined_at),
        "teams": teams,
    })
}

/// A key's metadata: never its value or hash.
pub fn api_key(k: &ApiKeyRecord) -> Value {
    json!({
        "id": k.id,
        "label": k.label,
        "mask_value": k.mask_value,
        "scopes": k.scopes,
        "scoped_teams": k.scoped_teams,
        "scoped_organizations": k.scoped_organizations,
        "created_at": iso_z(k.created_at),
        "last_used_at": k.last_used_at.map(iso_z),
        "last_rolled_at": k.last_rolled_at.map(iso_z),
        "expires_at": k.expires_at.map(iso_z),
    })
}

async fn two_factor(state: &AppState, user_id: i64) -> ApiResult<Value> {
    let device = state.store.totp_device(user_id).await?;
    let remaining = match device {
        Some(_) => state.store.backup_code_count(user_id).await?,
        None => 0,
    };
    Ok(json!({
        "enabled": device.is_some(),
        "enabled_at": device.map(|d| iso_z(d.created_at)),
        "backup_codes_remaining": remaining,
    }))
}

/// A signed-in session: when and from where, never its id or CSRF token.
fn session(s: &SessionRecord) -> Value {
    json!({
        "created_at": iso_z(s.login_at.unwrap_or(s.created_at)),
        "last_activity": s.last_activity_at.map(iso_z),
        "expires_at": iso_z(s.expires_at),
        "ip": s.client.ip,
        "user_agent": s.client.user_agent,
        "device": s.client.user_agent.as_deref().and_then(login_sessions::device),
        "login_method": s.client.login_method,
    })
}

/// A personal integration: which account, never its tokens.
fn integration(i: &UserIntegrationRecord) -> Value {
    let config = |key: &str| i.config.get(key).cloned().unwrap_or(Value::Null);
    json!({
        "kind": i.kind,
        "installation_id": i.integration_id,
        "account": config("account"),
        "github_login": i.config.pointer("/github_user/login").cloned().unwrap_or(Value::Null),
        "repository_selection": config("repository_selection"),
        "created_at": iso_z(i.created_at),
        "updated_at": iso_z(i.updated_at),
    })
}

/// An entry as recorded. An actor is labelled only when it is the user or one of their keys:
/// another user who acted on the account (staff) is named by id alone.
fn entry(e: &ActivityRecord, user: &UserRecord, keys: &[ApiKeyRecord]) -> Value {
    let actor = &e.actor;
    let own = match actor.kind.as_str() {
        "user" => actor.id.as_deref() == Some(user.id.to_string().as_str()),
        "personal_api_key" => keys
            .iter()
            .any(|k| Some(k.id.as_str()) == actor.id.as_deref()),
        _ => true,
    };
    let label = match actor.kind.as_str() {
        "user" if own => Some(user.email.clone()),
        _ if own => actor.label.clone(),
        _ => None,
    };
    json!({
        "id": e.id,
        "activity": e.activity,
        "created_at": iso_z(e.created_at),
        "ip": e.ip,
        "user_agent": e.user_agent,
        "actor": {"type": actor.kind, "id": actor.id, "label": label},
        "detail": e.detail,
    })
}
