//! `/api/personal_api_keys/`: managed from a session, a key reads only itself; rolled and deleted
//! keys stop working at once; expiry; the per-user limit; validation.

use hoglet::BuildOptions;
use hoglet::time::{Clock, SECOND};
use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::logged_in_member;
use crate::db_tests;
use crate::helpers::{Db, TestDatabase, spawn_app, start};

db_tests!(
    keys_are_created_listed_used_rolled_and_deleted,
    keys_may_only_read_themselves,
    key_validation_and_limit,
    expired_keys_are_refused,
    key_requests_have_a_burst_limit,
);

async fn keys_are_created_listed_used_rolled_and_deleted(db: Db) {
    let app = spawn_app(db).await;
    let browser = logged_in_member(&app, "keys@example.com").await.1;
    let created = browser
        .post(
            "/api/personal_api_keys/",
            json!({"label": "ci", "scopes": ["user:read"]}),
        )
        .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    let key = created.json["value"].as_str().unwrap().to_string();
    let id = created.json["id"].as_str().unwrap().to_string();
    assert!(key.starts_with("phx_"));
    assert_eq!(
        created.json["mask_value"],
        format!("phx_...{}", &key[key.len() - 4..])
    );
    assert_eq!(created.json["scopes"], json!(["user:read"]));
    assert_eq!(created.json["scoped_teams"], json!([]));
    assert_eq!(created.json["scoped_organizations"], json!([]));
    assert_eq!(created.json["last_used_at"], Value::Null);

    let listed = browser.get("/api/personal_api_keys").await;
    let listed = listed.assert_ok().as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], json!(id));
    assert_eq!(listed[0]["value"], Value::Null);

    // The key works, and `@current` tells it who it is.
    assert_eq!(
        app.get("/api/users/@me/", &key).await.assert_ok()["email"],
        "keys@example.com"
    );
    let current = app.get("/api/personal_api_keys/@current", &key).await;
    assert_eq!(current.assert_ok()["id"], json!(id));
    assert_eq!(current.json["value"], Value::Null);

    let patched = browser
        .patch(
            &format!("/api/personal_api_keys/{id}/"),
            json!({"label": "renamed", "scopes": ["user:write"]}),
        )
        .await;
    assert_eq!(patched.assert_ok()["label"], "renamed");
    assert_eq!(patched.json["scopes"], json!(["user:write"]));
    assert_eq!(
        app.patch("/api/users/@me/", &key, json!({"first_name": "Via key"}))
            .await
            .assert_ok()["first_name"],
        "Via key"
    );

    let rolled = browser
        .post(&format!("/api/personal_api_keys/{id}/roll/"), json!({}))
        .await;
    let new_key = rolled.assert_ok()["value"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    assert!(rolled.json["last_rolled_at"].is_string());
    assert_eq!(rolled.json["label"], "renamed");
    app.get("/api/users/@me/", &key).await.assert_error(
        401,
        "authentication_error",
        "authentication_failed",
        "Personal API key found in request Authorization header is invalid.",
        None,
    );
    assert_eq!(
        app.get("/api/users/@me/", &new_key).await.status.as_u16(),
        200
    );

    let deleted = browser
        .call(
            Method::DELETE,
            &format!("/api/personal_api_keys/{id}/"),
            None,
        )
        .await;
    assert_eq!(deleted.status.as_u16(), 204);
    assert_eq!(
        app.get("/api/users/@me/", &new_key).await.status.as_u16(),
        401
    );
    assert_eq!(
        browser
            .get(&format!("/api/personal_api_keys/{id}/"))
            .await
            .status
            .as_u16(),
        404
    );
    app.stop().await;
}

async fn keys_may_only_read_themselves(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("self@example.com", false, &["*"]).await;
    let current = app.get("/api/personal_api_keys/@current/", &key).await;
    let id = current.assert_ok()["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.get(&format!("/api/personal_api_keys/{id}"), &key)
            .await
            .status
            .as_u16(),
        200
    );
    let denied = |r: crate::helpers::Reply| {
        r.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "This action does not support Personal API Key access",
            None,
        )
    };
    denied(app.get("/api/personal_api_keys/", &key).await);
    denied(
        app.call(
            Method::POST,
            "/api/personal_api_keys/",
            Some(&key),
            Some(json!({"label": "x", "scopes": ["*"]})),
        )
        .await,
    );
    denied(
        app.call(
            Method::DELETE,
            &format!("/api/personal_api_keys/{id}/"),
            Some(&key),
            None,
        )
        .await,
    );
    denied(
        app.call(
            Method::POST,
            &format!("/api/personal_api_keys/{id}/roll/"),
            Some(&key),
            None,
        )
        .await,
    );
    denied(
        app.patch(
            &format!("/api/personal_api_keys/{id}/"),
            &key,
            json!({"label": "y"}),
        )
        .await,
    );
    let other = app.create_key("self@example.com", &["user:read"]).await;
    let other_id = app
        .get("/api/personal_api_keys/@current", &other)
        .await
        .json["id"]
        .clone();
    denied(
        app.get(
            &format!("/api/personal_api_keys/{}/", other_id.as_str().unwrap()),
            &key,
        )
        .await,
    );
    app.call(Method::GET, "/api/personal_api_keys/", None, None)
        .await
        .assert_error(
            401,
            "authentication_error",
            "not_authenticated",
            "Authentication credentials were not provided.",
            None,
        );
    app.stop().await;
}

async fn key_validation_and_limit(db: Db) {
    let app = spawn_app(db).await;
    let browser = logged_in_member(&app, "limit@example.com").await.1;
    let cases: Vec<(Value, &str, &str, &str)> = vec![
        (
            json!({"scopes": ["*"]}),
            "label",
            "required",
            "This field is required.",
        ),
        (
            json!({"label": " ", "scopes": ["*"]}),
            "label",
            "blank",
            "This field may not be blank.",
        ),
        (
            json!({"label": "x".repeat(41), "scopes": ["*"]}),
            "label",
            "max_length",
            "Ensure this field has no more than 40 characters.",
        ),
        (
            json!({"label": "x"}),
            "scopes",
            "required",
            "This field is required.",
        ),
        (
            json!({"label": "x", "scopes": ["user:delete"]}),
            "scopes",
            "invalid_input",
            "Invalid scope: user:delete",
        ),
        (
            json!({"label": "x", "scopes": ["*"], "scoped_organizations": ["nope"]}),
            "scoped_organizations",
            "invalid_input",
            "Invalid organization UUID",
        ),
        (
            json!({"label": "x", "scopes": ["*"], "scoped_organizations": [uuid::Uuid::new_v4()]}),
            "scoped_organizations",
            "invalid_input",
            "You must be a member of all organizations that you are scoping the key to.",
        ),
        (
            json!({"label": "x", "scopes": ["*"], "scoped_teams": [999_999]}),
            "scoped_teams",
            "invalid_input",
            "You must be a member of all teams that you are scoping the key to.",
        ),
    ];
    for (body, attr, code, detail) in cases {
        browser
            .post("/api/personal_api_keys/", body)
            .await
            .assert_error(400, "validation_error", code, detail, Some(attr));
    }
    for i in 0..10 {
        let created = browser
            .post(
                "/api/personal_api_keys/",
                json!({"label": format!("k{i}"), "scopes": ["user:read"]}),
            )
            .await;
        assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    }
    browser
        .post("/api/personal_api_keys/", json!({"label": "eleventh", "scopes": ["*"]}))
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_input",
            "You can only have 10 personal API keys. Remove an existing key before creating a new one.",
            None,
        );
    let listed = browser.get("/api/personal_api_keys/").await;
    let labels: Vec<&str> = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 10);
    assert_eq!(labels[0], "k9", "newest first");
    app.stop().await;
}

async fn expired_keys_are_refused(db: Db) {
    let clock = Clock::manual();
    let app = start(
        TestDatabase::create(db).await,
        |_| {},
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    let browser = logged_in_member(&app, "exp@example.com").await.1;
    let expires = hoglet::time::iso_z(clock.now() + 3600 * SECOND);
    let created = browser
        .post(
            "/api/personal_api_keys/",
            json!({"label": "short", "scopes": ["*"], "expires_at": expires}),
        )
        .await;
    assert_eq!(created.json["expires_at"], json!(expires));
    let key = created.json["value"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/users/@me/", &key).await.status.as_u16(), 200);
    clock.advance(3601 * SECOND);
    app.get("/api/users/@me/", &key).await.assert_error(
        401,
        "authentication_error",
        "authentication_failed",
        "Personal API key has expired.",
        None,
    );
    browser
        .post(
            "/api/personal_api_keys/",
            json!({"label": "past", "scopes": ["*"], "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_input",
            "The expiry must be in the future.",
            Some("expires_at"),
        );
    app.stop().await;
}

async fn key_requests_have_a_burst_limit(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("burst@example.com", false, &["*"]).await;
    for _ in 0..480 {
        let reply = app.get("/api/personal_api_keys/@current/", &key).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
    }
    let throttled = app.get("/api/personal_api_keys/@current/", &key).await;
    assert_eq!(throttled.status.as_u16(), 429);
    assert_eq!(throttled.json["type"], "throttled_error");
    let wait: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // The users endpoints are not throttled for keys (PostHog's UserViewSet).
    assert_eq!(app.get("/api/users/@me/", &key).await.status.as_u16(), 200);
    app.stop().await;
}
