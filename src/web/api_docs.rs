//! PostHog's paths for browsing the OpenAPI document: `/api/schema/swagger-ui/` and
//! `/api/schema/redoc/`. The viewers are vendored builds (`static/vendor/`, gzip-compressed),
//! embedded in the binary and served under content-hashed names; nothing is fetched at build or
//! run time.

use std::sync::LazyLock;

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The viewers' pages run only this origin's scripts, as every page; the viewers set inline
/// styles and ReDoc searches in a worker made from a blob, so these two pages allow that.
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; \
     frame-ancestors 'none'";

/// One embedded file, gzip-compressed or plain.
struct DocAsset {
    /// `/static/docs/<stem>.<hash>.<ext>`
    url: String,
    content_type: &'static str,
    bytes: &'static [u8],
    gzipped: bool,
}

impl DocAsset {
    fn new(
        stem: &str,
        ext: &str,
        content_type: &'static str,
        bytes: &'static [u8],
        gzipped: bool,
    ) -> Self {
        let hash = hex::encode(&Sha256::digest(bytes)[..6]);
        Self {
            url: format!("/static/docs/{stem}.{hash}.{ext}"),
            content_type,
            bytes,
            gzipped,
        }
    }
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static SWAGGER_JS: LazyLock<DocAsset> = LazyLock::new(|| {
    DocAsset::new(
        "swagger-ui-bundle",
        "js",
        JS,
        include_bytes!("../../static/vendor/swagger-ui-bundle.js.gz"),
        true,
    )
});
static SWAGGER_CSS: LazyLock<DocAsset> = LazyLock::new(|| {
    DocAsset::new(
        "swagger-ui",
        "css",
        CSS,
        include_bytes!("../../static/vendor/swagger-ui.css.gz"),
        true,
    )
});
static SWAGGER_INIT: LazyLock<DocAsset> = LazyLock::new(|| {
    DocAsset::new(
        "swagger-init",
        "js",
        JS,
        include_bytes!("../../static/swagger-init.js"),
        false,
    )
});
static REDOC_JS: LazyLock<DocAsset> = LazyLock::new(|| {
    DocAsset::new(
        "redoc.standalone",
        "js",
        JS,
        include_bytes!("../../static/vendor/redoc.standalone.js.gz"),
        true,
    )
});
static REDOC_INIT: LazyLock<DocAsset> = LazyLock::new(|| {
    DocAsset::new(
        "redoc-init",
        "js",
        JS,
        include_bytes!("../../static/redoc-init.js"),
        false,
    )
});

fn assets() -> [&'static DocAsset; 5] {
    [
        &*SWAGGER_JS,
        &*SWAGGER_CSS,
        &*SWAGGER_INIT,
        &*REDOC_JS,
        &*REDOC_INIT,
    ]
}

#[derive(Template, WebTemplate)]
#[template(path = "api_docs.html", whitespace = "minimize")]
struct DocsPage {
    title: &'static str,
    mount: &'static str,
    stylesheets: Vec<&'static str>,
    scripts: Vec<&'static str>,
}

/// A viewer page: the pages' security headers, with the viewers' own policy, and revalidated
/// (it shows no secret, but names the assets of this build).
fn docs_page(page: DocsPage) -> Response {
    let mut response = super::secure(page.into_response());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /api/schema/swagger-ui/`.
pub async fn swagger_ui() -> Response {
    docs_page(DocsPage {
        title: "Swagger UI",
        mount: "swagger-ui",
        stylesheets: vec![&SWAGGER_CSS.url],
        scripts: vec![&SWAGGER_JS.url, &SWAGGER_INIT.url],
    })
}

/// `GET /api/schema/redoc/`.
pub async fn redoc() -> Response {
    docs_page(DocsPage {
        title: "ReDoc",
        mount: "redoc",
        stylesheets: Vec::new(),
        scripts: vec![&REDOC_JS.url, &REDOC_INIT.url],
    })
}

/// `GET /static/docs/{file}`: a viewer file by its hashed name, cached for a year. The vendored
/// builds are stored gzip-compressed and sent so (every browser accepts gzip); a client that
/// does not is told 406.
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = assets()
        .into_iter()
        .find(|a| a.url.trim_start_matches("/static/docs/") == file)
    else {
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
    }
    out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
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
            let refused = parts.any(|p| p.replace(' ', "").eq_ignore_ascii_case("q=0"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}
