-- Outgoing mail, written in the transaction that mints the link it carries and delivered by a
-- background worker (see src/outbox.rs). `body` is sealed with a key derived from
-- HOGLET_SECRET_KEY (it carries one-time links); a delivered row is deleted, a row given up after
-- the last attempt stays as a body-less record with `dead_at` set. `locked_until` is the lease of
-- the worker delivering the row: nobody else claims it before then.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    locked_until BIGINT,
    last_error TEXT,
    dead_at BIGINT
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE dead_at IS NULL;
