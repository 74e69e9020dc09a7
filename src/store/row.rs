//! One row mapper for both drivers: a tiny accessor trait implemented for `rusqlite::Row` and
//! `tokio_postgres::Row`, and the `*_from_row` functions that read the column lists of [`super::sql`].

use anyhow::Context;
use serde_json::Value;
use uuid::Uuid;

use super::records::*;

pub(crate) trait Row {
    fn i64(&self, idx: usize) -> anyhow::Result<i64>;
    fn opt_i64(&self, idx: usize) -> anyhow::Result<Option<i64>>;
    fn text(&self, idx: usize) -> anyhow::Result<String>;
    fn opt_text(&self, idx: usize) -> anyhow::Result<Option<String>>;
    fn bool(&self, idx: usize) -> anyhow::Result<bool>;
    fn opt_bool(&self, idx: usize) -> anyhow::Result<Option<bool>>;

    fn uuid(&self, idx: usize) -> anyhow::Result<Uuid> {
        let text = self.text(idx)?;
        Uuid::parse_str(&text).with_context(|| format!("column {idx} is not a uuid"))
    }

    fn opt_uuid(&self, idx: usize) -> anyhow::Result<Option<Uuid>> {
        self.opt_text(idx)?
            .map(|t| Uuid::parse_str(&t).with_context(|| format!("column {idx} is not a uuid")))
            .transpose()
    }

    fn json(&self, idx: usize) -> anyhow::Result<Value> {
        Ok(self.opt_json(idx)?.unwrap_or(Value::Null))
    }

    fn opt_json(&self, idx: usize) -> anyhow::Result<Option<Value>> {
        self.opt_text(idx)?
            .map(|t| serde_json::from_str(&t).with_context(|| format!("column {idx} is not JSON")))
            .transpose()
    }
}

impl Row for rusqlite::Row<'_> {
    fn i64(&self, idx: usize) -> anyhow::Result<i64> {
        Ok(self.get(idx)?)
    }
    fn opt_i64(&self, idx: usize) -> anyhow::Result<Option<i64>> {
        Ok(self.get(idx)?)
    }
    fn text(&self, idx: usize) -> anyhow::Result<String> {
        Ok(self.get(idx)?)
    }
    fn opt_text(&self, idx: usize) -> anyhow::Result<Option<String>> {
        Ok(self.get(idx)?)
    }
    fn bool(&self, idx: usize) -> anyhow::Result<bool> {
        Ok(self.get(idx)?)
    }
    fn opt_bool(&self, idx: usize) -> anyhow::Result<Option<bool>> {
        Ok(self.get(idx)?)
    }
}

impl Row for tokio_postgres::Row {
    fn i64(&self, idx: usize) -> anyhow::Result<i64> {
        Ok(self.try_get(idx)?)
    }
    fn opt_i64(&self, idx: usize) -> anyhow::Result<Option<i64>> {
        Ok(self.try_get(idx)?)
    }
    fn text(&self, idx: usize) -> anyhow::Result<String> {
        Ok(self.try_get(idx)?)
    }
    fn opt_text(&self, idx: usize) -> anyhow::Result<Option<String>> {
        Ok(self.try_get(idx)?)
    }
    fn bool(&self, idx: usize) -> anyhow::Result<bool> {
        Ok(self.try_get(idx)?)
    }
    fn opt_bool(&self, idx: usize) -> anyhow::Result<Option<bool>> {
        Ok(self.try_get(idx)?)
    }
}

/// Reads [`super::sql::USER_COLUMNS`] starting at column `at`.
pub(crate) fn user_from_row(r: &(impl Row + ?Sized), at: usize) -> anyhow::Result<UserRecord> {
    let c = |i: usize| at + i;
    Ok(UserRecord {
        id: r.i64(c(0))?,
        uuid: r.uuid(c(1))?,
        email: r.text(c(2))?,
        pending_email: r.opt_text(c(3))?,
        password: PasswordHash(r.text(c(4))?),
        first_name: r.text(c(5))?,
        last_name: r.text(c(6))?,
        distinct_id: r.opt_text(c(7))?,
        is_active: r.bool(c(8))?,
        is_staff: r.bool(c(9))?,
        date_joined: r.i64(c(10))?,
        last_login: r.opt_i64(c(11))?,
        is_email_verified: r.opt_bool(c(12))?,
        requested_password_reset_at: r.opt_i64(c(13))?,
        current_organization_id: r.opt_uuid(c(14))?,
        current_team_id: r.opt_i64(c(15))?,
        partial_notification_settings: r.opt_json(c(16))?,
        anonymize_data: r.opt_bool(c(17))?,
        allow_impersonation: r.opt_bool(c(18))?,
        toolbar_mode: r.opt_text(c(19))?,
        theme_mode: r.opt_text(c(20))?,
        hedgehog_config: r.opt_json(c(21))?,
        events_column_config: r.json(c(22))?,
        has_seen_product_intro_for: r.opt_json(c(23))?,
        role_at_organization: r.opt_text(c(24))?,
        allow_sidebar_suggestions: r.opt_bool(c(25))?,
        shortcut_position: r.opt_text(c(26))?,
        passkeys_enabled_for_2fa: r.opt_bool(c(27))?,
        hide_mcp_hints: r.bool(c(28))?,
        ui_configuration: r.opt_json(c(29))?,
        email_opt_in: r.opt_bool(c(30))?,
        credentials_reviewed_at: r.opt_i64(c(31))?,
    })
}

pub(crate) fn organization_from_row(
    r: &(impl Row + ?Sized),
    at: usize,
) -> anyhow::Result<OrganizationRecord> {
    let c = |i: usize| at + i;
    Ok(OrganizationRecord {
        id: r.uuid(c(0))?,
        name: r.text(c(1))?,
        slug: r.text(c(2))?,
        logo_media_id: r.opt_text(c(3))?,
        created_at: r.i64(c(4))?,
        updated_at: r.i64(c(5))?,
        plugins_access_level: r.i64(c(6))?,
        available_product_features: r.json(c(7))?,
        is_member_join_email_enabled: r.bool(c(8))?,
        enforce_2fa: r.opt_bool(c(9))?,
        members_can_invite: r.opt_bool(c(10))?,
        members_can_use_personal_api_keys: r.bool(c(11))?,
        allow_publicly_shared_resources: r.bool(c(12))?,
        is_ai_data_processing_approved: r.opt_bool(c(13))?,
        default_experiment_stats_method: r.opt_text(c(14))?,
        default_anonymize_ips: r.bool(c(15))?,
        default_role_id: r.opt_text(c(16))?,
        customer_id: r.opt_text(c(17))?,
        is_active: r.opt_bool(c(18))?,
        is_not_active_reason: r.opt_text(c(19))?,
    })
}

pub(crate) fn team_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<TeamRecord> {
    let id = r.i64(0)?;
    Ok(TeamRecord {
        id,
        uuid: r.uuid(1)?,
        organization_id: r.uuid(2)?,
        // NULL (a team hoglet created) reads as the team's own id.
        project_id: r.i64(12)?,
        api_token: r.text(3)?,
        name: r.text(4)?,
        completed_snippet_onboarding: r.bool(5)?,
        has_completed_onboarding_for: r.opt_json(6)?,
        ingested_event: r.bool(7)?,
        is_demo: r.bool(8)?,
        timezone: r.text(9)?,
        access_control: r.bool(10)?,
        created_at: r.i64(11)?,
    })
}

/// Reads [`super::sql::MEMBERSHIP_COLUMNS`] starting at column 0.
pub(crate) fn membership_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<MembershipRecord> {
    let level = r.i64(3)?;
    Ok(MembershipRecord {
        id: r.uuid(0)?,
        organization_id: r.uuid(1)?,
        user_id: r.i64(2)?,
        level: MembershipLevel::from_i64(level)
            .with_context(|| format!("unknown membership level {level}"))?,
        invited: r.bool(4)?,
        joined_at: r.i64(5)?,
        updated_at: r.i64(6)?,
    })
}

pub(crate) const MEMBERSHIP_COLUMN_COUNT: usize = 7;

pub(crate) fn membership_with_org_from_row(
    r: &(impl Row + ?Sized),
) -> anyhow::Result<MembershipWithOrg> {
    Ok(MembershipWithOrg {
        membership: membership_from_row(r)?,
        organization: organization_from_row(r, MEMBERSHIP_COLUMN_COUNT)?,
    })
}

pub(crate) fn dashboard_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<DashboardRecord> {
    Ok(DashboardRecord {
        id: r.i64(0)?,
        team_id: r.i64(1)?,
        name: r.text(2)?,
        deleted: r.bool(3)?,
    })
}

pub(crate) fn scene_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<SceneRecord> {
    Ok(SceneRecord {
        user_id: r.i64(0)?,
        team_id: r.opt_i64(1)?,
        scene: r.text(2)?,
        dashboard_id: r.opt_i64(3)?,
    })
}

pub(crate) fn api_key_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<ApiKeyRecord> {
    let list = |idx: usize| -> anyhow::Result<Option<Value>> { r.opt_json(idx) };
    Ok(ApiKeyRecord {
        id: r.text(0)?,
        user_id: r.i64(1)?,
        label: r.text(2)?,
        secure_value: r.text(3)?,
        mask_value: r.text(4)?,
        created_at: r.i64(5)?,
        last_used_at: r.opt_i64(6)?,
        last_rolled_at: r.opt_i64(7)?,
        scopes: key_scopes(list(8)?)?,
        scoped_teams: list(9)?.map(serde_json::from_value).transpose()?,
        scoped_organizations: list(10)?.map(serde_json::from_value).transpose()?,
        expires_at: r.opt_i64(11)?,
    })
}

/// A key's scopes. PostHog treats a key stored with no scopes as a legacy key allowed everything,
/// even what `*` keys are refused; hoglet reads such a key as `*`, with every restriction `*` has.
fn key_scopes(stored: Option<Value>) -> anyhow::Result<Vec<String>> {
    let scopes: Vec<String> = stored
        .map(serde_json::from_value)
        .transpose()?
        .unwrap_or_default();
    Ok(if scopes.is_empty() {
        vec!["*".into()]
    } else {
        scopes
    })
}

pub(crate) fn invalidation_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<InvalidationRecord> {
    Ok(InvalidationRecord {
        seq: r.i64(0)?,
        created_at: r.i64(1)?,
        user_id: r.opt_i64(2)?,
        key_hash: r.opt_text(3)?,
    })
}

pub(crate) fn user_facts_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<UserFacts> {
    Ok(UserFacts {
        user_id: r.i64(0)?,
        has_api_keys: r.bool(1)?,
        has_totp: r.bool(2)?,
    })
}

pub(crate) fn session_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.text(0)?,
        user_id: r.opt_i64(1)?,
        created_at: r.i64(2)?,
        login_at: r.opt_i64(3)?,
        expires_at: r.i64(4)?,
        csrf_token: r.text(5)?,
        two_factor_verified: r.bool(6)?,
        pending_user_id: r.opt_i64(7)?,
        pending_at: r.opt_i64(8)?,
        totp_setup_secret: r.opt_text(9)?,
        totp_setup_at: r.opt_i64(10)?,
        client: SessionClient {
            ip: r.opt_text(11)?,
            user_agent: r.opt_text(12)?,
            login_method: r.opt_text(13)?,
        },
        last_activity_at: r.opt_i64(14)?,
    })
}

pub(crate) fn activity_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<ActivityRecord> {
    Ok(ActivityRecord {
        id: r.i64(0)?,
        user_id: r.opt_i64(1)?,
        activity: r.text(2)?,
        created_at: r.i64(3)?,
        ip: r.opt_text(4)?,
        user_agent: r.opt_text(5)?,
        actor: ActorRecord {
            kind: r.text(6)?,
            id: r.opt_text(7)?,
            label: r.opt_text(8)?,
        },
        detail: r.json(9)?,
    })
}

pub(crate) fn totp_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<TotpDeviceRecord> {
    Ok(TotpDeviceRecord {
        user_id: r.i64(0)?,
        secret: r.text(1)?,
        last_step: r.i64(2)?,
        failures: r.i64(3)?,
        throttled_until: r.i64(4)?,
        created_at: r.i64(5)?,
    })
}

pub(crate) fn signal_autonomy_from_row(
    r: &(impl Row + ?Sized),
) -> anyhow::Result<SignalAutonomyRecord> {
    Ok(SignalAutonomyRecord {
        id: r.uuid(0)?,
        user_id: r.i64(1)?,
        autostart_priority: r.opt_text(2)?,
        created_at: r.i64(3)?,
        updated_at: r.i64(4)?,
    })
}

pub(crate) fn user_integration_from_row(
    r: &(impl Row + ?Sized),
) -> anyhow::Result<UserIntegrationRecord> {
    Ok(UserIntegrationRecord {
        id: r.uuid(0)?,
        user_id: r.i64(1)?,
        kind: r.text(2)?,
        integration_id: r.text(3)?,
        config: r.json(4)?,
        sensitive_config: r.text(5)?,
        repository_cache: r.json(6)?,
        repository_cache_updated_at: r.opt_i64(7)?,
        created_at: r.i64(8)?,
        updated_at: r.i64(9)?,
    })
}

pub(crate) fn team_integration_from_row(
    r: &(impl Row + ?Sized),
) -> anyhow::Result<TeamIntegrationRecord> {
    Ok(TeamIntegrationRecord {
        id: r.i64(0)?,
        team_id: r.i64(1)?,
        kind: r.text(2)?,
        integration_id: r.text(3)?,
        config: r.json(4)?,
        created_by_id: r.opt_i64(5)?,
        created_at: r.i64(6)?,
    })
}

/// `id, recipient, subject, body, attempts, locked_until` of a claim.
pub(crate) fn claimed_mail_from_row(r: &(impl Row + ?Sized)) -> anyhow::Result<ClaimedMail> {
    Ok(ClaimedMail {
        id: r.i64(0)?,
        recipient: r.text(1)?,
        subject: r.text(2)?,
        sealed_body: r.text(3)?,
        attempts: r.i64(4)?,
        locked_until: r.i64(5)?,
    })
}
