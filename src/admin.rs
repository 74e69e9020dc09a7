//! The admin operations behind the `hoglet user|org|team|key|dashboard` commands. Each validates its
//! input, writes in one transaction and returns the JSON the command prints.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::fields;
use crate::error::ApiError;
use crate::service::activity::Context;
use crate::service::{accounts, api_keys};
use crate::store::{
    DynStore, MembershipLevel, NewOrganization, NewTeam, NewTeamIntegration, OrganizationChanges,
    StoreError, Unique, UserRecord,
};
use crate::time::{iso_z, system_now};

/// Name of every new organization's first team.
pub const DEFAULT_TEAM_NAME: &str = "Default project";

/// Why an admin command refused; the message is printed as is.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

type AdminResult<T> = Result<T, AdminError>;

/// A use case's refusal as the command line says it: `invalid <field>: <the API's message>`.
fn refused(error: ApiError) -> AdminError {
    match error {
        ApiError::Unavailable(cause) | ApiError::Internal(cause) => AdminError::Other(cause),
        ApiError::Validation {
            attr: Some(attr),
            code,
            detail,
        } if code != "unique" => {
            let field = match attr.as_ref() {
                "email" => "email address".to_string(),
                other => other.replace('_', " "),
            };
            invalid(format!("invalid {field}: {detail}"))
        }
        other => invalid(other.detail()),
    }
}

fn invalid(message: impl Into<String>) -> AdminError {
    AdminError::Invalid(message.into())
}

/// Refuses text the API would refuse too (`fields::check_characters`): NUL and control
/// characters never reach the database, whichever way a value comes in.
fn plain_text(what: &str, text: &str) -> AdminResult<()> {
    fields::check_characters(text, false)
        .map_err(|e| invalid(format!("invalid {what}: {}", e.detail)))
}

pub struct NewUserArgs {
    pub email: String,
    pub password: String,
    pub first_name: String,
    pub last_name: String,
    pub staff: bool,
}

pub async fn create_user(store: &DynStore, args: NewUserArgs) -> AdminResult<Value> {
    let account = accounts::NewAccount {
        email: args.email,
        password: args.password.into(),
        first_name: args.first_name,
        last_name: args.last_name,
        staff: args.staff,
    };
    let user = accounts::create_account(store, account)
        .await
        .map_err(refused)?;
    Ok(json!({
        "id": user.id,
        "uuid": user.uuid,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "is_staff": user.is_staff,
    }))
}

async fn user_by_email(store: &DynStore, email: &str) -> AdminResult<UserRecord> {
    plain_text("email address", email)?;
    store
        .user_by_email(email)
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(|| invalid(format!("no user with email {email:?}")))
}

fn parse_org_id(id: &str) -> AdminResult<Uuid> {
    Uuid::parse_str(id.trim()).map_err(|_| invalid(format!("{id:?} is not an organization id")))
}

fn team_json(team: &crate::store::TeamRecord) -> Value {
    json!({
        "id": team.id,
        "uuid": team.uuid,
        "organization": team.organization_id,
        "project_id": team.project_id,
        "name": team.name,
        "api_token": team.api_token,
    })
}

/// PostHog's `Organization.name` rule: 1 to 64 characters of plain text.
fn organization_name(name: &str) -> AdminResult<&str> {
    let name = name.trim();
    plain_text("organization name", name)?;
    if name.is_empty() || name.chars().count() > 64 {
        return Err(invalid("the organization name must be 1 to 64 characters"));
    }
    Ok(name)
}

pub async fn create_organization(
    store: &DynStore,
    name: &str,
    owner_email: &str,
) -> AdminResult<Value> {
    let name = organization_name(name)?;
    let owner = user_by_email(store, owner_email).await?;
    let (organization, team) = store
        .create_organization(NewOrganization {
            name: name.to_string(),
            owner_id: owner.id,
            team_name: DEFAULT_TEAM_NAME.into(),
        })
        .await?;
    Ok(json!({
        "id": organization.id,
        "name": organization.name,
        "slug": organization.slug,
        "team": team_json(&team),
    }))
}

/// Changes an organization's name and whether it requires two-factor authentication of its
/// members' browser sessions (users.md §2.8).
pub async fn update_organization(
    store: &DynStore,
    organization: &str,
    name: Option<&str>,
    enforce_2fa: Option<bool>,
) -> AdminResult<Value> {
    let id = parse_org_id(organization)?;
    if name.is_none() && enforce_2fa.is_none() {
        return Err(invalid(
            "nothing to change: give --name and/or --enforce-2fa",
        ));
    }
    let changes = OrganizationChanges {
        name: name.map(organization_name).transpose()?.map(str::to_string),
        enforce_2fa,
    };
    let organization = store
        .update_organization(id, changes)
        .await?
        .ok_or_else(|| invalid(format!("no organization {id}")))?;
    Ok(json!({
        "id": organization.id,
        "name": organization.name,
        "slug": organization.slug,
        "enforce_2fa": organization.enforce_2fa,
        "members_can_use_personal_api_keys": organization.members_can_use_personal_api_keys,
        "created_at": iso_z(organization.created_at),
        "updated_at": iso_z(organization.updated_at),
    }))
}

pub async fn add_member(
    store: &DynStore,
    organization: &str,
    email: &str,
    level: MembershipLevel,
) -> AdminResult<Value> {
    let organization = parse_org_id(organization)?;
    let user = user_by_email(store, email).await?;
    let membership = store
        .add_membership(organization, user.id, level)
        .await
        .map_err(|e| match e {
            StoreError::Missing("organization") => {
                invalid(format!("no organization {organization}"))
            }
            StoreError::Unique(Unique::Membership) => {
                invalid(format!("{email} is already a member of this organization"))
            }
            other => other.into(),
        })?;
    Ok(json!({
        "id": membership.id,
        "organization_id": membership.organization_id,
        "user": {"id": user.id, "uuid": user.uuid, "email": user.email},
        "level": membership.level.as_i64(),
        "joined_at": iso_z(membership.joined_at),
        "updated_at": iso_z(membership.updated_at),
    }))
}

pub async fn create_team(store: &DynStore, organization: &str, name: &str) -> AdminResult<Value> {
    let organization = parse_org_id(organization)?;
    let name = name.trim();
    plain_text("team name", name)?;
    if name.is_empty() || name.chars().count() > 200 {
        return Err(invalid("the team name must be 1 to 200 characters"));
    }
    let team = store
        .create_team(NewTeam {
            organization_id: organization,
            name: name.to_string(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Missing("organization") => {
                invalid(format!("no organization {organization}"))
            }
            other => other.into(),
        })?;
    Ok(team_json(&team))
}

pub async fn create_dashboard(store: &DynStore, team: i64, name: &str) -> AdminResult<Value> {
    let name = name.trim();
    plain_text("dashboard name", name)?;
    if name.is_empty() || name.chars().count() > 400 {
        return Err(invalid("the dashboard name must be 1 to 400 characters"));
    }
    let dashboard = store
        .create_dashboard(team, name)
        .await
        .map_err(|e| match e {
            StoreError::Missing("team") => invalid(format!("no team {team}")),
            other => other.into(),
        })?;
    Ok(json!({"id": dashboard.id, "team_id": dashboard.team_id, "name": dashboard.name}))
}

pub struct LinkGithubArgs {
    pub team: i64,
    pub installation_id: String,
    /// Email of the user who connected it (what `github_login` falls back to).
    pub created_by: Option<String>,
    /// That user's GitHub login (`config.connecting_user_github_login`).
    pub github_login: Option<String>,
}

/// Registers a GitHub App installation as a project-level integration of a team (or updates it).
pub async fn link_team_github(store: &DynStore, args: LinkGithubArgs) -> AdminResult<Value> {
    let installation = args.installation_id.trim().to_string();
    if installation.is_empty()
        || installation.len() > 20
        || !installation.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid(format!(
            "{installation:?} is not a GitHub installation id (1 to 20 digits)"
        )));
    }
    let created_by = match &args.created_by {
        Some(email) => Some(user_by_email(store, email).await?),
        None => None,
    };
    if let Some(login) = &args.github_login {
        plain_text("GitHub login", login)?;
    }
    let mut config = serde_json::Map::new();
    config.insert("installation_id".into(), json!(installation));
    if let Some(login) = args
        .github_login
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        config.insert("connecting_user_github_login".into(), json!(login));
    }
    let link = store
        .upsert_team_integration(NewTeamIntegration {
            team_id: args.team,
            kind: "github".into(),
            integration_id: installation,
            config: Value::Object(config),
            created_by_id: created_by.as_ref().map(|u| u.id),
            now: system_now(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Missing("team") => invalid(format!("no team {}", args.team)),
            other => other.into(),
        })?;
    Ok(json!({
        "id": link.id,
        "team_id": link.team_id,
        "kind": link.kind,
        "installation_id": link.integration_id,
        "config": link.config,
        "created_by": link.created_by_id,
        "created_at": iso_z(link.created_at),
    }))
}

pub struct NewKeyArgs {
    pub email: String,
    pub label: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
}

pub async fn create_key(store: &DynStore, args: NewKeyArgs) -> AdminResult<Value> {
    // The API trims the label (DRF's `CharField`); the rest of the rules are the use case's.
    let label = args.label.trim().to_string();
    let user = user_by_email(store, &args.email).await?;
    let key = api_keys::NewKey {
        label,
        scopes: args.scopes,
        expires_at: args.expires_at,
        ..api_keys::NewKey::default()
    };
    let api_keys::Inserted { record, value, .. } =
        api_keys::insert(store, system_now(), &Context::cli(), user.id, key)
            .await
            .map_err(refused)?;
    Ok(json!({
        "id": record.id,
        "label": record.label,
        "scopes": record.scopes,
        "value": value,
        "mask_value": record.mask_value,
        "user_id": record.user_id,
        "created_at": iso_z(record.created_at),
        "expires_at": record.expires_at.map(iso_z),
    }))
}
