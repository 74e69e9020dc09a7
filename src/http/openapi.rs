//! The OpenAPI document: its frame here, every operation from the `#[utoipa::path]` of its handler,
//! then [`document_errors`], which adds the error answers the shared machinery (body parsing,
//! authentication, CSRF, throttles, routing) can give to each operation, so no handler has to
//! repeat them.

use utoipa::openapi::content::Content;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::response::Response;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Object, Ref, RefOr, Type};
use utoipa::{Modify, OpenApi};

use crate::auth::session::TWO_FACTOR_ALLOWED_PATHS;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hoglet",
        description = "PostHog's Users REST API, served by hoglet. Authenticate with a personal API \
                       key (`Authorization: Bearer phx_…`) or a browser session. Every answer \
                       carries `X-Request-Id`: the request's own when it sent one of 1-64 \
                       characters of `[A-Za-z0-9._-]`, otherwise a new UUIDv7; the server's log \
                       lines for the request carry the same id.",
    ),
    modifiers(&SecuritySchemes),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "users", description = "The users of this instance"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "PersonalAPIKeyAuth",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as pretty JSON with a trailing newline (the committed `openapi.json`).
pub fn to_json() -> String {
    let mut json = crate::http::openapi_document()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".into());
    json.push('\n');
    json
}

/// How an operation's caller authenticates, which decides its 401s and 403s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// `Authenticated<…>`: a session or (where the view takes one) a key or token is required.
    Required,
    /// `Authenticated<SessionOnly>`: only a browser session authenticates; keys are ignored.
    Session,
    /// `MaybeAuthenticated<AnyCaller>`: anonymous callers pass, but a session is checked (CSRF,
    /// enforced 2FA) and a personal API key must be valid.
    Optional,
    /// `MaybeAuthenticated<SessionOnly>` (logout): a session, if any, is checked; keys are ignored.
    SessionIfAny,
    /// Nobody is authenticated.
    Anonymous,
}

/// The operations whose access is not [`Access::Required`] (so a new route is documented with its
/// 401 unless it is listed here).
const ACCESS: &[(&str, Access)] = &[
    ("users_destroy", Access::Session),
    ("users_export_retrieve", Access::Session),
    ("signup_create", Access::Optional),
    ("login_create", Access::Optional),
    ("login_token_create", Access::Anonymous),
    ("login_precheck_create", Access::Anonymous),
    ("logout", Access::SessionIfAny),
    ("api_logout", Access::SessionIfAny),
    ("reset_create", Access::Optional),
    ("reset_retrieve", Access::Anonymous),
    ("reset_complete", Access::Anonymous),
    ("users_request_email_verification_create", Access::Optional),
    ("users_verify_email_create", Access::Optional),
];

/// Operations that require authentication but never a recent login, even for unsafe requests:
/// views that are not time-sensitive (integrations, signal autonomy) and the actions PostHog
/// exempts (`hedgehog_config`, `scene_personalisation`).
const NO_RECENT_LOGIN: &[&str] = &[
    "users_hedgehog_config_partial_update",
    "users_scene_personalisation_create",
    "users_signal_autonomy_create",
    "users_signal_autonomy_destroy",
    "users_integrations_github_start_create",
    "users_integrations_github_destroy",
    "users_integrations_github_repos_refresh_create",
];

const KEY_RATE: &str = "more than 480 requests a minute or 4800 an hour with this personal API key";
const PASSWORD_RATE: &str =
    "more than 5 writes a minute carrying `current_password` (password checks), per user";

/// The operations that may answer 429, and why (every 429 carries `Retry-After`).
const THROTTLED: &[(&str, &str)] = &[
    ("personal_api_keys_list", KEY_RATE),
    ("personal_api_keys_create", KEY_RATE),
    ("personal_api_keys_retrieve", KEY_RATE),
    ("personal_api_keys_update", KEY_RATE),
    ("personal_api_keys_partial_update", KEY_RATE),
    ("personal_api_keys_destroy", KEY_RATE),
    ("personal_api_keys_roll_create", KEY_RATE),
    ("users_integrations_list", KEY_RATE),
    ("users_integrations_github_destroy", KEY_RATE),
    ("users_integrations_github_repos_retrieve", KEY_RATE),
    ("users_integrations_github_repos_refresh_create", KEY_RATE),
    ("users_integrations_github_branches_retrieve", KEY_RATE),
    ("users_signal_autonomy_retrieve", KEY_RATE),
    ("users_signal_autonomy_create", KEY_RATE),
    ("users_signal_autonomy_destroy", KEY_RATE),
    (
        "users_export_retrieve",
        "more than 10 exports an hour, per user",
    ),
    ("users_update", PASSWORD_RATE),
    ("users_partial_update", PASSWORD_RATE),
    (
        "login_create",
        "too many failed logins for this account (the per-account lockout)",
    ),
    (
        "reset_create",
        "more than 6 reset emails a day for this address (or signed-in user)",
    ),
    (
        "users_request_email_verification_create",
        "more than 6 verification emails a day for this address (or signed-in user)",
    ),
];

/// Adds to every operation the error answers that come from the shared machinery rather than
/// its handler, each with the error envelope (`ErrorBody`). A status the handler documented
/// keeps its own response; its description gains the shared reasons.
///
/// - 400 when the operation reads a body or query parameters: a body that cannot be parsed
///   (`parse_error`) or a field or parameter that is not valid (control characters included);
/// - 401 when credentials are required (or, where optional, a bad key was sent);
/// - 403 for refused scopes and key access, a stale login for sensitive changes, CSRF failures,
///   organization-enforced 2FA on sessions, and any unsafe request from another site;
/// - 404 when the path has parameters (they may name nothing);
/// - 413 for unsafe methods (their body is always read, up to the limit); 415 when the
///   operation reads a body;
/// - 429, with `Retry-After`, for the throttled operations.
pub fn document_errors(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for (safe, operation) in operations_mut(item) {
            for (status, reasons) in shared_errors(path, safe, operation) {
                add_error(operation, status, &reasons);
            }
        }
    }
}

/// Each operation of a path with whether its method is safe (never changes anything).
fn operations_mut(item: &mut PathItem) -> Vec<(bool, &mut Operation)> {
    [
        (true, &mut item.get),
        (true, &mut item.head),
        (true, &mut item.options),
        (true, &mut item.trace),
        (false, &mut item.put),
        (false, &mut item.post),
        (false, &mut item.patch),
        (false, &mut item.delete),
    ]
    .into_iter()
    .filter_map(|(safe, operation)| operation.as_mut().map(|op| (safe, op)))
    .collect()
}

/// The statuses the shared machinery may answer for this operation, each with its reasons.
fn shared_errors(path: &str, safe: bool, operation: &Operation) -> Vec<(u16, Vec<String>)> {
    let id = operation.operation_id.as_deref().unwrap_or_default();
    let access = ACCESS
        .iter()
        .find(|(op, _)| *op == id)
        .map_or(Access::Required, |(_, access)| *access);
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let has_query = parameters
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Query);
    let has_path = parameters
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Path);
    let names_user = parameters
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Path && (p.name == "uuid" || p.name == "user_id"));
    let has_body = operation.request_body.is_some();
    let required = matches!(access, Access::Required | Access::Session);
    let sessions_checked = access != Access::Anonymous;
    let mut errors: Vec<(u16, Vec<String>)> = Vec::new();
    let mut add = |status: u16, reason: &str| match errors.iter_mut().find(|(s, _)| *s == status) {
        Some((_, reasons)) => reasons.push(reason.to_string()),
        None => errors.push((status, vec![reason.to_string()])),
    };

    if has_body {
        add(400, "the body cannot be parsed (`parse_error`)");
    }
    if has_body || has_query {
        add(
            400,
            "a field or parameter is not valid (`validation_error`, named in `attr`; text with \
             control characters is refused)",
        );
    }
    match access {
        Access::Required => add(
            401,
            "no credentials (`not_authenticated`), or a personal API key or access token that is \
             not valid or has expired (`authentication_failed`)",
        ),
        Access::Session => add(
            401,
            "no logged-in browser session (`not_authenticated`; personal API keys are ignored)",
        ),
        Access::Optional => add(
            401,
            "a personal API key was sent that is not valid or has expired \
             (`authentication_failed`)",
        ),
        Access::SessionIfAny | Access::Anonymous => {}
    }
    if access == Access::Required {
        add(
            403,
            "the personal API key lacks the scope, or the action does not take personal API keys \
             (`permission_denied`)",
        );
    }
    if required && names_user {
        add(
            403,
            "a caller who is not staff names a user other than `@me` (`permission_denied`)",
        );
    }
    if required && !safe && !NO_RECENT_LOGIN.contains(&id) {
        add(
            403,
            "a sensitive change from a session that logged in more than two hours ago \
             (`sensitive_action_required_reauth`)",
        );
    }
    if sessions_checked && !safe {
        add(
            403,
            "a session request without the session's CSRF token in `X-CSRFToken` \
             (`permission_denied`, `CSRF Failed: …`)",
        );
    }
    if sessions_checked
        && access != Access::SessionIfAny
        // The allow-list names exact paths: `@me` ones are not template paths, so operations on
        // `{uuid}` can still be refused.
        && !TWO_FACTOR_ALLOWED_PATHS.contains(&path)
    {
        add(
            403,
            "a session whose organization enforces 2FA and that has not set it up \
             (`two_factor_setup_required`) or not verified it (`two_factor_verification_required`)",
        );
    }
    if !safe {
        add(
            403,
            "an unsafe request from another site (its `Origin`, or `Sec-Fetch-Site: cross-site`)",
        );
    }
    if has_path {
        add(
            404,
            "the path names nothing: no such user, key or integration, or a segment that cannot \
             name one (`not_found`)",
        );
    }
    if !safe || has_body {
        add(
            413,
            "the body is larger than the limit (`request_too_large`)",
        );
    }
    if has_body {
        add(
            415,
            "the body's `Content-Type` is not JSON, a form or multipart (`unsupported_media_type`)",
        );
    }
    if let Some((_, why)) = THROTTLED.iter().find(|(op, _)| *op == id) {
        add(429, &format!("throttled: {why} (`throttled`)"));
    }
    errors
}

/// The handler's own response for `status` gains `reasons`; a missing one is created with the
/// error envelope. A 429 always documents `Retry-After`.
fn add_error(operation: &mut Operation, status: u16, reasons: &[String]) {
    let response = operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            RefOr::T(
                Response::builder()
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build(),
            )
        });
    let RefOr::T(response) = response else {
        return;
    };
    response.description = describe(&response.description, reasons);
    if status == 429 && !response.headers.contains_key("Retry-After") {
        let mut header = Header::new(Object::with_type(Type::Integer));
        header.description = Some("Seconds until the request may be repeated.".into());
        response.headers.insert("Retry-After".into(), header);
    }
}

/// The handler's own description (if any), then the shared reasons.
fn describe(own: &str, reasons: &[String]) -> String {
    let list = |head: &str| {
        std::iter::once(head.to_string())
            .chain(reasons.iter().map(|r| format!("- {r}")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    match reasons {
        [only] if own.is_empty() => capitalize(only),
        _ if own.is_empty() => list("One of:"),
        _ => format!("{own}\n\n{}", list("Also:")),
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect::<String>() + ".",
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> utoipa::openapi::OpenApi {
        crate::http::openapi_document()
    }

    fn operation_ids(doc: &utoipa::openapi::OpenApi) -> Vec<String> {
        let mut doc = doc.clone();
        let mut ids = Vec::new();
        for item in doc.paths.paths.values_mut() {
            for (_, op) in operations_mut(item) {
                ids.extend(op.operation_id.clone());
            }
        }
        ids
    }

    #[test]
    fn the_tables_name_real_operations() {
        let ids = operation_ids(&document());
        for (id, _) in ACCESS {
            assert!(ids.iter().any(|i| i == id), "{id} is not an operation");
        }
        for (id, _) in THROTTLED {
            assert!(ids.iter().any(|i| i == id), "{id} is not an operation");
        }
        for id in NO_RECENT_LOGIN {
            assert!(ids.iter().any(|i| i == id), "{id} is not an operation");
        }
    }

    #[test]
    fn every_error_is_described_and_uses_the_envelope() {
        let mut doc = document();
        for (path, item) in doc.paths.paths.iter_mut() {
            for (_, op) in operations_mut(item) {
                for (status, response) in &op.responses.responses {
                    let RefOr::T(response) = response else {
                        panic!("{path} {status}: a reference");
                    };
                    if status.as_str() < "400" {
                        continue;
                    }
                    assert!(!response.description.is_empty(), "{path} {status}");
                    // The one deliberate exception: signal autonomy's "not opted in" is empty.
                    if !(path.ends_with("/signal_autonomy/") && status == "404") {
                        assert!(
                            response.content.contains_key("application/json"),
                            "{path} {status} has no envelope"
                        );
                    }
                    if status == "429" {
                        assert!(response.headers.contains_key("Retry-After"), "{path}");
                    }
                }
            }
        }
    }

    /// The schema a request body's JSON content names, resolved through `$ref` and a nullable
    /// `oneOf`.
    fn body_schema<'a>(
        doc: &'a serde_json::Value,
        body: &'a serde_json::Value,
    ) -> &'a serde_json::Value {
        let mut schema = &body["content"]["application/json"]["schema"];
        if let Some(options) = schema["oneOf"].as_array() {
            schema = options
                .iter()
                .find(|o| o["type"] != "null")
                .expect("a non-null option");
        }
        match schema["$ref"].as_str() {
            Some(reference) => {
                let name = reference.trim_start_matches("#/components/schemas/");
                &doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    /// Every request body of the committed `openapi.json` publishes its fields, never a bare
    /// `object`; the user update and key creation carry PostHog's constraints.
    #[test]
    fn request_bodies_are_typed() {
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
                .expect("openapi.json is committed");
        let doc: serde_json::Value = serde_json::from_str(&committed).expect("JSON");
        let mut bodies = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("operations") {
                let Some(body) = operation.get("requestBody") else {
                    continue;
                };
                bodies += 1;
                let schema = body_schema(&doc, body);
                let properties = schema["properties"].as_object();
                assert!(
                    properties.is_some_and(|p| !p.is_empty()),
                    "{method} {path}: the body is not typed: {schema}"
                );
            }
        }
        assert!(bodies >= 20, "{bodies} request bodies");

        let operation = |path: &str, method: &str| &doc["paths"][path][method]["requestBody"];
        let patch = body_schema(&doc, operation("/api/users/{uuid}/", "patch"));
        assert!(patch.get("required").is_none(), "PATCH requires nothing");
        let fields = &patch["properties"];
        assert_eq!(fields["first_name"]["type"], "string");
        assert_eq!(fields["first_name"]["maxLength"], 150);
        assert_eq!(fields["email"]["format"], "email");
        assert_eq!(fields["email"]["maxLength"], 254);
        assert_eq!(fields["password"]["writeOnly"], true);
        assert_eq!(fields["uuid"]["readOnly"], true);
        assert_eq!(
            fields["anonymize_data"]["type"],
            serde_json::json!(["boolean", "null"])
        );
        let role = fields["role_at_organization"]["$ref"]
            .as_str()
            .expect("a $ref");
        let role = &doc["components"]["schemas"][role.trim_start_matches("#/components/schemas/")];
        assert!(
            role["enum"]
                .as_array()
                .expect("enum")
                .contains(&"engineering".into())
        );
        let theme = &doc["components"]["schemas"]["ThemeMode"]["enum"];
        assert_eq!(*theme, serde_json::json!(["light", "dark", "system", ""]));

        let put = body_schema(&doc, operation("/api/users/{uuid}/", "put"));
        assert_eq!(put["required"], serde_json::json!(["email", "password"]));

        let key = body_schema(&doc, operation("/api/personal_api_keys/", "post"));
        assert_eq!(key["required"], serde_json::json!(["label", "scopes"]));
        assert_eq!(key["properties"]["label"]["maxLength"], 40);
        assert_eq!(key["properties"]["scopes"]["type"], "array");
        assert_eq!(
            key["properties"]["scoped_organizations"]["items"]["format"],
            "uuid"
        );
    }
}
