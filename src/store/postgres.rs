//! PostgreSQL backend (tokio-postgres with a deadpool pool and cached prepared statements).
//! Prepared statements are per connection: put PgBouncer in session mode, not transaction mode.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{NoTls, Row as PgRow};
use uuid::Uuid;

use super::row::{self, Row, json_text};
use super::sql::{self, ColumnValue, FilterParam, ListCount, user_columns};
use super::*;
use crate::crypto;
use crate::time::{Micros, system_now};

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// Connections per process; replicas scale out by running more processes.
const POOL_SIZE: usize = 16;
/// How long a request waits for a connection before answering 503.
const POOL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one connection attempt may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_CONNECT_RETRY: Duration = Duration::from_millis(250);
const MAX_CONNECT_RETRY: Duration = Duration::from_secs(5);
/// Serialises migrations of replicas that start together.
const MIGRATION_LOCK: i64 = 0x686f_676c_6574;

type Param<'a> = &'a (dyn ToSql + Sync);

pub struct PgStore {
    pool: Pool,
}

impl PgStore {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_within(url, Duration::ZERO).await
    }

    /// Connects (retrying for up to `wait` while the server does not answer), migrates and
    /// builds the pool.
    pub async fn connect_within(url: &str, wait: Duration) -> anyhow::Result<Self> {
        let config: tokio_postgres::Config = url.parse().context("parsing the Postgres URL")?;
        let (client, connection) = first_connection(&config, url, wait).await?;
        migrate(client, connection).await?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .context("building the Postgres pool")?;
        Ok(Self { pool })
    }

    /// A pooled connection. Waiting past the pool timeout, or failing to open a new connection,
    /// is `Unavailable`; only a pool built without a runtime (a bug) is not.
    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        use deadpool_postgres::PoolError;
        self.pool.get().await.map_err(|e| match e {
            PoolError::NoRuntimeSpecified => {
                StoreError::Other(anyhow::anyhow!("Postgres pool: {e}"))
            }
            e => StoreError::Unavailable(anyhow::anyhow!("Postgres pool: {e}")),
        })
    }
}

type Connection =
    tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>;

/// The first connection, retried with exponential backoff for up to `wait` while the server does
/// not answer (refused, starting up, too many connections). A refusal that waiting cannot fix
/// (bad password, no such database) fails at once. Errors name the server, password redacted.
async fn first_connection(
    config: &tokio_postgres::Config,
    url: &str,
    wait: Duration,
) -> anyhow::Result<(tokio_postgres::Client, Connection)> {
    let server = crate::config::redact_url(url);
    let started = tokio::time::Instant::now();
    let mut delay = FIRST_CONNECT_RETRY;
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await {
            Ok(Ok(connected)) => {
                if attempts > 1 {
                    tracing::info!(attempts, "PostgreSQL at {server} answered");
                }
                return Ok(connected);
            }
            Ok(Err(e)) if !worth_waiting_for(&e) => {
                return Err(e).with_context(|| format!("connecting to PostgreSQL at {server}"));
            }
            Ok(Err(e)) => anyhow::Error::new(e),
            Err(_) => anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        let waited = started.elapsed();
        if waited >= wait {
            anyhow::bail!(
                "cannot connect to PostgreSQL at {server}: gave up after {attempts} attempt{} over                  {:.1} s (HOGLET_DATABASE_WAIT_SECONDS={}): {error:#}",
                if attempts == 1 { "" } else { "s" },
                waited.as_secs_f64(),
                wait.as_secs()
            );
        }
        let pause = delay.min(wait - waited);
        tracing::warn!(attempt = attempts, error = %format!("{error:#}"), retry_in = ?pause, "PostgreSQL at {server} is not answering yet; retrying");
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(MAX_CONNECT_RETRY);
    }
}

/// Whether a failed connection may succeed later: not when the server answered that the
/// credentials are wrong (class 28) or the database does not exist (3D000).
fn worth_waiting_for(e: &tokio_postgres::Error) -> bool {
    let class = |db: &tokio_postgres::error::DbError| db.code().code().get(..2).map(str::to_owned);
    e.as_db_error()
        .and_then(class)
        .is_none_or(|class| class != "28" && class != "3D")
}

async fn migrate(mut client: tokio_postgres::Client, connection: Connection) -> anyhow::Result<()> {
    let task = tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let applied = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .context("applying Postgres migrations");
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .ok();
    drop(client);
    task.abort();
    applied.map(|_| ())
}

/// Only a database that does not answer is `Unavailable` (a 503 worth retrying): a closed or
/// failing connection, a server shutting down or refusing connections, a cancelled (timed-out)
/// statement. Every other failure is `Other`, a 500 with its cause logged: a parameter of the
/// wrong type, for one, is a bug that retrying does not fix.
fn map_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNIQUE_VIOLATION {
            let target = db.constraint().unwrap_or(db.message());
            return StoreError::Unique(sql::unique_target(target));
        }
        let code = db.code().code();
        // 08: connection exception; 57: operator intervention (shutdowns, statement timeouts);
        // 53300: too many connections. Not the rest of 53 (disk full, out of memory).
        if code.starts_with("08")
            || code.starts_with("57")
            || *db.code() == SqlState::TOO_MANY_CONNECTIONS
        {
            return StoreError::Unavailable(e.into());
        }
        return StoreError::Other(e.into());
    }
    if e.is_closed() || is_connection_io(&e) {
        return StoreError::Unavailable(e.into());
    }
    StoreError::Other(e.into())
}

/// Whether the error is the socket failing (its cause an I/O error). tokio-postgres also wraps
/// an `InvalidInput`/`InvalidData` I/O error around messages it cannot encode or parse; those
/// are bugs or corrupt data, not an outage.
fn is_connection_io(e: &tokio_postgres::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            !matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        })
}

fn map_row<T>(r: anyhow::Result<T>) -> StoreResult<T> {
    r.map_err(StoreError::Other)
}

impl ToSql for ColumnValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            ColumnValue::Text(v) => v.to_sql(ty, out),
            ColumnValue::Int(v) => v.to_sql(ty, out),
            ColumnValue::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <Option<String> as ToSql>::accepts(ty)
            || <Option<i64> as ToSql>::accepts(ty)
            || <Option<bool> as ToSql>::accepts(ty)
    }

    // Checked per variant, so a value of the wrong type for its column is refused instead of
    // being sent in another type's encoding.
    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            ColumnValue::Text(v) => v.to_sql_checked(ty, out),
            ColumnValue::Int(v) => v.to_sql_checked(ty, out),
            ColumnValue::Bool(v) => v.to_sql_checked(ty, out),
        }
    }
}

impl ToSql for FilterParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            FilterParam::Int(v) => v.to_sql(ty, out),
            FilterParam::Text(v) => v.to_sql(ty, out),
            FilterParam::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty) || <bool as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

async fn rows(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> StoreResult<Vec<PgRow>> {
    let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
    c.query(&stmt, params).await.map_err(map_err)
}

async fn first<T>(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
    map: impl Fn(&PgRow) -> anyhow::Result<T>,
) -> StoreResult<Option<T>> {
    let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
    let row = c.query_opt(&stmt, params).await.map_err(map_err)?;
    row.as_ref().map(map).transpose().map_err(StoreError::Other)
}

async fn all<T>(
    c: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
    map: impl Fn(&PgRow) -> anyhow::Result<T>,
) -> StoreResult<Vec<T>> {
    rows(c, sql, params)
        .await?
        .iter()
        .map(|r| map_row(map(r)))
        .collect()
}

async fn execute(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> StoreResult<u64> {
    let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
    c.execute(&stmt, params).await.map_err(map_err)
}

async fn count(c: &impl GenericClient, sql: &str, params: &[Param<'_>]) -> StoreResult<i64> {
    Ok(first(c, sql, params, |r| r.i64(0)).await?.unwrap_or(0))
}

async fn invalidate(
    c: &impl GenericClient,
    user: Option<i64>,
    key_hash: Option<&str>,
) -> StoreResult<()> {
    execute(
        c,
        sql::INVALIDATION_INSERT,
        &[&system_now(), &user, &key_hash],
    )
    .await?;
    Ok(())
}

async fn insert_mail(c: &impl GenericClient, mail: &NewMail) -> StoreResult<()> {
    execute(
        c,
        sql::OUTBOX_INSERT,
        &[
            &mail.recipient,
            &mail.subject,
            &mail.sealed_body,
            &mail.created_at,
        ],
    )
    .await?;
    Ok(())
}

/// Inserts a user row; returns its id.
async fn insert_user_row(c: &impl GenericClient, user: &NewUser) -> StoreResult<i64> {
    first(
        c,
        sql::USER_INSERT,
        &[
            &user.uuid.to_string(),
            &user.email,
            &sql::email_key(&user.email),
            &user.password.0,
            &user.first_name,
            &user.last_name,
            &user.distinct_id,
            &user.is_staff,
            &user.is_email_verified,
            &user.role_at_organization,
            &user.email_opt_in,
            &user.date_joined,
        ],
        |r| r.i64(0),
    )
    .await?
    .ok_or(StoreError::Missing("user"))
}

/// Locks the user's row for the rest of the transaction; `Missing` when there is no such user.
async fn lock_user(c: &impl GenericClient, id: i64) -> StoreResult<()> {
    first(c, sql::USER_LOCK, &[&id], |r| r.i64(0))
        .await?
        .map(|_| ())
        .ok_or(StoreError::Missing("user"))
}

/// Keeps the team from going away until the transaction ends; `Missing` when there is none.
async fn lock_team(c: &impl GenericClient, id: i64) -> StoreResult<()> {
    first(c, sql::TEAM_SHARE_LOCK, &[&id], |r| r.i64(0))
        .await?
        .map(|_| ())
        .ok_or(StoreError::Missing("team"))
}

/// The body of [`Store::write_user`], inside `tx`.
async fn write_user_in_tx(
    tx: &deadpool_postgres::Transaction<'_>,
    user_id: i64,
    w: &UserWrite,
) -> StoreResult<UserRecord> {
    lock_user(tx, user_id).await?;
    if let Some((update, values)) = sql::user_update(&w.changes) {
        let mut params: Vec<Param<'_>> = vec![&user_id];
        params.extend(values.iter().map(|v| v as Param<'_>));
        // Not `prepare_cached`: each set of columns is its own statement, callers choose the
        // set, and the per-connection cache never forgets one.
        tx.execute(update.as_str(), &params)
            .await
            .map_err(map_err)?;
    }
    if let Some(keep) = &w.end_sessions {
        let keep = keep.as_deref().unwrap_or_default();
        execute(tx, sql::SESSIONS_DELETE_OF_USER, &[&user_id, &keep]).await?;
    }
    if w.remove_two_factor {
        execute(tx, sql::TOTP_DELETE, &[&user_id]).await?;
        execute(tx, sql::BACKUP_CODES_DELETE, &[&user_id]).await?;
    }
    if let Some(d) = &w.totp_device {
        execute(
            tx,
            sql::TOTP_UPSERT,
            &[
                &user_id,
                &d.secret,
                &d.last_step,
                &d.failures,
                &d.throttled_until,
                &d.created_at,
            ],
        )
        .await?;
    }
    if let Some(hashes) = &w.backup_codes {
        let now = system_now();
        execute(tx, sql::BACKUP_CODES_DELETE, &[&user_id]).await?;
        for hash in hashes {
            execute(tx, sql::BACKUP_CODE_INSERT, &[&user_id, hash, &now]).await?;
        }
    }
    if let Some(s) = &w.session {
        execute(
            tx,
            sql::SESSION_UPSERT,
            &[
                &s.id,
                &s.user_id,
                &s.created_at,
                &s.login_at,
                &s.expires_at,
                &s.csrf_token,
                &s.two_factor_verified,
                &s.pending_user_id,
                &s.pending_at,
                &s.totp_setup_secret,
                &s.totp_setup_at,
            ],
        )
        .await?;
    }
    for mail in &w.mail {
        insert_mail(tx, mail).await?;
    }
    // One row covers the user's rendered views, keys and sessions; it also names the session
    // written, whose cached entry may belong to no user yet (a pending login).
    let session_key = w.session.as_ref().map(|s| format!("session${}", s.id));
    invalidate(tx, Some(user_id), session_key.as_deref()).await?;
    first(tx, sql::USER_BY_ID, &[&user_id], |r| {
        row::user_from_row(r, 0)
    })
    .await?
    .ok_or(StoreError::Missing("user"))
}

async fn organization_exists(c: &impl GenericClient, id: Uuid) -> StoreResult<bool> {
    Ok(first(
        c,
        "SELECT id FROM organizations WHERE id = $1",
        &[&id.to_string()],
        |r| r.text(0),
    )
    .await?
    .is_some())
}

async fn insert_team(
    c: &impl GenericClient,
    organization: Uuid,
    name: &str,
    now: Micros,
) -> StoreResult<TeamRecord> {
    let token = format!("phc_{}", crypto::random_token(35));
    let id = first(
        c,
        sql::TEAM_INSERT,
        &[
            &Uuid::now_v7().to_string(),
            &organization.to_string(),
            &token,
            &name,
            &now,
        ],
        |r| r.i64(0),
    )
    .await?
    .ok_or(StoreError::Missing("team"))?;
    execute(
        c,
        sql::DASHBOARD_INSERT,
        &[&id, &sql::DEFAULT_DASHBOARD_NAME, &now],
    )
    .await?;
    first(c, sql::TEAM_BY_ID, &[&id], row::team_from_row)
        .await?
        .ok_or(StoreError::Missing("team"))
}

async fn insert_membership(
    c: &impl GenericClient,
    organization: Uuid,
    user_id: i64,
    level: MembershipLevel,
    invited: bool,
    now: Micros,
) -> StoreResult<MembershipRecord> {
    let id = Uuid::now_v7().to_string();
    execute(
        c,
        sql::MEMBERSHIP_INSERT,
        &[
            &id,
            &organization.to_string(),
            &user_id,
            &level.as_i64(),
            &invited,
            &now,
        ],
    )
    .await?;
    first(c, sql::MEMBERSHIP_BY_ID, &[&id], |r| {
        row::membership_from_row(r)
    })
    .await?
    .ok_or(StoreError::Missing("membership"))
}

/// Inserts the organization under its name's slug, or the slug with a random suffix when taken.
/// `ON CONFLICT DO NOTHING` waits for a concurrent insert of the same slug instead of failing,
/// so organizations created at once with one name all succeed.
async fn insert_organization(
    c: &impl GenericClient,
    id: &str,
    name: &str,
    now: Micros,
) -> StoreResult<()> {
    let base = sql::slugify(name);
    let mut slug = base.clone();
    for _ in 0..20 {
        if execute(c, sql::ORGANIZATION_INSERT, &[&id, &name, &slug, &now]).await? == 1 {
            return Ok(());
        }
        slug = format!("{base}-{}", crypto::random_alphanumeric(4).to_lowercase());
    }
    Err(StoreError::Unique(Unique::Slug))
}

fn uuid_strings(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> StoreResult<()> {
        let c = self.client().await?;
        execute(&c, sql::PING, &[]).await.map(|_| ())
    }

    async fn setting_or_insert(&self, key: &str, value: &str) -> StoreResult<String> {
        let c = self.client().await?;
        execute(&c, sql::SETTING_INSERT, &[&key, &value]).await?;
        first(&c, sql::SETTING_GET, &[&key], |r| r.text(0))
            .await?
            .ok_or(StoreError::Missing("setting"))
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let c = self.client().await?;
        first(&c, sql::SETTING_GET, &[&key], |r| r.text(0)).await
    }

    async fn delete_setting(&self, key: &str, value: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(execute(&c, sql::SETTING_DELETE, &[&key, &value]).await? > 0)
    }

    async fn insert_user(&self, user: NewUser) -> StoreResult<UserRecord> {
        let c = self.client().await?;
        let id = insert_user_row(&c, &user).await?;
        first(&c, sql::USER_BY_ID, &[&id], |r| row::user_from_row(r, 0))
            .await?
            .ok_or(StoreError::Missing("user"))
    }

    async fn user_by_id(&self, id: i64) -> StoreResult<Option<UserRecord>> {
        let c = self.client().await?;
        first(&c, sql::USER_BY_ID, &[&id], |r| row::user_from_row(r, 0)).await
    }

    async fn user_by_uuid(&self, uuid: Uuid) -> StoreResult<Option<UserRecord>> {
        let c = self.client().await?;
        first(&c, sql::USER_BY_UUID, &[&uuid.to_string()], |r| {
            row::user_from_row(r, 0)
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let c = self.client().await?;
        first(&c, sql::USER_BY_EMAIL, &[&sql::email_key(email)], |r| {
            row::user_from_row(r, 0)
        })
        .await
    }

    async fn list_users(&self, query: &UserQuery) -> StoreResult<UserPage> {
        let c = self.client().await?;
        let (filter, params) = sql::user_list_filter(query);
        let mut all_params: Vec<Param<'_>> = params.iter().map(|p| p as Param<'_>).collect();
        let n = all_params.len();
        all_params.push(&query.limit);
        all_params.push(&query.offset);
        let page_sql = format!(
            "SELECT {} FROM users u {filter} ORDER BY u.id LIMIT ${} OFFSET ${}",
            user_columns!(),
            n + 1,
            n + 2
        );
        let users = all(&c, &page_sql, &all_params, |r| row::user_from_row(r, 0)).await?;
        let count = match sql::user_list_count(query, users.len()) {
            ListCount::Known(known) => known,
            ListCount::Counter(counter) => count(&c, counter, &[]).await?,
            ListCount::Filtered => {
                let sql = format!("SELECT count(*) FROM users u {filter}");
                count(&c, &sql, &all_params[..n]).await?
            }
        };
        Ok(UserPage { count, users })
    }

    async fn count_users(&self) -> StoreResult<i64> {
        let c = self.client().await?;
        count(&c, sql::USER_COUNT, &[]).await
    }

    async fn update_user(&self, u: &UserRecord) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let changed = execute(
            &tx,
            sql::USER_UPDATE,
            &[
                &u.id,
                &u.email,
                &sql::email_key(&u.email),
                &u.pending_email,
                &u.password.0,
                &u.first_name,
                &u.last_name,
                &u.is_active,
                &u.is_staff,
                &u.last_login,
                &u.is_email_verified,
                &u.requested_password_reset_at,
                &u.current_organization_id.map(|o| o.to_string()),
                &u.current_team_id,
                &json_text(&u.partial_notification_settings),
                &u.anonymize_data,
                &u.allow_impersonation,
                &u.toolbar_mode,
                &u.theme_mode,
                &json_text(&u.hedgehog_config),
                &u.events_column_config.to_string(),
                &json_text(&u.has_seen_product_intro_for),
                &u.role_at_organization,
                &u.allow_sidebar_suggestions,
                &u.shortcut_position,
                &u.passkeys_enabled_for_2fa,
                &u.hide_mcp_hints,
                &json_text(&u.ui_configuration),
                &u.credentials_reviewed_at,
            ],
        )
        .await?;
        if changed == 0 {
            return Err(StoreError::Missing("user"));
        }
        invalidate(&tx, Some(u.id), None).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn write_user(&self, user_id: i64, write: &UserWrite) -> StoreResult<UserRecord> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let user = write_user_in_tx(&tx, user_id, write).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(user)
    }

    async fn set_current_context(
        &self,
        user_id: i64,
        organization: Option<Uuid>,
        team: Option<i64>,
    ) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let org = organization.map(|o| o.to_string());
        execute(&tx, sql::USER_SET_CONTEXT, &[&user_id, &org, &team]).await?;
        invalidate(&tx, Some(user_id), None).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn delete_user(&self, id: i64) -> StoreResult<UserDeletion> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        match lock_user(&tx, id).await {
            Err(StoreError::Missing(_)) => return Ok(UserDeletion::Missing),
            other => other?,
        }
        if count(&tx, sql::USER_MEMBERSHIP_COUNT, &[&id]).await? > 0 {
            return Ok(UserDeletion::HasMemberships);
        }
        execute(&tx, sql::USER_DELETE, &[&id]).await?;
        invalidate(&tx, Some(id), None).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(UserDeletion::Deleted)
    }

    async fn user_facts(&self, user_ids: &[i64]) -> StoreResult<Vec<UserFacts>> {
        let c = self.client().await?;
        let ids = user_ids.to_vec();
        all(
            &c,
            "SELECT u.id, EXISTS (SELECT 1 FROM personal_api_keys k WHERE k.user_id = u.id), \
             EXISTS (SELECT 1 FROM totp_devices d WHERE d.user_id = u.id) \
             FROM users u WHERE u.id = ANY($1)",
            &[&ids],
            row::user_facts_from_row,
        )
        .await
    }

    async fn create_organization(
        &self,
        new: NewOrganization,
    ) -> StoreResult<(OrganizationRecord, TeamRecord)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let now = system_now();
        lock_user(&tx, new.owner_id).await?;
        let id = Uuid::now_v7().to_string();
        insert_organization(&tx, &id, &new.name, now).await?;
        let organization = first(&tx, sql::ORGANIZATION_BY_ID, &[&id], |r| {
            row::organization_from_row(r, 0)
        })
        .await?
        .ok_or(StoreError::Missing("organization"))?;
        let team = insert_team(&tx, organization.id, &new.team_name, now).await?;
        insert_membership(
            &tx,
            organization.id,
            new.owner_id,
            MembershipLevel::Owner,
            false,
            now,
        )
        .await?;
        execute(
            &tx,
            sql::USER_SET_CONTEXT,
            &[&new.owner_id, &organization.id.to_string(), &team.id],
        )
        .await?;
        invalidate(&tx, Some(new.owner_id), None).await?;
        tx.commit().await.map_err(map_err)?;
        Ok((organization, team))
    }

    async fn organization(&self, id: Uuid) -> StoreResult<Option<OrganizationRecord>> {
        let c = self.client().await?;
        first(&c, sql::ORGANIZATION_BY_ID, &[&id.to_string()], |r| {
            row::organization_from_row(r, 0)
        })
        .await
    }

    async fn update_organization(
        &self,
        id: Uuid,
        changes: OrganizationChanges,
    ) -> StoreResult<Option<OrganizationRecord>> {
        let id = id.to_string();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let now = system_now();
        let mut found = true;
        if let Some(name) = &changes.name {
            found &= execute(&tx, sql::ORGANIZATION_SET_NAME, &[&id, name, &now]).await? == 1;
        }
        if let Some(enforce) = changes.enforce_2fa {
            found &= execute(
                &tx,
                sql::ORGANIZATION_SET_ENFORCE_2FA,
                &[&id, &enforce, &now],
            )
            .await?
                == 1;
        }
        if !found {
            return Ok(None);
        }
        execute(&tx, sql::INVALIDATE_MEMBERS, &[&id, &now]).await?;
        let organization = first(&tx, sql::ORGANIZATION_BY_ID, &[&id], |r| {
            row::organization_from_row(r, 0)
        })
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(organization)
    }

    async fn add_membership(
        &self,
        organization: Uuid,
        user_id: i64,
        level: MembershipLevel,
    ) -> StoreResult<MembershipRecord> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let now = system_now();
        lock_user(&tx, user_id).await?;
        if !organization_exists(&tx, organization).await? {
            return Err(StoreError::Missing("organization"));
        }
        let membership = insert_membership(&tx, organization, user_id, level, true, now).await?;
        let first_team = first(
            &tx,
            "SELECT id FROM teams WHERE organization_id = $1 ORDER BY id LIMIT 1",
            &[&organization.to_string()],
            |r| r.i64(0),
        )
        .await?;
        execute(
            &tx,
            sql::USER_SET_CONTEXT,
            &[&user_id, &organization.to_string(), &first_team],
        )
        .await?;
        invalidate(&tx, None, None).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(membership)
    }

    async fn create_team(&self, new: NewTeam) -> StoreResult<TeamRecord> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        if !organization_exists(&tx, new.organization_id).await? {
            return Err(StoreError::Missing("organization"));
        }
        let team = insert_team(&tx, new.organization_id, &new.name, system_now()).await?;
        invalidate(&tx, None, None).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(team)
    }

    async fn team(&self, id: i64) -> StoreResult<Option<TeamRecord>> {
        let c = self.client().await?;
        first(&c, sql::TEAM_BY_ID, &[&id], row::team_from_row).await
    }

    async fn memberships_of(&self, user_ids: &[i64]) -> StoreResult<Vec<MembershipWithOrg>> {
        let c = self.client().await?;
        let ids = user_ids.to_vec();
        all(
            &c,
            concat!(
                "SELECT ",
                sql::membership_columns!(),
                ", ",
                sql::organization_columns!(),
                " FROM organization_memberships m \
                 JOIN organizations o ON o.id = m.organization_id \
                 WHERE m.user_id = ANY($1) ORDER BY m.joined_at, m.id"
            ),
            &[&ids],
            row::membership_with_org_from_row,
        )
        .await
    }

    async fn teams_of(&self, organizations: &[Uuid]) -> StoreResult<Vec<TeamRecord>> {
        let c = self.client().await?;
        let ids = uuid_strings(organizations);
        all(
            &c,
            concat!(
                "SELECT ",
                sql::team_columns!(),
                " FROM teams t WHERE t.organization_id = ANY($1) ORDER BY t.id"
            ),
            &[&ids],
            row::team_from_row,
        )
        .await
    }

    async fn member_counts(&self, organizations: &[Uuid]) -> StoreResult<Vec<(Uuid, i64)>> {
        let c = self.client().await?;
        let ids = uuid_strings(organizations);
        all(
            &c,
            "SELECT m.organization_id, count(*) FROM organization_memberships m \
             JOIN users u ON u.id = m.user_id \
             WHERE u.is_active = TRUE AND m.organization_id = ANY($1) GROUP BY m.organization_id",
            &[&ids],
            |r| Ok((r.uuid(0)?, r.i64(1)?)),
        )
        .await
    }

    async fn create_dashboard(&self, team_id: i64, name: &str) -> StoreResult<DashboardRecord> {
        // In a transaction, as SQLite's: the team checked is the team written to.
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        lock_team(&tx, team_id).await?;
        let dashboard = first(
            &tx,
            sql::DASHBOARD_INSERT,
            &[&team_id, &name, &system_now()],
            row::dashboard_from_row,
        )
        .await?
        .ok_or(StoreError::Missing("dashboard"))?;
        tx.commit().await.map_err(map_err)?;
        Ok(dashboard)
    }

    async fn dashboard(&self, id: i64) -> StoreResult<Option<DashboardRecord>> {
        let c = self.client().await?;
        first(&c, sql::DASHBOARD_BY_ID, &[&id], |r| {
            row::dashboard_from_row(r)
        })
        .await
    }

    async fn scene_personalisations_of(&self, user_ids: &[i64]) -> StoreResult<Vec<SceneRecord>> {
        let c = self.client().await?;
        let ids = user_ids.to_vec();
        all(
            &c,
            "SELECT user_id, team_id, scene, dashboard_id FROM scene_personalisations \
             WHERE user_id = ANY($1) ORDER BY id",
            &[&ids],
            row::scene_from_row,
        )
        .await
    }

    async fn upsert_scene_personalisation(&self, scene: NewScene) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        lock_user(&tx, scene.user_id).await?;
        let updated = match scene.team_id {
            None => {
                execute(
                    &tx,
                    sql::SCENE_UPDATE_NULL_TEAM,
                    &[&scene.user_id, &scene.scene, &scene.dashboard_id],
                )
                .await?
            }
            Some(_) => 0,
        };
        if updated == 0 {
            execute(
                &tx,
                sql::SCENE_UPSERT,
                &[
                    &scene.user_id,
                    &scene.team_id,
                    &scene.scene,
                    &scene.dashboard_id,
                    &system_now(),
                ],
            )
            .await?;
        }
        invalidate(&tx, Some(scene.user_id), None).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn insert_api_key(&self, key: NewApiKey, limit: usize) -> StoreResult<ApiKeyRecord> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        lock_user(&tx, key.user_id).await?;
        if count(&tx, sql::API_KEY_COUNT_FOR_USER, &[&key.user_id]).await? >= limit as i64 {
            return Err(StoreError::Limit(limit));
        }
        let scopes = serde_json::to_string(&key.scopes).map_err(anyhow::Error::from)?;
        let teams = key
            .scoped_teams
            .as_ref()
            .map(|t| serde_json::json!(t).to_string());
        let orgs = key
            .scoped_organizations
            .as_ref()
            .map(|o| serde_json::json!(o).to_string());
        execute(
            &tx,
            sql::API_KEY_INSERT,
            &[
                &key.id,
                &key.user_id,
                &key.label,
                &key.secure_value,
                &key.mask_value,
                &key.created_at,
                &scopes,
                &teams,
                &orgs,
                &key.expires_at,
            ],
        )
        .await?;
        invalidate(&tx, Some(key.user_id), None).await?;
        let record = first(&tx, sql::API_KEY_BY_ID, &[&key.id], |r| {
            row::api_key_from_row(r)
        })
        .await?
        .ok_or(StoreError::Missing("personal API key"))?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    }

    async fn api_key_by_secure_value(
        &self,
        secure_value: &str,
    ) -> StoreResult<Option<ApiKeyRecord>> {
        let c = self.client().await?;
        first(&c, sql::API_KEY_BY_SECURE_VALUE, &[&secure_value], |r| {
            row::api_key_from_row(r)
        })
        .await
    }

    async fn has_legacy_api_keys(&self) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(count(&c, sql::API_KEY_HAS_LEGACY, &[]).await? > 0)
    }

    async fn legacy_api_keys(&self, prefix: &str) -> StoreResult<Vec<ApiKeyRecord>> {
        let c = self.client().await?;
        all(&c, sql::API_KEY_LEGACY_BY_PREFIX, &[&prefix], |r| {
            row::api_key_from_row(r)
        })
        .await
    }

    async fn upgrade_api_key_hash(&self, id: &str, secure_value: &str) -> StoreResult<()> {
        let c = self.client().await?;
        execute(&c, sql::API_KEY_SET_SECURE_VALUE, &[&id, &secure_value]).await?;
        Ok(())
    }

    async fn touch_api_keys(&self, used: &[(String, Micros)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        // One transaction for the batch: all or nothing, and one commit instead of one per key.
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        for (id, at) in used {
            execute(&tx, sql::API_KEY_TOUCH, &[id, at]).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn api_keys_of(&self, user_id: i64) -> StoreResult<Vec<ApiKeyRecord>> {
        let c = self.client().await?;
        all(&c, sql::API_KEYS_OF_USER, &[&user_id], |r| {
            row::api_key_from_row(r)
        })
        .await
    }

    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let c = self.client().await?;
        first(&c, sql::API_KEY_BY_ID, &[&id], row::api_key_from_row).await
    }

    async fn update_api_key(&self, id: &str, changes: ApiKeyChanges) -> StoreResult<ApiKeyRecord> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let before = first(&tx, sql::API_KEY_BY_ID_FOR_UPDATE, &[&id], |r| {
            row::api_key_from_row(r)
        })
        .await?
        .ok_or(StoreError::Missing("personal API key"))?;
        let scopes = serde_json::to_string(&changes.scopes).map_err(anyhow::Error::from)?;
        let teams = changes
            .scoped_teams
            .as_ref()
            .map(|t| serde_json::json!(t).to_string());
        let orgs = changes
            .scoped_organizations
            .as_ref()
            .map(|o| serde_json::json!(o).to_string());
        execute(
            &tx,
            sql::API_KEY_UPDATE,
            &[
                &id,
                &changes.label,
                &scopes,
                &teams,
                &orgs,
                &changes.expires_at,
            ],
        )
        .await?;
        invalidate(&tx, None, Some(&before.secure_value)).await?;
        let after = first(&tx, sql::API_KEY_BY_ID, &[&id], |r| {
            row::api_key_from_row(r)
        })
        .await?
        .ok_or(StoreError::Missing("personal API key"))?;
        tx.commit().await.map_err(map_err)?;
        Ok(after)
    }

    async fn delete_api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let Some(before) = first(&tx, sql::API_KEY_BY_ID_FOR_UPDATE, &[&id], |r| {
            row::api_key_from_row(r)
        })
        .await?
        else {
            return Ok(None);
        };
        execute(&tx, sql::API_KEY_DELETE, &[&id]).await?;
        invalidate(&tx, Some(before.user_id), Some(&before.secure_value)).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(before))
    }

    async fn roll_api_key(
        &self,
        id: &str,
        secure_value: &str,
        mask_value: &str,
        rolled_at: Micros,
    ) -> StoreResult<Option<(ApiKeyRecord, ApiKeyRecord)>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let Some(before) = first(&tx, sql::API_KEY_BY_ID_FOR_UPDATE, &[&id], |r| {
            row::api_key_from_row(r)
        })
        .await?
        else {
            return Ok(None);
        };
        execute(
            &tx,
            sql::API_KEY_ROLL,
            &[&id, &secure_value, &mask_value, &rolled_at],
        )
        .await?;
        invalidate(&tx, None, Some(&before.secure_value)).await?;
        let after = first(&tx, sql::API_KEY_BY_ID, &[&id], |r| {
            row::api_key_from_row(r)
        })
        .await?
        .ok_or(StoreError::Missing("personal API key"))?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some((before, after)))
    }

    async fn signup(
        &self,
        signup: NewSignup,
    ) -> StoreResult<(UserRecord, OrganizationRecord, TeamRecord)> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let now = system_now();
        // Serialises sign-ups so "the first user becomes staff" holds under concurrency.
        execute(&tx, "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE", &[]).await?;
        let first_user = count(&tx, sql::USER_COUNT, &[]).await? == 0;
        if signup.only_first_user && !first_user {
            return Err(StoreError::Unique(Unique::FirstUser));
        }
        let user = NewUser {
            is_staff: first_user,
            ..signup.user
        };
        let user_id = insert_user_row(&tx, &user).await?;
        let org_id = Uuid::now_v7().to_string();
        insert_organization(&tx, &org_id, &signup.organization_name, now).await?;
        let organization = first(&tx, sql::ORGANIZATION_BY_ID, &[&org_id], |r| {
            row::organization_from_row(r, 0)
        })
        .await?
        .ok_or(StoreError::Missing("organization"))?;
        let team = insert_team(&tx, organization.id, &signup.team_name, now).await?;
        insert_membership(
            &tx,
            organization.id,
            user_id,
            MembershipLevel::Owner,
            false,
            now,
        )
        .await?;
        execute(
            &tx,
            sql::USER_SET_CONTEXT,
            &[&user_id, &organization.id.to_string(), &team.id],
        )
        .await?;
        let user = first(&tx, sql::USER_BY_ID, &[&user_id], |r| {
            row::user_from_row(r, 0)
        })
        .await?
        .ok_or(StoreError::Missing("user"))?;
        tx.commit().await.map_err(map_err)?;
        Ok((user, organization, team))
    }

    async fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            sql::SESSION_INSERT,
            &[
                &s.id,
                &s.user_id,
                &s.created_at,
                &s.login_at,
                &s.expires_at,
                &s.csrf_token,
                &s.two_factor_verified,
                &s.pending_user_id,
                &s.pending_at,
                &s.totp_setup_secret,
                &s.totp_setup_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn session(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        let c = self.client().await?;
        first(&c, sql::SESSION_BY_ID, &[&id], row::session_from_row).await
    }

    async fn update_session(&self, s: &SessionRecord) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        execute(
            &tx,
            sql::SESSION_UPDATE,
            &[
                &s.id,
                &s.user_id,
                &s.login_at,
                &s.expires_at,
                &s.csrf_token,
                &s.two_factor_verified,
                &s.pending_user_id,
                &s.pending_at,
                &s.totp_setup_secret,
                &s.totp_setup_at,
            ],
        )
        .await?;
        invalidate(&tx, None, Some(&format!("session${}", s.id))).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn delete_session(&self, id: &str) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        execute(&tx, sql::SESSION_DELETE, &[&id]).await?;
        invalidate(&tx, None, Some(&format!("session${id}"))).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn delete_sessions_of(&self, user_id: i64, keep: Option<&str>) -> StoreResult<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let keep = keep.unwrap_or_default();
        let n = execute(&tx, sql::SESSIONS_DELETE_OF_USER, &[&user_id, &keep]).await?;
        invalidate(&tx, Some(user_id), None).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(n)
    }

    async fn prune_sessions(&self, now: Micros, pending_before: Micros) -> StoreResult<u64> {
        let c = self.client().await?;
        execute(&c, sql::SESSIONS_PRUNE, &[&now, &pending_before]).await
    }

    async fn prune_dead_mail(&self, before: Micros) -> StoreResult<u64> {
        let c = self.client().await?;
        execute(&c, sql::OUTBOX_PRUNE_DEAD, &[&before]).await
    }

    async fn totp_device(&self, user_id: i64) -> StoreResult<Option<TotpDeviceRecord>> {
        let c = self.client().await?;
        first(&c, sql::TOTP_BY_USER, &[&user_id], |r| {
            row::totp_from_row(r)
        })
        .await
    }

    async fn put_totp_device(&self, d: &TotpDeviceRecord) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        execute(
            &tx,
            sql::TOTP_UPSERT,
            &[
                &d.user_id,
                &d.secret,
                &d.last_step,
                &d.failures,
                &d.throttled_until,
                &d.created_at,
            ],
        )
        .await?;
        invalidate(&tx, Some(d.user_id), None).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn advance_totp_step(&self, user_id: i64, step: i64) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(execute(&c, sql::TOTP_ADVANCE, &[&user_id, &step]).await? == 1)
    }

    async fn claim_totp_attempt(
        &self,
        user_id: i64,
        now: Micros,
    ) -> StoreResult<Option<TotpDeviceRecord>> {
        let c = self.client().await?;
        first(&c, sql::TOTP_CLAIM_ATTEMPT, &[&user_id, &now], |r| {
            row::totp_from_row(r)
        })
        .await
    }

    async fn clear_totp_throttle(&self, user_id: i64) -> StoreResult<()> {
        let c = self.client().await?;
        execute(&c, sql::TOTP_CLEAR_THROTTLE, &[&user_id])
            .await
            .map(|_| ())
    }

    async fn delete_two_factor(&self, user_id: i64) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        execute(&tx, sql::TOTP_DELETE, &[&user_id]).await?;
        execute(&tx, sql::BACKUP_CODES_DELETE, &[&user_id]).await?;
        invalidate(&tx, Some(user_id), None).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn replace_backup_codes(&self, user_id: i64, hashes: &[String]) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        let now = system_now();
        execute(&tx, sql::BACKUP_CODES_DELETE, &[&user_id]).await?;
        for hash in hashes {
            execute(&tx, sql::BACKUP_CODE_INSERT, &[&user_id, hash, &now]).await?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn consume_backup_code(&self, user_id: i64, hash: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(execute(&c, sql::BACKUP_CODE_CONSUME, &[&user_id, &hash]).await? == 1)
    }

    async fn backup_code_count(&self, user_id: i64) -> StoreResult<i64> {
        let c = self.client().await?;
        count(&c, sql::BACKUP_CODE_COUNT, &[&user_id]).await
    }

    async fn signal_autonomy(&self, user_id: i64) -> StoreResult<Option<SignalAutonomyRecord>> {
        let c = self.client().await?;
        first(
            &c,
            sql::SIGNAL_AUTONOMY_BY_USER,
            &[&user_id],
            row::signal_autonomy_from_row,
        )
        .await
    }

    async fn upsert_signal_autonomy(
        &self,
        user_id: i64,
        autostart_priority: Option<Option<String>>,
        now: Micros,
    ) -> StoreResult<SignalAutonomyRecord> {
        let c = self.client().await?;
        let sent = autostart_priority.is_some();
        let priority = autostart_priority.flatten();
        first(
            &c,
            sql::SIGNAL_AUTONOMY_UPSERT,
            &[
                &Uuid::now_v7().to_string(),
                &user_id,
                &priority,
                &now,
                &sent,
            ],
            row::signal_autonomy_from_row,
        )
        .await?
        .ok_or(StoreError::Missing("signal_autonomy"))
    }

    async fn delete_signal_autonomy(&self, user_id: i64) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(execute(&c, sql::SIGNAL_AUTONOMY_DELETE, &[&user_id]).await? > 0)
    }

    async fn user_integrations(
        &self,
        user_id: i64,
        kind: &str,
    ) -> StoreResult<Vec<UserIntegrationRecord>> {
        let c = self.client().await?;
        all(
            &c,
            sql::USER_INTEGRATIONS_OF_USER,
            &[&user_id, &kind],
            row::user_integration_from_row,
        )
        .await
    }

    async fn user_integration(
        &self,
        user_id: i64,
        kind: &str,
        integration_id: &str,
    ) -> StoreResult<Option<UserIntegrationRecord>> {
        let c = self.client().await?;
        first(
            &c,
            sql::USER_INTEGRATION_BY_KEY,
            &[&user_id, &kind, &integration_id],
            row::user_integration_from_row,
        )
        .await
    }

    async fn upsert_user_integration(
        &self,
        new: NewUserIntegration,
    ) -> StoreResult<UserIntegrationRecord> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        execute(
            &tx,
            sql::USER_INTEGRATION_UPSERT,
            &[
                &Uuid::now_v7().to_string(),
                &new.user_id,
                &new.kind,
                &new.integration_id,
                &new.config.to_string(),
                &new.sensitive_config,
                &new.now,
            ],
        )
        .await?;
        let record = first(
            &tx,
            sql::USER_INTEGRATION_BY_KEY,
            &[&new.user_id, &new.kind, &new.integration_id],
            row::user_integration_from_row,
        )
        .await?
        .ok_or(StoreError::Missing("user_integration"))?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    }

    async fn update_user_integration_secrets(
        &self,
        id: Uuid,
        config: &serde_json::Value,
        sensitive_config: &str,
        now: Micros,
    ) -> StoreResult<bool> {
        let c = self.client().await?;
        let changed = execute(
            &c,
            sql::USER_INTEGRATION_SET_SECRETS,
            &[
                &id.to_string(),
                &config.to_string(),
                &sensitive_config,
                &now,
            ],
        )
        .await?;
        Ok(changed > 0)
    }

    async fn set_repository_cache(
        &self,
        id: Uuid,
        repositories: &serde_json::Value,
        synced_at: Micros,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            sql::USER_INTEGRATION_SET_REPOSITORIES,
            &[&id.to_string(), &repositories.to_string(), &synced_at],
        )
        .await?;
        Ok(())
    }

    async fn delete_user_integration(&self, id: Uuid) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(execute(&c, sql::USER_INTEGRATION_DELETE, &[&id.to_string()]).await? > 0)
    }

    async fn upsert_team_integration(
        &self,
        new: NewTeamIntegration,
    ) -> StoreResult<TeamIntegrationRecord> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        lock_team(&tx, new.team_id).await?;
        let id = first(
            &tx,
            sql::TEAM_INTEGRATION_UPSERT,
            &[
                &new.team_id,
                &new.kind,
                &new.integration_id,
                &new.config.to_string(),
                &new.created_by_id,
                &new.now,
            ],
            |r| r.i64(0),
        )
        .await?
        .ok_or(StoreError::Missing("team_integration"))?;
        let record = first(
            &tx,
            sql::TEAM_INTEGRATION_BY_ID,
            &[&id],
            row::team_integration_from_row,
        )
        .await?
        .ok_or(StoreError::Missing("team_integration"))?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    }

    async fn team_integrations_of(
        &self,
        team_ids: &[i64],
        kind: &str,
    ) -> StoreResult<Vec<TeamIntegrationRecord>> {
        let c = self.client().await?;
        let ids = team_ids.to_vec();
        all(
            &c,
            concat!(
                "SELECT ",
                sql::team_integration_columns!(),
                " FROM team_integrations ti WHERE ti.team_id = ANY($1) AND ti.kind = $2 \
                  ORDER BY ti.id"
            ),
            &[&ids, &kind],
            row::team_integration_from_row,
        )
        .await
    }

    async fn team_integrations_created_by(
        &self,
        user_id: i64,
        kind: &str,
    ) -> StoreResult<Vec<TeamIntegrationRecord>> {
        let c = self.client().await?;
        all(
            &c,
            sql::TEAM_INTEGRATIONS_CREATED_BY,
            &[&user_id, &kind],
            row::team_integration_from_row,
        )
        .await
    }

    async fn request_password_reset(
        &self,
        user_id: i64,
        requested_at: Micros,
        mail: NewMail,
    ) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(map_err)?;
        if execute(
            &tx,
            sql::USER_SET_RESET_REQUESTED,
            &[&user_id, &requested_at],
        )
        .await?
            == 0
        {
            return Err(StoreError::Missing("user"));
        }
        invalidate(&tx, Some(user_id), None).await?;
        insert_mail(&tx, &mail).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn enqueue_mail(&self, mail: NewMail) -> StoreResult<()> {
        let c = self.client().await?;
        insert_mail(&c, &mail).await
    }

    async fn outbox_status(&self, now: Micros) -> StoreResult<OutboxStatus> {
        let c = self.client().await?;
        Ok(first(&c, sql::OUTBOX_STATUS, &[&now], |r| {
            Ok(OutboxStatus {
                pending: r.i64(0)?,
                due: r.i64(1)?,
            })
        })
        .await?
        .unwrap_or_default())
    }

    async fn claim_mail(
        &self,
        now: Micros,
        lease_until: Micros,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedMail>> {
        // SKIP LOCKED: replicas claiming at the same moment take different rows instead of
        // queueing behind each other's locks (and the lease keeps them apart afterwards).
        const CLAIM: &str = concat!(
            "WITH due AS (",
            sql::outbox_due!(),
            " FOR UPDATE SKIP LOCKED) UPDATE outbox o SET attempts = o.attempts + 1, \
             locked_until = $2 FROM due WHERE o.id = due.id \
             RETURNING o.id, o.recipient, o.subject, o.body, o.attempts, o.locked_until"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.client().await?;
        let mut claimed = all(&c, CLAIM, &[&now, &lease_until, &limit], |r| {
            row::claimed_mail_from_row(r)
        })
        .await?;
        claimed.sort_by_key(|m| m.id);
        Ok(claimed)
    }

    async fn mail_delivered(&self, id: i64, lease: Micros) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(execute(&c, sql::OUTBOX_DELIVERED, &[&id, &lease]).await? == 1)
    }

    async fn mail_failed(
        &self,
        id: i64,
        lease: Micros,
        error: &str,
        failure: MailFailure,
    ) -> StoreResult<bool> {
        let (statement, at) = match failure {
            MailFailure::RetryAt(at) => (sql::OUTBOX_RETRY, at),
            MailFailure::GiveUp(at) => (sql::OUTBOX_GIVE_UP, at),
        };
        let c = self.client().await?;
        Ok(execute(&c, statement, &[&id, &lease, &at, &error]).await? == 1)
    }

    async fn invalidations_since(&self, since: Micros) -> StoreResult<Vec<InvalidationRecord>> {
        let c = self.client().await?;
        all(&c, sql::INVALIDATIONS_SINCE, &[&since], |r| {
            row::invalidation_from_row(r)
        })
        .await
    }

    async fn prune_invalidations(&self, before: Micros) -> StoreResult<()> {
        let c = self.client().await?;
        execute(&c, sql::INVALIDATIONS_PRUNE, &[&before]).await?;
        Ok(())
    }
}
