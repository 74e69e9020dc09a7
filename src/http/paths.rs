//! Trailing slashes are optional everywhere: every route is registered with one, and requests
//! without it get one added before routing. The path as sent is kept for the few rules that
//! depend on it (the 2FA enforcement allow-list matches exact paths).

use axum::extract::{FromRequestParts, Path, Request};
use axum::http::Uri;
use axum::http::request::Parts;
use axum::http::uri::PathAndQuery;

use crate::auth::OriginalPath;

pub fn normalize(mut request: Request) -> Request {
    if request.uri().path().ends_with('/') {
        return request;
    }
    let path = request.uri().path().to_string();
    request.extensions_mut().insert(OriginalPath(path.clone()));
    let new_path_and_query = match request.uri().query() {
        Some(q) => format!("{path}/?{q}"),
        None => format!("{path}/"),
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(pq) = PathAndQuery::try_from(new_path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// The route's one path parameter, percent-decoded. A value that is not UTF-8 once decoded is
/// kept as U+FFFD, which names nothing, so the handler answers as for any unknown value (never
/// axum's plain-text 400 outside the error envelope).
pub struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Segment(
            Path::<String>::from_request_parts(parts, state)
                .await
                .map_or_else(|_| char::REPLACEMENT_CHARACTER.to_string(), |Path(s)| s),
        ))
    }
}
