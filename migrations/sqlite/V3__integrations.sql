-- Per-user signal autonomy opt-in (at most one row per user).
CREATE TABLE signal_autonomy_configs (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
    autostart_priority TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Personal integrations (PostHog's `UserIntegration`): one row per user, kind and installation.
-- `sensitive_config` is the sealed JSON of the tokens (never plaintext); '' when there are none.
CREATE TABLE user_integrations (
    id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    integration_id TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}',
    sensitive_config TEXT NOT NULL DEFAULT '',
    repository_cache TEXT NOT NULL DEFAULT '[]',
    repository_cache_updated_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (user_id, kind, integration_id)
);
CREATE INDEX user_integrations_integration_id ON user_integrations (kind, integration_id);

-- Project-level integrations (PostHog's `Integration`), registered with `hoglet team link-github`.
CREATE TABLE team_integrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    team_id BIGINT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    integration_id TEXT NOT NULL,
    config TEXT NOT NULL DEFAULT '{}',
    created_by_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (team_id, kind, integration_id)
);
CREATE INDEX team_integrations_created_by ON team_integrations (created_by_id, id);
