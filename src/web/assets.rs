//! Static assets, embedded in the binary and served under content-hashed names
//! (`/static/style.<hash>.css`), so a browser may keep them for a year: a changed file gets a new
//! name. The hash is computed once, at first use.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
struct Asset {
    /// `/static/<stem>.<hash>.<ext>`
    url: String,
    content_type: &'static str,
    bytes: &'static [u8],
}

impl Asset {
    fn new(stem: &str, ext: &str, content_type: &'static str, bytes: &'static [u8]) -> Self {
        let digest = Sha256::digest(bytes);
        let hash = hex::encode(&digest[..6]);
        Self {
            url: format!("/static/{stem}.{hash}.{ext}"),
            content_type,
            bytes,
        }
    }

    fn file_name(&self) -> &str {
        self.url.trim_start_matches("/static/")
    }
}

static STYLESHEET: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "style",
        "css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/style.css"),
    )
});

/// The URL pages link the stylesheet by.
pub fn stylesheet_url() -> &'static str {
    &STYLESHEET.url
}

/// `GET /static/{file}`: an asset by its hashed name, cached for a year; any other name is a 404
/// page.
pub async fn serve(Path(file): Path<String>) -> Response {
    let asset = [&*STYLESHEET].into_iter().find(|a| a.file_name() == file);
    let Some(asset) = asset else {
        return super::not_found();
    };
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
