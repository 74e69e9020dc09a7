//! Liveness and metrics endpoints (no authentication).

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// `/_health` answers within this even when the database hangs, and so does `/metrics` (whose
/// outbox depth comes from the database).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/_health/", get(health))
        .route("/metrics/", get(metrics))
}

/// 200 when the database answers, 503 otherwise.
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    match tokio::time::timeout(HEALTH_TIMEOUT, state.ping_database()).await {
        Ok(Ok(())) => (StatusCode::OK, axum::Json(json!({"status": "ok"}))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"status": "unavailable", "database": "error"})),
            )
        }
        Err(_) => {
            tracing::warn!("health check: database did not answer in time");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"status": "unavailable", "database": "timeout"})),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::outbox::refresh_depth(&state, HEALTH_TIMEOUT).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
