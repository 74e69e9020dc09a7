//! Request bodies the OpenAPI document describes field by field where the handler reads a free
//! map: the user update (`PUT`/`PATCH /api/users/{uuid}/`) and the hedgehog config. Like
//! [`crate::http::requests`], these types only document: handlers read bodies field by field
//! with DRF's rules and exact messages (`crate::service::users::apply_update`), so the
//! constraints here are the ones that code enforces, named the way PostHog's `PatchedUser` /
//! `User` schemas name them.
#![allow(dead_code)]

use std::borrow::Cow;

use serde_json::Value;
use utoipa::openapi::schema::AdditionalProperties;
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use crate::http::requests::RoleAtOrganization;

/// The user fields a body may carry, in PostHog's order (when several are invalid, the first in
/// this order is reported). `Option` marks the nullable ones; what is required is decided by
/// [`PatchedUser`] (nothing) and [`UserUpdate`] (`email` and `password`).
#[derive(ToSchema)]
pub struct UserFields {
    /// Ignored if sent.
    #[schema(read_only, format = DateTime)]
    pub date_joined: String,
    /// Ignored if sent.
    #[schema(read_only)]
    pub uuid: Uuid,
    /// Ignored if sent.
    #[schema(read_only)]
    pub distinct_id: Option<String>,
    #[schema(max_length = 150, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub first_name: String,
    #[schema(max_length = 150, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub last_name: String,
    /// The login email. With a session, a different address is not applied at once: a
    /// verification email goes to it first (when email is configured). Personal API keys may
    /// not change it.
    #[schema(format = Email, min_length = 1, max_length = 254)]
    pub email: String,
    /// Ignored if sent.
    #[schema(read_only, format = Email)]
    pub pending_email: Option<String>,
    /// Ignored if sent.
    #[schema(read_only)]
    pub is_email_verified: Option<bool>,
    /// Notification preferences, merged into the stored ones: only the keys sent change.
    /// Values are booleans, or (for per-project and per-resource keys) maps of ids to booleans.
    #[schema(value_type = Object, additional_properties)]
    pub notification_settings: Value,
    /// Whether events captured for this user are anonymized when identified.
    pub anonymize_data: Option<bool>,
    pub allow_impersonation: Option<bool>,
    pub toolbar_mode: Option<ToolbarMode>,
    /// Ignored if sent.
    #[schema(read_only)]
    pub has_password: bool,
    /// Ignored if sent.
    #[schema(read_only)]
    pub id: i64,
    /// Only staff may set it.
    pub is_staff: bool,
    /// Switch to this organization (one the user belongs to).
    #[schema(write_only, format = Uuid)]
    pub set_current_organization: String,
    /// Switch to this project (its id; a JSON number is accepted too).
    #[schema(write_only)]
    pub set_current_team: String,
    /// The new password: at least 8 characters, not easy to guess. Needs `current_password`
    /// when the user has one; personal API keys may not change it.
    #[schema(write_only, min_length = 1, max_length = 128)]
    pub password: String,
    /// The user's current password, required to change `password` when one is set.
    #[schema(write_only, min_length = 1)]
    pub current_password: String,
    /// Any JSON except null; replaced wholesale.
    pub events_column_config: Value,
    /// Any JSON, or null; replaced wholesale.
    pub has_seen_product_intro_for: Value,
    pub theme_mode: Option<ThemeMode>,
    /// Any JSON, or null; replaced wholesale (also writable at `…/hedgehog_config/`).
    pub hedgehog_config: Value,
    pub allow_sidebar_suggestions: Option<bool>,
    /// A stored null is answered as `above`.
    pub shortcut_position: Option<ShortcutPosition>,
    pub role_at_organization: RoleAtOrganization,
    /// hoglet has no passkeys, so only `false` or null is accepted.
    pub passkeys_enabled_for_2fa: Option<bool>,
    /// Opts out of in-app hints about the PostHog MCP integration.
    pub hide_mcp_hints: bool,
    /// Per-user UI customization: an object, replaced wholesale; null clears it.
    #[schema(value_type = Option<Object>, additional_properties)]
    pub ui_configuration: Option<Value>,
}

/// A string enum that also takes `""` (DRF's `allow_blank`), written by hand: utoipa derives no
/// empty variant name. Null is allowed where the field is an `Option`.
fn blank_or(values: &[&str], what: &str) -> RefOr<Schema> {
    let values = values.iter().copied().chain([""]);
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(format!("A {what} value, or `\"\"` for none.")))
        .enum_values(Some(values))
        .build()
        .into()
}

macro_rules! blank_or_enum {
    ($name:ident, $what:literal, [$($value:literal),+]) => {
        #[doc = concat!("`", $what, "`: one of its values, or `\"\"`.")]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                blank_or(&[$($value),+], concat!("`", $what, "`"))
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

blank_or_enum!(ToolbarMode, "toolbar_mode", ["disabled", "toolbar"]);
blank_or_enum!(ThemeMode, "theme_mode", ["light", "dark", "system"]);
blank_or_enum!(
    ShortcutPosition,
    "shortcut_position",
    ["above", "below", "hidden"]
);

/// [`UserFields`] with `required` replaced and a description.
fn user_fields(required: &[&str], description: &str) -> RefOr<Schema> {
    let mut schema = UserFields::schema();
    if let RefOr::T(Schema::Object(object)) = &mut schema {
        object.required = required.iter().map(|r| r.to_string()).collect();
        object.description = Some(description.into());
    }
    schema
}

/// `PATCH /api/users/{uuid}/`: any subset of the writable fields.
pub struct PatchedUser;

impl PartialSchema for PatchedUser {
    fn schema() -> RefOr<Schema> {
        user_fields(
            &[],
            "Any subset of the writable user fields. Unknown and read-only keys are ignored; \
             when several fields are invalid, the first in this order is reported.",
        )
    }
}

impl ToSchema for PatchedUser {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PatchedUser")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <UserFields as ToSchema>::schemas(schemas);
    }
}

/// `PUT /api/users/{uuid}/`: the serializer in full mode.
pub struct UserUpdate;

impl PartialSchema for UserUpdate {
    fn schema() -> RefOr<Schema> {
        user_fields(
            &["email", "password"],
            "Every writable user field, `email` and `password` required (so with a session this \
             is always a password change, and personal API keys are always refused). Fields \
             left out keep their values; unknown and read-only keys are ignored.",
        )
    }
}

impl ToSchema for UserUpdate {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("UserUpdate")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <UserFields as ToSchema>::schemas(schemas);
    }
}

/// Keys the PostHog web app writes into a hedgehog config.
#[derive(ToSchema)]
pub struct HedgehogKeys {
    pub enabled: Option<bool>,
    pub use_as_profile: Option<bool>,
    pub color: Option<String>,
    pub skin: Option<String>,
    #[schema(value_type = Option<Vec<String>>)]
    pub accessories: Option<Vec<Value>>,
    pub walking_enabled: Option<bool>,
    pub interactions_enabled: Option<bool>,
    pub controls_enabled: Option<bool>,
    pub party_mode_enabled: Option<bool>,
}

/// `PATCH /api/users/{uuid}/hedgehog_config/`: the body is stored as sent (any keys) and
/// replaces the previous config.
pub struct HedgehogConfig;

impl PartialSchema for HedgehogConfig {
    fn schema() -> RefOr<Schema> {
        let mut schema = HedgehogKeys::schema();
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(true)));
            object.description = Some(
                "Stored as sent, replacing the previous config: the keys below are the ones the \
                 PostHog web app writes, but any are kept, and none is checked."
                    .into(),
            );
        }
        schema
    }
}

impl ToSchema for HedgehogConfig {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("HedgehogConfig")
    }
}
