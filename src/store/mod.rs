//! Storage: one trait, two backends (embedded SQLite and PostgreSQL), chosen once by URL.
//!
//! Both backends share the SQL text in [`sql`] where the dialects agree and the row mapping in
//! [`row`]; timestamps are `BIGINT` microseconds, JSON is text and UUIDs are text in both, so one
//! mapper serves both drivers. Every multi-statement write runs in one transaction, and every write
//! that changes what a cached response shows appends to `cache_invalidations` in that transaction
//! (see [`crate::cache`]), so other processes sharing the database learn about it.

mod exec;
mod import;
#[macro_use]
mod metered;
pub mod postgres;
mod records;
mod row;
mod scripts;
mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

pub use metered::Metered;
pub use records::*;

use crate::time::Micros;

/// What a refused write would have duplicated (or, for `FirstUser`, which "only one" rule it
/// would have broken), so callers match on a type instead of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unique {
    /// A user's login email (compared case-insensitively).
    Email,
    DistinctId,
    /// The user already belongs to the organization.
    Membership,
    /// An organization slug (after the retries with random suffixes).
    Slug,
    /// A team's project API token.
    ApiToken,
    /// A personal API key's hash.
    ApiKey,
    ScenePersonalisation,
    Setting,
    UserIntegration,
    TeamIntegration,
    /// A sign-up limited to the instance's first user came after it.
    FirstUser,
    /// A primary key or a constraint not named above.
    Row,
}

impl Unique {
    pub fn as_str(self) -> &'static str {
        match self {
            Unique::Email => "email",
            Unique::DistinctId => "distinct_id",
            Unique::Membership => "membership",
            Unique::Slug => "slug",
            Unique::ApiToken => "api_token",
            Unique::ApiKey => "api_key",
            Unique::ScenePersonalisation => "scene_personalisation",
            Unique::Setting => "setting",
            Unique::UserIntegration => "user_integration",
            Unique::TeamIntegration => "team_integration",
            Unique::FirstUser => "first_user",
            Unique::Row => "row",
        }
    }
}

impl std::fmt::Display for Unique {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database did not answer: connection lost or refused, pool exhausted or timed out,
    /// SQLite locked past the busy timeout or not openable. Only these become a 503; every other
    /// database failure (constraint, type or parameter mismatch, syntax, …) is `Other`, a 500.
    #[error("database unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// A uniqueness rule refused the write.
    #[error("duplicate {0}")]
    Unique(Unique),
    /// A row the write depends on does not exist (or no longer exists).
    #[error("{0} not found")]
    Missing(&'static str),
    /// A per-user limit would be exceeded.
    #[error("limit of {0} reached")]
    Limit(usize),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a successful delete of a user found.
#[derive(Debug, PartialEq, Eq)]
pub enum UserDeletion {
    Deleted,
    HasMemberships,
    Missing,
}

store_trait! {
    /// The storage contract every backend implements. Methods taking slices of ids load many rows
    /// in one query so a page of users renders with a fixed number of round trips. Every async
    /// method is an operation [`Metered`] times under its own name.
    pub trait Store {
        fn backend(&self) -> Backend;

        /// The latest migration this binary carries: the database is current when it has it.
        fn expected_schema_version(&self) -> i64;

        /// The SQLite writer thread's queue and group sizes (none on PostgreSQL).
        fn writer_stats(&self) -> Option<crate::metrics::WriterStats> {
            None
        }

        /// Time and failures of each operation (kept by [`Metered`], which wraps every store
        /// [`connect`] opens).
        fn query_metrics(&self) -> Option<crate::metrics::QueryMetrics> {
            None
        }
    }
    queries {
        /// The cheapest round trip.
        async fn ping(&self) -> StoreResult<()>;

        /// The latest migration applied to the database (a round trip, for `/_ready`).
        async fn schema_version(&self) -> StoreResult<i64>;
        /// Returns the stored value for `key`, inserting `value` first when there is none.
        async fn setting_or_insert(&self, key: &str, value: &str) -> StoreResult<String>;
        /// The stored value for `key`, if any.
        async fn setting(&self, key: &str) -> StoreResult<Option<String>>;
        /// Deletes `key` if it still holds `value`; returns whether a row was deleted.
        async fn delete_setting(&self, key: &str, value: &str) -> StoreResult<bool>;

        // --- users ---
        async fn insert_user(&self, user: NewUser) -> StoreResult<UserRecord>;
        async fn user_by_id(&self, id: i64) -> StoreResult<Option<UserRecord>>;
        async fn user_by_uuid(&self, uuid: Uuid) -> StoreResult<Option<UserRecord>>;
        /// Case-insensitive match on the login email.
        async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>>;
        async fn list_users(&self, query: &UserQuery) -> StoreResult<UserPage>;
        async fn count_users(&self) -> StoreResult<i64>;
        /// Applies `write` in one transaction and returns the user as stored afterwards: only the
        /// columns `write.changes` names are written, then the other parts in [`UserWrite`]'s field
        /// order, and one invalidation row for the user (naming the session written, if any).
        /// `Missing("user")` (nothing written) when the user does not exist; `Unique(Email)` (nothing
        /// written) when the new email is taken.
        async fn write_user(&self, user_id: i64, write: &UserWrite) -> StoreResult<UserRecord>;
        /// Replaces the password hash by `to` only while it is still `from`, so rehashing at login
        /// never undoes a password change that landed after the login read the user; whether it did.
        async fn upgrade_password_hash(
            &self,
            user_id: i64,
            from: &PasswordHash,
            to: &PasswordHash,
        ) -> StoreResult<bool>;
        /// Sets the current organization and team without touching anything else.
        async fn set_current_context(
            &self,
            user_id: i64,
            organization: Option<Uuid>,
            team: Option<i64>,
        ) -> StoreResult<()>;
        /// Deletes the user and everything hanging off it, unless they belong to an organization.
        async fn delete_user(&self, id: i64) -> StoreResult<UserDeletion>;
        /// Per-user facts the representation needs, for many users at once.
        async fn user_facts(&self, user_ids: &[i64]) -> StoreResult<Vec<UserFacts>>;

        // --- organizations, teams, memberships ---
        /// Creates the organization with its first team (and that team's default dashboard), makes
        /// `owner` its owner and points the owner's current organization and team at them.
        async fn create_organization(
            &self,
            new: NewOrganization,
        ) -> StoreResult<(OrganizationRecord, TeamRecord)>;
        async fn organization(&self, id: Uuid) -> StoreResult<Option<OrganizationRecord>>;
        /// Writes the given settings (only those) and tells every member's cached views; `None`
        /// when there is no such organization.
        async fn update_organization(
            &self,
            id: Uuid,
            changes: OrganizationChanges,
        ) -> StoreResult<Option<OrganizationRecord>>;
        async fn add_membership(
            &self,
            organization: Uuid,
            user_id: i64,
            level: MembershipLevel,
        ) -> StoreResult<MembershipRecord>;
        /// Removes the user from the organization with `log`, unless they are its only owner; a
        /// user whose current organization it was moves to the one they joined first (or none).
        /// `Missing("organization")` for an unknown organization.
        async fn remove_membership(
            &self,
            organization: Uuid,
            user_id: i64,
            log: &[NewActivity],
        ) -> StoreResult<MembershipRemoval>;
        async fn create_team(&self, new: NewTeam) -> StoreResult<TeamRecord>;
        async fn team(&self, id: i64) -> StoreResult<Option<TeamRecord>>;
        /// Memberships (with their organizations) of every given user, in join order.
        async fn memberships_of(&self, user_ids: &[i64]) -> StoreResult<Vec<MembershipWithOrg>>;
        /// Teams of the given organizations, ordered by id.
        async fn teams_of(&self, organizations: &[Uuid]) -> StoreResult<Vec<TeamRecord>>;
        /// Active members of each given organization.
        async fn member_counts(&self, organizations: &[Uuid]) -> StoreResult<Vec<(Uuid, i64)>>;

        // --- dashboards and scene personalisation ---
        async fn create_dashboard(&self, team_id: i64, name: &str) -> StoreResult<DashboardRecord>;
        async fn dashboard(&self, id: i64) -> StoreResult<Option<DashboardRecord>>;
        async fn scene_personalisations_of(&self, user_ids: &[i64]) -> StoreResult<Vec<SceneRecord>>;
        async fn upsert_scene_personalisation(&self, scene: NewScene) -> StoreResult<()>;

        // --- personal API keys ---
        /// Inserts the key unless the user already has `limit` keys.
        async fn insert_api_key(
            &self,
            key: NewApiKey,
            limit: usize,
            log: &[NewActivity],
        ) -> StoreResult<ApiKeyRecord>;
        /// The key with this `secure_value`, if its user is active.
        async fn api_key_by_secure_value(
            &self,
            secure_value: &str,
        ) -> StoreResult<Option<ApiKeyRecord>>;
        /// Whether any key still carries a legacy PBKDF2 hash (decides whether lookups try them).
        async fn has_legacy_api_keys(&self) -> StoreResult<bool>;
        /// Every key stored with the given legacy hash prefix (`pbkdf2_sha256$<iterations>$`).
        async fn legacy_api_keys(&self, prefix: &str) -> StoreResult<Vec<ApiKeyRecord>>;
        /// Replaces a legacy hash by its sha256 form.
        async fn upgrade_api_key_hash(&self, id: &str, secure_value: &str) -> StoreResult<()>;
        /// Records `last_used_at` for a batch of keys (no cache invalidation: nothing cached shows it).
        async fn touch_api_keys(&self, used: &[(String, Micros)]) -> StoreResult<()>;

        /// The user's keys, newest first.
        async fn api_keys_of(&self, user_id: i64) -> StoreResult<Vec<ApiKeyRecord>>;
        async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKeyRecord>>;
        async fn update_api_key(
            &self,
            id: &str,
            changes: ApiKeyChanges,
            log: &[NewActivity],
        ) -> StoreResult<ApiKeyRecord>;
        /// Deletes the key; returns what was deleted.
        async fn delete_api_key(
            &self,
            id: &str,
            log: &[NewActivity],
        ) -> StoreResult<Option<ApiKeyRecord>>;
        /// Replaces the key's hash and mask; returns the old record and the new one.
        async fn roll_api_key(
            &self,
            id: &str,
            secure_value: &str,
            mask_value: &str,
            rolled_at: Micros,
            log: &[NewActivity],
        ) -> StoreResult<Option<(ApiKeyRecord, ApiKeyRecord)>>;

        // --- sign-up ---
        /// Creates the user, their organization, its first team and the owner membership in one
        /// transaction; the user is staff iff they are the instance's first user.
        async fn signup(
            &self,
            signup: NewSignup,
        ) -> StoreResult<(UserRecord, OrganizationRecord, TeamRecord)>;

        // --- sessions ---
        async fn insert_session(&self, session: &SessionRecord) -> StoreResult<()>;
        async fn session(&self, id: &str) -> StoreResult<Option<SessionRecord>>;
        /// The user's logged-in sessions not over at `now`, newest login first.
        async fn sessions_of(&self, user_id: i64, now: Micros) -> StoreResult<Vec<SessionRecord>>;
        /// Writes every mutable column of the session.
        async fn update_session(&self, session: &SessionRecord) -> StoreResult<()>;
        /// Records `last_activity_at` for a batch of sessions, never moving one back (no cache
        /// invalidation: nothing cached shows it).
        async fn touch_sessions(&self, used: &[(String, Micros)]) -> StoreResult<()>;
        /// Ends the session; whether there was one (`log` is written only then).
        async fn delete_session(&self, id: &str, log: &[NewActivity]) -> StoreResult<bool>;
        /// Ends every session of the user except `keep`, pending second-factor logins included;
        /// returns how many ended.
        async fn delete_sessions_of(
            &self,
            user_id: i64,
            keep: Option<&str>,
            log: &[NewActivity],
        ) -> StoreResult<u64>;
        /// Deletes every session over at `now` (`expires_at <= now`, as authentication decides), and
        /// sessions that only wait for a second factor (no user logged in) whose login started before
        /// `pending_before`; returns how many.
        async fn prune_sessions(&self, now: Micros, pending_before: Micros) -> StoreResult<u64>;

        // --- two-factor authentication ---
        async fn totp_device(&self, user_id: i64) -> StoreResult<Option<TotpDeviceRecord>>;
        /// Creates or replaces the user's device.
        async fn put_totp_device(&self, device: &TotpDeviceRecord) -> StoreResult<()>;
        /// Accepts `step` only if it is later than the last accepted one (a code works once), and
        /// clears the failure count.
        async fn advance_totp_step(&self, user_id: i64, step: i64) -> StoreResult<bool>;
        /// Claims one second-factor attempt before it is evaluated: unless the device is throttled at
        /// `now`, counts the attempt as failed and throttles the device, in one atomic step, and
        /// returns the device as updated. `None` when the device is throttled or absent. So within one
        /// backoff window at most one code is evaluated; an accepted code clears the count.
        async fn claim_totp_attempt(
            &self,
            user_id: i64,
            now: Micros,
        ) -> StoreResult<Option<TotpDeviceRecord>>;
        /// Clears the failure count and the throttle (a backup code was accepted).
        async fn clear_totp_throttle(&self, user_id: i64) -> StoreResult<()>;
        /// Removes the device and every backup code.
        async fn delete_two_factor(&self, user_id: i64) -> StoreResult<()>;
        async fn replace_backup_codes(&self, user_id: i64, hashes: &[String]) -> StoreResult<()>;
        /// Deletes the matching unused code; false when there is none.
        async fn consume_backup_code(
            &self,
            user_id: i64,
            hash: &str,
            log: &[NewActivity],
        ) -> StoreResult<bool>;
        async fn backup_code_count(&self, user_id: i64) -> StoreResult<i64>;

        // --- signal autonomy ---
        async fn signal_autonomy(&self, user_id: i64) -> StoreResult<Option<SignalAutonomyRecord>>;
        /// Creates the user's row or updates it in one statement (`INSERT … ON CONFLICT`): the
        /// priority is written only when `Some` (partial update); `updated_at` moves either way.
        async fn upsert_signal_autonomy(
            &self,
            user_id: i64,
            autostart_priority: Option<Option<String>>,
            now: Micros,
        ) -> StoreResult<SignalAutonomyRecord>;
        /// Deletes the user's row; false when there was none.
        async fn delete_signal_autonomy(&self, user_id: i64) -> StoreResult<bool>;

        // --- personal integrations ---
        /// The user's integrations of `kind`, oldest first.
        async fn user_integrations(
            &self,
            user_id: i64,
            kind: &str,
        ) -> StoreResult<Vec<UserIntegrationRecord>>;
        async fn user_integration(
            &self,
            user_id: i64,
            kind: &str,
            integration_id: &str,
        ) -> StoreResult<Option<UserIntegrationRecord>>;
        /// Creates the row, or replaces config and secrets of the existing one (cache kept).
        async fn upsert_user_integration(
            &self,
            new: NewUserIntegration,
            log: &[NewActivity],
        ) -> StoreResult<UserIntegrationRecord>;
        /// Replaces config and secrets of the row (after a token refresh); false when it is gone.
        async fn update_user_integration_secrets(
            &self,
            id: Uuid,
            config: &serde_json::Value,
            sensitive_config: &str,
            now: Micros,
        ) -> StoreResult<bool>;
        /// Stores a repository snapshot and when it was taken.
        async fn set_repository_cache(
            &self,
            id: Uuid,
            repositories: &serde_json::Value,
            synced_at: Micros,
        ) -> StoreResult<()>;
        /// Deletes the row (and with it its tokens); false when there was none.
        async fn delete_user_integration(&self, id: Uuid, log: &[NewActivity]) -> StoreResult<bool>;

        // --- project-level integrations ---
        /// Creates the integration or replaces its config (`Missing("team")` for an unknown team).
        async fn upsert_team_integration(
            &self,
            new: NewTeamIntegration,
        ) -> StoreResult<TeamIntegrationRecord>;
        /// Integrations of `kind` of any of the given teams, ordered by id.
        async fn team_integrations_of(
            &self,
            team_ids: &[i64],
            kind: &str,
        ) -> StoreResult<Vec<TeamIntegrationRecord>>;
        /// Integrations of `kind` created by the user, ordered by id.
        async fn team_integrations_created_by(
            &self,
            user_id: i64,
            kind: &str,
        ) -> StoreResult<Vec<TeamIntegrationRecord>>;

        // --- outgoing mail (the outbox) ---
        /// Sets `requested_password_reset_at` (that column only) and queues the reset mail, in one
        /// transaction; `Missing("user")`, and nothing queued, when the user is gone.
        async fn request_password_reset(
            &self,
            user_id: i64,
            requested_at: Micros,
            mail: NewMail,
            log: &[NewActivity],
        ) -> StoreResult<()>;
        /// Queues one message, due at once.
        async fn enqueue_mail(&self, mail: NewMail) -> StoreResult<()>;
        /// Pending messages, and how many of them are due at `now` and not leased.
        async fn outbox_status(&self, now: Micros) -> StoreResult<OutboxStatus>;
        /// Claims up to `limit` due messages, oldest first: counts an attempt on each and leases it
        /// until `lease_until`, so no other worker (or replica) claims it meanwhile.
        async fn claim_mail(
            &self,
            now: Micros,
            lease_until: Micros,
            limit: usize,
        ) -> StoreResult<Vec<ClaimedMail>>;
        /// Deletes a delivered message; false when the claim's lease was lost.
        async fn mail_delivered(&self, id: i64, lease: Micros) -> StoreResult<bool>;
        /// Records a failed attempt (`error`: short, no secrets) and schedules the next one or gives
        /// up, dropping the body; false when the claim's lease was lost.
        async fn mail_failed(
            &self,
            id: i64,
            lease: Micros,
            error: &str,
            failure: MailFailure,
        ) -> StoreResult<bool>;

        /// Deletes messages given up before `before`; returns how many.
        async fn prune_dead_mail(&self, before: Micros) -> StoreResult<u64>;

        // --- the activity log ---
        /// Writes entries that go with no other write (a failed login).
        async fn record_activity(&self, log: &[NewActivity]) -> StoreResult<()>;
        /// A page of one user's log (see [`ActivityQuery`]), newest first.
        async fn activity(&self, query: &ActivityQuery) -> StoreResult<Vec<ActivityRecord>>;
        /// Deletes entries recorded before `before`; returns how many.
        async fn prune_activity(&self, before: Micros) -> StoreResult<u64>;

        // --- import from PostHog ---
        /// Writes one batch of PostHog rows in one transaction (see [`ImportBatch`]), or with
        /// `write` false only checks what writing it would do.
        async fn import(
            &self,
            batch: ImportBatch,
            write: bool,
            now: Micros,
        ) -> StoreResult<ImportReport>;

        // --- cross-process cache invalidation feed ---
        /// Invalidations recorded after `since` (microseconds), newest first, at most 10,000.
        async fn invalidations_since(&self, since: Micros) -> StoreResult<Vec<InvalidationRecord>>;
        async fn prune_invalidations(&self, before: Micros) -> StoreResult<()>;
    }
}

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub type DynStore = Arc<dyn Store>;

/// The version of the newest migration a backend's runner holds.
fn latest_migration(runner: &refinery::Runner) -> i64 {
    runner
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// Logs what a migration run did: the migrations it applied, or that the schema was current.
fn log_migrations(report: &refinery::Report, runner: &refinery::Runner) {
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    let version = latest_migration(runner);
    if applied.is_empty() {
        tracing::info!(schema_version = version, "database schema is current");
    } else {
        tracing::info!(schema_version = version, applied = %applied.join(", "), "applied migrations");
    }
}

/// Opens (creating if needed) and migrates the database named by `url`, in one attempt.
pub async fn connect(url: &crate::config::DatabaseUrl) -> anyhow::Result<DynStore> {
    connect_within(url, std::time::Duration::ZERO).await
}

/// [`connect`], retrying with backoff for up to `wait` while PostgreSQL does not answer (a
/// database that starts with hoglet, as in a compose file); SQLite needs no wait.
pub async fn connect_within(
    url: &crate::config::DatabaseUrl,
    wait: std::time::Duration,
) -> anyhow::Result<DynStore> {
    use crate::config::DatabaseUrl;
    let backend: DynStore = match url {
        DatabaseUrl::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path).await?),
        DatabaseUrl::Postgres(url) => Arc::new(postgres::PgStore::connect_within(url, wait).await?),
    };
    Ok(Arc::new(Metered::new(backend)))
}
