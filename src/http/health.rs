//! Liveness, readiness and metrics endpoints (no authentication).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// `/_ready` answers within this even when the database hangs, and so does `/metrics` (whose
/// outbox depth comes from the database).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/_health/", get(health))
        .route("/_ready/", get(ready))
        .route("/metrics/", get(metrics))
}

/// Liveness: the process answers (nothing else is asked, so a database outage never gets a
/// healthy process restarted).
async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: 200 when the database answers and has every migration this binary carries; 503
/// with the reason otherwise.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let unavailable = |reason: Value| (StatusCode::SERVICE_UNAVAILABLE, axum::Json(reason));
    let expected = state.store.expected_schema_version();
    match tokio::time::timeout(HEALTH_TIMEOUT, state.store.schema_version()).await {
        Ok(Ok(version)) if version >= expected => (
            StatusCode::OK,
            axum::Json(json!({"status": "ok", "schema_version": version})),
        ),
        Ok(Ok(version)) => unavailable(json!({
            "status": "unavailable",
            "migrations": "pending",
            "schema_version": version,
            "expected_schema_version": expected,
        })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: database unavailable");
            unavailable(json!({"status": "unavailable", "database": "error"}))
        }
        Err(_) => {
            tracing::warn!("readiness check: database did not answer in time");
            unavailable(json!({"status": "unavailable", "database": "timeout"}))
        }
    }
}

/// `/metrics` alone, for the listener of `HOGLET_METRICS_BIND`.
pub fn metrics_router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(render_metrics))
        .route("/metrics/", get(render_metrics))
        .with_state(state)
}

/// The public port's `/metrics`: not there when the metrics have an address of their own.
async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    if state.config.metrics_bind.is_some() {
        return crate::error::ApiError::not_found().into_response();
    }
    render_metrics(State(state)).await.into_response()
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::outbox::refresh_depth(&state, HEALTH_TIMEOUT).await;
    state
        .metrics
        .password_hash_queue
        .set(state.hasher.queue_depth() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
