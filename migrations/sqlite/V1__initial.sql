-- Timestamps are microseconds since the Unix epoch; JSON and UUIDs are text (same as Postgres).
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    logo_media_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    plugins_access_level BIGINT NOT NULL DEFAULT 9,
    available_product_features TEXT NOT NULL DEFAULT '[]',
    is_member_join_email_enabled BOOLEAN NOT NULL DEFAULT TRUE,
    enforce_2fa BOOLEAN,
    members_can_invite BOOLEAN DEFAULT TRUE,
    members_can_use_personal_api_keys BOOLEAN NOT NULL DEFAULT TRUE,
    allow_publicly_shared_resources BOOLEAN NOT NULL DEFAULT TRUE,
    is_ai_data_processing_approved BOOLEAN,
    default_experiment_stats_method TEXT DEFAULT 'bayesian',
    default_anonymize_ips BOOLEAN NOT NULL DEFAULT FALSE,
    default_role_id TEXT,
    customer_id TEXT,
    is_active BOOLEAN DEFAULT TRUE,
    is_not_active_reason TEXT
);

CREATE TABLE teams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    api_token TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    completed_snippet_onboarding BOOLEAN NOT NULL DEFAULT FALSE,
    has_completed_onboarding_for TEXT,
    ingested_event BOOLEAN NOT NULL DEFAULT FALSE,
    is_demo BOOLEAN NOT NULL DEFAULT FALSE,
    timezone TEXT NOT NULL DEFAULT 'UTC',
    access_control BOOLEAN NOT NULL DEFAULT FALSE,
    app_urls TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL
);
CREATE INDEX teams_organization_id ON teams (organization_id, id);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL,
    email_lower TEXT NOT NULL UNIQUE,
    pending_email TEXT,
    password TEXT NOT NULL DEFAULT '',
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    distinct_id TEXT UNIQUE,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    is_staff BOOLEAN NOT NULL DEFAULT FALSE,
    date_joined BIGINT NOT NULL,
    last_login BIGINT,
    is_email_verified BOOLEAN,
    requested_password_reset_at BIGINT,
    current_organization_id TEXT REFERENCES organizations(id) ON DELETE SET NULL,
    current_team_id BIGINT REFERENCES teams(id) ON DELETE SET NULL,
    partial_notification_settings TEXT,
    anonymize_data BOOLEAN DEFAULT FALSE,
    allow_impersonation BOOLEAN,
    toolbar_mode TEXT DEFAULT 'toolbar',
    theme_mode TEXT,
    hedgehog_config TEXT,
    events_column_config TEXT NOT NULL DEFAULT '{"active": "DEFAULT"}',
    has_seen_product_intro_for TEXT,
    role_at_organization TEXT,
    allow_sidebar_suggestions BOOLEAN,
    shortcut_position TEXT,
    passkeys_enabled_for_2fa BOOLEAN DEFAULT FALSE,
    hide_mcp_hints BOOLEAN NOT NULL DEFAULT FALSE,
    ui_configuration TEXT,
    email_opt_in BOOLEAN,
    credentials_reviewed_at BIGINT
);
-- Exact (case-sensitive) `?email=` filter and the staff filter of the list endpoint.
CREATE INDEX users_email ON users (email);
CREATE INDEX users_is_staff ON users (is_staff, id);

CREATE TABLE organization_memberships (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    level BIGINT NOT NULL DEFAULT 1,
    invited BOOLEAN NOT NULL DEFAULT FALSE,
    joined_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (organization_id, user_id)
);
CREATE INDEX organization_memberships_user_id ON organization_memberships (user_id, joined_at);

CREATE TABLE dashboards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE scene_personalisations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    team_id BIGINT REFERENCES teams(id) ON DELETE CASCADE,
    scene TEXT NOT NULL,
    dashboard_id BIGINT REFERENCES dashboards(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    UNIQUE (team_id, user_id, scene)
);
CREATE INDEX scene_personalisations_user_id ON scene_personalisations (user_id, id);

CREATE TABLE personal_api_keys (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    secure_value TEXT NOT NULL UNIQUE,
    mask_value TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    last_rolled_at BIGINT,
    scopes TEXT NOT NULL DEFAULT '[]',
    scoped_teams TEXT,
    scoped_organizations TEXT,
    expires_at BIGINT
);
CREATE INDEX personal_api_keys_user_id ON personal_api_keys (user_id, created_at);

-- Feed of changes that invalidate cached responses, read by every process sharing the database.
CREATE TABLE cache_invalidations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at BIGINT NOT NULL,
    user_id BIGINT,
    key_hash TEXT
);
CREATE INDEX cache_invalidations_created_at ON cache_invalidations (created_at);
