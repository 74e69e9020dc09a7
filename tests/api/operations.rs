//! Health, metrics, the OpenAPI document and the fallbacks.

use reqwest::Method;
use serde_json::Value;

use crate::browser::Browser;
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, spawn_app};

db_tests!(
    health_metrics_and_schema,
    metrics_can_have_an_address_of_their_own,
    unknown_paths_and_methods,
    schema_documents_the_shared_errors,
    undecodable_segments_and_repeated_parameters_answer_the_envelope,
);

/// With `HOGLET_METRICS_BIND`, `/metrics` is served there and the public port answers 404.
async fn metrics_can_have_an_address_of_their_own(db: Db) {
    let app =
        crate::helpers::spawn_app_with(db, |c| c.metrics_bind = Some("127.0.0.1:0".into())).await;
    let public = app.call(Method::GET, "/metrics", None, None).await;
    public.assert_error(404, "invalid_request", "not_found", "Not found.", None);
    let metrics_addr = app.metrics_addr.expect("a metrics address");
    assert_ne!(metrics_addr, app.addr);
    let apart = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(apart.status().as_u16(), 200);
    let text = apart.text().await.unwrap();
    assert!(text.contains("hoglet_build_info{version=\""), "{text}");
    // The API is not served there.
    let api = reqwest::get(format!("http://{metrics_addr}/api/users/@me/"))
        .await
        .unwrap();
    assert_eq!(api.status().as_u16(), 404);
}

async fn health_metrics_and_schema(db: Db) {
    let app = spawn_app(db).await;
    let health = app.call(Method::GET, "/_health", None, None).await;
    assert_eq!(health.status.as_u16(), 200);
    assert_eq!(health.json["status"], "ok");
    let ready = app.call(Method::GET, "/_ready", None, None).await;
    assert_eq!(ready.status.as_u16(), 200, "{}", ready.text);
    assert_eq!(ready.json["status"], "ok");
    let version = ready.json["schema_version"].as_i64().unwrap();
    assert!(version >= 10, "{version}");

    // A database that lacks this binary's latest migration is not ready (but alive).
    crate::store_contract::raw_exec(
        &app.db,
        "UPDATE refinery_schema_history SET version = -1 WHERE version = (SELECT max(version) FROM refinery_schema_history)",
        "UPDATE refinery_schema_history SET version = -1 WHERE version = (SELECT max(version) FROM refinery_schema_history)",
    )
    .await;
    let behind = app.call(Method::GET, "/_ready", None, None).await;
    assert_eq!(behind.status.as_u16(), 503, "{}", behind.text);
    assert_eq!(behind.json["migrations"], "pending");
    assert_eq!(behind.json["expected_schema_version"], version);
    assert!(behind.json["schema_version"].as_i64().unwrap() < version);
    assert_eq!(
        app.call(Method::GET, "/_health", None, None)
            .await
            .status
            .as_u16(),
        200
    );
    crate::store_contract::raw_exec(
        &app.db,
        &format!("UPDATE refinery_schema_history SET version = {version} WHERE version = -1"),
        &format!("UPDATE refinery_schema_history SET version = {version} WHERE version = -1"),
    )
    .await;

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
        "hoglet_password_hash_queue_depth 0",
        &format!(
            "hoglet_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "# TYPE process_cpu_seconds counter",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_open_fds gauge",
        "# TYPE process_start_time_seconds gauge",
        "# TYPE hoglet_cache_lookups counter",
        "# TYPE hoglet_db_query_duration_seconds histogram",
        "# TYPE hoglet_db_query_errors counter",
    ] {
        assert!(
            metrics.text.lines().any(|l| l == sample),
            "{sample} in {}",
            metrics.text
        );
    }
    // A key's second request is answered from the cache.
    let (_, key) = app
        .user_with_key("cached@example.com", false, &["user:read"])
        .await;
    for _ in 0..2 {
        app.get("/api/users/@me/", &key).await.assert_ok();
    }
    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    let value = |name: &str| -> f64 {
        metrics
            .text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {}", metrics.text))
    };
    assert!(value("hoglet_cache_lookups_total{cache=\"keys\",result=\"hit\"}") >= 1.0);
    assert!(value("hoglet_cache_lookups_total{cache=\"keys\",result=\"miss\"}") >= 1.0);
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    // The key's first request looked it up in the database, under the store method's name.
    assert!(
        value("hoglet_db_query_duration_seconds_count{operation=\"api_key_by_secure_value\"}")
            >= 1.0
    );
    assert!(!metrics.text.contains("hoglet_db_query_errors_total{"));
    if db == Db::Sqlite {
        // Every write went through the writer: the groups it committed are counted.
        assert!(value("hoglet_sqlite_writer_group_size_count") >= 1.0);
        assert_eq!(value("hoglet_sqlite_writer_queue_depth"), 0.0);
    } else {
        assert!(!metrics.text.contains("hoglet_sqlite_writer"));
    }

    // A query the database refuses is counted as an error of its operation (and answers 500).
    crate::store_contract::raw_exec(
        &app.db,
        "DROP TABLE signal_autonomy_configs",
        "DROP TABLE signal_autonomy_configs",
    )
    .await;
    let (_, admin) = app.user_with_key("broken@example.com", false, &["*"]).await;
    let broken = app.get("/api/users/@me/signal_autonomy/", &admin).await;
    assert_eq!(broken.status.as_u16(), 500, "{}", broken.text);
    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    assert!(
        metrics
            .text
            .lines()
            .any(|l| l
                == "hoglet_db_query_errors_total{operation=\"signal_autonomy\",kind=\"other\"} 1"),
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

/// A Postgres outage answers 503 quickly and the server recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn database_outage_answers_503_and_recovers() {
    let server = crate::helpers::postgres_server();
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
    let ready = app.call(Method::GET, "/_ready", None, None).await;
    assert_eq!(ready.status.as_u16(), 503, "{}", ready.text);
    assert_eq!(ready.json["database"], "error", "{}", ready.text);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // Alive all the while: a supervisor must not restart a process for its database.
    let alive = app.call(Method::GET, "/_health", None, None).await;
    assert_eq!(alive.status.as_u16(), 200);
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
            .call(Method::GET, "/_ready", None, None)
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
    assert!(recovered, "readiness recovers once the database is back");
    // The failed readiness query is counted, by operation, as the database not answering.
    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    assert!(
        metrics.text.lines().any(|l| l.starts_with(
            "hoglet_db_query_errors_total{operation=\"schema_version\",kind=\"unavailable\"}"
        )),
        "{}",
        metrics.text
    );
    assert_eq!(app.get("/api/users/", &key).await.status.as_u16(), 200);
    task.abort();
    app.stop().await;
}

/// The served document is the generated one, with the errors the shared machinery adds: each
/// operation lists what authentication, body parsing, routing and throttles can answer.
async fn schema_documents_the_shared_errors(db: Db) {
    let app = spawn_app(db).await;
    let schema = app.call(Method::GET, "/api/schema/", None, None).await;
    assert_eq!(schema.status.as_u16(), 200);
    let generated = serde_json::to_value(hoglet::http::openapi_document()).unwrap();
    assert_eq!(
        schema.json, generated,
        "served and generated documents differ"
    );

    let statuses = |path: &str, method: &str| -> Vec<String> {
        let responses = schema.json["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is documented"));
        responses.keys().cloned().collect()
    };
    let envelope = |path: &str, method: &str, status: &str| -> Value {
        schema.json["paths"][path][method]["responses"][status]["content"]["application/json"]
            ["schema"]["$ref"]
            .clone()
    };
    // A key refused by a session-only action (403), no credentials (401), an id that names
    // nothing (404), a body over the limit (413), the per-key throttle (429).
    assert_eq!(
        statuses("/api/personal_api_keys/{id}/", "delete"),
        ["204", "401", "403", "404", "413", "429"]
    );
    for status in ["401", "403", "404", "413", "429"] {
        assert_eq!(
            envelope("/api/personal_api_keys/{id}/", "delete", status),
            "#/components/schemas/ErrorBody",
            "{status}"
        );
    }
    let throttled =
        &schema.json["paths"]["/api/personal_api_keys/{id}/"]["delete"]["responses"]["429"];
    assert_eq!(
        throttled["headers"]["Retry-After"]["schema"]["type"],
        "integer"
    );
    // A query parameter may be refused (400: control characters in `email`).
    assert_eq!(statuses("/api/users/", "get"), ["200", "400", "401", "403"]);
    // A body: parse errors, validation, size, media type; the password-check throttle.
    assert_eq!(
        statuses("/api/users/{uuid}/", "patch"),
        ["200", "400", "401", "403", "404", "413", "415", "429"]
    );
    // Anonymous and safe: no 401, no 403.
    assert_eq!(
        statuses("/api/reset/{user_uuid}/", "get"),
        ["200", "400", "404"]
    );
    // Login: a bad key is a 401 besides `2fa_required`; the lockouts are 403 and 429.
    assert_eq!(
        statuses("/api/login/", "post"),
        ["200", "400", "401", "403", "413", "415", "429"]
    );
    // Settings that hold any JSON are documented so (an array was refused by `object` before).
    let user = &schema.json["components"]["schemas"]["UserView"]["properties"];
    for field in [
        "hedgehog_config",
        "has_seen_product_intro_for",
        "events_column_config",
    ] {
        assert!(
            user[field].get("type").is_none(),
            "{field}: {}",
            user[field]
        );
    }
    let hedgehog = &schema.json["paths"]["/api/users/{uuid}/hedgehog_config/"]["patch"];
    assert_eq!(
        hedgehog["responses"]["200"]["content"]["application/json"]["schema"],
        serde_json::json!({})
    );
    // Every success answer has a shape (no bare `object`).
    for (path, item) in schema.json["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let shape = &response["content"]["application/json"]["schema"];
                assert_ne!(
                    shape,
                    &serde_json::json!({"type": "object"}),
                    "{method} {path} {status}"
                );
            }
        }
    }
    // A handler's own description is kept, and the shared reasons follow it.
    let conflict = schema.json["paths"]["/api/signup/"]["post"]["responses"]["403"]["description"]
        .as_str()
        .unwrap();
    assert!(conflict.starts_with("Sign-up is closed"), "{conflict}");
    assert!(conflict.contains("two_factor_setup_required"), "{conflict}");
    app.stop().await;
}

/// A path segment that is not UTF-8 once decoded names nothing, and a repeated query parameter
/// counts by its last value: both answer the error envelope (axum's plain-text 400 before).
async fn undecodable_segments_and_repeated_parameters_answer_the_envelope(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("ada@example.com", false, &["*"]).await;
    let invalid_token = |reply: crate::helpers::Reply| {
        reply.assert_error(
            400,
            "validation_error",
            "invalid_token",
            "This reset token is invalid or has expired.",
            Some("token"),
        )
    };
    invalid_token(
        app.call(Method::GET, "/api/reset/%FF/?token=a", None, None)
            .await,
    );
    invalid_token(
        app.call(
            Method::POST,
            "/api/reset/%FF/",
            None,
            Some(serde_json::json!({"token": "a", "password": PASSWORD})),
        )
        .await,
    );
    let path = format!("/api/reset/{}/?token=a&token=b", user.uuid);
    invalid_token(app.call(Method::GET, &path, None, None).await);
    let path = format!("/api/reset/{}/?token=a&token=", user.uuid);
    app.call(Method::GET, &path, None, None).await.assert_error(
        400,
        "validation_error",
        "required",
        "This field is required.",
        Some("token"),
    );

    // A key reads only itself; a session finds no key by that id.
    app.call(Method::GET, "/api/personal_api_keys/%FF/", Some(&key), None)
        .await
        .assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "This action does not support Personal API Key access",
            None,
        );
    let browser = Browser::new(&app);
    browser.login("ada@example.com", PASSWORD).await.assert_ok();
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        browser
            .call(method.clone(), "/api/personal_api_keys/%FF/", None)
            .await
            .assert_error(404, "invalid_request", "not_found", "Not found.", None);
    }
    app.call(
        Method::GET,
        "/api/users/%FF/signal_autonomy/",
        Some(&key),
        None,
    )
    .await
    .assert_error(
        403,
        "authentication_error",
        "permission_denied",
        "Only staff can access other users' autonomy config.",
        None,
    );
    app.stop().await;
}
