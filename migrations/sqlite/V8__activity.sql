-- What happened to each account (see src/service/activity.rs), written in the transaction of the
-- action it records. `user_id` is null for a failed login naming no account. Never a secret:
-- `detail` holds field names, methods and ids, not values that protect anything.
CREATE TABLE activity_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    activity TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    ip TEXT,
    user_agent TEXT,
    actor_type TEXT NOT NULL,
    actor_id TEXT,
    actor_label TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX activity_log_user ON activity_log (user_id, id);
CREATE INDEX activity_log_created_at ON activity_log (created_at);

-- Where and how each session signed in, and when it was last used (written at most once a
-- minute), for the login-sessions list.
ALTER TABLE sessions ADD COLUMN ip TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;
ALTER TABLE sessions ADD COLUMN login_method TEXT;
ALTER TABLE sessions ADD COLUMN last_activity_at BIGINT;
