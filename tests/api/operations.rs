//! Health, metrics, the OpenAPI document and the fallbacks.

use reqwest::Method;

use crate::db_tests;
use crate::helpers::{Db, spawn_app};

db_tests!(health_metrics_and_schema, unknown_paths_and_methods);

async fn health_metrics_and_schema(db: Db) {
    let app = spawn_app(db).await;
    let health = app.call(Method::GET, "/_health", None, None).await;
    assert_eq!(health.status.as_u16(), 200);
    assert_eq!(health.json["status"], "ok");

    let schema = app.call(Method::GET, "/api/schema/", None, None).await;
    assert_eq!(schema.status.as_u16(), 200);
    assert!(schema.json["paths"]["/api/users/{uuid}/"]["get"].is_object());
    assert_eq!(
        schema.json["paths"]["/api/users/"]["get"]["security"][0]["PersonalAPIKeyAuth"][0],
        "user:read"
    );

    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status.as_u16(), 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        metrics.text.contains(
            "hoglet_http_requests_total{method=\"GET\",route=\"/api/schema/\",status=\"200\"} 1"
        ),
        "{}",
        metrics.text
    );
    app.stop().await;
}

async fn unknown_paths_and_methods(db: Db) {
    let app = spawn_app(db).await;
    app.call(Method::GET, "/api/nothing-here/", None, None)
        .await
        .assert_error(
            404,
            "invalid_request",
            "not_found",
            "Endpoint not found.",
            None,
        );
    let (_, key) = app.user_with_key("carol@example.com", false, &["*"]).await;
    app.call(
        Method::POST,
        "/api/users/",
        Some(&key),
        Some(serde_json::json!({"email": "x@y.z"})),
    )
    .await
    .assert_error(
        405,
        "invalid_request",
        "method_not_allowed",
        "Method \"POST\" not allowed.",
        None,
    );
    app.stop().await;
}
