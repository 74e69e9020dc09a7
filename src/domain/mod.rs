//! Domain rules that do not depend on HTTP or storage: field validation as DRF does it, scopes,
//! key formats, passwords and user settings.

pub mod api_key;
pub mod fields;
pub mod password;
pub mod python;
pub mod redirect;
pub mod scope;
pub mod tokens;
pub mod totp;
pub mod user;
