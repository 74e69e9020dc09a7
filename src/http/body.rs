//! Request bodies in the three encodings DRF accepts (JSON, form, multipart), parsed once by a
//! middleware so authenticators can read `personal_api_key` from them and handlers can read fields.

use axum::body::Body as AxumBody;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::auth::BodyCredentials;
use crate::error::ApiError;
use crate::state::AppState;

/// What the body middleware found.
#[derive(Clone, Debug)]
pub enum ParsedBody {
    /// A JSON object, or the fields of a form.
    Fields(Map<String, Value>),
    /// JSON that is not an object (an array, a string…): kept so the handler can name its type.
    OtherJson(Value),
    /// The body could not be read or parsed; reported when a handler asks for it.
    Invalid(std::sync::Arc<ApiError>),
}

/// Buffers and parses the body of requests that carry one, for the extractors to read; a body
/// over the limit is refused here.
pub async fn parse_body(state: &AppState, request: Request) -> Result<Request, Response> {
    // Safe methods rarely carry a body, but when one does it is parsed like any other (a
    // `personal_api_key` may be in it); the common bodiless GET skips the work.
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) && !declares_body(request.headers())
    {
        return Ok(request);
    }
    let (mut parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => return Err(ApiError::PayloadTooLarge.into_response()),
    };
    let (parsed, form_lists) = parse(&content_type, &bytes).await;
    if let Some(lists) = form_lists {
        parts.extensions.insert(lists);
    }
    if let ParsedBody::Fields(fields) = &parsed {
        parts
            .extensions
            .insert(BodyCredentials::from_fields(fields));
    }
    parts.extensions.insert(parsed);
    Ok(Request::from_parts(parts, AxumBody::empty()))
}

/// Every value of a form-encoded body in order, repeated names included: the fields map keeps
/// the last value of a name (as DRF's `QueryDict.get`), a list field (the web pages' scope
/// checkboxes) reads them all.
#[derive(Clone, Debug)]
pub struct FormLists(Vec<(String, String)>);

impl FormLists {
    /// Every value given for `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for FormLists {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<FormLists>()
            .cloned()
            .unwrap_or(FormLists(Vec::new())))
    }
}

/// Whether the headers announce a non-empty body (`Content-Length` > 0, or chunked).
fn declares_body(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// The body, and for a form its values in order with repeated names (see [`FormLists`]).
async fn parse(content_type: &str, bytes: &[u8]) -> (ParsedBody, Option<FormLists>) {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if bytes.iter().all(u8::is_ascii_whitespace) && !media_type.starts_with("multipart/") {
        return (ParsedBody::Fields(Map::new()), None);
    }
    let mut form_lists = None;
    let parsed = match media_type.as_str() {
        "application/json" | "" => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => ParsedBody::Fields(map),
            Ok(other) => ParsedBody::OtherJson(other),
            Err(e) => invalid(ApiError::Parse(format!("JSON parse error - {e}").into())),
        },
        t if t.ends_with("+json") => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => ParsedBody::Fields(map),
            Ok(other) => ParsedBody::OtherJson(other),
            Err(e) => invalid(ApiError::Parse(format!("JSON parse error - {e}").into())),
        },
        "application/x-www-form-urlencoded" => {
            match serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes) {
                Ok(pairs) => {
                    let fields = pairs
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect();
                    form_lists = Some(FormLists(pairs));
                    ParsedBody::Fields(fields)
                }
                Err(e) => invalid(ApiError::Parse(format!("Form parse error - {e}").into())),
            }
        }
        "multipart/form-data" => parse_multipart(content_type, bytes).await,
        _ => invalid(ApiError::UnsupportedMediaType(media_type)),
    };
    (parsed, form_lists)
}

async fn parse_multipart(content_type: &str, bytes: &[u8]) -> ParsedBody {
    let boundary = match multer::parse_boundary(content_type) {
        Ok(b) => b,
        Err(e) => {
            return invalid(ApiError::Parse(
                format!("Multipart form parse error - {e}").into(),
            ));
        }
    };
    let stream = futures_util::stream::once(futures_util::future::ready(Ok::<_, std::io::Error>(
        bytes::Bytes::copy_from_slice(bytes),
    )));
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut fields = Map::new();
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().map(str::to_string);
                let is_file = field.file_name().is_some();
                match field.text().await {
                    Ok(text) => {
                        if let (Some(name), false) = (name, is_file) {
                            fields.insert(name, Value::String(text));
                        }
                    }
                    Err(e) => {
                        return invalid(ApiError::Parse(
                            format!("Multipart form parse error - {e}").into(),
                        ));
                    }
                }
            }
            Ok(None) => return ParsedBody::Fields(fields),
            Err(e) => {
                return invalid(ApiError::Parse(
                    format!("Multipart form parse error - {e}").into(),
                ));
            }
        }
    }
}

fn invalid(e: ApiError) -> ParsedBody {
    ParsedBody::Invalid(std::sync::Arc::new(e))
}

/// The request body as JSON: an object for form bodies, `{}` when there was none.
pub struct Body(pub Value);

impl<S: Send + Sync> FromRequestParts<S> for Body {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match parts.extensions.remove::<ParsedBody>() {
            None => Ok(Body(Value::Object(Map::new()))),
            Some(ParsedBody::Fields(map)) => Ok(Body(Value::Object(map))),
            Some(ParsedBody::OtherJson(value)) => Ok(Body(value)),
            Some(ParsedBody::Invalid(e)) => Err(match std::sync::Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) => clone_error(&shared),
            }),
        }
    }
}

fn clone_error(e: &ApiError) -> ApiError {
    match e {
        ApiError::Parse(d) => ApiError::Parse(d.clone()),
        ApiError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m.clone()),
        _ => ApiError::Parse("Malformed request body.".into()),
    }
}

impl Body {
    /// The body as an object, or DRF's `Invalid data. Expected a dictionary, but got <type>.`
    pub fn object(self) -> Result<Map<String, Value>, ApiError> {
        match self.0 {
            Value::Object(map) => Ok(map),
            other => Err(ApiError::non_field(
                "invalid_input",
                format!(
                    "Invalid data. Expected a dictionary, but got {}.",
                    crate::domain::python::py_type_name(&other)
                ),
            )),
        }
    }
}
