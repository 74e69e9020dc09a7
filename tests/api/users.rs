//! `/api/users/…` through the real router and database.

use reqwest::Method;
use serde_json::json;

use crate::db_tests;
use crate::helpers::{Db, spawn_app};

db_tests!(
    me_with_a_key_returns_the_full_user,
    me_without_credentials_is_401,
    key_without_user_scope_is_403,
);

async fn me_with_a_key_returns_the_full_user(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("alice@example.com", false, &["user:read"])
        .await;
    for path in ["/api/users/@me/", "/api/users/@me", "/api/users/%40me/"] {
        let reply = app.get(path, &key).await;
        let body = reply.assert_ok();
        assert_eq!(body["uuid"], json!(user.uuid));
        assert_eq!(body["id"], json!(user.id));
        assert_eq!(body["email"], json!("alice@example.com"));
        assert_eq!(body["has_password"], json!(true));
        assert_eq!(body["is_staff"], json!(false));
        assert_eq!(body["sensitive_session_expires_at"], json!(null));
        assert_eq!(body["team"]["organization"], body["organization"]["id"]);
        assert_eq!(body["organization"]["membership_level"], json!(15));
        assert!(body.get("password").is_none());
        assert!(body.get("set_current_team").is_none());
    }
    app.stop().await;
}

async fn me_without_credentials_is_401(db: Db) {
    let app = spawn_app(db).await;
    let reply = app.call(Method::GET, "/api/users/@me/", None, None).await;
    reply.assert_error(
        401,
        "authentication_error",
        "not_authenticated",
        "Authentication credentials were not provided.",
        None,
    );
    assert_eq!(reply.header("www-authenticate"), Some("Session"));
    let reply = app.get("/api/users/@me/", "phx_not_a_real_key").await;
    reply.assert_error(
        401,
        "authentication_error",
        "authentication_failed",
        "Personal API key found in request Authorization header is invalid.",
        None,
    );
    app.stop().await;
}

async fn key_without_user_scope_is_403(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app
        .user_with_key("bob@example.com", false, &["insight:read"])
        .await;
    app.get("/api/users/@me/", &key).await.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        "API key missing required scope 'user:read'",
        None,
    );
    app.stop().await;
}
