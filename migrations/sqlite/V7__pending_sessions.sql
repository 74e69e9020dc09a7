-- A user's pending second-factor logins end with their other sessions.
CREATE INDEX sessions_pending_user_id ON sessions (pending_user_id);
