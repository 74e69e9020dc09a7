//! Plain rows as the store reads and writes them. Validation and rendering live elsewhere.

use serde_json::Value;
use uuid::Uuid;

use crate::time::Micros;

/// A password hash as stored (`argon2id$…`, Django `pbkdf2_sha256$…`, or an unusable marker).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswordHash(pub String);

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

impl PasswordHash {
    /// Django's marker for "no usable password" starts with `!`; empty means never set.
    pub fn is_usable(&self) -> bool {
        !self.0.is_empty() && !self.0.starts_with('!')
    }
}

#[derive(Clone, Debug)]
pub struct UserRecord {
    pub id: i64,
    pub uuid: Uuid,
    pub email: String,
    pub pending_email: Option<String>,
    pub password: PasswordHash,
    pub first_name: String,
    pub last_name: String,
    pub distinct_id: Option<String>,
    pub is_active: bool,
    pub is_staff: bool,
    pub date_joined: Micros,
    pub last_login: Option<Micros>,
    pub is_email_verified: Option<bool>,
    pub requested_password_reset_at: Option<Micros>,
    pub current_organization_id: Option<Uuid>,
    pub current_team_id: Option<i64>,
    pub partial_notification_settings: Option<Value>,
    pub anonymize_data: Option<bool>,
    pub allow_impersonation: Option<bool>,
    pub toolbar_mode: Option<String>,
    pub theme_mode: Option<String>,
    pub hedgehog_config: Option<Value>,
    pub events_column_config: Value,
    pub has_seen_product_intro_for: Option<Value>,
    pub role_at_organization: Option<String>,
    pub allow_sidebar_suggestions: Option<bool>,
    pub shortcut_position: Option<String>,
    pub passkeys_enabled_for_2fa: Option<bool>,
    pub hide_mcp_hints: bool,
    pub ui_configuration: Option<Value>,
    pub email_opt_in: Option<bool>,
    pub credentials_reviewed_at: Option<Micros>,
}

/// The columns of a user one write sets; a field left `None` is not written at all.
/// Nullable columns are `Option<Option<T>>`: `Some(None)` writes NULL.
#[derive(Clone, Debug, Default)]
pub struct UserChanges {
    pub email: Option<String>,
    pub pending_email: Option<Option<String>>,
    pub password: Option<PasswordHash>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub distinct_id: Option<Option<String>>,
    pub is_active: Option<bool>,
    pub is_staff: Option<bool>,
    pub last_login: Option<Option<Micros>>,
    pub is_email_verified: Option<Option<bool>>,
    pub requested_password_reset_at: Option<Option<Micros>>,
    pub current_organization_id: Option<Option<Uuid>>,
    pub current_team_id: Option<Option<i64>>,
    pub partial_notification_settings: Option<Option<Value>>,
    pub anonymize_data: Option<Option<bool>>,
    pub allow_impersonation: Option<Option<bool>>,
    pub toolbar_mode: Option<Option<String>>,
    pub theme_mode: Option<Option<String>>,
    pub hedgehog_config: Option<Option<Value>>,
    pub events_column_config: Option<Value>,
    pub has_seen_product_intro_for: Option<Option<Value>>,
    pub role_at_organization: Option<Option<String>>,
    pub allow_sidebar_suggestions: Option<Option<bool>>,
    pub shortcut_position: Option<Option<String>>,
    pub passkeys_enabled_for_2fa: Option<Option<bool>>,
    pub hide_mcp_hints: Option<bool>,
    pub ui_configuration: Option<Option<Value>>,
    pub email_opt_in: Option<Option<bool>>,
    pub credentials_reviewed_at: Option<Option<Micros>>,
}

impl UserChanges {
    /// The columns that differ between a record as read and as a use case left it: exactly what
    /// the write must touch (Django's `update_fields`), so a concurrent write to another column
    /// is kept.
    pub fn between(before: &UserRecord, after: &UserRecord) -> Self {
        fn changed<T: PartialEq + Clone>(before: &T, after: &T) -> Option<T> {
            (before != after).then(|| after.clone())
        }
        Self {
            email: changed(&before.email, &after.email),
            pending_email: changed(&before.pending_email, &after.pending_email),
            password: changed(&before.password, &after.password),
            first_name: changed(&before.first_name, &after.first_name),
            last_name: changed(&before.last_name, &after.last_name),
            distinct_id: changed(&before.distinct_id, &after.distinct_id),
            is_active: changed(&before.is_active, &after.is_active),
            is_staff: changed(&before.is_staff, &after.is_staff),
            last_login: changed(&before.last_login, &after.last_login),
            is_email_verified: changed(&before.is_email_verified, &after.is_email_verified),
            requested_password_reset_at: changed(
                &before.requested_password_reset_at,
                &after.requested_password_reset_at,
            ),
            current_organization_id: changed(
                &before.current_organization_id,
                &after.current_organization_id,
            ),
            current_team_id: changed(&before.current_team_id, &after.current_team_id),
            partial_notification_settings: changed(
                &before.partial_notification_settings,
                &after.partial_notification_settings,
            ),
            anonymize_data: changed(&before.anonymize_data, &after.anonymize_data),
            allow_impersonation: changed(&before.allow_impersonation, &after.allow_impersonation),
            toolbar_mode: changed(&before.toolbar_mode, &after.toolbar_mode),
            theme_mode: changed(&before.theme_mode, &after.theme_mode),
            hedgehog_config: changed(&before.hedgehog_config, &after.hedgehog_config),
            events_column_config: changed(
                &before.events_column_config,
                &after.events_column_config,
            ),
            has_seen_product_intro_for: changed(
                &before.has_seen_product_intro_for,
                &after.has_seen_product_intro_for,
            ),
            role_at_organization: changed(
                &before.role_at_organization,
                &after.role_at_organization,
            ),
            allow_sidebar_suggestions: changed(
                &before.allow_sidebar_suggestions,
                &after.allow_sidebar_suggestions,
            ),
            shortcut_position: changed(&before.shortcut_position, &after.shortcut_position),
            passkeys_enabled_for_2fa: changed(
                &before.passkeys_enabled_for_2fa,
                &after.passkeys_enabled_for_2fa,
            ),
            hide_mcp_hints: changed(&before.hide_mcp_hints, &after.hide_mcp_hints),
            ui_configuration: changed(&before.ui_configuration, &after.ui_configuration),
            email_opt_in: changed(&before.email_opt_in, &after.email_opt_in),
            credentials_reviewed_at: changed(
                &before.credentials_reviewed_at,
                &after.credentials_reviewed_at,
            ),
        }
    }
}

/// Everything one use case writes about one user, applied in ONE transaction in this order,
/// with the user's cache-invalidation row in the same transaction.
#[derive(Clone, Default)]
pub struct UserWrite {
    pub changes: UserChanges,
    /// End the user's sessions (pending second-factor logins included) except the one named;
    /// `Some(None)` ends all of them.
    pub end_sessions: Option<Option<String>>,
    /// Delete the TOTP device and every backup code.
    pub remove_two_factor: bool,
    /// Create or replace the TOTP device (after `remove_two_factor`).
    pub totp_device: Option<TotpDeviceRecord>,
    /// Replace the backup codes by these hashes.
    pub backup_codes: Option<Vec<String>>,
    /// Write this session row (e.g. the session that just verified 2FA) in the same transaction:
    /// every mutable column of the row with its id, or a new row when there is none.
    pub session: Option<SessionRecord>,
    /// Queue these mails in the same transaction (notices, verification links).
    pub mail: Vec<NewMail>,
    /// Record these entries of the activity log in the same transaction.
    pub activity: Vec<NewActivity>,
}

// By hand: backup-code hashes and session ids are not for logs.
impl std::fmt::Debug for UserWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserWrite")
            .field("changes", &self.changes)
            .field(
                "end_sessions",
                &self.end_sessions.as_ref().map(|keep| match keep {
                    Some(_) => "all but one",
                    None => "all",
                }),
            )
            .field("remove_two_factor", &self.remove_two_factor)
            .field("totp_device", &self.totp_device)
            .field("backup_codes", &self.backup_codes.as_ref().map(Vec::len))
            .field("session", &self.session)
            .field("mail", &self.mail)
            .field("activity", &self.activity)
            .finish()
    }
}

/// What creating a user needs; everything else takes the column default.
#[derive(Clone, Debug)]
pub struct NewUser {
    pub uuid: Uuid,
    pub email: String,
    pub password: PasswordHash,
    pub first_name: String,
    pub last_name: String,
    pub distinct_id: String,
    pub is_staff: bool,
    pub is_email_verified: Option<bool>,
    pub role_at_organization: Option<String>,
    pub email_opt_in: Option<bool>,
    pub date_joined: Micros,
}

/// Filters of `GET /api/users/`; `only_user` narrows non-staff callers to themselves.
#[derive(Clone, Debug, Default)]
pub struct UserQuery {
    pub only_user: Option<i64>,
    pub email: Option<String>,
    /// Addresses containing this text, in any case (`hoglet user list --email-contains`).
    pub email_contains: Option<String>,
    /// Deactivated users too (the API lists only active ones).
    pub include_inactive: bool,
    pub is_staff: Option<bool>,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Clone, Debug)]
pub struct UserPage {
    pub count: i64,
    pub users: Vec<UserRecord>,
}

/// Facts about a user that live in other tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserFacts {
    pub user_id: i64,
    pub has_api_keys: bool,
    pub has_totp: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MembershipLevel {
    Member = 1,
    Admin = 8,
    Owner = 15,
}

impl MembershipLevel {
    pub fn from_i64(level: i64) -> Option<Self> {
        match level {
            1 => Some(Self::Member),
            8 => Some(Self::Admin),
            15 => Some(Self::Owner),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "member" => Some(Self::Member),
            "admin" => Some(Self::Admin),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }

    pub fn as_i64(self) -> i64 {
        self as i64
    }
}

#[derive(Clone, Debug)]
pub struct NewOrganization {
    pub name: String,
    pub owner_id: i64,
    pub team_name: String,
}

#[derive(Clone, Debug)]
pub struct OrganizationRecord {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub logo_media_id: Option<String>,
    pub created_at: Micros,
    pub updated_at: Micros,
    pub plugins_access_level: i64,
    pub available_product_features: Value,
    pub is_member_join_email_enabled: bool,
    pub enforce_2fa: Option<bool>,
    pub members_can_invite: Option<bool>,
    pub members_can_use_personal_api_keys: bool,
    pub allow_publicly_shared_resources: bool,
    pub is_ai_data_processing_approved: Option<bool>,
    pub default_experiment_stats_method: Option<String>,
    pub default_anonymize_ips: bool,
    pub default_role_id: Option<String>,
    pub customer_id: Option<String>,
    pub is_active: Option<bool>,
    pub is_not_active_reason: Option<String>,
}

/// Organization settings to change; `None` leaves a setting as it is.
#[derive(Clone, Debug, Default)]
pub struct OrganizationChanges {
    pub name: Option<String>,
    pub enforce_2fa: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct NewTeam {
    pub organization_id: Uuid,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct TeamRecord {
    pub id: i64,
    pub uuid: Uuid,
    pub organization_id: Uuid,
    pub project_id: i64,
    pub api_token: String,
    pub name: String,
    pub completed_snippet_onboarding: bool,
    pub has_completed_onboarding_for: Option<Value>,
    pub ingested_event: bool,
    pub is_demo: bool,
    pub timezone: String,
    pub access_control: bool,
    pub created_at: Micros,
}

#[derive(Clone, Debug)]
pub struct MembershipRecord {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub user_id: i64,
    pub level: MembershipLevel,
    /// False for the member who created the organization; true for everyone added later.
    pub invited: bool,
    pub joined_at: Micros,
    pub updated_at: Micros,
}

#[derive(Clone, Debug)]
pub struct MembershipWithOrg {
    pub membership: MembershipRecord,
    pub organization: OrganizationRecord,
}

#[derive(Clone, Debug)]
pub struct DashboardRecord {
    pub id: i64,
    pub team_id: i64,
    pub name: String,
    pub deleted: bool,
}

#[derive(Clone, Debug)]
pub struct SceneRecord {
    pub user_id: i64,
    pub team_id: Option<i64>,
    pub scene: String,
    pub dashboard_id: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct NewScene {
    pub user_id: i64,
    pub team_id: Option<i64>,
    pub scene: String,
    pub dashboard_id: i64,
}

#[derive(Clone)]
pub struct NewApiKey {
    pub id: String,
    pub user_id: i64,
    pub label: String,
    pub secure_value: String,
    pub mask_value: String,
    pub scopes: Vec<String>,
    pub scoped_teams: Option<Vec<i64>>,
    pub scoped_organizations: Option<Vec<String>>,
    pub expires_at: Option<Micros>,
    pub created_at: Micros,
}

#[derive(Clone)]
pub struct ApiKeyRecord {
    pub id: String,
    pub user_id: i64,
    pub label: String,
    pub secure_value: String,
    pub mask_value: String,
    pub scopes: Vec<String>,
    pub scoped_teams: Option<Vec<i64>>,
    pub scoped_organizations: Option<Vec<String>>,
    pub created_at: Micros,
    pub last_used_at: Option<Micros>,
    pub last_rolled_at: Option<Micros>,
    pub expires_at: Option<Micros>,
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("label", &self.label)
            .field("mask_value", &self.mask_value)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// One entry of the invalidation feed: a user (their rendered responses and keys), one key (by its
/// `secure_value`), or — when both are absent — everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidationRecord {
    pub seq: i64,
    pub created_at: Micros,
    pub user_id: Option<i64>,
    pub key_hash: Option<String>,
}

/// What removing a member from an organization found.
#[derive(Clone, Debug)]
pub enum MembershipRemoval {
    /// Removed: the membership as it was.
    Removed(MembershipRecord),
    /// The user is not a member.
    NotMember,
    /// The user is the organization's only owner (nothing removed).
    LastOwner,
}

/// A browser session. Anonymous while a login waits for its second factor.
#[derive(Clone)]
pub struct SessionRecord {
    /// SHA-256 (hex) of the cookie value.
    pub id: String,
    pub user_id: Option<i64>,
    pub created_at: Micros,
    /// When the user last logged in with this session (`session_created_at`).
    pub login_at: Option<Micros>,
    pub expires_at: Micros,
    pub csrf_token: String,
    pub two_factor_verified: bool,
    /// A password login waiting for `/api/login/token`.
    pub pending_user_id: Option<i64>,
    pub pending_at: Option<Micros>,
    /// An encrypted TOTP secret waiting for `two_factor_validate`.
    pub totp_setup_secret: Option<String>,
    pub totp_setup_at: Option<Micros>,
    /// Where and how the session signed in (set when it is created, never changed).
    pub client: SessionClient,
    /// When the session was last used, written at most once a minute.
    pub last_activity_at: Option<Micros>,
}

/// The client a session signed in from: its address, its `User-Agent` (cut to 512 characters)
/// and how it proved who it is (`password`, `totp`, `backup_code`, `remembered_device`, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionClient {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub login_method: Option<String>,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("user_id", &self.user_id)
            .field("login_at", &self.login_at)
            .field("expires_at", &self.expires_at)
            .field("pending_user_id", &self.pending_user_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct TotpDeviceRecord {
    pub user_id: i64,
    /// Encrypted secret.
    pub secret: String,
    /// The last time step a code was accepted for (replay protection).
    pub last_step: i64,
    pub failures: i64,
    pub throttled_until: Micros,
    pub created_at: Micros,
}

impl std::fmt::Debug for TotpDeviceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpDeviceRecord")
            .field("user_id", &self.user_id)
            .field("last_step", &self.last_step)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// Sign-up: a user with their own organization, created together.
#[derive(Clone, Debug)]
pub struct NewSignup {
    pub user: NewUser,
    pub organization_name: String,
    pub team_name: String,
    /// Refuse (`Unique(FirstUser)`) unless the instance has no user yet.
    pub only_first_user: bool,
}

/// What may change on a personal API key.
#[derive(Clone, Debug)]
pub struct ApiKeyChanges {
    pub label: String,
    pub scopes: Vec<String>,
    pub scoped_teams: Option<Vec<i64>>,
    pub scoped_organizations: Option<Vec<String>>,
    pub expires_at: Option<Micros>,
}

/// A user's signal autonomy opt-in (`autostart_priority` null: the team default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalAutonomyRecord {
    pub id: Uuid,
    pub user_id: i64,
    pub autostart_priority: Option<String>,
    pub created_at: Micros,
    pub updated_at: Micros,
}

/// A personal integration (PostHog's `UserIntegration`). `sensitive_config` is sealed text
/// (empty when there are no secrets), opened only by the GitHub service.
#[derive(Clone)]
pub struct UserIntegrationRecord {
    pub id: Uuid,
    pub user_id: i64,
    pub kind: String,
    pub integration_id: String,
    pub config: Value,
    pub sensitive_config: String,
    pub repository_cache: Value,
    pub repository_cache_updated_at: Option<Micros>,
    pub created_at: Micros,
    pub updated_at: Micros,
}

impl std::fmt::Debug for UserIntegrationRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserIntegrationRecord")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("kind", &self.kind)
            .field("integration_id", &self.integration_id)
            .field(
                "repository_cache_updated_at",
                &self.repository_cache_updated_at,
            )
            .finish_non_exhaustive()
    }
}

/// Creates a personal integration or replaces the config and secrets of the existing one for
/// `(user_id, kind, integration_id)`; its repository cache is kept.
#[derive(Clone)]
pub struct NewUserIntegration {
    pub user_id: i64,
    pub kind: String,
    pub integration_id: String,
    pub config: Value,
    pub sensitive_config: String,
    pub now: Micros,
}

impl std::fmt::Debug for NewUserIntegration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUserIntegration")
            .field("user_id", &self.user_id)
            .field("kind", &self.kind)
            .field("integration_id", &self.integration_id)
            .finish_non_exhaustive()
    }
}

/// A project-level integration (PostHog's `Integration`).
#[derive(Clone, Debug)]
pub struct TeamIntegrationRecord {
    pub id: i64,
    pub team_id: i64,
    pub kind: String,
    pub integration_id: String,
    pub config: Value,
    pub created_by_id: Option<i64>,
    pub created_at: Micros,
}

/// Creates a project-level integration, or replaces the config of the existing one.
#[derive(Clone, Debug)]
pub struct NewTeamIntegration {
    pub team_id: i64,
    pub kind: String,
    pub integration_id: String,
    pub config: Value,
    pub created_by_id: Option<i64>,
    pub now: Micros,
}

/// A message to queue in the outbox: recipient and subject in clear, the body sealed.
#[derive(Clone)]
pub struct NewMail {
    pub recipient: String,
    pub subject: String,
    /// The body sealed with the outbox key (it carries one-time links).
    pub sealed_body: String,
    /// When it was queued; the message is due at once.
    pub created_at: Micros,
}

impl std::fmt::Debug for NewMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewMail")
            .field("recipient", &self.recipient)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// A queued message claimed by a worker for one delivery attempt.
#[derive(Clone)]
pub struct ClaimedMail {
    pub id: i64,
    pub recipient: String,
    pub subject: String,
    pub sealed_body: String,
    /// Attempts so far, this one included.
    pub attempts: i64,
    /// The lease this claim holds: the result is recorded only while the row still carries it.
    pub locked_until: Micros,
}

impl std::fmt::Debug for ClaimedMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedMail")
            .field("id", &self.id)
            .field("recipient", &self.recipient)
            .field("subject", &self.subject)
            .field("attempts", &self.attempts)
            .field("locked_until", &self.locked_until)
            .finish_non_exhaustive()
    }
}

/// What becomes of a message whose delivery attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailFailure {
    /// Try again from this time on.
    RetryAt(Micros),
    /// Give up (at this time): the row stays, without its body, as a dead letter.
    GiveUp(Micros),
}

/// The outbox at a glance: messages neither delivered nor given up, and how many of them a
/// worker may claim now (due and not leased).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStatus {
    pub pending: i64,
    pub due: i64,
}

/// Who performed a recorded action: `user`, `personal_api_key`, `cli` or `system`, with an id
/// and a label to show (the user's email, the key's label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorRecord {
    pub kind: String,
    pub id: Option<String>,
    pub label: Option<String>,
}

/// One entry of the activity log to write. `user_id` is `None` for a failed login that named
/// no account. `detail` never holds a secret.
#[derive(Clone, Debug, PartialEq)]
pub struct NewActivity {
    pub user_id: Option<i64>,
    pub activity: String,
    pub created_at: Micros,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub actor: ActorRecord,
    pub detail: Value,
}

/// One stored entry of the activity log.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityRecord {
    pub id: i64,
    pub user_id: Option<i64>,
    pub activity: String,
    pub created_at: Micros,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub actor: ActorRecord,
    pub detail: Value,
}

/// A page of one user's activity log, newest first: entries with an id below `before` (or above
/// `after`, then still returned newest first), of the given kind if any.
#[derive(Clone, Debug, Default)]
pub struct ActivityQuery {
    pub user_id: i64,
    pub activity: Option<String>,
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub limit: usize,
}

// --- import from PostHog (`hoglet import posthog`) ------------------------------------------------

/// One batch of rows carried over from PostHog, all of one table, written by [`super::Store::import`]
/// with their PostHog ids. A row is inserted only when nothing with its id (or uuid) exists yet;
/// a row already there from an earlier run is left as it is; a row that would collide with
/// different data (an email, slug, token or key hash, or its id, taken by another row) is skipped
/// and reported, never overwritten.
#[derive(Clone, Debug)]
pub enum ImportBatch {
    Organizations(Vec<ImportOrganization>),
    Teams(Vec<ImportTeam>),
    Users(Vec<ImportUser>),
    Memberships(Vec<ImportMembership>),
    ApiKeys(Vec<ImportApiKey>),
    TotpDevices(Vec<ImportTotpDevice>),
    BackupCodes(Vec<ImportBackupCode>),
}

impl ImportBatch {
    pub fn len(&self) -> usize {
        match self {
            Self::Organizations(rows) => rows.len(),
            Self::Teams(rows) => rows.len(),
            Self::Users(rows) => rows.len(),
            Self::Memberships(rows) => rows.len(),
            Self::ApiKeys(rows) => rows.len(),
            Self::TotpDevices(rows) => rows.len(),
            Self::BackupCodes(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What writing (or, in a dry run, checking) a batch found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Rows inserted (a dry run: rows that would be).
    pub written: u64,
    /// Rows already in hoglet as they are in PostHog (an earlier run brought them).
    pub present: u64,
    /// Rows left out, with the reason.
    pub skipped: Vec<ImportSkip>,
}

/// A row left out of the import: its PostHog id and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportSkip {
    pub id: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ImportOrganization {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub created_at: Micros,
    pub enforce_2fa: Option<bool>,
    pub members_can_use_personal_api_keys: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ImportTeam {
    pub id: i64,
    pub uuid: Uuid,
    pub organization_id: Uuid,
    pub project_id: i64,
    pub api_token: String,
    pub name: String,
    pub timezone: String,
    pub created_at: Micros,
}

/// A PostHog user. JSON columns are kept as PostHog's JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportUser {
    pub id: i64,
    pub uuid: Uuid,
    pub email: String,
    /// The stored Django hash (`pbkdf2_sha256$…`, or unusable `!…`), never a password.
    pub password: PasswordHash,
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
    pub hedgehog_config: Option<String>,
    pub role_at_organization: Option<String>,
    pub partial_notification_settings: Option<String>,
    pub anonymize_data: Option<bool>,
    pub toolbar_mode: Option<String>,
    pub events_column_config: Option<String>,
    pub has_seen_product_intro_for: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ImportMembership {
    pub organization_id: Uuid,
    pub user_id: i64,
    /// PostHog's levels: 1 member, 8 admin, 15 owner.
    pub level: i64,
    pub joined_at: Micros,
}

/// A personal API key as hoglet stores it: `secure_value` is a hash, never the key.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportApiKey {
    pub id: String,
    pub user_id: i64,
    pub label: String,
    pub secure_value: String,
    pub mask_value: String,
    pub created_at: Micros,
    pub last_used_at: Option<Micros>,
    pub last_rolled_at: Option<Micros>,
    pub scopes: Vec<String>,
    pub scoped_teams: Option<Vec<i64>>,
    pub scoped_organizations: Option<Vec<String>>,
}

/// A confirmed django-otp device as hoglet's TOTP: `secret` sealed, `last_step` PostHog's
/// `last_t`.
#[derive(Clone)]
pub struct ImportTotpDevice {
    /// PostHog's device id (for the report).
    pub id: i64,
    pub user_id: i64,
    pub secret: String,
    pub last_step: i64,
    pub created_at: Micros,
}

/// A django-otp static token as hoglet's keyed hash.
#[derive(Clone)]
pub struct ImportBackupCode {
    /// PostHog's token id (for the report).
    pub id: i64,
    pub user_id: i64,
    pub code_hash: String,
    pub created_at: Micros,
}

// Sealed and hashed values are still not for logs.
impl std::fmt::Debug for ImportTotpDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportTotpDevice")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ImportBackupCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportBackupCode")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}
