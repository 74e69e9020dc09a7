//! A PostHog database as the import reads it: one read-only `REPEATABLE READ` transaction (one
//! consistent snapshot; nothing is ever written there), and for each table only the columns the
//! import carries over, named one by one — a real PostHog database has many more, and newer
//! releases add some. Values are cast to text and integers in SQL (timestamps to microseconds,
//! JSON to its text), so no driver feature is needed for PostHog's column types.

use anyhow::Context;
use secrecy::SecretString;
use serde_json::Value;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use crate::time::Micros;

/// An open snapshot of a PostHog database.
pub struct Snapshot {
    client: tokio_postgres::Client,
    /// Only these organizations (and their teams, members and the members' keys and devices);
    /// empty: all.
    organizations: Vec<Uuid>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub created_at: Micros,
    pub enforce_2fa: Option<bool>,
    pub members_can_use_personal_api_keys: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Team {
    pub id: i64,
    pub uuid: Uuid,
    pub organization_id: Uuid,
    pub project_id: i64,
    pub api_token: String,
    pub name: String,
    pub timezone: String,
    pub created_at: Micros,
}

/// `password` is the stored Django hash (`pbkdf2_sha256$…`, or unusable `!…`), never a password.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: i64,
    pub uuid: Uuid,
    pub email: String,
    pub password: String,
    pub first_name: String,
    pub last_name: String,
    pub is_staff: bool,
    pub is_active: bool,
    pub date_joined: Micros,
    pub last_login: Option<Micros>,
    pub distinct_id: Option<String>,
    pub current_organization_id: Option<Uuid>,
    pub current_team_id: Option<i64>,
    pub is_email_verified: Option<bool>,
    pub pending_email: Option<String>,
    pub theme_mode: Option<String>,
    pub hedgehog_config: Option<Value>,
    pub role_at_organization: Option<String>,
    pub partial_notification_settings: Option<Value>,
    pub anonymize_data: Option<bool>,
    pub toolbar_mode: Option<String>,
    pub events_column_config: Option<Value>,
    pub has_seen_product_intro_for: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Membership {
    pub organization_id: Uuid,
    pub user_id: i64,
    /// PostHog's levels: 1 member, 8 admin, 15 owner.
    pub level: i64,
    pub joined_at: Micros,
}

/// `secure_value` is PostHog's hash (`sha256$…` or a legacy PBKDF2 form); `value` the legacy
/// plaintext some old rows still hold (to be hashed on import, never stored).
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub id: String,
    pub user_id: i64,
    pub label: String,
    pub mask_value: Option<String>,
    pub secure_value: Option<String>,
    pub value: Option<SecretString>,
    pub created_at: Micros,
    pub last_used_at: Option<Micros>,
    pub last_rolled_at: Option<Micros>,
    /// Empty: all scopes (PostHog's reading of a key from before scopes).
    pub scopes: Vec<String>,
    pub scoped_teams: Option<Vec<i64>>,
    pub scoped_organizations: Option<Vec<String>>,
}

/// A django-otp TOTP device; `key` is the secret in hex.
#[derive(Clone)]
pub struct TotpDevice {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub confirmed: bool,
    pub key: SecretString,
    pub step: i64,
    pub t0: i64,
    pub digits: i64,
    pub tolerance: i64,
    pub drift: i64,
    pub last_t: i64,
}

/// One unused django-otp backup code (PostHog stores them in clear).
#[derive(Clone)]
pub struct StaticToken {
    pub id: i64,
    pub user_id: i64,
    pub token: SecretString,
}

// Never print key material.
impl std::fmt::Debug for TotpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpDevice")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticToken")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// A timestamp column as microseconds since the epoch.
macro_rules! micros {
    ($column:literal) => {
        concat!("(extract(epoch from ", $column, ") * 1000000)::bigint")
    };
}

/// The organizations filter: `$1` is a text array of uuids, empty for all.
const ORG_FILTER: &str = "(cardinality($1::text[]) = 0 OR {}::text = ANY($1::text[]))";

/// Users belonging to an organization in the filter (every user when it is empty).
const MEMBER_FILTER: &str = "(cardinality($1::text[]) = 0 OR {} IN (SELECT m.user_id FROM \
     posthog_organizationmembership m WHERE m.organization_id::text = ANY($1::text[])))";

fn filtered(filter: &str, column: &str) -> String {
    filter.replace("{}", column)
}

impl Snapshot {
    /// Connects and opens the read-only snapshot.
    pub async fn open(url: &str, organizations: Vec<Uuid>) -> anyhow::Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("connecting to {}", crate::config::redact_url(url)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the PostHog database connection ended");
            }
        });
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .context("opening a read-only snapshot")?;
        Ok(Snapshot {
            client,
            organizations,
        })
    }

    async fn rows(&self, sql: &str) -> anyhow::Result<Vec<Row>> {
        let filter: Vec<String> = self.organizations.iter().map(Uuid::to_string).collect();
        self.client
            .query(sql, &[&filter])
            .await
            .with_context(|| format!("reading PostHog: {sql}"))
    }

    pub async fn organizations(&self) -> anyhow::Result<Vec<Organization>> {
        let sql = format!(
            "SELECT id::text, name, slug, {}, enforce_2fa, members_can_use_personal_api_keys \
             FROM posthog_organization WHERE {} ORDER BY created_at, id",
            micros!("created_at"),
            filtered(ORG_FILTER, "id"),
        );
        self.rows(&sql)
            .await?
            .iter()
            .map(|r| {
                Ok(Organization {
                    id: uuid(r, 0)?,
                    name: r.try_get(1)?,
                    slug: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    enforce_2fa: r.try_get(4)?,
                    members_can_use_personal_api_keys: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub async fn teams(&self) -> anyhow::Result<Vec<Team>> {
        let sql = format!(
            "SELECT id::bigint, uuid::text, organization_id::text, project_id::bigint, api_token, \
             name, timezone, {} FROM posthog_team WHERE {} ORDER BY id",
            micros!("created_at"),
            filtered(ORG_FILTER, "organization_id"),
        );
        self.rows(&sql)
            .await?
            .iter()
            .map(|r| {
                let id: i64 = r.try_get(0)?;
                Ok(Team {
                    id,
                    uuid: uuid(r, 1)?,
                    organization_id: uuid(r, 2)?,
                    project_id: r.try_get::<_, Option<i64>>(3)?.unwrap_or(id),
                    api_token: r.try_get(4)?,
                    name: r.try_get(5)?,
                    timezone: r.try_get(6)?,
                    created_at: r.try_get(7)?,
                })
            })
            .collect()
    }

    pub async fn users(&self) -> anyhow::Result<Vec<User>> {
        let sql = format!(
            "SELECT id::bigint, uuid::text, email, password, first_name, last_name, is_staff, \
             is_active, {}, {}, distinct_id, current_organization_id::text, \
             current_team_id::bigint, is_email_verified, pending_email, theme_mode, \
             hedgehog_config::text, role_at_organization, partial_notification_settings::text, \
             anonymize_data, toolbar_mode, events_column_config::text, \
             has_seen_product_intro_for::text FROM posthog_user WHERE {} ORDER BY id",
            micros!("date_joined"),
            micros!("last_login"),
            filtered(MEMBER_FILTER, "id"),
        );
        self.rows(&sql)
            .await?
            .iter()
            .map(|r| {
                Ok(User {
                    id: r.try_get(0)?,
                    uuid: uuid(r, 1)?,
                    email: r.try_get(2)?,
                    password: r.try_get(3)?,
                    first_name: r.try_get(4)?,
                    last_name: r.try_get(5)?,
                    is_staff: r.try_get(6)?,
                    is_active: r.try_get(7)?,
                    date_joined: r.try_get(8)?,
                    last_login: r.try_get(9)?,
                    distinct_id: r.try_get(10)?,
                    current_organization_id: opt_uuid(r, 11)?,
                    current_team_id: r.try_get(12)?,
                    is_email_verified: r.try_get(13)?,
                    pending_email: r.try_get(14)?,
                    theme_mode: r.try_get(15)?,
                    hedgehog_config: opt_json(r, 16)?,
                    role_at_organization: r.try_get(17)?,
                    partial_notification_settings: opt_json(r, 18)?,
                    anonymize_data: r.try_get(19)?,
                    toolbar_mode: r.try_get(20)?,
                    events_column_config: opt_json(r, 21)?,
                    has_seen_product_intro_for: opt_json(r, 22)?,
                })
            })
            .collect()
    }

    pub async fn memberships(&self) -> anyhow::Result<Vec<Membership>> {
        let sql = format!(
            "SELECT organization_id::text, user_id::bigint, level::bigint, {} \
             FROM posthog_organizationmembership WHERE {} ORDER BY joined_at, id",
            micros!("joined_at"),
            filtered(ORG_FILTER, "organization_id"),
        );
        self.rows(&sql)
            .await?
            .iter()
            .map(|r| {
                Ok(Membership {
                    organization_id: uuid(r, 0)?,
                    user_id: r.try_get(1)?,
                    level: r.try_get(2)?,
                    joined_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub async fn api_keys(&self) -> anyhow::Result<Vec<ApiKey>> {
        let sql = format!(
            "SELECT id::text, user_id::bigint, label, mask_value, secure_value, value, {}, {}, {}, \
             coalesce(scopes::text[], '{{}}'), scoped_teams::bigint[], \
             scoped_organizations::text[] FROM posthog_personalapikey WHERE {} ORDER BY created_at, id",
            micros!("created_at"),
            micros!("last_used_at"),
            micros!("last_rolled_at"),
            filtered(MEMBER_FILTER, "user_id"),
        );
        self.rows(&sql)
            .await?
            .iter()
            .map(|r| {
                Ok(ApiKey {
                    id: r.try_get(0)?,
                    user_id: r.try_get(1)?,
                    label: r.try_get(2)?,
                    mask_value: r.try_get(3)?,
                    secure_value: r.try_get(4)?,
                    value: r.try_get::<_, Option<String>>(5)?.map(SecretString::from),
                    created_at: r.try_get(6)?,
                    last_used_at: r.try_get(7)?,
                    last_rolled_at: r.try_get(8)?,
                    scopes: r.try_get(9)?,
                    scoped_teams: r.try_get(10)?,
                    scoped_organizations: r.try_get(11)?,
                })
            })
            .collect()
    }

    pub async fn totp_devices(&self) -> anyhow::Result<Vec<TotpDevice>> {
        let sql = format!(
            "SELECT id::bigint, user_id::bigint, name, confirmed, key, step::bigint, t0::bigint, \
             digits::bigint, tolerance::bigint, drift::bigint, last_t::bigint \
             FROM otp_totp_totpdevice WHERE {} ORDER BY id",
            filtered(MEMBER_FILTER, "user_id"),
        );
        self.rows(&sql)
            .await?
            .iter()
            .map(|r| {
                Ok(TotpDevice {
                    id: r.try_get(0)?,
                    user_id: r.try_get(1)?,
                    name: r.try_get(2)?,
                    confirmed: r.try_get(3)?,
                    key: SecretString::from(r.try_get::<_, String>(4)?),
                    step: r.try_get(5)?,
                    t0: r.try_get(6)?,
                    digits: r.try_get(7)?,
                    tolerance: r.try_get(8)?,
                    drift: r.try_get(9)?,
                    last_t: r.try_get(10)?,
                })
            })
            .collect()
    }

    /// The unused backup codes of confirmed static devices.
    pub async fn static_tokens(&self) -> anyhow::Result<Vec<StaticToken>> {
        let sql = format!(
            "SELECT t.id::bigint, d.user_id::bigint, t.token FROM otp_static_statictoken t \
             JOIN otp_static_staticdevice d ON d.id = t.device_id \
             WHERE d.confirmed AND {} ORDER BY t.id",
            filtered(MEMBER_FILTER, "d.user_id"),
        );
        self.rows(&sql)
            .await?
            .iter()
            .map(|r| {
                Ok(StaticToken {
                    id: r.try_get(0)?,
                    user_id: r.try_get(1)?,
                    token: SecretString::from(r.try_get::<_, String>(2)?),
                })
            })
            .collect()
    }
}

fn uuid(r: &Row, i: usize) -> anyhow::Result<Uuid> {
    Ok(Uuid::parse_str(&r.try_get::<_, String>(i)?)?)
}

fn opt_uuid(r: &Row, i: usize) -> anyhow::Result<Option<Uuid>> {
    r.try_get::<_, Option<String>>(i)?
        .map(|s| Uuid::parse_str(&s))
        .transpose()
        .map_err(Into::into)
}

fn opt_json(r: &Row, i: usize) -> anyhow::Result<Option<Value>> {
    r.try_get::<_, Option<String>>(i)?
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(Into::into)
}
