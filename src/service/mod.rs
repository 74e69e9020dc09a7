//! Business rules behind the HTTP handlers; no axum types beyond the error.

pub mod render;
pub mod users;
