//! Business rules behind the HTTP handlers; no axum types beyond the error.

pub mod accounts;
pub mod activity;
pub mod api_keys;
pub mod caller;
pub mod emails;
pub mod export;
pub mod github;
pub mod login_sessions;
pub mod recovery;
pub mod render;
pub mod sessions;
pub mod signal_autonomy;
pub mod two_factor;
pub mod users;
