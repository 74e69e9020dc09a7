-- Counts behind `GET /api/users/` pages, kept by triggers so listing never counts a million rows.
CREATE TABLE user_counts (
    key TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);
INSERT INTO user_counts (key, n) VALUES
    ('active', (SELECT count(*) FROM users WHERE is_active = TRUE)),
    ('active_staff', (SELECT count(*) FROM users WHERE is_active = TRUE AND is_staff = TRUE));

CREATE FUNCTION users_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_active INTEGER := 0;
    new_active INTEGER := 0;
    old_staff INTEGER := 0;
    new_staff INTEGER := 0;
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.is_active THEN
        old_active := 1;
        IF OLD.is_staff THEN old_staff := 1; END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.is_active THEN
        new_active := 1;
        IF NEW.is_staff THEN new_staff := 1; END IF;
    END IF;
    IF new_active <> old_active THEN
        UPDATE user_counts SET n = n + new_active - old_active WHERE key = 'active';
    END IF;
    IF new_staff <> old_staff THEN
        UPDATE user_counts SET n = n + new_staff - old_staff WHERE key = 'active_staff';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_count_insert AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION users_count_change();
CREATE TRIGGER users_count_delete AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION users_count_change();
CREATE TRIGGER users_count_update AFTER UPDATE OF is_active, is_staff ON users
    FOR EACH ROW EXECUTE FUNCTION users_count_change();
