//! A PostHog database as the import reads it: one read-only `REPEATABLE READ` transaction (one
//! consistent snapshot; nothing is ever written there), and for each table only the columns the
//! import carries over, named one by one — a real PostHog database has many more, and newer
//! releases add some. Values are cast to text and integers in SQL (timestamps to microseconds,
//! JSON to its text), so no driver feature is needed for PostHog's column types.

use anyhow::Context;
use secrecy::SecretString;
use tokio_postgres::{IsolationLevel, NoTls, Portal, Row, Transaction};
use uuid::Uuid;

use crate::store::{ImportMembership, ImportOrganization, ImportTeam, ImportUser, PasswordHash};
use crate::time::Micros;

/// A connection to a PostHog database.
pub struct Source {
    client: tokio_postgres::Client,
}

/// One read-only snapshot of a PostHog database: every query sees the same data.
pub struct Snapshot<'a> {
    tx: Transaction<'a>,
    /// Only these organizations (and their teams, members and the members' keys and devices);
    /// empty: all. Bound as `$1` to every query.
    organizations: Vec<String>,
}

/// What one table's rows are read with: the query and how a row becomes a value.
pub struct Query<T> {
    sql: String,
    map: fn(&Row) -> anyhow::Result<T>,
}

/// The rows of a [`Query`], fetched a batch at a time from a server-side portal, so a table of
/// millions never sits in memory.
pub struct Rows<'s, T> {
    tx: &'s Transaction<'s>,
    portal: Portal,
    map: fn(&Row) -> anyhow::Result<T>,
    done: bool,
}

impl<T> Rows<'_, T> {
    /// Up to `size` more rows; `None` once every row was read.
    pub async fn next_batch(&mut self, size: usize) -> anyhow::Result<Option<Vec<T>>> {
        if self.done {
            return Ok(None);
        }
        let size = i32::try_from(size.max(1)).unwrap_or(i32::MAX);
        let rows = self
            .tx
            .query_portal(&self.portal, size)
            .await
            .context("reading PostHog")?;
        self.done = rows.len() < size as usize;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter()
            .map(self.map)
            .collect::<anyhow::Result<_>>()
            .map(Some)
    }
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

impl Source {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .with_context(|| format!("connecting to {}", crate::config::redact_url(url)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "the PostHog database connection ended");
            }
        });
        Ok(Source { client })
    }

    /// Opens the read-only `REPEATABLE READ` snapshot, narrowed to `organizations` (empty: all).
    pub async fn snapshot(&mut self, organizations: &[Uuid]) -> anyhow::Result<Snapshot<'_>> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .context("opening a read-only snapshot")?;
        Ok(Snapshot {
            tx,
            organizations: organizations.iter().map(Uuid::to_string).collect(),
        })
    }
}

impl Snapshot<'_> {
    /// Starts reading the query's rows.
    pub async fn rows<T>(&self, query: &Query<T>) -> anyhow::Result<Rows<'_, T>> {
        let portal = self
            .tx
            .bind(query.sql.as_str(), &[&self.organizations])
            .await
            .with_context(|| format!("reading PostHog: {}", query.sql))?;
        Ok(Rows {
            tx: &self.tx,
            portal,
            map: query.map,
            done: false,
        })
    }

    /// Every row of the query at once (for small tables and tests).
    pub async fn all<T>(&self, query: &Query<T>) -> anyhow::Result<Vec<T>> {
        let mut rows = self.rows(query).await?;
        let mut out = Vec::new();
        while let Some(batch) = rows.next_batch(1000).await? {
            out.extend(batch);
        }
        Ok(out)
    }

    /// How many rows the query gives (for progress).
    pub async fn count<T>(&self, query: &Query<T>) -> anyhow::Result<u64> {
        let sql = format!("SELECT count(*) FROM ({}) q", query.sql);
        let row = self
            .tx
            .query_one(sql.as_str(), &[&self.organizations])
            .await
            .with_context(|| format!("counting in PostHog: {}", query.sql))?;
        Ok(row.try_get::<_, i64>(0)? as u64)
    }

    /// The name of django-otp's migration that encrypts TOTP keys, if this database applied one:
    /// its keys are then not hex and cannot be carried over.
    pub async fn totp_key_encryption(&self) -> anyhow::Result<Option<String>> {
        let has_migrations: bool = self
            .tx
            .query_one("SELECT to_regclass('django_migrations') IS NOT NULL", &[])
            .await?
            .try_get(0)?;
        if !has_migrations {
            return Ok(None);
        }
        let row = self
            .tx
            .query_opt(
                "SELECT name FROM django_migrations WHERE app = 'otp_totp' \
                 AND name ILIKE '%encrypt%' ORDER BY id LIMIT 1",
                &[],
            )
            .await
            .context("reading django_migrations")?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub fn organizations(&self) -> Query<ImportOrganization> {
        Query {
            sql: format!(
                "SELECT id::text, name, slug, {}, enforce_2fa, members_can_use_personal_api_keys \
                 FROM posthog_organization WHERE {} ORDER BY created_at, id",
                micros!("created_at"),
                filtered(ORG_FILTER, "id"),
            ),
            map: |r| {
                Ok(ImportOrganization {
                    id: uuid(r, 0)?,
                    name: r.try_get(1)?,
                    slug: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    enforce_2fa: r.try_get(4)?,
                    members_can_use_personal_api_keys: r.try_get(5)?,
                })
            },
        }
    }

    /// Teams; a team without a `project_id` is its own project.
    pub fn teams(&self) -> Query<ImportTeam> {
        Query {
            sql: format!(
                "SELECT id::bigint, uuid::text, organization_id::text, \
                 coalesce(project_id, id)::bigint, api_token, name, timezone, {} \
                 FROM posthog_team WHERE {} ORDER BY id",
                micros!("created_at"),
                filtered(ORG_FILTER, "organization_id"),
            ),
            map: |r| {
                Ok(ImportTeam {
                    id: r.try_get(0)?,
                    uuid: uuid(r, 1)?,
                    organization_id: uuid(r, 2)?,
                    project_id: r.try_get(3)?,
                    api_token: r.try_get(4)?,
                    name: r.try_get(5)?,
                    timezone: r.try_get(6)?,
                    created_at: r.try_get(7)?,
                })
            },
        }
    }

    /// Users, with the stored Django hash as it is; JSON columns as text.
    pub fn users(&self) -> Query<ImportUser> {
        Query {
            sql: format!(
                "SELECT id::bigint, uuid::text, email, password, first_name, last_name, is_staff, \
                 is_active, {}, {}, distinct_id, current_organization_id::text, \
                 current_team_id::bigint, is_email_verified, pending_email, theme_mode, \
                 hedgehog_config::text, role_at_organization, partial_notification_settings::text, \
                 anonymize_data, toolbar_mode, events_column_config::text, \
                 has_seen_product_intro_for::text FROM posthog_user WHERE {} ORDER BY id",
                micros!("date_joined"),
                micros!("last_login"),
                filtered(MEMBER_FILTER, "id"),
            ),
            map: |r| {
                Ok(ImportUser {
                    id: r.try_get(0)?,
                    uuid: uuid(r, 1)?,
                    email: r.try_get(2)?,
                    password: PasswordHash(r.try_get(3)?),
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
                    hedgehog_config: r.try_get(16)?,
                    role_at_organization: r.try_get(17)?,
                    partial_notification_settings: r.try_get(18)?,
                    anonymize_data: r.try_get(19)?,
                    toolbar_mode: r.try_get(20)?,
                    events_column_config: r.try_get(21)?,
                    has_seen_product_intro_for: r.try_get(22)?,
                })
            },
        }
    }

    pub fn memberships(&self) -> Query<ImportMembership> {
        Query {
            sql: format!(
                "SELECT organization_id::text, user_id::bigint, level::bigint, {} \
                 FROM posthog_organizationmembership WHERE {} ORDER BY joined_at, id",
                micros!("joined_at"),
                filtered(ORG_FILTER, "organization_id"),
            ),
            map: |r| {
                Ok(ImportMembership {
                    organization_id: uuid(r, 0)?,
                    user_id: r.try_get(1)?,
                    level: r.try_get(2)?,
                    joined_at: r.try_get(3)?,
                })
            },
        }
    }

    pub fn api_keys(&self) -> Query<ApiKey> {
        Query {
            sql: format!(
                "SELECT id::text, user_id::bigint, label, mask_value, secure_value, value, {}, {}, \
                 {}, coalesce(scopes::text[], '{{}}'), scoped_teams::bigint[], \
                 scoped_organizations::text[] FROM posthog_personalapikey WHERE {} \
                 ORDER BY created_at, id",
                micros!("created_at"),
                micros!("last_used_at"),
                micros!("last_rolled_at"),
                filtered(MEMBER_FILTER, "user_id"),
            ),
            map: |r| {
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
            },
        }
    }

    pub fn totp_devices(&self) -> Query<TotpDevice> {
        Query {
            sql: format!(
                "SELECT id::bigint, user_id::bigint, name, confirmed, key, step::bigint, \
                 t0::bigint, digits::bigint, tolerance::bigint, drift::bigint, last_t::bigint \
                 FROM otp_totp_totpdevice WHERE {} ORDER BY id",
                filtered(MEMBER_FILTER, "user_id"),
            ),
            map: |r| {
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
            },
        }
    }

    /// The unused backup codes of confirmed static devices.
    pub fn static_tokens(&self) -> Query<StaticToken> {
        Query {
            sql: format!(
                "SELECT t.id::bigint, d.user_id::bigint, t.token FROM otp_static_statictoken t \
                 JOIN otp_static_staticdevice d ON d.id = t.device_id \
                 WHERE d.confirmed AND {} ORDER BY t.id",
                filtered(MEMBER_FILTER, "d.user_id"),
            ),
            map: |r| {
                Ok(StaticToken {
                    id: r.try_get(0)?,
                    user_id: r.try_get(1)?,
                    token: SecretString::from(r.try_get::<_, String>(2)?),
                })
            },
        }
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
