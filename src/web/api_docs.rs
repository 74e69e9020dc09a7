//! PostHog's paths for browsing the OpenAPI document: `/api/schema/swagger-ui/` and
//! `/api/schema/redoc/`. The viewers are vendored builds (`static/vendor/`), embedded and served
//! by [`super::assets`]; nothing is fetched at build or run time.

use askama::Template;
use askama_web::WebTemplate;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::assets::{REDOC, REDOC_INIT, SWAGGER_INIT, SWAGGER_UI, SWAGGER_UI_CSS};

/// The viewers' pages run only this origin's scripts, as every page; the viewers set inline
/// styles and ReDoc searches in a worker made from a blob, so these two pages allow that.
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; \
     frame-ancestors 'none'";

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
        stylesheets: vec![&SWAGGER_UI_CSS.url],
        scripts: vec![&SWAGGER_UI.url, &SWAGGER_INIT.url],
    })
}

/// `GET /api/schema/redoc/`.
pub async fn redoc() -> Response {
    docs_page(DocsPage {
        title: "ReDoc",
        mount: "redoc",
        stylesheets: Vec::new(),
        scripts: vec![&REDOC.url, &REDOC_INIT.url],
    })
}
