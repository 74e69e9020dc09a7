//! SQL text both backends run unchanged. Placeholders are `$N`, numbered in order of first
//! appearance, which SQLite reads as named parameters bound by position and Postgres natively.
//! Statements that differ (id lists, upserts returning rows) live in the backend modules.

use super::Unique;

macro_rules! user_columns {
    () => {
        "u.id, u.uuid, u.email, u.pending_email, u.password, u.first_name, u.last_name, \
         u.distinct_id, u.is_active, u.is_staff, u.date_joined, u.last_login, u.is_email_verified, \
         u.requested_password_reset_at, u.current_organization_id, u.current_team_id, \
         u.partial_notification_settings, u.anonymize_data, u.allow_impersonation, u.toolbar_mode, \
         u.theme_mode, u.hedgehog_config, u.events_column_config, u.has_seen_product_intro_for, \
         u.role_at_organization, u.allow_sidebar_suggestions, u.shortcut_position, \
         u.passkeys_enabled_for_2fa, u.hide_mcp_hints, u.ui_configuration, u.email_opt_in, \
         u.credentials_reviewed_at"
    };
}

macro_rules! organization_columns {
    () => {
        "o.id, o.name, o.slug, o.logo_media_id, o.created_at, o.updated_at, o.plugins_access_level, \
         o.available_product_features, o.is_member_join_email_enabled, o.enforce_2fa, \
         o.members_can_invite, o.members_can_use_personal_api_keys, \
         o.allow_publicly_shared_resources, o.is_ai_data_processing_approved, \
         o.default_experiment_stats_method, o.default_anonymize_ips, o.default_role_id, \
         o.customer_id, o.is_active, o.is_not_active_reason"
    };
}

macro_rules! team_columns {
    () => {
        "t.id, t.uuid, t.organization_id, t.api_token, t.name, t.completed_snippet_onboarding, \
         t.has_completed_onboarding_for, t.ingested_event, t.is_demo, t.timezone, t.access_control, \
         t.created_at, COALESCE(t.project_id, t.id)"
    };
}

macro_rules! membership_columns {
    () => {
        "m.id, m.organization_id, m.user_id, m.level, m.invited, m.joined_at, m.updated_at"
    };
}

macro_rules! api_key_columns {
    () => {
        "k.id, k.user_id, k.label, k.secure_value, k.mask_value, k.created_at, k.last_used_at, \
         k.last_rolled_at, k.scopes, k.scoped_teams, k.scoped_organizations, k.expires_at"
    };
}

macro_rules! session_columns {
    () => {
        "s.id, s.user_id, s.created_at, s.login_at, s.expires_at, s.csrf_token, \
         s.two_factor_verified, s.pending_user_id, s.pending_at, s.totp_setup_secret, s.totp_setup_at, \
         s.ip, s.user_agent, s.login_method, s.last_activity_at"
    };
}

macro_rules! user_integration_columns {
    () => {
        "i.id, i.user_id, i.kind, i.integration_id, i.config, i.sensitive_config, \
         i.repository_cache, i.repository_cache_updated_at, i.created_at, i.updated_at"
    };
}

macro_rules! team_integration_columns {
    () => {
        "ti.id, ti.team_id, ti.kind, ti.integration_id, ti.config, ti.created_by_id, ti.created_at"
    };
}

pub(crate) use user_columns;

pub const PING: &str = "SELECT 1";
pub const SCHEMA_VERSION: &str =
    "SELECT CAST(COALESCE(max(version), 0) AS BIGINT) FROM refinery_schema_history";

pub const SETTING_GET: &str = "SELECT value FROM settings WHERE key = $1";
pub const SETTING_DELETE: &str = "DELETE FROM settings WHERE key = $1 AND value = $2";
pub const SETTING_INSERT: &str =
    "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";

// SQLite's RETURNING cannot name columns through a table alias, so inserts return the id and
// the row is read back with the usual column list.
pub const USER_INSERT: &str = "INSERT INTO users (uuid, email, email_lower, password, first_name, \
     last_name, distinct_id, is_staff, is_email_verified, role_at_organization, email_opt_in, \
     date_joined) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id";
pub const USER_BY_ID: &str = concat!("SELECT ", user_columns!(), " FROM users u WHERE u.id = $1");
pub const USER_BY_UUID: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.uuid = $1"
);
pub const USER_BY_EMAIL: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users u WHERE u.email_lower = $1"
);
pub const USER_COUNT: &str = "SELECT count(*) FROM users";

/// A parameter of the user-list filter.
#[derive(Debug)]
pub enum FilterParam<'a> {
    Int(i64),
    Text(&'a str),
    /// A `LIKE` pattern built from the query.
    Pattern(String),
    Bool(bool),
}

/// `%text%` for a case-insensitive substring match on `email_lower`, with `LIKE`'s own
/// characters (and the escape) escaped.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in email_key(text).chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// `WHERE …` of the user list and its parameters, with only the filters in use so each variant
/// gets its own plan (and the email index is used when filtering by email).
pub fn user_list_filter(q: &super::UserQuery) -> (String, Vec<FilterParam<'_>>) {
    let mut clause = String::from(if q.include_inactive {
        "WHERE TRUE"
    } else {
        "WHERE u.is_active = TRUE"
    });
    let mut params = Vec::new();
    if let Some(id) = q.only_user {
        params.push(FilterParam::Int(id));
        clause.push_str(&format!(" AND u.id = ${}", params.len()));
    }
    if let Some(email) = &q.email {
        params.push(FilterParam::Text(email));
        clause.push_str(&format!(" AND u.email = ${}", params.len()));
    }
    if let Some(pattern) = &q.email_contains {
        params.push(FilterParam::Pattern(like_pattern(pattern)));
        clause.push_str(&format!(
            " AND u.email_lower LIKE ${} ESCAPE '\\'",
            params.len()
        ));
    }
    if let Some(staff) = q.is_staff {
        params.push(FilterParam::Bool(staff));
        clause.push_str(&format!(" AND u.is_staff = ${}", params.len()));
    }
    (clause, params)
}

/// Where the `count` of a user-list page comes from, decided after reading the page.
pub enum ListCount {
    /// The page tells it: a short page that is not past the end holds the last row (an email
    /// lookup is always one).
    Known(i64),
    /// A trigger-maintained counter answers it (no email or single-user filter): counting a
    /// million rows per page would dominate the request.
    Counter(&'static str),
    /// Only counting the filtered rows tells it.
    Filtered,
}

pub fn user_list_count(q: &super::UserQuery, rows: usize) -> ListCount {
    let rows = rows as i64;
    if rows < q.limit && (rows > 0 || q.offset == 0) {
        return ListCount::Known(q.offset.saturating_add(rows));
    }
    if q.only_user.is_some()
        || q.email.is_some()
        || q.email_contains.is_some()
        || q.include_inactive
    {
        return ListCount::Filtered;
    }
    ListCount::Counter(match q.is_staff {
        None => "SELECT n FROM user_counts WHERE key = 'active'",
        Some(true) => "SELECT n FROM user_counts WHERE key = 'active_staff'",
        Some(false) => {
            "SELECT (SELECT n FROM user_counts WHERE key = 'active') \
             - (SELECT n FROM user_counts WHERE key = 'active_staff')"
        }
    })
}

/// A value bound to one column of a statement built at run time; `None` binds NULL.
#[derive(Debug)]
pub enum ColumnValue {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
}

/// `UPDATE users SET … WHERE id = $1` setting only the columns `changes` names, and their values
/// in placeholder order (`$2`, `$3`, …); `None` when it names none. Setting the email also sets
/// `email_lower`, the key it is unique under.
pub fn user_update(changes: &super::UserChanges) -> Option<(String, Vec<ColumnValue>)> {
    use ColumnValue::{Bool, Int, Text};
    let c = changes;
    let json = |v: &Option<serde_json::Value>| Text(v.as_ref().map(serde_json::Value::to_string));
    let set: [(&str, Option<ColumnValue>); 30] = [
        ("email", c.email.as_ref().map(|e| Text(Some(e.clone())))),
        (
            "email_lower",
            c.email.as_ref().map(|e| Text(Some(email_key(e)))),
        ),
        ("pending_email", c.pending_email.clone().map(Text)),
        (
            "password",
            c.password.as_ref().map(|p| Text(Some(p.0.clone()))),
        ),
        ("first_name", c.first_name.clone().map(|v| Text(Some(v)))),
        ("last_name", c.last_name.clone().map(|v| Text(Some(v)))),
        ("distinct_id", c.distinct_id.clone().map(Text)),
        ("is_active", c.is_active.map(|v| Bool(Some(v)))),
        ("is_staff", c.is_staff.map(|v| Bool(Some(v)))),
        ("last_login", c.last_login.map(Int)),
        ("is_email_verified", c.is_email_verified.map(Bool)),
        (
            "requested_password_reset_at",
            c.requested_password_reset_at.map(Int),
        ),
        (
            "current_organization_id",
            c.current_organization_id
                .map(|o| Text(o.map(|o| o.to_string()))),
        ),
        ("current_team_id", c.current_team_id.map(Int)),
        (
            "partial_notification_settings",
            c.partial_notification_settings.as_ref().map(json),
        ),
        ("anonymize_data", c.anonymize_data.map(Bool)),
        ("allow_impersonation", c.allow_impersonation.map(Bool)),
        ("toolbar_mode", c.toolbar_mode.clone().map(Text)),
        ("theme_mode", c.theme_mode.clone().map(Text)),
        ("hedgehog_config", c.hedgehog_config.as_ref().map(json)),
        (
            "events_column_config",
            c.events_column_config
                .as_ref()
                .map(|v| Text(Some(v.to_string()))),
        ),
        (
            "has_seen_product_intro_for",
            c.has_seen_product_intro_for.as_ref().map(json),
        ),
        (
            "role_at_organization",
            c.role_at_organization.clone().map(Text),
        ),
        (
            "allow_sidebar_suggestions",
            c.allow_sidebar_suggestions.map(Bool),
        ),
        ("shortcut_position", c.shortcut_position.clone().map(Text)),
        (
            "passkeys_enabled_for_2fa",
            c.passkeys_enabled_for_2fa.map(Bool),
        ),
        ("hide_mcp_hints", c.hide_mcp_hints.map(|v| Bool(Some(v)))),
        ("ui_configuration", c.ui_configuration.as_ref().map(json)),
        ("email_opt_in", c.email_opt_in.map(Bool)),
        (
            "credentials_reviewed_at",
            c.credentials_reviewed_at.map(Int),
        ),
    ];
    let mut sql = String::from("UPDATE users SET ");
    let mut values = Vec::new();
    for (column, value) in set {
        let Some(value) = value else { continue };
        if !values.is_empty() {
            sql.push_str(", ");
        }
        values.push(value);
        // `$1` is the id.
        sql.push_str(&format!("{column} = ${}", values.len() + 1));
    }
    if values.is_empty() {
        return None;
    }
    sql.push_str(" WHERE id = $1");
    Some((sql, values))
}

/// A statement whose text differs between the dialects (in a fragment, mostly); a script takes
/// its backend's text with [`super::exec::Exec::pick`].
pub struct Dialects<T = &'static str> {
    pub sqlite: T,
    pub postgres: T,
}

/// A statement that filters `$column` on a list of ids bound as `$1`: SQLite binds the list as a
/// JSON array and expands it with `json_each`, Postgres binds an array and uses `= ANY`.
macro_rules! in_id_list {
    ($before:expr, $column:literal, $after:literal) => {
        Dialects {
            sqlite: concat!(
                $before,
                $column,
                " IN (SELECT value FROM json_each($1))",
                $after
            ),
            postgres: concat!($before, $column, " = ANY($1)", $after),
        }
    };
}

/// Per user: whether they have personal API keys, whether they have a TOTP device.
pub const USER_FACTS: Dialects = in_id_list!(
    "SELECT u.id, EXISTS (SELECT 1 FROM personal_api_keys k WHERE k.user_id = u.id), \
     EXISTS (SELECT 1 FROM totp_devices d WHERE d.user_id = u.id) FROM users u WHERE ",
    "u.id",
    ""
);
pub const MEMBERSHIPS_OF_USERS: Dialects = in_id_list!(
    concat!(
        "SELECT ",
        membership_columns!(),
        ", ",
        organization_columns!(),
        " FROM organization_memberships m JOIN organizations o ON o.id = m.organization_id WHERE "
    ),
    "m.user_id",
    " ORDER BY m.joined_at, m.id"
);
pub const TEAMS_OF_ORGANIZATIONS: Dialects = in_id_list!(
    concat!("SELECT ", team_columns!(), " FROM teams t WHERE "),
    "t.organization_id",
    " ORDER BY t.id"
);
/// Active members per organization.
pub const MEMBER_COUNTS: Dialects = in_id_list!(
    "SELECT m.organization_id, count(*) FROM organization_memberships m \
     JOIN users u ON u.id = m.user_id WHERE u.is_active = TRUE AND ",
    "m.organization_id",
    " GROUP BY m.organization_id"
);
pub const SCENES_OF_USERS: Dialects = in_id_list!(
    "SELECT user_id, team_id, scene, dashboard_id FROM scene_personalisations WHERE ",
    "user_id",
    " ORDER BY id"
);
/// The integrations of one kind (`$2`) of the teams listed.
pub const TEAM_INTEGRATIONS_OF_TEAMS: Dialects = in_id_list!(
    concat!(
        "SELECT ",
        team_integration_columns!(),
        " FROM team_integrations ti WHERE "
    ),
    "ti.team_id",
    " AND ti.kind = $2 ORDER BY ti.id"
);

/// `lock_user`: on Postgres, locks the user's row for the rest of the transaction; on SQLite,
/// whether the user exists, which holds as long because its single writer holds the database's
/// write lock until commit.
pub const USER_LOCK: Dialects = Dialects {
    sqlite: "SELECT id FROM users WHERE id = $1",
    postgres: "SELECT id FROM users WHERE id = $1 FOR UPDATE",
};
/// `lock_team`: on Postgres, keeps the team from being deleted until the transaction ends; on
/// SQLite, whether the team exists (held until commit, as above).
pub const TEAM_LOCK: Dialects = Dialects {
    sqlite: "SELECT id FROM teams WHERE id = $1",
    postgres: "SELECT id FROM teams WHERE id = $1 FOR SHARE",
};
/// Serialises sign-ups so "the first user becomes staff" holds under concurrency; SQLite's single
/// writer already does.
pub const SIGNUP_LOCK: Dialects<Option<&str>> = Dialects {
    sqlite: None,
    postgres: Some("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"),
};

pub const USER_SET_CONTEXT: &str =
    "UPDATE users SET current_organization_id = $2, current_team_id = $3 WHERE id = $1";
pub const USER_MEMBERSHIP_COUNT: &str =
    "SELECT count(*) FROM organization_memberships WHERE user_id = $1";
pub const USER_DELETE: &str = "DELETE FROM users WHERE id = $1";
pub const ORGANIZATION_EXISTS: &str = "SELECT id FROM organizations WHERE id = $1";
/// The team joining an organization makes current (its first).
pub const FIRST_TEAM_OF_ORGANIZATION: &str =
    "SELECT id FROM teams WHERE organization_id = $1 ORDER BY id LIMIT 1";

/// Writes nothing when the slug is taken (also by a concurrent, not yet committed insert, which
/// Postgres waits for), so the caller retries with another slug instead of failing.
pub const ORGANIZATION_INSERT: &str = "INSERT INTO organizations (id, name, slug, created_at, \
     updated_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (slug) DO NOTHING";
pub const ORGANIZATION_SET_NAME: &str =
    "UPDATE organizations SET name = $2, updated_at = $3 WHERE id = $1";
pub const ORGANIZATION_SET_ENFORCE_2FA: &str =
    "UPDATE organizations SET enforce_2fa = $2, updated_at = $3 WHERE id = $1";
/// Every member's rendered user shows the organization: one feed entry per member.
pub const INVALIDATE_MEMBERS: &str = "INSERT INTO cache_invalidations (created_at, user_id) \
     SELECT CAST($2 AS BIGINT), user_id FROM organization_memberships WHERE organization_id = $1";
pub const ORGANIZATION_BY_ID: &str = concat!(
    "SELECT ",
    organization_columns!(),
    " FROM organizations o WHERE o.id = $1"
);

pub const TEAM_INSERT: &str = "INSERT INTO teams (uuid, organization_id, api_token, name, \
     created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id";
pub const TEAM_BY_ID: &str = concat!("SELECT ", team_columns!(), " FROM teams t WHERE t.id = $1");

pub const MEMBERSHIP_INSERT: &str = "INSERT INTO organization_memberships (id, organization_id, \
     user_id, level, invited, joined_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)";
pub const MEMBERSHIP_BY_ID: &str = concat!(
    "SELECT ",
    membership_columns!(),
    " FROM organization_memberships m WHERE m.id = $1"
);

/// `remove_membership`: on Postgres, serialises changes to the organization's members (the
/// last-owner rule); on SQLite, whether it exists (the single writer serialises already).
pub const ORGANIZATION_LOCK: Dialects = Dialects {
    sqlite: "SELECT id FROM organizations WHERE id = $1",
    postgres: "SELECT id FROM organizations WHERE id = $1 FOR UPDATE",
};
pub const MEMBERSHIP_OF_USER: &str = concat!(
    "SELECT ",
    membership_columns!(),
    " FROM organization_memberships m WHERE m.organization_id = $1 AND m.user_id = $2"
);
pub const ORGANIZATION_LEVEL_COUNT: &str =
    "SELECT count(*) FROM organization_memberships WHERE organization_id = $1 AND level = $2";
pub const MEMBERSHIP_DELETE: &str = "DELETE FROM organization_memberships WHERE id = $1";
/// A user who left their current organization moves to the one they joined first (and its
/// first team), or to none, as PostHog does.
pub const USER_LEAVE_ORGANIZATION: &str = "UPDATE users SET \
     current_organization_id = (SELECT m.organization_id FROM organization_memberships m \
       WHERE m.user_id = $1 ORDER BY m.joined_at, m.id LIMIT 1), \
     current_team_id = (SELECT t.id FROM organization_memberships m \
       JOIN teams t ON t.organization_id = m.organization_id \
       WHERE m.user_id = $1 ORDER BY m.joined_at, m.id, t.id LIMIT 1) \
     WHERE id = $1 AND current_organization_id = $2";

pub const DASHBOARD_INSERT: &str = "INSERT INTO dashboards (team_id, name, created_at) \
     VALUES ($1, $2, $3) RETURNING id, team_id, name, deleted";
pub const DASHBOARD_BY_ID: &str = "SELECT id, team_id, name, deleted FROM dashboards WHERE id = $1";

pub const SCENE_UPSERT: &str = "INSERT INTO scene_personalisations \
     (user_id, team_id, scene, dashboard_id, created_at) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (team_id, user_id, scene) DO UPDATE SET dashboard_id = excluded.dashboard_id";
/// Upsert by hand for the `team_id IS NULL` case, which a unique constraint cannot catch.
pub const SCENE_UPDATE_NULL_TEAM: &str = "UPDATE scene_personalisations SET dashboard_id = $3 \
     WHERE user_id = $1 AND team_id IS NULL AND scene = $2";

pub const API_KEY_COUNT_FOR_USER: &str =
    "SELECT count(*) FROM personal_api_keys WHERE user_id = $1";
pub const API_KEY_INSERT: &str = "INSERT INTO personal_api_keys (id, user_id, label, \
     secure_value, mask_value, created_at, scopes, scoped_teams, scoped_organizations, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub const API_KEY_BY_ID: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM personal_api_keys k WHERE k.id = $1"
);
/// The key a write starts from. Postgres locks the row so concurrent deletes and rolls of one
/// key each see the state the previous one left (SQLite's writer runs one write at a time).
pub const API_KEY_BEFORE_WRITE: Dialects = Dialects {
    sqlite: API_KEY_BY_ID,
    postgres: concat!(
        "SELECT ",
        api_key_columns!(),
        " FROM personal_api_keys k WHERE k.id = $1 FOR UPDATE"
    ),
};
pub const API_KEY_BY_SECURE_VALUE: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM personal_api_keys k JOIN users u ON u.id = k.user_id \
      WHERE k.secure_value = $1 AND u.is_active = TRUE"
);
// Prefixes are compared literally, not with LIKE: `_` is a LIKE wildcard, and SQLite's LIKE
// ignores ASCII case where Postgres' does not.
pub const API_KEY_HAS_LEGACY: &str = "SELECT count(*) FROM personal_api_keys \
     WHERE substr(secure_value, 1, 14) = 'pbkdf2_sha256$'";
pub const API_KEY_LEGACY_BY_PREFIX: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM personal_api_keys k JOIN users u ON u.id = k.user_id \
      WHERE substr(k.secure_value, 1, length($1)) = $1 AND u.is_active = TRUE"
);
pub const API_KEY_SET_SECURE_VALUE: &str =
    "UPDATE personal_api_keys SET secure_value = $2 WHERE id = $1";
pub const API_KEY_TOUCH: &str = "UPDATE personal_api_keys SET last_used_at = $2 \
     WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)";

pub const API_KEYS_OF_USER: &str = concat!(
    "SELECT ",
    api_key_columns!(),
    " FROM personal_api_keys k WHERE k.user_id = $1 ORDER BY k.created_at DESC, k.id"
);
pub const API_KEY_UPDATE: &str = "UPDATE personal_api_keys SET label = $2, scopes = $3, \
     scoped_teams = $4, scoped_organizations = $5, expires_at = $6 WHERE id = $1";
pub const API_KEY_DELETE: &str = "DELETE FROM personal_api_keys WHERE id = $1";
pub const API_KEY_ROLL: &str = "UPDATE personal_api_keys SET secure_value = $2, mask_value = $3, \
     last_rolled_at = $4 WHERE id = $1";

pub const SESSION_INSERT: &str = "INSERT INTO sessions (id, user_id, created_at, login_at, \
     expires_at, csrf_token, two_factor_verified, pending_user_id, pending_at, totp_setup_secret, \
     totp_setup_at, ip, user_agent, login_method, last_activity_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";
pub const SESSION_BY_ID: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions s WHERE s.id = $1"
);
pub const SESSION_UPDATE: &str = "UPDATE sessions SET user_id = $2, login_at = $3, \
     expires_at = $4, csrf_token = $5, two_factor_verified = $6, pending_user_id = $7, \
     pending_at = $8, totp_setup_secret = $9, totp_setup_at = $10 WHERE id = $1";
/// Writes a session row whole: every mutable column of an existing row (where and how it signed
/// in are not mutable), or a new row.
pub const SESSION_UPSERT: &str = "INSERT INTO sessions (id, user_id, created_at, login_at, \
     expires_at, csrf_token, two_factor_verified, pending_user_id, pending_at, totp_setup_secret, \
     totp_setup_at, ip, user_agent, login_method, last_activity_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) ON CONFLICT (id) DO UPDATE \
     SET user_id = excluded.user_id, login_at = excluded.login_at, \
     expires_at = excluded.expires_at, csrf_token = excluded.csrf_token, \
     two_factor_verified = excluded.two_factor_verified, pending_user_id = excluded.pending_user_id, \
     pending_at = excluded.pending_at, totp_setup_secret = excluded.totp_setup_secret, \
     totp_setup_at = excluded.totp_setup_at";
pub const SESSION_DELETE: &str = "DELETE FROM sessions WHERE id = $1";
/// Moves `last_activity_at` forward only (a late batch never undoes a newer write).
pub const SESSION_TOUCH: &str = "UPDATE sessions SET last_activity_at = $2 \
     WHERE id = $1 AND (last_activity_at IS NULL OR last_activity_at < $2)";
/// Logged-in sessions and logins still waiting for their second factor: after a credential
/// change, a login begun with the old password must not be finished either.
pub const SESSIONS_DELETE_OF_USER: &str =
    "DELETE FROM sessions WHERE (user_id = $1 OR pending_user_id = $1) AND id <> $2";
/// A session is over once `expires_at <= now` (what authentication refuses); a login that only
/// waits for its second factor is abandoned once it started before `$2`.
/// The user's signed-in sessions not over at `$2`, newest login first.
pub const SESSIONS_OF_USER: &str = concat!(
    "SELECT ",
    session_columns!(),
    " FROM sessions s WHERE s.user_id = $1 AND s.expires_at > $2 \
     ORDER BY s.login_at DESC, s.created_at DESC, s.id"
);
pub const SESSIONS_PRUNE: &str = "DELETE FROM sessions WHERE expires_at <= $1 \
     OR (user_id IS NULL AND (pending_at IS NULL OR pending_at < $2))";

pub const TOTP_BY_USER: &str = "SELECT user_id, secret, last_step, failures, throttled_until, \
     created_at FROM totp_devices WHERE user_id = $1";
pub const TOTP_UPSERT: &str = "INSERT INTO totp_devices (user_id, secret, last_step, failures, \
     throttled_until, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO UPDATE \
     SET secret = excluded.secret, last_step = excluded.last_step, failures = excluded.failures, \
     throttled_until = excluded.throttled_until, created_at = excluded.created_at";
pub const TOTP_ADVANCE: &str = "UPDATE totp_devices SET last_step = $2, failures = 0, \
     throttled_until = 0 WHERE user_id = $1 AND last_step < $2";
/// Counts an attempt as two failures (PostHog counts a miss twice) and throttles the device for
/// 2^(failures−1) s (at most 4096 s) — in the statement that checks it is not throttled, so
/// concurrent attempts cannot both pass the check.
pub const TOTP_CLAIM_ATTEMPT: &str = "UPDATE totp_devices SET failures = failures + 2, \
     throttled_until = $2 + 1000000 * (CASE WHEN failures + 1 >= 12 THEN 4096 \
     ELSE CAST(1 AS BIGINT) << CAST(failures + 1 AS INTEGER) END) \
     WHERE user_id = $1 AND throttled_until <= $2 \
     RETURNING user_id, secret, last_step, failures, throttled_until, created_at";
pub const TOTP_CLEAR_THROTTLE: &str =
    "UPDATE totp_devices SET failures = 0, throttled_until = 0 WHERE user_id = $1";
pub const TOTP_DELETE: &str = "DELETE FROM totp_devices WHERE user_id = $1";
pub const BACKUP_CODES_DELETE: &str = "DELETE FROM backup_codes WHERE user_id = $1";
pub const BACKUP_CODE_INSERT: &str =
    "INSERT INTO backup_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)";
pub const BACKUP_CODE_CONSUME: &str =
    "DELETE FROM backup_codes WHERE user_id = $1 AND code_hash = $2";
pub const BACKUP_CODE_COUNT: &str = "SELECT count(*) FROM backup_codes WHERE user_id = $1";

/// Rehashes only a password nobody changed since it was read.
pub const USER_UPGRADE_PASSWORD: &str =
    "UPDATE users SET password = $3 WHERE id = $1 AND password = $2";
pub const USER_SET_RESET_REQUESTED: &str =
    "UPDATE users SET requested_password_reset_at = $2 WHERE id = $1";

pub const OUTBOX_INSERT: &str = "INSERT INTO outbox (recipient, subject, body, created_at, \
     next_attempt_at) VALUES ($1, $2, $3, $4, $4)";
pub const OUTBOX_STATUS: &str = "SELECT count(*), COALESCE(sum(CASE WHEN next_attempt_at <= $1 \
     AND (locked_until IS NULL OR locked_until <= $1) THEN 1 ELSE 0 END), 0) \
     FROM outbox WHERE dead_at IS NULL";
/// The rows a claim may take; the backends wrap it (Postgres adds `FOR UPDATE SKIP LOCKED`).
macro_rules! outbox_due {
    () => {
        "SELECT id FROM outbox WHERE dead_at IS NULL AND next_attempt_at <= $1 \
         AND (locked_until IS NULL OR locked_until <= $1) ORDER BY id LIMIT $3"
    };
}
pub(crate) use outbox_due;
/// Dead letters (given up, bodies already dropped) are kept a while for the operator, then go.
pub const OUTBOX_PRUNE_DEAD: &str = "DELETE FROM outbox WHERE dead_at IS NOT NULL AND dead_at < $1";
pub const OUTBOX_DELIVERED: &str = "DELETE FROM outbox WHERE id = $1 AND locked_until = $2";
pub const OUTBOX_RETRY: &str = "UPDATE outbox SET next_attempt_at = $3, last_error = $4, \
     locked_until = NULL WHERE id = $1 AND locked_until = $2";
pub const OUTBOX_GIVE_UP: &str = "UPDATE outbox SET dead_at = $3, last_error = $4, body = NULL, \
     locked_until = NULL WHERE id = $1 AND locked_until = $2";

pub const ACTIVITY_INSERT: &str = "INSERT INTO activity_log (user_id, activity, created_at, ip, \
     user_agent, actor_type, actor_id, actor_label, detail) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
macro_rules! activity_columns {
    () => {
        "id, user_id, activity, created_at, ip, user_agent, actor_type, actor_id, actor_label, detail"
    };
}
/// A page of one user's log below a cursor (`$3`), newest first; `$2` filters by kind when set.
pub const ACTIVITY_BEFORE: &str = concat!(
    "SELECT ",
    activity_columns!(),
    " FROM activity_log WHERE user_id = $1 AND ($2 = '' OR activity = $2) AND id < $3 \
     ORDER BY id DESC LIMIT $4"
);
/// The page above a cursor (`$3`), oldest first (the caller reverses it).
pub const ACTIVITY_AFTER: &str = concat!(
    "SELECT ",
    activity_columns!(),
    " FROM activity_log WHERE user_id = $1 AND ($2 = '' OR activity = $2) AND id > $3 \
     ORDER BY id ASC LIMIT $4"
);
/// How one page of [`super::Store::activity`] is read.
pub struct ActivityPage {
    pub statement: &'static str,
    pub cursor: i64,
    pub limit: i64,
    ascending: bool,
}

impl ActivityPage {
    pub fn of(q: &super::ActivityQuery) -> Self {
        let limit = q.limit as i64;
        match (q.after, q.before) {
            (Some(after), _) => ActivityPage {
                statement: ACTIVITY_AFTER,
                cursor: after,
                limit,
                ascending: true,
            },
            (None, before) => ActivityPage {
                statement: ACTIVITY_BEFORE,
                cursor: before.unwrap_or(i64::MAX),
                limit,
                ascending: false,
            },
        }
    }

    /// Puts the rows read newest first.
    pub fn newest_first<T>(&self, rows: &mut [T]) {
        if self.ascending {
            rows.reverse();
        }
    }
}

pub const ACTIVITY_PRUNE: &str = "DELETE FROM activity_log WHERE created_at < $1";
pub const INVALIDATION_INSERT: &str =
    "INSERT INTO cache_invalidations (created_at, user_id, key_hash) VALUES ($1, $2, $3)";
pub const INVALIDATIONS_SINCE: &str = "SELECT seq, created_at, user_id, key_hash \
     FROM cache_invalidations WHERE created_at > $1 ORDER BY seq DESC LIMIT 10000";
pub const INVALIDATIONS_PRUNE: &str = "DELETE FROM cache_invalidations WHERE created_at < $1";

pub const SIGNAL_AUTONOMY_BY_USER: &str = "SELECT id, user_id, autostart_priority, created_at, \
     updated_at FROM signal_autonomy_configs WHERE user_id = $1";
/// The upsert of `POST …/signal_autonomy/`: `$5` says whether the priority was sent (partial
/// update); `updated_at` moves either way.
pub const SIGNAL_AUTONOMY_UPSERT: &str = "INSERT INTO signal_autonomy_configs (id, user_id, \
     autostart_priority, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
     ON CONFLICT (user_id) DO UPDATE SET autostart_priority = CASE WHEN $5 \
     THEN excluded.autostart_priority ELSE signal_autonomy_configs.autostart_priority END, \
     updated_at = excluded.updated_at \
     RETURNING id, user_id, autostart_priority, created_at, updated_at";
pub const SIGNAL_AUTONOMY_DELETE: &str = "DELETE FROM signal_autonomy_configs WHERE user_id = $1";

pub const USER_INTEGRATIONS_OF_USER: &str = concat!(
    "SELECT ",
    user_integration_columns!(),
    " FROM user_integrations i WHERE i.user_id = $1 AND i.kind = $2 ORDER BY i.created_at, i.id"
);
pub const USER_INTEGRATION_BY_KEY: &str = concat!(
    "SELECT ",
    user_integration_columns!(),
    " FROM user_integrations i WHERE i.user_id = $1 AND i.kind = $2 AND i.integration_id = $3"
);
/// Reconnecting replaces config and secrets wholesale and keeps the repository cache.
pub const USER_INTEGRATION_UPSERT: &str = "INSERT INTO user_integrations (id, user_id, kind, \
     integration_id, config, sensitive_config, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
     ON CONFLICT (user_id, kind, integration_id) DO UPDATE SET config = excluded.config, \
     sensitive_config = excluded.sensitive_config, updated_at = excluded.updated_at";
pub const USER_INTEGRATION_SET_SECRETS: &str = "UPDATE user_integrations SET config = $2, \
     sensitive_config = $3, updated_at = $4 WHERE id = $1";
pub const USER_INTEGRATION_SET_REPOSITORIES: &str = "UPDATE user_integrations \
     SET repository_cache = $2, repository_cache_updated_at = $3 WHERE id = $1";
pub const USER_INTEGRATION_DELETE: &str = "DELETE FROM user_integrations WHERE id = $1";

pub const TEAM_INTEGRATION_UPSERT: &str = "INSERT INTO team_integrations (team_id, kind, \
     integration_id, config, created_by_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (team_id, kind, integration_id) DO UPDATE SET config = excluded.config, \
     created_by_id = COALESCE(excluded.created_by_id, team_integrations.created_by_id) \
     RETURNING id";
pub const TEAM_INTEGRATION_BY_ID: &str = concat!(
    "SELECT ",
    team_integration_columns!(),
    " FROM team_integrations ti WHERE ti.id = $1"
);
pub const TEAM_INTEGRATIONS_CREATED_BY: &str = concat!(
    "SELECT ",
    team_integration_columns!(),
    " FROM team_integrations ti WHERE ti.created_by_id = $1 AND ti.kind = $2 ORDER BY ti.id"
);

/// The case-insensitive form an email is unique under.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Names what a uniqueness error duplicated, from its constraint name or message.
pub fn unique_target(message: &str) -> Unique {
    const TARGETS: [(&str, Unique); 10] = [
        ("email_lower", Unique::Email),
        ("distinct_id", Unique::DistinctId),
        ("organization_memberships", Unique::Membership),
        ("slug", Unique::Slug),
        ("api_token", Unique::ApiToken),
        ("secure_value", Unique::ApiKey),
        ("scene_personalisations", Unique::ScenePersonalisation),
        ("settings", Unique::Setting),
        ("user_integrations", Unique::UserIntegration),
        ("team_integrations", Unique::TeamIntegration),
    ];
    TARGETS
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or(Unique::Row, |(_, target)| *target)
}

/// Django's `slugify` for ASCII: lower-case, runs of spaces and hyphens become one hyphen, other
/// punctuation is dropped; at most 48 characters.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    let mut pending_dash = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            if pending_dash && !slug.is_empty() {
                slug.push('-');
            }
            pending_dash = false;
            slug.push(c.to_ascii_lowercase());
        } else if c.is_whitespace() || c == '-' {
            pending_dash = true;
        }
    }
    let slug: String = slug.chars().take(48).collect();
    let slug = slug.trim_matches(|c| c == '-' || c == '_').to_string();
    if slug.is_empty() {
        "organization".to_string()
    } else {
        slug
    }
}

pub const DEFAULT_DASHBOARD_NAME: &str = "My App Dashboard";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_django() {
        assert_eq!(slugify("Hedgehogs United, LLC"), "hedgehogs-united-llc");
        assert_eq!(slugify("  Jane's  Organization "), "janes-organization");
        assert_eq!(slugify("!!!"), "organization");
    }

    #[test]
    fn conflicts_name_their_target() {
        assert_eq!(
            unique_target("UNIQUE constraint failed: users.email_lower"),
            Unique::Email
        );
        assert_eq!(
            unique_target(
                "duplicate key value violates unique constraint \"users_email_lower_key\""
            ),
            Unique::Email
        );
        assert_eq!(unique_target("sessions_pkey"), Unique::Row);
    }

    #[test]
    fn user_update_sets_only_the_named_columns() {
        assert!(user_update(&super::super::UserChanges::default()).is_none());
        let (sql, values) = user_update(&super::super::UserChanges {
            email: Some("A@Example.com".into()),
            last_login: Some(None),
            ..Default::default()
        })
        .expect("columns to set");
        assert_eq!(
            sql,
            "UPDATE users SET email = $2, email_lower = $3, last_login = $4 WHERE id = $1"
        );
        assert_eq!(values.len(), 3);
        assert!(matches!(&values[1], ColumnValue::Text(Some(k)) if k == "a@example.com"));
        assert!(matches!(values[2], ColumnValue::Int(None)));
    }
}
