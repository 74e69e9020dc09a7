-- Server-side browser sessions; `id` is the SHA-256 of the cookie value, never the value itself.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    login_at BIGINT,
    expires_at BIGINT NOT NULL,
    csrf_token TEXT NOT NULL,
    two_factor_verified BOOLEAN NOT NULL DEFAULT FALSE,
    pending_user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    pending_at BIGINT,
    totp_setup_secret TEXT,
    totp_setup_at BIGINT
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

-- One TOTP device per user; the secret is encrypted with a key derived from HOGLET_SECRET_KEY.
CREATE TABLE totp_devices (
    user_id BIGINT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret TEXT NOT NULL,
    last_step BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    throttled_until BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- Unused backup codes, as keyed hashes.
CREATE TABLE backup_codes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (user_id, code_hash)
);
