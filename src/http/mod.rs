//! HTTP: the router, its middleware and the handlers of each resource.
//!
//! Layer order, outermost first: the request id and its span (see [`request_id`]), path
//! normalisation (so `/api/users/@me` and `/api/users/@me/` route alike), then routing; inside
//! the router, one middleware parses bodies and records logs and metrics (labelled by the matched
//! route) around the handlers.

pub mod accounts;
pub mod activity;
pub mod api_keys;
pub mod body;
pub mod client;
pub mod export;
pub mod health;
pub mod integrations;
pub mod links;
pub mod login_sessions;
pub mod openapi;
pub mod origin;
pub mod paths;
pub mod request_id;
pub mod requests;
pub mod schemas;
pub mod signal_autonomy;
pub mod telemetry;
pub mod two_factor;
pub mod users;

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::response::IntoResponse;
use tower::Layer;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::state::AppState;

/// Every API route with its OpenAPI description.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .merge(users::router())
        .merge(login_sessions::router())
        .merge(activity::router())
        .merge(export::router())
        .merge(accounts::router())
        .merge(two_factor::router())
        .merge(api_keys::router())
        .merge(signal_autonomy::router())
        .merge(integrations::router())
        .merge(health::router())
}

/// The API routes and their OpenAPI document, completed with the errors every operation shares.
fn routes_and_document() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = api_router().split_for_parts();
    openapi::document_errors(&mut document);
    (router, document)
}

/// The OpenAPI document generated from the route definitions (also served at `/api/schema/`).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    routes_and_document().1
}

/// What [`service`] returns: the normalised router, made per connection with its peer address.
pub type Service = axum::extract::connect_info::IntoMakeServiceWithConnectInfo<
    request_id::RequestIdService<tower::util::MapRequest<Router, fn(Request) -> Request>>,
    std::net::SocketAddr,
>;

/// The complete service: the API's routes and `pages` (the web pages, outside `/api/`),
/// fallbacks, middleware, path normalisation and request ids. A path nothing matches answers the
/// JSON envelope under `/api/`, and `page_not_found` anywhere else.
pub fn service(
    state: AppState,
    pages: Router<AppState>,
    page_not_found: fn() -> axum::response::Response,
) -> Service {
    let (router, document) = routes_and_document();
    let router = router
        .route(
            "/api/schema/",
            axum::routing::get(move || async move { axum::Json(document) }),
        )
        .merge(pages)
        .fallback(move |uri: axum::http::Uri| async move {
            if uri.path().starts_with("/api/") {
                ApiError::NotFound("Endpoint not found.".into()).into_response()
            } else {
                page_not_found()
            }
        })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::MethodNotAllowed(method.to_string()).into_response()
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            telemetry::observe,
        ))
        .with_state(state);
    let normalize: fn(Request) -> Request = paths::normalize;
    let service = tower::util::MapRequestLayer::new(normalize).layer(router);
    let service = request_id::RequestIdLayer.layer(service);
    axum::ServiceExt::<Request>::into_make_service_with_connect_info::<std::net::SocketAddr>(
        service,
    )
}
