//! Business rules behind the HTTP handlers; no axum types beyond the error.

pub mod accounts;
pub mod emails;
pub mod github;
pub mod passwords;
pub mod render;
pub mod users;
