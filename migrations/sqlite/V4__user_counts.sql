-- Counts behind `GET /api/users/` pages, kept by triggers so listing never counts a million rows.
CREATE TABLE user_counts (
    key TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);
INSERT INTO user_counts (key, n) VALUES
    ('active', (SELECT count(*) FROM users WHERE is_active = TRUE)),
    ('active_staff', (SELECT count(*) FROM users WHERE is_active = TRUE AND is_staff = TRUE));

CREATE TRIGGER users_count_insert AFTER INSERT ON users BEGIN
    UPDATE user_counts SET n = n + 1 WHERE key = 'active' AND NEW.is_active = TRUE;
    UPDATE user_counts SET n = n + 1 WHERE key = 'active_staff' AND NEW.is_active = TRUE AND NEW.is_staff = TRUE;
END;

CREATE TRIGGER users_count_delete AFTER DELETE ON users BEGIN
    UPDATE user_counts SET n = n - 1 WHERE key = 'active' AND OLD.is_active = TRUE;
    UPDATE user_counts SET n = n - 1 WHERE key = 'active_staff' AND OLD.is_active = TRUE AND OLD.is_staff = TRUE;
END;

CREATE TRIGGER users_count_update AFTER UPDATE OF is_active, is_staff ON users
WHEN OLD.is_active IS NOT NEW.is_active OR OLD.is_staff IS NOT NEW.is_staff BEGIN
    UPDATE user_counts SET n = n - 1 WHERE key = 'active' AND OLD.is_active = TRUE;
    UPDATE user_counts SET n = n + 1 WHERE key = 'active' AND NEW.is_active = TRUE;
    UPDATE user_counts SET n = n - 1 WHERE key = 'active_staff' AND OLD.is_active = TRUE AND OLD.is_staff = TRUE;
    UPDATE user_counts SET n = n + 1 WHERE key = 'active_staff' AND NEW.is_active = TRUE AND NEW.is_staff = TRUE;
END;
