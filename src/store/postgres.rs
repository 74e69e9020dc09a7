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

use super::exec::{Exec, Param};
use super::row::{self, Row};
use super::scripts;
use super::sql::{self, ColumnValue, FilterParam, ListCount, user_columns};
use super::*;
use crate::time::Micros;

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

type PgParam<'a> = &'a (dyn ToSql + Sync);

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
    let runner = embedded::migrations::runner();
    let applied = runner
        .run_async(&mut client)
        .await
        .context("applying Postgres migrations");
    if let Ok(report) = &applied {
        super::log_migrations(report, &runner);
    }
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
            FilterParam::Pattern(v) => v.as_str().to_sql(ty, out),
            FilterParam::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty) || <bool as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: &[PgParam<'_>],
) -> StoreResult<Vec<PgRow>> {
    let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
    c.query(&stmt, params).await.map_err(map_err)
}

async fn first<T>(
    c: &impl GenericClient,
    sql: &str,
    params: &[PgParam<'_>],
    map: impl Fn(&PgRow) -> anyhow::Result<T>,
) -> StoreResult<Option<T>> {
    let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
    let row = c.query_opt(&stmt, params).await.map_err(map_err)?;
    row.as_ref().map(map).transpose().map_err(StoreError::Other)
}

async fn all<T>(
    c: &impl GenericClient,
    sql: &str,
    params: &[PgParam<'_>],
    map: impl Fn(&PgRow) -> anyhow::Result<T>,
) -> StoreResult<Vec<T>> {
    rows(c, sql, params)
        .await?
        .iter()
        .map(|r| map_row(map(r)))
        .collect()
}

async fn execute(c: &impl GenericClient, sql: &str, params: &[PgParam<'_>]) -> StoreResult<u64> {
    let stmt = c.prepare_cached(sql).await.map_err(map_err)?;
    c.execute(&stmt, params).await.map_err(map_err)
}

async fn count(c: &impl GenericClient, sql: &str, params: &[PgParam<'_>]) -> StoreResult<i64> {
    Ok(first(c, sql, params, |r| r.i64(0)).await?.unwrap_or(0))
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::I64(v) => v.to_sql(ty, out),
            Param::Text(v) => v.to_sql(ty, out),
            Param::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <Option<i64> as ToSql>::accepts(ty)
            || <Option<&str> as ToSql>::accepts(ty)
            || <Option<bool> as ToSql>::accepts(ty)
    }

    // Checked per variant, so a value of the wrong type for its column is refused instead of
    // being sent in another type's encoding.
    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::I64(v) => v.to_sql_checked(ty, out),
            Param::Text(v) => v.to_sql_checked(ty, out),
            Param::Bool(v) => v.to_sql_checked(ty, out),
        }
    }
}

/// A Postgres transaction as the shared transaction scripts ([`super::scripts`]) use it.
struct PgTransaction<'a>(&'a deadpool_postgres::Transaction<'a>);

fn pg_params<'a>(params: &'a [Param<'a>]) -> Vec<PgParam<'a>> {
    params.iter().map(|p| p as PgParam<'a>).collect()
}

impl Exec for PgTransaction<'_> {
    const BACKEND: Backend = Backend::Postgres;

    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> StoreResult<u64> {
        execute(self.0, sql, &pg_params(params)).await
    }

    async fn execute_uncached(&self, sql: &str, params: &[Param<'_>]) -> StoreResult<u64> {
        self.0
            .execute(sql, &pg_params(params))
            .await
            .map_err(map_err)
    }

    async fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        map: impl Fn(&dyn Row) -> anyhow::Result<T> + Send,
    ) -> StoreResult<Option<T>> {
        first(self.0, sql, &pg_params(params), |r| map(r)).await
    }
}

/// Runs a transaction script in a transaction of its own, committed when the script succeeds
/// (dropping an uncommitted transaction rolls it back).
macro_rules! in_transaction {
    ($store:expr, |$tx:ident| $script:expr) => {{
        let mut client = $store.client().await?;
        let transaction = client.transaction().await.map_err(map_err)?;
        let out = {
            let $tx = &PgTransaction(&transaction);
            $script.await?
        };
        transaction.commit().await.map_err(map_err)?;
        Ok(out)
    }};
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

    async fn schema_version(&self) -> StoreResult<i64> {
        let c = self.client().await?;
        first(&c, sql::SCHEMA_VERSION, &[], |r| r.i64(0))
            .await
            .map(Option::unwrap_or_default)
    }

    fn expected_schema_version(&self) -> i64 {
        static LATEST: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *LATEST.get_or_init(|| super::latest_migration(&embedded::migrations::runner()))
    }

    async fn setting_or_insert(&self, key: &str, value: &str) -> StoreResult<String> {
        in_transaction!(self, |tx| scripts::setting_or_insert(tx, key, value))
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
        in_transaction!(self, |tx| scripts::insert_user(tx, &user))
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
        let mut all_params: Vec<PgParam<'_>> = params.iter().map(|p| p as PgParam<'_>).collect();
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

    async fn write_user(&self, user_id: i64, write: &UserWrite) -> StoreResult<UserRecord> {
        in_transaction!(self, |tx| scripts::write_user(tx, user_id, write))
    }

    async fn upgrade_password_hash(
        &self,
        user_id: i64,
        from: &PasswordHash,
        to: &PasswordHash,
    ) -> StoreResult<bool> {
        in_transaction!(self, |tx| scripts::upgrade_password_hash(
            tx, user_id, from, to
        ))
    }

    async fn set_current_context(
        &self,
        user_id: i64,
        organization: Option<Uuid>,
        team: Option<i64>,
    ) -> StoreResult<()> {
        in_transaction!(self, |tx| scripts::set_current_context(
            tx,
            user_id,
            organization,
            team
        ))
    }

    async fn delete_user(&self, id: i64) -> StoreResult<UserDeletion> {
        in_transaction!(self, |tx| scripts::delete_user(tx, id))
    }

    async fn user_facts(&self, user_ids: &[i64]) -> StoreResult<Vec<UserFacts>> {
        let c = self.client().await?;
        let ids = user_ids.to_vec();
        all(&c, sql::USER_FACTS.postgres, &[&ids], |r| {
            row::user_facts_from_row(r)
        })
        .await
    }

    async fn create_organization(
        &self,
        new: NewOrganization,
    ) -> StoreResult<(OrganizationRecord, TeamRecord)> {
        in_transaction!(self, |tx| scripts::create_organization(tx, &new))
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
        in_transaction!(self, |tx| scripts::update_organization(tx, id, &changes))
    }

    async fn add_membership(
        &self,
        organization: Uuid,
        user_id: i64,
        level: MembershipLevel,
    ) -> StoreResult<MembershipRecord> {
        in_transaction!(self, |tx| scripts::add_membership(
            tx,
            organization,
            user_id,
            level
        ))
    }

    async fn remove_membership(
        &self,
        organization: Uuid,
        user_id: i64,
        log: &[NewActivity],
    ) -> StoreResult<MembershipRemoval> {
        in_transaction!(self, |tx| scripts::remove_membership(
            tx,
            organization,
            user_id,
            log
        ))
    }

    async fn create_team(&self, new: NewTeam) -> StoreResult<TeamRecord> {
        in_transaction!(self, |tx| scripts::create_team(tx, &new))
    }

    async fn team(&self, id: i64) -> StoreResult<Option<TeamRecord>> {
        let c = self.client().await?;
        first(&c, sql::TEAM_BY_ID, &[&id], row::team_from_row).await
    }

    async fn memberships_of(&self, user_ids: &[i64]) -> StoreResult<Vec<MembershipWithOrg>> {
        let c = self.client().await?;
        let ids = user_ids.to_vec();
        all(&c, sql::MEMBERSHIPS_OF_USERS.postgres, &[&ids], |r| {
            row::membership_with_org_from_row(r)
        })
        .await
    }

    async fn teams_of(&self, organizations: &[Uuid]) -> StoreResult<Vec<TeamRecord>> {
        let c = self.client().await?;
        let ids = uuid_strings(organizations);
        all(&c, sql::TEAMS_OF_ORGANIZATIONS.postgres, &[&ids], |r| {
            row::team_from_row(r)
        })
        .await
    }

    async fn member_counts(&self, organizations: &[Uuid]) -> StoreResult<Vec<(Uuid, i64)>> {
        let c = self.client().await?;
        let ids = uuid_strings(organizations);
        all(&c, sql::MEMBER_COUNTS.postgres, &[&ids], |r| {
            Ok((r.uuid(0)?, r.i64(1)?))
        })
        .await
    }

    async fn create_dashboard(&self, team_id: i64, name: &str) -> StoreResult<DashboardRecord> {
        in_transaction!(self, |tx| scripts::create_dashboard(tx, team_id, name))
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
        all(&c, sql::SCENES_OF_USERS.postgres, &[&ids], |r| {
            row::scene_from_row(r)
        })
        .await
    }

    async fn upsert_scene_personalisation(&self, scene: NewScene) -> StoreResult<()> {
        in_transaction!(self, |tx| scripts::upsert_scene_personalisation(tx, &scene))
    }

    async fn insert_api_key(
        &self,
        key: NewApiKey,
        limit: usize,
        log: &[NewActivity],
    ) -> StoreResult<ApiKeyRecord> {
        in_transaction!(self, |tx| scripts::insert_api_key(tx, &key, limit, log))
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
        in_transaction!(self, |tx| scripts::touch_api_keys(tx, used))
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

    async fn update_api_key(
        &self,
        id: &str,
        changes: ApiKeyChanges,
        log: &[NewActivity],
    ) -> StoreResult<ApiKeyRecord> {
        in_transaction!(self, |tx| scripts::update_api_key(tx, id, &changes, log))
    }

    async fn delete_api_key(
        &self,
        id: &str,
        log: &[NewActivity],
    ) -> StoreResult<Option<ApiKeyRecord>> {
        in_transaction!(self, |tx| scripts::delete_api_key(tx, id, log))
    }

    async fn roll_api_key(
        &self,
        id: &str,
        secure_value: &str,
        mask_value: &str,
        rolled_at: Micros,
        log: &[NewActivity],
    ) -> StoreResult<Option<(ApiKeyRecord, ApiKeyRecord)>> {
        in_transaction!(self, |tx| scripts::roll_api_key(
            tx,
            id,
            secure_value,
            mask_value,
            rolled_at,
            log
        ))
    }

    async fn signup(
        &self,
        signup: NewSignup,
    ) -> StoreResult<(UserRecord, OrganizationRecord, TeamRecord)> {
        in_transaction!(self, |tx| scripts::signup(tx, signup))
    }

    async fn insert_session(&self, s: &SessionRecord) -> StoreResult<()> {
        in_transaction!(self, |tx| scripts::insert_session(tx, s))
    }

    async fn session(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        let c = self.client().await?;
        first(&c, sql::SESSION_BY_ID, &[&id], row::session_from_row).await
    }

    async fn sessions_of(&self, user_id: i64, now: Micros) -> StoreResult<Vec<SessionRecord>> {
        let c = self.client().await?;
        all(
            &c,
            sql::SESSIONS_OF_USER,
            &[&user_id, &now],
            row::session_from_row,
        )
        .await
    }

    async fn update_session(&self, s: &SessionRecord) -> StoreResult<()> {
        in_transaction!(self, |tx| scripts::update_session(tx, s))
    }

    async fn touch_sessions(&self, used: &[(String, Micros)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        in_transaction!(self, |tx| scripts::touch_sessions(tx, used))
    }

    async fn delete_session(&self, id: &str, log: &[NewActivity]) -> StoreResult<bool> {
        in_transaction!(self, |tx| scripts::delete_session(tx, id, log))
    }

    async fn delete_sessions_of(
        &self,
        user_id: i64,
        keep: Option<&str>,
        log: &[NewActivity],
    ) -> StoreResult<u64> {
        in_transaction!(self, |tx| scripts::delete_sessions_of(
            tx, user_id, keep, log
        ))
    }

    async fn prune_sessions(&self, now: Micros, pending_before: Micros) -> StoreResult<u64> {
        let c = self.client().await?;
        execute(&c, sql::SESSIONS_PRUNE, &[&now, &pending_before]).await
    }

    async fn record_activity(&self, log: &[NewActivity]) -> StoreResult<()> {
        in_transaction!(self, |tx| scripts::record(tx, log))
    }

    async fn activity(&self, query: &ActivityQuery) -> StoreResult<Vec<ActivityRecord>> {
        let page = sql::ActivityPage::of(query);
        let kind = query.activity.as_deref().unwrap_or_default();
        let c = self.client().await?;
        let mut rows = all(
            &c,
            page.statement,
            &[&query.user_id, &kind, &page.cursor, &page.limit],
            row::activity_from_row,
        )
        .await?;
        page.newest_first(&mut rows);
        Ok(rows)
    }

    async fn prune_activity(&self, before: Micros) -> StoreResult<u64> {
        let c = self.client().await?;
        execute(&c, sql::ACTIVITY_PRUNE, &[&before]).await
    }

    async fn import(
        &self,
        batch: ImportBatch,
        write: bool,
        now: Micros,
    ) -> StoreResult<ImportReport> {
        in_transaction!(self, |tx| super::import::import(tx, &batch, write, now))
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
        in_transaction!(self, |tx| scripts::put_totp_device(tx, d))
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
        in_transaction!(self, |tx| scripts::delete_two_factor(tx, user_id))
    }

    async fn replace_backup_codes(&self, user_id: i64, hashes: &[String]) -> StoreResult<()> {
        in_transaction!(self, |tx| scripts::replace_backup_codes(
            tx, user_id, hashes
        ))
    }

    async fn consume_backup_code(
        &self,
        user_id: i64,
        hash: &str,
        log: &[NewActivity],
    ) -> StoreResult<bool> {
        in_transaction!(self, |tx| scripts::consume_backup_code(
            tx, user_id, hash, log
        ))
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
        log: &[NewActivity],
    ) -> StoreResult<UserIntegrationRecord> {
        in_transaction!(self, |tx| scripts::upsert_user_integration(tx, &new, log))
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

    async fn delete_user_integration(&self, id: Uuid, log: &[NewActivity]) -> StoreResult<bool> {
        let id = id.to_string();
        in_transaction!(self, |tx| scripts::delete_user_integration(tx, &id, log))
    }

    async fn upsert_team_integration(
        &self,
        new: NewTeamIntegration,
    ) -> StoreResult<TeamIntegrationRecord> {
        in_transaction!(self, |tx| scripts::upsert_team_integration(tx, &new))
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
            sql::TEAM_INTEGRATIONS_OF_TEAMS.postgres,
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
        log: &[NewActivity],
    ) -> StoreResult<()> {
        in_transaction!(self, |tx| scripts::request_password_reset(
            tx,
            user_id,
            requested_at,
            &mail,
            log
        ))
    }

    async fn enqueue_mail(&self, mail: NewMail) -> StoreResult<()> {
        in_transaction!(self, |tx| scripts::enqueue_mail(tx, &mail))
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
