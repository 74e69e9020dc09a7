//! The one API error type. Every failure a handler or extractor can produce ends here and is rendered
//! as PostHog's envelope `{"type", "code", "detail", "attr"}` (drf-exceptions-hog).

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

type Text = Cow<'static, str>;

/// Which authenticator a 401 names in `WWW-Authenticate` (the first one of the view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    Session,
    Bearer,
}

impl Challenge {
    fn header(self) -> &'static str {
        match self {
            Challenge::Session => "Session",
            Challenge::Bearer => "Bearer",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `validation_error`.
    #[error("validation error on {attr:?}: {detail}")]
    Validation {
        code: Text,
        detail: Text,
        attr: Option<Text>,
    },
    /// 401 `not_authenticated`: no usable credentials.
    #[error("not authenticated")]
    NotAuthenticated(Challenge),
    /// 401 `authentication_failed`: credentials were sent but are not valid.
    #[error("authentication failed: {detail}")]
    AuthenticationFailed { detail: Text, challenge: Challenge },
    /// 403 with `type` `authentication_error`.
    #[error("permission denied: {detail}")]
    PermissionDenied { code: &'static str, detail: Text },
    /// 404 `not_found`.
    #[error("not found: {0}")]
    NotFound(Text),
    /// 405 `method_not_allowed`.
    #[error("method {0} not allowed")]
    MethodNotAllowed(String),
    /// 400 `parse_error`: a body that cannot be parsed.
    #[error("parse error: {0}")]
    Parse(Text),
    /// 415 `unsupported_media_type`.
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    /// 413: the body exceeds the configured limit.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 409 `conflict` (PostHog's `Conflict` has no type, so its handler says `server_error`).
    #[error("conflict: {0}")]
    Conflict(Text),
    /// 429 `throttled`, with `Retry-After`.
    #[error("throttled for {0}s")]
    Throttled(u64),
    /// Any other fixed envelope PostHog produces (for example the 401 `2fa_required`).
    #[error("{detail}")]
    Envelope {
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        detail: Text,
    },
    /// 503: the database (or another dependency) did not answer.
    #[error("service unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// 500: a bug or an unexpected failure. The cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(#[source] anyhow::Error),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    #[serde(rename = "type")]
    #[schema(example = "validation_error")]
    pub kind: &'a str,
    #[schema(example = "invalid_input")]
    pub code: &'a str,
    #[schema(example = "This field is required.")]
    pub detail: &'a str,
    /// The field the error is about, or null.
    #[schema(required = true)]
    pub attr: Option<&'a str>,
}

impl ApiError {
    pub fn validation(
        code: impl Into<Text>,
        detail: impl Into<Text>,
        attr: Option<&'static str>,
    ) -> Self {
        ApiError::Validation {
            code: code.into(),
            detail: detail.into(),
            attr: attr.map(Cow::Borrowed),
        }
    }

    /// A validation error on a named field.
    pub fn field(attr: impl Into<Text>, code: impl Into<Text>, detail: impl Into<Text>) -> Self {
        ApiError::Validation {
            code: code.into(),
            detail: detail.into(),
            attr: Some(attr.into()),
        }
    }

    /// A validation error that names no field (`non_field_errors`).
    pub fn non_field(code: impl Into<Text>, detail: impl Into<Text>) -> Self {
        ApiError::Validation {
            code: code.into(),
            detail: detail.into(),
            attr: None,
        }
    }

    pub fn forbidden(detail: impl Into<Text>) -> Self {
        ApiError::PermissionDenied {
            code: "permission_denied",
            detail: detail.into(),
        }
    }

    pub fn not_found() -> Self {
        ApiError::NotFound(Cow::Borrowed("Not found."))
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(e.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } | ApiError::Parse(_) => StatusCode::BAD_REQUEST,
            ApiError::NotAuthenticated(_) | ApiError::AuthenticationFailed { .. } => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Envelope { status, .. } => *status,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// `(type, code, detail, attr)` of the envelope.
    /// The human-readable message of the envelope.
    pub fn detail(&self) -> String {
        self.parts().2.into_owned()
    }

    fn parts(&self) -> (&str, &str, Cow<'_, str>, Option<&str>) {
        match self {
            ApiError::Validation { code, detail, attr } => (
                "validation_error",
                code,
                Cow::Borrowed(detail),
                attr.as_deref(),
            ),
            ApiError::NotAuthenticated(_) => (
                "authentication_error",
                "not_authenticated",
                Cow::Borrowed("Authentication credentials were not provided."),
                None,
            ),
            ApiError::AuthenticationFailed { detail, .. } => (
                "authentication_error",
                "authentication_failed",
                Cow::Borrowed(detail),
                None,
            ),
            ApiError::PermissionDenied { code, detail } => {
                ("authentication_error", code, Cow::Borrowed(detail), None)
            }
            ApiError::NotFound(detail) => {
                ("invalid_request", "not_found", Cow::Borrowed(detail), None)
            }
            ApiError::MethodNotAllowed(method) => (
                "invalid_request",
                "method_not_allowed",
                Cow::Owned(format!("Method \"{method}\" not allowed.")),
                None,
            ),
            ApiError::Parse(detail) => (
                "invalid_request",
                "parse_error",
                Cow::Borrowed(detail),
                None,
            ),
            ApiError::UnsupportedMediaType(media) => (
                "invalid_request",
                "unsupported_media_type",
                Cow::Owned(format!("Unsupported media type \"{media}\" in request.")),
                None,
            ),
            ApiError::PayloadTooLarge => (
                "invalid_request",
                "request_too_large",
                Cow::Borrowed("Request body is too large."),
                None,
            ),
            ApiError::Conflict(detail) => ("server_error", "conflict", Cow::Borrowed(detail), None),
            ApiError::Throttled(wait) => (
                "throttled_error",
                "throttled",
                Cow::Owned(format!(
                    "Request was throttled. Expected available in {wait} second{}.",
                    if *wait == 1 { "" } else { "s" }
                )),
                None,
            ),
            ApiError::Envelope {
                kind, code, detail, ..
            } => (kind, code, Cow::Borrowed(detail), None),
            ApiError::Unavailable(_) => (
                "server_error",
                "service_unavailable",
                Cow::Borrowed("Service temporarily unavailable, try again later."),
                None,
            ),
            ApiError::Internal(_) => (
                "server_error",
                "error",
                Cow::Borrowed("A server error occurred."),
                None,
            ),
        }
    }
}

/// The cause of a 5xx, attached to the response so the request log (not `IntoResponse`) reports it.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub std::sync::Arc<String>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (kind, code, detail, attr) = self.parts();
        let body = serde_json::to_vec(&ErrorBody {
            kind,
            code,
            detail: &detail,
            attr,
        })
        .unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ApiError::NotAuthenticated(challenge)
            | ApiError::AuthenticationFailed { challenge, .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge.header()),
                );
            }
            ApiError::Throttled(wait) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*wait));
            }
            ApiError::Unavailable(cause) | ApiError::Internal(cause) => {
                response
                    .extensions_mut()
                    .insert(ErrorCause(std::sync::Arc::new(format!("{cause:#}"))));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(cause) => ApiError::Unavailable(cause),
            other => ApiError::Internal(other.into()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
