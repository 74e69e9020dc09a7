//! Static assets, embedded in the binary and served under content-hashed names
//! (`/static/style.<hash>.css`), so a browser may keep them for a year: a changed file gets a new
//! name. The hash is computed once, at first use. The vendored API-document viewers
//! (`static/vendor/`) are stored gzip-compressed and sent so.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    /// `/static/<stem>.<hash>.<ext>`
    pub url: String,
    content_type: &'static str,
    bytes: &'static [u8],
    /// Stored gzip-compressed: sent with `Content-Encoding: gzip`.
    gzipped: bool,
}

impl Asset {
    fn new(stem: &str, ext: &str, bytes: &'static [u8], gzipped: bool) -> Self {
        let hash = hex::encode(&Sha256::digest(bytes)[..6]);
        Self {
            url: format!("/static/{stem}.{hash}.{ext}"),
            content_type: match ext {
                "css" => "text/css; charset=utf-8",
                _ => "text/javascript; charset=utf-8",
            },
            bytes,
            gzipped,
        }
    }

    fn file_name(&self) -> &str {
        self.url.trim_start_matches("/static/")
    }
}

macro_rules! asset {
    ($name:ident, $stem:literal, $ext:literal, $file:literal, gzipped = $gzipped:literal) => {
        pub static $name: LazyLock<Asset> = LazyLock::new(|| {
            Asset::new(
                $stem,
                $ext,
                include_bytes!(concat!("../../static/", $file)),
                $gzipped,
            )
        });
    };
}

asset!(STYLESHEET, "style", "css", "style.css", gzipped = false);
asset!(COPY_SCRIPT, "copy", "js", "copy.js", gzipped = false);
asset!(
    SWAGGER_UI,
    "swagger-ui-bundle",
    "js",
    "vendor/swagger-ui-bundle.js.gz",
    gzipped = true
);
asset!(
    SWAGGER_UI_CSS,
    "swagger-ui",
    "css",
    "vendor/swagger-ui.css.gz",
    gzipped = true
);
asset!(
    SWAGGER_INIT,
    "swagger-init",
    "js",
    "swagger-init.js",
    gzipped = false
);
asset!(
    REDOC,
    "redoc.standalone",
    "js",
    "vendor/redoc.standalone.js.gz",
    gzipped = true
);
asset!(
    REDOC_INIT,
    "redoc-init",
    "js",
    "redoc-init.js",
    gzipped = false
);

fn all() -> [&'static Asset; 7] {
    [
        &STYLESHEET,
        &COPY_SCRIPT,
        &SWAGGER_UI,
        &SWAGGER_UI_CSS,
        &SWAGGER_INIT,
        &REDOC,
        &REDOC_INIT,
    ]
}

/// The URL pages link the stylesheet by.
pub fn stylesheet_url() -> &'static str {
    &STYLESHEET.url
}

/// `GET /static/{file}`: an asset by its hashed name, cached for a year; any other name is a 404
/// page. A gzip-stored file goes to a client that accepts gzip (every browser); others get 406.
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = all().into_iter().find(|a| a.file_name() == file) else {
        return super::not_found();
    };
    if asset.gzipped && !accepts_gzip(&headers) {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "This file is only available gzip-compressed.\n",
        )
            .into_response();
    }
    let mut response = asset.bytes.into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if asset.gzipped {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Whether `Accept-Encoding` allows gzip (not refused with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}
