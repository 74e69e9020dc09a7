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
    for sample in [
        "# TYPE hoglet_mail_outbox_depth gauge",
        "hoglet_mail_outbox_depth 0",
        "hoglet_mail_delivered_total 0",
        "hoglet_mail_failures_total 0",
        "hoglet_mail_dead_total 0",
    ] {
        assert!(
            metrics.text.lines().any(|l| l == sample),
            "{sample} in {}",
            metrics.text
        );
    }
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

/// A Postgres outage answers 503 quickly and the server recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_answers_503_and_recovers() {
    let Some(server) = crate::helpers::postgres_url() else {
        eprintln!("HOGLET_TEST_POSTGRES_URL is not set: the outage test needs Postgres");
        return;
    };
    let app = spawn_app(Db::Postgres).await;
    let (_, key) = app.user_with_key("outage@example.com", false, &["*"]).await;
    assert_eq!(
        app.call(Method::GET, "/_health", None, None)
            .await
            .status
            .as_u16(),
        200
    );
    let name = match &app.db.url {
        hoglet::config::DatabaseUrl::Postgres(url) => url.rsplit('/').next().unwrap().to_string(),
        _ => unreachable!(),
    };
    let (admin, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    let toggle = |allow: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}");
    admin.batch_execute(&toggle(false)).await.unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let health = app.call(Method::GET, "/_health", None, None).await;
    assert_eq!(health.status.as_u16(), 503, "{}", health.text);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let list = app.get("/api/users/", &key).await;
    list.assert_error(
        503,
        "server_error",
        "service_unavailable",
        "Service temporarily unavailable, try again later.",
        None,
    );

    admin.batch_execute(&toggle(true)).await.unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        if app
            .call(Method::GET, "/_health", None, None)
            .await
            .status
            .as_u16()
            == 200
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(recovered, "health recovers once the database is back");
    assert_eq!(app.get("/api/users/", &key).await.status.as_u16(), 200);
    task.abort();
    app.stop().await;
}
