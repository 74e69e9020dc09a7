//! Embedded SQLite backend (rusqlite, bundled SQLite).
//!
//! Short reads run directly on the calling async worker with one of a few read connections: a
//! thread hop costs more than the query (see `design/hot-path.md`). Reads that may scan use their
//! own connections on the blocking pool. Writes go to one writer thread that owns the writer
//! connection: it takes every write queued at that moment into one `BEGIN IMMEDIATE` transaction,
//! each in its own savepoint (a failing write rolls back alone), and commits them with one sync
//! — group commit, so concurrent writers share an fsync instead of queueing for one each. Admin
//! commands in other processes wait on the busy timeout instead of failing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::config::DbConfig;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use uuid::Uuid;

use super::exec::{Exec, Param};
use super::row::{self, Row};
use super::scripts;
use super::sql::{self, ColumnValue, FilterParam, ListCount, user_columns};
use super::*;
use crate::metrics::WriterStats;
use crate::time::Micros;

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// The latest schema version this binary's SQLite migrations reach (refinery's
/// `refinery_schema_history.version`): a database at a higher one was made by a newer hoglet.
pub fn latest_schema_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Connections for short reads on the async workers (one per worker is enough).
const MIN_READERS: usize = 2;
/// Connections for reads that may scan, used from the blocking pool.
const SCAN_READERS: usize = 2;
/// Writes committed together at most.
const MAX_GROUP: usize = 64;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_CACHE: usize = 128;

/// A write's result, type-erased while it crosses the writer thread.
type Value = Box<dyn std::any::Any + Send>;

/// A write's statements.
type Run = Box<dyn FnOnce(&Connection) -> StoreResult<Value> + Send>;
/// Where a write's result goes once the group holding it committed.
type Reply = Box<dyn FnOnce(StoreResult<Value>) + Send>;

struct Job {
    run: Run,
    reply: Reply,
}

pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    readers: Pool,
    scanners: Pool,
    writes: mpsc::Sender<Job>,
    stats: WriterStats,
}

/// A few connections taken without blocking when one is free.
struct Pool {
    connections: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Pool {
    fn open(path: &Path, size: usize) -> anyhow::Result<Self> {
        Ok(Self {
            connections: (0..size)
                .map(|_| open_connection(path, true).map(Mutex::new))
                .collect::<anyhow::Result<Vec<_>>>()?,
            next: AtomicUsize::new(0),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> anyhow::Result<T>) -> StoreResult<T> {
        // Start at a rotating index and take the first free connection; short reads never await
        // while holding one, so all are busy only when every worker thread is mid-query.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.connections.len();
        let guard = (0..n)
            .find_map(|i| self.connections[(start + i) % n].try_lock())
            .unwrap_or_else(|| self.connections[start % n].lock());
        f(&guard).map_err(map_anyhow)
    }
}

impl SqliteStore {
    /// Opens the database file (creating it and its WAL), then applies pending migrations.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .context("opening SQLite")?
    }

    fn open_blocking(path: PathBuf) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
        let mut writer = open_connection(&path, false)?;
        // WAL is a property of the file: set once, every later connection inherits it.
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "SQLite refused WAL mode (got {mode})"
        );
        let runner = embedded::migrations::runner();
        let report = runner
            .run(&mut writer)
            .context("applying SQLite migrations")?;
        super::log_migrations(&report, &runner);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let readers = Pool::open(&path, workers.max(MIN_READERS))?;
        let scanners = Pool::open(&path, SCAN_READERS)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let stats = WriterStats::default();
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("hoglet-sqlite-writer".into())
            .spawn(move || run_writer(writer, rx, &writer_stats))
            .context("starting the SQLite writer thread")?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                readers,
                scanners,
                writes: tx,
                stats,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs a short read on the current thread.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> anyhow::Result<T>) -> StoreResult<T> {
        self.inner.readers.read(f)
    }

    /// Runs a read that may scan many rows on the blocking pool, off the async workers.
    async fn read_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.scanners.read(f))
            .await
            .map_err(|e| StoreError::Other(e.into()))?
    }

    /// Runs `f` on the writer thread, inside the next group transaction.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, answer) = tokio::sync::oneshot::channel::<StoreResult<T>>();
        let job = Job {
            run: Box::new(move |conn| f(conn).map(|value| Box::new(value) as Value)),
            reply: Box::new(move |result| {
                let typed = result.and_then(|value| {
                    value.downcast::<T>().map(|value| *value).map_err(|_| {
                        StoreError::Other(anyhow::anyhow!("write result of another type"))
                    })
                });
                let _ = reply.send(typed);
            }),
        };
        let stopped = || StoreError::Unavailable(anyhow::anyhow!("the SQLite writer stopped"));
        self.inner.stats.queue_depth.inc();
        self.inner.writes.send(job).map_err(|_| {
            self.inner.stats.queue_depth.dec();
            stopped()
        })?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Takes a group's writes off the queue-depth gauge when the group is done, however it ends.
struct QueueRelease<'a>(&'a prometheus_client::metrics::gauge::Gauge, i64);

impl Drop for QueueRelease<'_> {
    fn drop(&mut self) {
        self.0.dec_by(self.1);
    }
}

/// The writer thread: group commit of everything queued, one savepoint per write.
fn run_writer(mut conn: Connection, jobs: mpsc::Receiver<Job>, stats: &WriterStats) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Counted when taken: the gauge is what waits or runs in this group.
        stats.group_size.observe(batch.len() as f64);
        let _taken = QueueRelease(&stats.queue_depth, batch.len() as i64);
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let e = map_err(e);
                for job in batch {
                    (job.reply)(Err(same_error(&e, "")));
                }
                continue;
            }
        };
        let mut done: Vec<(Reply, Value)> = Vec::new();
        for job in batch {
            let mut savepoint = match tx.savepoint() {
                Ok(savepoint) => savepoint,
                Err(e) => {
                    (job.reply)(Err(map_err(e)));
                    continue;
                }
            };
            match (job.run)(&savepoint) {
                Ok(value) => match savepoint.commit() {
                    Ok(()) => done.push((job.reply, value)),
                    Err(e) => (job.reply)(Err(map_err(e))),
                },
                Err(e) => {
                    let _ = savepoint.rollback();
                    (job.reply)(Err(e));
                }
            }
        }
        match tx.commit() {
            Ok(()) => {
                for (reply, value) in done {
                    reply(Ok(value));
                }
            }
            Err(e) => {
                let e = map_err(e);
                for (reply, _) in done {
                    reply(Err(same_error(&e, "commit failed: ")));
                }
            }
        }
    }
}

fn open_connection(path: &Path, read_only: bool) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("opening SQLite database {}", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Query planner stability: with STAT4, re-binding `LIMIT ?` would re-prepare the statement
    // on every execution; keep the first plan instead.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // FULL: a commit is on disk before it is acknowledged, even across power loss. No mmap: each
    // connection's mapping counted the database's pages again in RSS (322 MiB peak at 1M users
    // against 60 MiB with reads through the OS page cache, for ~25 % more CPU per email lookup).
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;
         PRAGMA mmap_size = 0;
         PRAGMA cache_size = -8000;",
    )?;
    if read_only {
        conn.execute_batch("PRAGMA query_only = ON;")?;
    }
    Ok(conn)
}

/// Only a database that does not answer is `Unavailable` (a 503 worth retrying): locked past the
/// busy timeout, not openable, or failing I/O. Anything else (constraints, a full disk, a
/// read-only file, a bad statement or parameter) is `Other`, a 500 with its cause logged.
fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    if let rusqlite::Error::SqliteFailure(failure, message) = &e {
        match failure.code {
            ErrorCode::ConstraintViolation
                if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                return StoreError::Unique(sql::unique_target(
                    message.as_deref().unwrap_or_default(),
                ));
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure => return StoreError::Unavailable(e.into()),
            _ => {}
        }
    }
    StoreError::Other(e.into())
}

/// The same failure again, for each write of a group that one failure (to begin or to commit
/// the group's transaction) ended; the kind is kept so a 500 stays a 500.
fn same_error(e: &StoreError, context: &str) -> StoreError {
    match e {
        StoreError::Unavailable(cause) => {
            StoreError::Unavailable(anyhow::anyhow!("{context}{cause:#}"))
        }
        StoreError::Unique(target) => StoreError::Unique(*target),
        StoreError::Missing(what) => StoreError::Missing(what),
        StoreError::Limit(n) => StoreError::Limit(*n),
        StoreError::Other(cause) => StoreError::Other(anyhow::anyhow!("{context}{cause:#}")),
    }
}

fn map_anyhow(e: anyhow::Error) -> StoreError {
    match e.downcast::<rusqlite::Error>() {
        Ok(e) => map_err(e),
        Err(e) => match e.downcast::<StoreError>() {
            Ok(e) => e,
            Err(e) => StoreError::Other(e),
        },
    }
}

impl rusqlite::ToSql for ColumnValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            ColumnValue::Text(v) => v.to_sql(),
            ColumnValue::Int(v) => v.to_sql(),
            ColumnValue::Bool(v) => v.to_sql(),
        }
    }
}

impl rusqlite::ToSql for FilterParam<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            FilterParam::Int(v) => v.to_sql(),
            FilterParam::Text(v) => v.to_sql(),
            FilterParam::Pattern(v) => v.as_str().to_sql(),
            FilterParam::Bool(v) => v.to_sql(),
        }
    }
}

/// The shared SQL numbers parameters `$N`; SQLite reads `$N` as a *named* parameter numbered by
/// first appearance, so it gets the positional `?N` form instead.
fn positional(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains('$') {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn prepare<'c>(conn: &'c Connection, sql: &str) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    conn.prepare_cached(&positional(sql))
}

fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<usize> {
    prepare(conn, sql)
        .and_then(|mut s| s.execute(params))
        .map_err(map_err)
}

/// Collects every row of a prepared query through a mapper.
fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&rusqlite::Row<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let mut stmt = prepare(conn, sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(map(r)?);
    }
    Ok(out)
}

fn first<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl Fn(&rusqlite::Row<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    let mut stmt = prepare(conn, sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(map).transpose()
}

fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> anyhow::Result<i64> {
    Ok(prepare(conn, sql)?.query_row(params, |r| r.get(0))?)
}

/// Ids as the JSON array `json_each` expands.
fn id_list<T: serde::Serialize>(ids: &[T]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".into())
}

/// Runs a transaction script on the writer thread. Every step of a script on SQLite completes
/// at once (rusqlite is synchronous), so one poll finishes it: no executor, no thread hop.
fn run_now<T>(script: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
    let mut script = std::pin::pin!(script);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match script.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => Err(StoreError::Other(anyhow::anyhow!(
            "a SQLite transaction script waited on something other than SQLite"
        ))),
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Param::Null => ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Param::I64(v) => ToSqlOutput::from(v),
            Param::Text(v) => ToSqlOutput::from(v),
            Param::Bool(v) => ToSqlOutput::from(v),
        })
    }
}

impl Exec for Connection {
    const BACKEND: Backend = Backend::Sqlite;

    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> StoreResult<u64> {
        prepare(self, sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
            .map(|n| n as u64)
            .map_err(map_err)
    }

    async fn execute_uncached(&self, sql: &str, params: &[Param<'_>]) -> StoreResult<u64> {
        self.prepare(&positional(sql))
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(params)))
            .map(|n| n as u64)
            .map_err(map_err)
    }

    async fn query_opt<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        map: impl Fn(&dyn Row) -> anyhow::Result<T> + Send,
    ) -> StoreResult<Option<T>> {
        first(self, sql, rusqlite::params_from_iter(params), |r| map(r)).map_err(map_anyhow)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(prepare(c, sql::PING)?.query_row([], |_| Ok(()))?))
    }

    async fn schema_version(&self) -> StoreResult<i64> {
        self.read(|c| Ok(prepare(c, sql::SCHEMA_VERSION)?.query_row([], |r| r.get(0))?))
    }

    fn writer_stats(&self) -> Option<WriterStats> {
        Some(self.inner.stats.clone())
    }

    fn expected_schema_version(&self) -> i64 {
        static LATEST: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *LATEST.get_or_init(|| super::latest_migration(&embedded::migrations::runner()))
    }

    async fn setting_or_insert(&self, key: &str, value: &str) -> StoreResult<String> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |tx| run_now(scripts::setting_or_insert(tx, &key, &value)))
            .await
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.read(|c| first(c, sql::SETTING_GET, [key], |r| r.text(0)))
    }

    async fn delete_setting(&self, key: &str, value: &str) -> StoreResult<bool> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |tx| Ok(exec(tx, sql::SETTING_DELETE, params![key, value])? > 0))
            .await
    }

    async fn insert_user(&self, user: NewUser) -> StoreResult<UserRecord> {
        self.write(move |tx| run_now(scripts::insert_user(tx, &user)))
            .await
    }

    async fn user_by_id(&self, id: i64) -> StoreResult<Option<UserRecord>> {
        self.read(|c| first(c, sql::USER_BY_ID, [id], |r| row::user_from_row(r, 0)))
    }

    async fn user_by_uuid(&self, uuid: Uuid) -> StoreResult<Option<UserRecord>> {
        self.read(|c| {
            first(c, sql::USER_BY_UUID, [uuid.to_string()], |r| {
                row::user_from_row(r, 0)
            })
        })
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        let key = sql::email_key(email);
        self.read(|c| first(c, sql::USER_BY_EMAIL, [key], |r| row::user_from_row(r, 0)))
    }

    async fn list_users(&self, query: &UserQuery) -> StoreResult<UserPage> {
        fn page(c: &Connection, query: &UserQuery) -> anyhow::Result<UserPage> {
            let (filter, params) = sql::user_list_filter(query);
            let n = params.len();
            let page_sql = format!(
                "SELECT {} FROM users u {filter} ORDER BY u.id LIMIT ${} OFFSET ${}",
                user_columns!(),
                n + 1,
                n + 2
            );
            let mut all: Vec<&dyn rusqlite::ToSql> =
                params.iter().map(|p| p as &dyn rusqlite::ToSql).collect();
            all.push(&query.limit);
            all.push(&query.offset);
            let users = collect(c, &page_sql, all.as_slice(), |r| row::user_from_row(r, 0))?;
            let count = match sql::user_list_count(query, users.len()) {
                ListCount::Known(known) => known,
                ListCount::Counter(counter) => count(c, counter, [])?,
                ListCount::Filtered => count(
                    c,
                    &format!("SELECT count(*) FROM users u {filter}"),
                    rusqlite::params_from_iter(params.iter()),
                )?,
            };
            Ok(UserPage { count, users })
        }
        // A page near the start is a short indexed read; a deep offset scans, so it leaves the
        // async workers.
        if query.offset <= 10_000 && query.limit <= 1000 {
            return self.read(|c| page(c, query));
        }
        let query = query.clone();
        self.read_blocking(move |c| page(c, &query)).await
    }

    async fn count_users(&self) -> StoreResult<i64> {
        self.read(|c| count(c, sql::USER_COUNT, []))
    }

    async fn write_user(&self, user_id: i64, write: &UserWrite) -> StoreResult<UserRecord> {
        let write = write.clone();
        self.write(move |tx| run_now(scripts::write_user(tx, user_id, &write)))
            .await
    }

    async fn upgrade_password_hash(
        &self,
        user_id: i64,
        from: &PasswordHash,
        to: &PasswordHash,
    ) -> StoreResult<bool> {
        let (from, to) = (from.clone(), to.clone());
        self.write(move |tx| run_now(scripts::upgrade_password_hash(tx, user_id, &from, &to)))
            .await
    }

    async fn set_current_context(
        &self,
        user_id: i64,
        organization: Option<Uuid>,
        team: Option<i64>,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            run_now(scripts::set_current_context(
                tx,
                user_id,
                organization,
                team,
            ))
        })
        .await
    }

    async fn delete_user(&self, id: i64) -> StoreResult<UserDeletion> {
        self.write(move |tx| run_now(scripts::delete_user(tx, id)))
            .await
    }

    async fn user_facts(&self, user_ids: &[i64]) -> StoreResult<Vec<UserFacts>> {
        let ids = id_list(user_ids);
        self.read(|c| {
            collect(c, sql::USER_FACTS.sqlite, [ids], |r| {
                row::user_facts_from_row(r)
            })
        })
    }

    async fn create_organization(
        &self,
        new: NewOrganization,
    ) -> StoreResult<(OrganizationRecord, TeamRecord)> {
        self.write(move |tx| run_now(scripts::create_organization(tx, &new)))
            .await
    }

    async fn organization(&self, id: Uuid) -> StoreResult<Option<OrganizationRecord>> {
        self.read(|c| {
            first(c, sql::ORGANIZATION_BY_ID, [id.to_string()], |r| {
                row::organization_from_row(r, 0)
            })
        })
    }

    async fn update_organization(
        &self,
        id: Uuid,
        changes: OrganizationChanges,
    ) -> StoreResult<Option<OrganizationRecord>> {
        self.write(move |tx| run_now(scripts::update_organization(tx, id, &changes)))
            .await
    }

    async fn add_membership(
        &self,
        organization: Uuid,
        user_id: i64,
        level: MembershipLevel,
    ) -> StoreResult<MembershipRecord> {
        self.write(move |tx| run_now(scripts::add_membership(tx, organization, user_id, level)))
            .await
    }

    async fn remove_membership(
        &self,
        organization: Uuid,
        user_id: i64,
        log: &[NewActivity],
    ) -> StoreResult<MembershipRemoval> {
        let log = log.to_vec();
        self.write(move |tx| run_now(scripts::remove_membership(tx, organization, user_id, &log)))
            .await
    }

    async fn create_team(&self, new: NewTeam) -> StoreResult<TeamRecord> {
        self.write(move |tx| run_now(scripts::create_team(tx, &new)))
            .await
    }

    async fn team(&self, id: i64) -> StoreResult<Option<TeamRecord>> {
        self.read(|c| first(c, sql::TEAM_BY_ID, [id], |r| row::team_from_row(r)))
    }

    async fn memberships_of(&self, user_ids: &[i64]) -> StoreResult<Vec<MembershipWithOrg>> {
        let ids = id_list(user_ids);
        self.read(|c| {
            collect(c, sql::MEMBERSHIPS_OF_USERS.sqlite, [ids], |r| {
                row::membership_with_org_from_row(r)
            })
        })
    }

    async fn teams_of(&self, organizations: &[Uuid]) -> StoreResult<Vec<TeamRecord>> {
        let ids = id_list(organizations);
        self.read(|c| {
            collect(c, sql::TEAMS_OF_ORGANIZATIONS.sqlite, [ids], |r| {
                row::team_from_row(r)
            })
        })
    }

    async fn member_counts(&self, organizations: &[Uuid]) -> StoreResult<Vec<(Uuid, i64)>> {
        let ids = id_list(organizations);
        self.read(|c| {
            collect(c, sql::MEMBER_COUNTS.sqlite, [ids], |r| {
                Ok((r.uuid(0)?, r.i64(1)?))
            })
        })
    }

    async fn create_dashboard(&self, team_id: i64, name: &str) -> StoreResult<DashboardRecord> {
        let name = name.to_string();
        self.write(move |tx| run_now(scripts::create_dashboard(tx, team_id, &name)))
            .await
    }

    async fn dashboard(&self, id: i64) -> StoreResult<Option<DashboardRecord>> {
        self.read(|c| {
            first(c, sql::DASHBOARD_BY_ID, [id], |r| {
                row::dashboard_from_row(r)
            })
        })
    }

    async fn scene_personalisations_of(&self, user_ids: &[i64]) -> StoreResult<Vec<SceneRecord>> {
        let ids = id_list(user_ids);
        self.read(|c| {
            collect(c, sql::SCENES_OF_USERS.sqlite, [ids], |r| {
                row::scene_from_row(r)
            })
        })
    }

    async fn upsert_scene_personalisation(&self, scene: NewScene) -> StoreResult<()> {
        self.write(move |tx| run_now(scripts::upsert_scene_personalisation(tx, &scene)))
            .await
    }

    async fn insert_api_key(
        &self,
        key: NewApiKey,
        limit: usize,
        log: &[NewActivity],
    ) -> StoreResult<ApiKeyRecord> {
        let log = log.to_vec();
        self.write(move |tx| run_now(scripts::insert_api_key(tx, &key, limit, &log)))
            .await
    }

    async fn api_key_by_secure_value(
        &self,
        secure_value: &str,
    ) -> StoreResult<Option<ApiKeyRecord>> {
        self.read(|c| {
            first(c, sql::API_KEY_BY_SECURE_VALUE, [secure_value], |r| {
                row::api_key_from_row(r)
            })
        })
    }

    async fn has_legacy_api_keys(&self) -> StoreResult<bool> {
        self.read(|c| Ok(count(c, sql::API_KEY_HAS_LEGACY, [])? > 0))
    }

    async fn legacy_api_keys(&self, prefix: &str) -> StoreResult<Vec<ApiKeyRecord>> {
        self.read(|c| {
            collect(c, sql::API_KEY_LEGACY_BY_PREFIX, [prefix], |r| {
                row::api_key_from_row(r)
            })
        })
    }

    async fn upgrade_api_key_hash(&self, id: &str, secure_value: &str) -> StoreResult<()> {
        let (id, secure_value) = (id.to_string(), secure_value.to_string());
        self.write(move |tx| {
            exec(tx, sql::API_KEY_SET_SECURE_VALUE, params![id, secure_value])?;
            Ok(())
        })
        .await
    }

    async fn touch_api_keys(&self, used: &[(String, Micros)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        self.write(move |tx| run_now(scripts::touch_api_keys(tx, &used)))
            .await
    }

    async fn api_keys_of(&self, user_id: i64) -> StoreResult<Vec<ApiKeyRecord>> {
        self.read(|c| {
            collect(c, sql::API_KEYS_OF_USER, [user_id], |r| {
                row::api_key_from_row(r)
            })
        })
    }

    async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>> {
        self.read(|c| first(c, sql::API_KEY_BY_ID, [id], |r| row::api_key_from_row(r)))
    }

    async fn update_api_key(
        &self,
        id: &str,
        changes: ApiKeyChanges,
        log: &[NewActivity],
    ) -> StoreResult<ApiKeyRecord> {
        let (id, log) = (id.to_string(), log.to_vec());
        self.write(move |tx| run_now(scripts::update_api_key(tx, &id, &changes, &log)))
            .await
    }

    async fn delete_api_key(
        &self,
        id: &str,
        log: &[NewActivity],
    ) -> StoreResult<Option<ApiKeyRecord>> {
        let (id, log) = (id.to_string(), log.to_vec());
        self.write(move |tx| run_now(scripts::delete_api_key(tx, &id, &log)))
            .await
    }

    async fn roll_api_key(
        &self,
        id: &str,
        secure_value: &str,
        mask_value: &str,
        rolled_at: Micros,
        log: &[NewActivity],
    ) -> StoreResult<Option<(ApiKeyRecord, ApiKeyRecord)>> {
        let (id, secure_value, mask_value, log) = (
            id.to_string(),
            secure_value.to_string(),
            mask_value.to_string(),
            log.to_vec(),
        );
        self.write(move |tx| {
            run_now(scripts::roll_api_key(
                tx,
                &id,
                &secure_value,
                &mask_value,
                rolled_at,
                &log,
            ))
        })
        .await
    }

    async fn signup(
        &self,
        signup: NewSignup,
    ) -> StoreResult<(UserRecord, OrganizationRecord, TeamRecord)> {
        self.write(move |tx| run_now(scripts::signup(tx, signup)))
            .await
    }

    async fn insert_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let s = session.clone();
        self.write(move |tx| run_now(scripts::insert_session(tx, &s)))
            .await
    }

    async fn session(&self, id: &str) -> StoreResult<Option<SessionRecord>> {
        self.read(|c| first(c, sql::SESSION_BY_ID, [id], |r| row::session_from_row(r)))
    }

    async fn sessions_of(&self, user_id: i64, now: Micros) -> StoreResult<Vec<SessionRecord>> {
        self.read(|c| {
            collect(c, sql::SESSIONS_OF_USER, params![user_id, now], |r| {
                row::session_from_row(r)
            })
        })
    }

    async fn update_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let session = session.clone();
        self.write(move |tx| run_now(scripts::update_session(tx, &session)))
            .await
    }

    async fn touch_sessions(&self, used: &[(String, Micros)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        self.write(move |tx| run_now(scripts::touch_sessions(tx, &used)))
            .await
    }

    async fn delete_session(&self, id: &str, log: &[NewActivity]) -> StoreResult<bool> {
        let (id, log) = (id.to_string(), log.to_vec());
        self.write(move |tx| run_now(scripts::delete_session(tx, &id, &log)))
            .await
    }

    async fn delete_sessions_of(
        &self,
        user_id: i64,
        keep: Option<&str>,
        log: &[NewActivity],
    ) -> StoreResult<u64> {
        let (keep, log) = (keep.map(str::to_string), log.to_vec());
        self.write(move |tx| {
            run_now(scripts::delete_sessions_of(
                tx,
                user_id,
                keep.as_deref(),
                &log,
            ))
        })
        .await
    }

    async fn prune_sessions(&self, now: Micros, pending_before: Micros) -> StoreResult<u64> {
        self.write(move |tx| {
            exec(tx, sql::SESSIONS_PRUNE, params![now, pending_before]).map(|n| n as u64)
        })
        .await
    }

    async fn record_activity(&self, log: &[NewActivity]) -> StoreResult<()> {
        let log = log.to_vec();
        self.write(move |tx| run_now(scripts::record(tx, &log)))
            .await
    }

    async fn activity(&self, query: &ActivityQuery) -> StoreResult<Vec<ActivityRecord>> {
        let page = sql::ActivityPage::of(query);
        let kind = query.activity.as_deref().unwrap_or_default();
        let mut rows = self.read(|c| {
            collect(
                c,
                page.statement,
                params![query.user_id, kind, page.cursor, page.limit],
                |r| row::activity_from_row(r),
            )
        })?;
        page.newest_first(&mut rows);
        Ok(rows)
    }

    async fn prune_activity(&self, before: Micros) -> StoreResult<u64> {
        self.write(move |tx| exec(tx, sql::ACTIVITY_PRUNE, params![before]).map(|n| n as u64))
            .await
    }

    async fn import(
        &self,
        batch: ImportBatch,
        write: bool,
        now: Micros,
    ) -> StoreResult<ImportReport> {
        self.write(move |tx| run_now(super::import::import(tx, &batch, write, now)))
            .await
    }

    async fn prune_dead_mail(&self, before: Micros) -> StoreResult<u64> {
        self.write(move |tx| exec(tx, sql::OUTBOX_PRUNE_DEAD, params![before]).map(|n| n as u64))
            .await
    }

    async fn totp_device(&self, user_id: i64) -> StoreResult<Option<TotpDeviceRecord>> {
        self.read(|c| first(c, sql::TOTP_BY_USER, [user_id], |r| row::totp_from_row(r)))
    }

    async fn put_totp_device(&self, device: &TotpDeviceRecord) -> StoreResult<()> {
        let device = device.clone();
        self.write(move |tx| run_now(scripts::put_totp_device(tx, &device)))
            .await
    }

    async fn advance_totp_step(&self, user_id: i64, step: i64) -> StoreResult<bool> {
        self.write(move |tx| Ok(exec(tx, sql::TOTP_ADVANCE, params![user_id, step])? == 1))
            .await
    }

    async fn claim_totp_attempt(
        &self,
        user_id: i64,
        now: Micros,
    ) -> StoreResult<Option<TotpDeviceRecord>> {
        self.write(move |tx| {
            first(tx, sql::TOTP_CLAIM_ATTEMPT, params![user_id, now], |r| {
                row::totp_from_row(r)
            })
            .map_err(map_anyhow)
        })
        .await
    }

    async fn clear_totp_throttle(&self, user_id: i64) -> StoreResult<()> {
        self.write(move |tx| exec(tx, sql::TOTP_CLEAR_THROTTLE, [user_id]).map(|_| ()))
            .await
    }

    async fn delete_two_factor(&self, user_id: i64) -> StoreResult<()> {
        self.write(move |tx| run_now(scripts::delete_two_factor(tx, user_id)))
            .await
    }

    async fn replace_backup_codes(&self, user_id: i64, hashes: &[String]) -> StoreResult<()> {
        let hashes = hashes.to_vec();
        self.write(move |tx| run_now(scripts::replace_backup_codes(tx, user_id, &hashes)))
            .await
    }

    async fn consume_backup_code(
        &self,
        user_id: i64,
        hash: &str,
        log: &[NewActivity],
    ) -> StoreResult<bool> {
        let (hash, log) = (hash.to_string(), log.to_vec());
        self.write(move |tx| run_now(scripts::consume_backup_code(tx, user_id, &hash, &log)))
            .await
    }

    async fn backup_code_count(&self, user_id: i64) -> StoreResult<i64> {
        self.read(|c| count(c, sql::BACKUP_CODE_COUNT, [user_id]))
    }

    async fn signal_autonomy(&self, user_id: i64) -> StoreResult<Option<SignalAutonomyRecord>> {
        self.read(|c| {
            first(c, sql::SIGNAL_AUTONOMY_BY_USER, [user_id], |r| {
                row::signal_autonomy_from_row(r)
            })
        })
    }

    async fn upsert_signal_autonomy(
        &self,
        user_id: i64,
        autostart_priority: Option<Option<String>>,
        now: Micros,
    ) -> StoreResult<SignalAutonomyRecord> {
        self.write(move |tx| {
            let sent = autostart_priority.is_some();
            let priority = autostart_priority.flatten();
            first(
                tx,
                sql::SIGNAL_AUTONOMY_UPSERT,
                params![Uuid::now_v7().to_string(), user_id, priority, now, sent],
                |r| row::signal_autonomy_from_row(r),
            )
            .map_err(map_anyhow)?
            .ok_or(StoreError::Missing("signal_autonomy"))
        })
        .await
    }

    async fn delete_signal_autonomy(&self, user_id: i64) -> StoreResult<bool> {
        self.write(move |tx| Ok(exec(tx, sql::SIGNAL_AUTONOMY_DELETE, [user_id])? > 0))
            .await
    }

    async fn user_integrations(
        &self,
        user_id: i64,
        kind: &str,
    ) -> StoreResult<Vec<UserIntegrationRecord>> {
        self.read(|c| {
            collect(
                c,
                sql::USER_INTEGRATIONS_OF_USER,
                params![user_id, kind],
                |r| row::user_integration_from_row(r),
            )
        })
    }

    async fn user_integration(
        &self,
        user_id: i64,
        kind: &str,
        integration_id: &str,
    ) -> StoreResult<Option<UserIntegrationRecord>> {
        self.read(|c| {
            first(
                c,
                sql::USER_INTEGRATION_BY_KEY,
                params![user_id, kind, integration_id],
                |r| row::user_integration_from_row(r),
            )
        })
    }

    async fn upsert_user_integration(
        &self,
        new: NewUserIntegration,
        log: &[NewActivity],
    ) -> StoreResult<UserIntegrationRecord> {
        let log = log.to_vec();
        self.write(move |tx| run_now(scripts::upsert_user_integration(tx, &new, &log)))
            .await
    }

    async fn update_user_integration_secrets(
        &self,
        id: Uuid,
        config: &serde_json::Value,
        sensitive_config: &str,
        now: Micros,
    ) -> StoreResult<bool> {
        let (config, sensitive) = (config.to_string(), sensitive_config.to_string());
        self.write(move |tx| {
            let changed = exec(
                tx,
                sql::USER_INTEGRATION_SET_SECRETS,
                params![id.to_string(), config, sensitive, now],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    async fn set_repository_cache(
        &self,
        id: Uuid,
        repositories: &serde_json::Value,
        synced_at: Micros,
    ) -> StoreResult<()> {
        let repositories = repositories.to_string();
        self.write(move |tx| {
            exec(
                tx,
                sql::USER_INTEGRATION_SET_REPOSITORIES,
                params![id.to_string(), repositories, synced_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_user_integration(&self, id: Uuid, log: &[NewActivity]) -> StoreResult<bool> {
        let (id, log) = (id.to_string(), log.to_vec());
        self.write(move |tx| run_now(scripts::delete_user_integration(tx, &id, &log)))
            .await
    }

    async fn upsert_team_integration(
        &self,
        new: NewTeamIntegration,
    ) -> StoreResult<TeamIntegrationRecord> {
        self.write(move |tx| run_now(scripts::upsert_team_integration(tx, &new)))
            .await
    }

    async fn team_integrations_of(
        &self,
        team_ids: &[i64],
        kind: &str,
    ) -> StoreResult<Vec<TeamIntegrationRecord>> {
        let ids = id_list(team_ids);
        self.read(|c| {
            collect(
                c,
                sql::TEAM_INTEGRATIONS_OF_TEAMS.sqlite,
                params![ids, kind],
                |r| row::team_integration_from_row(r),
            )
        })
    }

    async fn team_integrations_created_by(
        &self,
        user_id: i64,
        kind: &str,
    ) -> StoreResult<Vec<TeamIntegrationRecord>> {
        self.read(|c| {
            collect(
                c,
                sql::TEAM_INTEGRATIONS_CREATED_BY,
                params![user_id, kind],
                |r| row::team_integration_from_row(r),
            )
        })
    }

    async fn request_password_reset(
        &self,
        user_id: i64,
        requested_at: Micros,
        mail: NewMail,
        log: &[NewActivity],
    ) -> StoreResult<()> {
        let log = log.to_vec();
        self.write(move |tx| {
            run_now(scripts::request_password_reset(
                tx,
                user_id,
                requested_at,
                &mail,
                &log,
            ))
        })
        .await
    }

    async fn enqueue_mail(&self, mail: NewMail) -> StoreResult<()> {
        self.write(move |tx| run_now(scripts::enqueue_mail(tx, &mail)))
            .await
    }

    async fn outbox_status(&self, now: Micros) -> StoreResult<OutboxStatus> {
        self.read(|c| {
            Ok(prepare(c, sql::OUTBOX_STATUS)?.query_row([now], |r| {
                Ok(OutboxStatus {
                    pending: r.get(0)?,
                    due: r.get(1)?,
                })
            })?)
        })
    }

    async fn claim_mail(
        &self,
        now: Micros,
        lease_until: Micros,
        limit: usize,
    ) -> StoreResult<Vec<ClaimedMail>> {
        // One writer at a time: the UPDATE claims atomically without row locks.
        const CLAIM: &str = concat!(
            "UPDATE outbox SET attempts = attempts + 1, locked_until = $2 WHERE id IN (",
            sql::outbox_due!(),
            ") RETURNING id, recipient, subject, body, attempts, locked_until"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |tx| {
            let mut claimed = collect(tx, CLAIM, params![now, lease_until, limit], |r| {
                row::claimed_mail_from_row(r)
            })
            .map_err(map_anyhow)?;
            claimed.sort_by_key(|m| m.id);
            Ok(claimed)
        })
        .await
    }

    async fn mail_delivered(&self, id: i64, lease: Micros) -> StoreResult<bool> {
        self.write(move |tx| Ok(exec(tx, sql::OUTBOX_DELIVERED, params![id, lease])? == 1))
            .await
    }

    async fn mail_failed(
        &self,
        id: i64,
        lease: Micros,
        error: &str,
        failure: MailFailure,
    ) -> StoreResult<bool> {
        let error = error.to_string();
        self.write(move |tx| {
            let (statement, at) = match failure {
                MailFailure::RetryAt(at) => (sql::OUTBOX_RETRY, at),
                MailFailure::GiveUp(at) => (sql::OUTBOX_GIVE_UP, at),
            };
            Ok(exec(tx, statement, params![id, lease, at, error])? == 1)
        })
        .await
    }

    async fn invalidations_since(&self, since: Micros) -> StoreResult<Vec<InvalidationRecord>> {
        self.read(|c| {
            collect(c, sql::INVALIDATIONS_SINCE, [since], |r| {
                row::invalidation_from_row(r)
            })
        })
    }

    async fn prune_invalidations(&self, before: Micros) -> StoreResult<()> {
        self.write(move |tx| {
            exec(tx, sql::INVALIDATIONS_PRUNE, [before])?;
            Ok(())
        })
        .await
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        map_err(e)
    }
}
