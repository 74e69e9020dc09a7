//! The request bodies as the OpenAPI document describes them. Handlers read bodies field by field
//! with DRF's rules (`crate::domain::fields`: coercions, the exact error of each field), so these
//! types only document; each names the handler that reads it.
#![allow(dead_code)]

use utoipa::ToSchema;
use uuid::Uuid;

// `POST /api/signup/` (`accounts::signup`).
#[derive(ToSchema)]
pub struct SignupRequest {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub first_name: String,
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub last_name: Option<String>,
    #[schema(format = Email)]
    pub email: String,
    /// At least 8 characters, and not easy to guess.
    #[schema(min_length = 8, max_length = 72)]
    pub password: String,
    #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub organization_name: Option<String>,
    pub role_at_organization: Option<RoleAtOrganization>,
    pub email_opt_in: Option<bool>,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum RoleAtOrganization {
    Engineering,
    Data,
    Product,
    Founder,
    Leadership,
    Marketing,
    Sales,
    Student,
    Other,
}

// `POST /api/login/` (`accounts::login`).
#[derive(ToSchema)]
pub struct LoginRequest {
    #[schema(format = Email)]
    pub email: String,
    pub password: String,
}

// `POST /api/login/token/` (`accounts::login_token`), and 2FA setup's validation
// (`two_factor::validate`): a TOTP code, or (at login) a backup code.
#[derive(ToSchema)]
pub struct TokenRequest {
    pub token: String,
}

// `POST /api/login/precheck/` and `POST /api/reset/` (`accounts`).
#[derive(ToSchema)]
pub struct EmailRequest {
    #[schema(format = Email)]
    pub email: String,
}

// `POST /api/reset/{user_uuid}/` (`accounts::complete_password_reset`).
#[derive(ToSchema)]
pub struct PasswordResetRequest {
    pub token: String,
    /// At least 8 characters, and not easy to guess.
    #[schema(min_length = 8, max_length = 128)]
    pub password: String,
}

// `POST /api/users/request_email_verification/` (`accounts::request_email_verification`).
#[derive(ToSchema)]
pub struct EmailVerificationRequest {
    pub uuid: Uuid,
}

// `POST /api/users/verify_email/` (`accounts::verify_email`).
#[derive(ToSchema)]
pub struct VerifyEmailRequest {
    pub uuid: Uuid,
    pub token: String,
}

// `POST /logout/` (`accounts::logout`).
#[derive(ToSchema)]
pub struct LogoutRequest {
    /// Where to go after logging in again (same-site paths only).
    pub next: Option<String>,
}

// `POST /api/personal_api_keys/` and `PUT …/{id}/` (`api_keys::read_input`).
#[derive(ToSchema)]
pub struct PersonalApiKeyRequest {
    #[schema(min_length = 1, max_length = 40, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")]
    pub label: String,
    /// `*`, or `<object>:read` / `<object>:write`.
    #[schema(min_items = 1, inline)]
    pub scopes: Vec<Scope>,
    /// Project ids the key is limited to (null: every project).
    pub scoped_teams: Option<Vec<i64>>,
    /// Organization ids the key is limited to (null: every organization).
    pub scoped_organizations: Option<Vec<Uuid>>,
    /// After this the key is refused (null: never).
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

// `PATCH /api/personal_api_keys/{id}/`: any subset of `PersonalApiKeyRequest`.
#[derive(ToSchema)]
pub struct PersonalApiKeyPatch {
    #[schema(min_length = 1, max_length = 40, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")]
    pub label: Option<String>,
    #[schema(min_items = 1, inline)]
    pub scopes: Option<Vec<Scope>>,
    pub scoped_teams: Option<Vec<i64>>,
    pub scoped_organizations: Option<Vec<Uuid>>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

#[derive(ToSchema)]
#[schema(pattern = r"^(\*|[a-z_]+:(read|write))$")]
pub struct Scope(String);

// `POST /api/users/{uuid}/scene_personalisation/` (`users::scene_personalisation`).
#[derive(ToSchema)]
pub struct SceneRequest {
    #[schema(max_length = 200)]
    pub scene: String,
    /// A dashboard of the user's current project.
    pub dashboard: i64,
}

// `POST /api/users/{user_id}/signal_autonomy/` (`signal_autonomy::create`).
#[derive(ToSchema)]
pub struct SignalAutonomyRequest {
    /// Null: the team's default.
    pub autostart_priority: Option<Priority>,
}

#[derive(ToSchema)]
pub enum Priority {
    P0,
    P1,
    P2,
    P3,
    P4,
}

// `POST /api/users/{uuid}/integrations/github/start/` (`integrations::github_start`).
#[derive(ToSchema)]
pub struct GithubStartRequest {
    /// A project of the user (default: the current one).
    pub team_id: Option<i64>,
    /// `posthog_code` for PostHog Code's OAuth fast path.
    pub connect_from: Option<String>,
}
