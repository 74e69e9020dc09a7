//! The user representation (PostHog's `UserSerializer` and the shapes it embeds), rendered for
//! many users with a fixed number of queries.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::user::{DEFAULT_SHORTCUT_POSITION, effective_notification_settings};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::store::{
    MembershipLevel, MembershipWithOrg, OrganizationRecord, TeamRecord, UserRecord,
};
use crate::time::{Micros, iso_offset, iso_z};

/// `TeamBasic`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TeamBasic {
    pub id: i64,
    pub uuid: Uuid,
    pub organization: Uuid,
    pub project_id: i64,
    pub api_token: String,
    pub name: String,
    pub completed_snippet_onboarding: bool,
    pub has_completed_onboarding_for: Option<Value>,
    pub ingested_event: bool,
    pub is_demo: bool,
    pub timezone: String,
    pub access_control: bool,
}

impl From<&TeamRecord> for TeamBasic {
    fn from(t: &TeamRecord) -> Self {
        Self {
            id: t.id,
            uuid: t.uuid,
            organization: t.organization_id,
            project_id: t.project_id,
            api_token: t.api_token.clone(),
            name: t.name.clone(),
            completed_snippet_onboarding: t.completed_snippet_onboarding,
            has_completed_onboarding_for: t.has_completed_onboarding_for.clone(),
            ingested_event: t.ingested_event,
            is_demo: t.is_demo,
            timezone: t.timezone.clone(),
            access_control: t.access_control,
        }
    }
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProjectBasic {
    pub id: i64,
    pub organization_id: Uuid,
    pub name: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OrganizationMetadata {
    pub instance_tag: String,
}

/// The full `Organization` of the current organization.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OrganizationView {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub logo_media_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// The requesting user's level in this organization (1 member, 8 admin, 15 owner).
    pub membership_level: Option<i64>,
    pub plugins_access_level: i64,
    pub teams: Vec<TeamBasic>,
    pub projects: Vec<ProjectBasic>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub available_product_features: Value,
    pub is_member_join_email_enabled: bool,
    pub metadata: OrganizationMetadata,
    pub customer_id: Option<String>,
    pub enforce_2fa: Option<bool>,
    pub members_can_invite: Option<bool>,
    pub members_can_use_personal_api_keys: bool,
    pub allow_publicly_shared_resources: bool,
    pub member_count: i64,
    pub is_ai_data_processing_approved: Option<bool>,
    pub default_experiment_stats_method: Option<String>,
    pub default_anonymize_ips: bool,
    pub default_role_id: Option<String>,
    pub is_active: Option<bool>,
    pub is_not_active_reason: Option<String>,
}

/// `OrganizationBasic`, one per membership.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct OrganizationBasic {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub logo_media_id: Option<String>,
    pub membership_level: Option<i64>,
    pub members_can_use_personal_api_keys: bool,
    pub is_active: Option<bool>,
    pub is_not_active_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ScenePersonalisationBasic {
    pub scene: String,
    pub dashboard: Option<i64>,
}

/// The user representation, field for field in PostHog's order (write-only fields omitted).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UserView {
    pub date_joined: String,
    pub uuid: Uuid,
    pub distinct_id: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub pending_email: Option<String>,
    pub is_email_verified: Option<bool>,
    #[schema(value_type = Object)]
    pub notification_settings: Map<String, Value>,
    #[schema(value_type = Vec<Object>)]
    pub notification_locks: Vec<Value>,
    pub anonymize_data: Option<bool>,
    pub allow_impersonation: Option<bool>,
    pub toolbar_mode: Option<String>,
    pub has_password: bool,
    pub id: i64,
    pub is_staff: bool,
    pub is_impersonated: Option<bool>,
    pub is_impersonated_until: Option<String>,
    pub is_impersonated_read_only: Option<bool>,
    pub is_impersonated_reason: Option<String>,
    pub sensitive_session_expires_at: Option<String>,
    pub fresh_reauth_expires_at: Option<String>,
    pub team: Option<TeamBasic>,
    pub organization: Option<OrganizationView>,
    pub organizations: Vec<OrganizationBasic>,
    /// Any JSON but null.
    pub events_column_config: Value,
    pub is_2fa_enabled: bool,
    pub has_social_auth: bool,
    pub has_sso_enforcement: bool,
    /// Any JSON, or null.
    pub has_seen_product_intro_for: Option<Value>,
    pub scene_personalisation: Vec<ScenePersonalisationBasic>,
    pub theme_mode: Option<String>,
    /// Any JSON, or null.
    pub hedgehog_config: Option<Value>,
    pub allow_sidebar_suggestions: Option<bool>,
    pub shortcut_position: Option<String>,
    pub role_at_organization: Option<String>,
    pub passkeys_enabled_for_2fa: Option<bool>,
    pub hide_mcp_hints: bool,
    #[schema(value_type = Option<Object>)]
    pub ui_configuration: Option<Value>,
    pub onboarding_skipped_at: Option<String>,
    pub onboarding_skipped_reason: Option<String>,
    pub onboarding_skipped_organization_id: Option<Uuid>,
    pub onboarding_delegated_to_invite: Option<Uuid>,
    pub onboarding_delegated_to_organization_id: Option<Uuid>,
    pub onboarding_delegation_accepted_at: Option<String>,
    pub is_organization_first_user: Option<bool>,
    pub active_realtime_notification_types: Vec<String>,
    #[schema(value_type = Vec<Object>)]
    pub pending_invites: Vec<Value>,
    pub requires_credential_review: bool,
}

/// The `{count, next, previous, results}` page of `GET /api/users/`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaginatedUserList {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
    pub results: Vec<UserView>,
}

/// Who is asking: fields such as `membership_level` and the session fields describe the requester.
#[derive(Clone, Debug)]
pub struct Requester {
    pub user_id: i64,
    /// Login time of the requesting session; `None` for keys and tokens.
    pub session_created_at: Option<Micros>,
}

/// Renders `users` for `requester`, choosing (and saving) a current organization and team for
/// any user who lacks one, as PostHog's `User.organization` / `User.team` properties do.
pub async fn render_users(
    state: &AppState,
    requester: &Requester,
    mut users: Vec<UserRecord>,
) -> ApiResult<Vec<UserView>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    if !ids.contains(&requester.user_id) {
        ids.push(requester.user_id);
    }
    let memberships = state.store.memberships_of(&ids).await?;
    let mut by_user: HashMap<i64, Vec<&MembershipWithOrg>> = HashMap::new();
    for m in &memberships {
        by_user.entry(m.membership.user_id).or_default().push(m);
    }
    let requester_levels: HashMap<Uuid, MembershipLevel> = by_user
        .get(&requester.user_id)
        .map(|ms| {
            ms.iter()
                .map(|m| (m.organization.id, m.membership.level))
                .collect()
        })
        .unwrap_or_default();

    // Fill in a missing current organization (first membership) before loading teams.
    let mut needs_team: Vec<usize> = Vec::new();
    for (i, user) in users.iter_mut().enumerate() {
        let own = by_user.get(&user.id).map(Vec::as_slice).unwrap_or(&[]);
        if user.current_organization_id.is_none() {
            if let Some(first) = own.first() {
                user.current_organization_id = Some(first.organization.id);
                needs_team.push(i);
            }
        } else if user.current_team_id.is_none() {
            needs_team.push(i);
        }
    }
    let org_ids: Vec<Uuid> = users
        .iter()
        .filter_map(|u| u.current_organization_id)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let teams = if org_ids.is_empty() {
        Vec::new()
    } else {
        state.store.teams_of(&org_ids).await?
    };
    let mut teams_by_org: HashMap<Uuid, Vec<&TeamRecord>> = HashMap::new();
    for t in &teams {
        teams_by_org.entry(t.organization_id).or_default().push(t);
    }
    for i in needs_team {
        let user = &mut users[i];
        if user.current_team_id.is_none() {
            user.current_team_id = user
                .current_organization_id
                .and_then(|o| teams_by_org.get(&o))
                .and_then(|ts| ts.first())
                .map(|t| t.id);
        }
        state
            .store
            .set_current_context(user.id, user.current_organization_id, user.current_team_id)
            .await?;
    }

    let member_counts: HashMap<Uuid, i64> = if org_ids.is_empty() {
        HashMap::new()
    } else {
        state
            .store
            .member_counts(&org_ids)
            .await?
            .into_iter()
            .collect()
    };
    let user_ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    let mut scenes: HashMap<i64, Vec<ScenePersonalisationBasic>> = HashMap::new();
    for s in state.store.scene_personalisations_of(&user_ids).await? {
        scenes
            .entry(s.user_id)
            .or_default()
            .push(ScenePersonalisationBasic {
                scene: s.scene,
                dashboard: s.dashboard_id,
            });
    }
    let facts: HashMap<i64, _> = state
        .store
        .user_facts(&user_ids)
        .await?
        .into_iter()
        .map(|f| (f.user_id, f))
        .collect();

    let mut views = Vec::with_capacity(users.len());
    for user in users {
        let own = by_user.get(&user.id).map(Vec::as_slice).unwrap_or(&[]);
        let current_org = user
            .current_organization_id
            .and_then(|id| own.iter().find(|m| m.organization.id == id))
            .map(|m| &m.organization);
        let org_teams = user
            .current_organization_id
            .and_then(|o| teams_by_org.get(&o))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut team = user
            .current_team_id
            .and_then(|id| org_teams.iter().find(|t| t.id == id))
            .map(|t| TeamBasic::from(*t));
        if team.is_none()
            && let Some(id) = user.current_team_id
        {
            team = state.store.team(id).await?.as_ref().map(TeamBasic::from);
        }
        let organization = match current_org {
            Some(org) => {
                let level = requester_levels.get(&org.id).copied();
                // `teams`/`projects` list what the requester may see: nothing of an
                // organization they do not belong to (staff reading a stranger).
                let visible = if level.is_some() { org_teams } else { &[] };
                Some(organization_view(
                    state,
                    org,
                    visible,
                    level,
                    member_counts.get(&org.id).copied().unwrap_or(0),
                ))
            }
            None => None,
        };
        let organizations = own
            .iter()
            .map(|m| {
                organization_basic(
                    &m.organization,
                    requester_levels.get(&m.organization.id).copied(),
                )
            })
            .collect();
        let is_self = user.id == requester.user_id;
        let first_user = is_self
            .then(|| {
                user.current_organization_id
                    .and_then(|o| own.iter().find(|m| m.organization.id == o))
                    .map(|m| !m.membership.invited)
            })
            .flatten();
        let user_facts = facts.get(&user.id).cloned().unwrap_or_default();
        views.push(UserView {
            date_joined: iso_z(user.date_joined),
            uuid: user.uuid,
            distinct_id: user.distinct_id.clone(),
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            email: user.email.clone(),
            pending_email: user.pending_email.clone(),
            is_email_verified: user.is_email_verified,
            notification_settings: effective_notification_settings(
                user.partial_notification_settings.as_ref(),
            ),
            notification_locks: Vec::new(),
            anonymize_data: user.anonymize_data,
            allow_impersonation: user.allow_impersonation,
            toolbar_mode: user.toolbar_mode.clone(),
            has_password: user.password.is_usable(),
            id: user.id,
            is_staff: user.is_staff,
            is_impersonated: Some(false),
            is_impersonated_until: None,
            is_impersonated_read_only: None,
            is_impersonated_reason: None,
            sensitive_session_expires_at: requester
                .session_created_at
                .map(|at| iso_offset(at + crate::service::caller::SENSITIVE_SESSION_AGE)),
            fresh_reauth_expires_at: None,
            team,
            organization,
            organizations,
            events_column_config: user.events_column_config.clone(),
            is_2fa_enabled: user_facts.has_totp,
            has_social_auth: false,
            has_sso_enforcement: false,
            has_seen_product_intro_for: user.has_seen_product_intro_for.clone(),
            scene_personalisation: scenes.remove(&user.id).unwrap_or_default(),
            theme_mode: user.theme_mode.clone(),
            hedgehog_config: user.hedgehog_config.clone(),
            allow_sidebar_suggestions: user.allow_sidebar_suggestions,
            shortcut_position: Some(
                user.shortcut_position
                    .clone()
                    .unwrap_or_else(|| DEFAULT_SHORTCUT_POSITION.into()),
            ),
            role_at_organization: user.role_at_organization.clone(),
            passkeys_enabled_for_2fa: user.passkeys_enabled_for_2fa,
            hide_mcp_hints: user.hide_mcp_hints,
            ui_configuration: user.ui_configuration.clone(),
            onboarding_skipped_at: None,
            onboarding_skipped_reason: None,
            onboarding_skipped_organization_id: None,
            onboarding_delegated_to_invite: None,
            onboarding_delegated_to_organization_id: None,
            onboarding_delegation_accepted_at: None,
            is_organization_first_user: first_user,
            active_realtime_notification_types: Vec::new(),
            pending_invites: Vec::new(),
            requires_credential_review: user.credentials_reviewed_at.is_none()
                && user_facts.has_api_keys,
        });
    }
    Ok(views)
}

fn organization_view(
    state: &AppState,
    org: &OrganizationRecord,
    teams: &[&TeamRecord],
    level: Option<MembershipLevel>,
    member_count: i64,
) -> OrganizationView {
    OrganizationView {
        id: org.id,
        name: org.name.clone(),
        slug: org.slug.clone(),
        logo_media_id: org.logo_media_id.clone(),
        created_at: iso_z(org.created_at),
        updated_at: iso_z(org.updated_at),
        membership_level: level.map(MembershipLevel::as_i64),
        plugins_access_level: org.plugins_access_level,
        teams: teams.iter().map(|t| TeamBasic::from(*t)).collect(),
        projects: teams
            .iter()
            .map(|t| ProjectBasic {
                id: t.project_id,
                organization_id: t.organization_id,
                name: t.name.clone(),
            })
            .collect(),
        available_product_features: org.available_product_features.clone(),
        is_member_join_email_enabled: org.is_member_join_email_enabled,
        metadata: OrganizationMetadata {
            instance_tag: state.config.instance_tag.clone(),
        },
        customer_id: org.customer_id.clone(),
        enforce_2fa: org.enforce_2fa,
        members_can_invite: org.members_can_invite,
        members_can_use_personal_api_keys: org.members_can_use_personal_api_keys,
        allow_publicly_shared_resources: org.allow_publicly_shared_resources,
        member_count,
        is_ai_data_processing_approved: org.is_ai_data_processing_approved,
        default_experiment_stats_method: org.default_experiment_stats_method.clone(),
        default_anonymize_ips: org.default_anonymize_ips,
        default_role_id: org.default_role_id.clone(),
        is_active: org.is_active,
        is_not_active_reason: org.is_not_active_reason.clone(),
    }
}

fn organization_basic(
    org: &OrganizationRecord,
    level: Option<MembershipLevel>,
) -> OrganizationBasic {
    OrganizationBasic {
        id: org.id,
        name: org.name.clone(),
        slug: org.slug.clone(),
        logo_media_id: org.logo_media_id.clone(),
        membership_level: level.map(MembershipLevel::as_i64),
        members_can_use_personal_api_keys: org.members_can_use_personal_api_keys,
        is_active: org.is_active,
        is_not_active_reason: org.is_not_active_reason.clone(),
    }
}

/// Renders one user.
pub async fn render_user(
    state: &AppState,
    requester: &Requester,
    user: UserRecord,
) -> ApiResult<UserView> {
    let mut views = render_users(state, requester, vec![user]).await?;
    views
        .pop()
        .ok_or_else(|| crate::error::ApiError::internal(anyhow::anyhow!("rendered no user")))
}
