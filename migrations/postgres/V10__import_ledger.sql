-- Every row `hoglet import posthog` brought over, by PostHog table and id. A rerun skips what is
-- listed here, so it never brings back a key revoked, a backup code used or a user deleted in
-- hoglet since; a row skipped for a conflict is not listed, so a later run can still bring it.
CREATE TABLE import_ledger (
    source TEXT NOT NULL,
    source_id TEXT NOT NULL,
    imported_at BIGINT NOT NULL,
    PRIMARY KEY (source, source_id)
);
