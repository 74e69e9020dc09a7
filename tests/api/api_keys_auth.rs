//! Personal API key authentication on `/api/users/…` (integrations-auth.md §C.1, §C.2, §C.4;
//! users.md §2.1, §2.3; test cases 4, 11, 12).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::db_tests;
use crate::helpers::{Db, Reply, TestApp, eventually, spawn_app};

db_tests!(
    bearer_header_variants,
    key_in_the_body_or_the_query_string,
    the_first_candidate_decides,
    oauth_access_tokens_are_not_keys,
    keys_created_after_start_work_at_once,
    keys_of_deleted_or_deactivated_users_stop_working,
    legacy_pbkdf2_keys_authenticate_and_are_upgraded,
    read_scopes_on_every_route,
    last_used_at_is_written_at_most_hourly,
);

#[track_caller]
fn not_authenticated(reply: &Reply) {
    reply.assert_error(
        401,
        "authentication_error",
        "not_authenticated",
        "Authentication credentials were not provided.",
        None,
    );
    assert_eq!(reply.header("www-authenticate"), Some("Session"));
}

#[track_caller]
fn invalid_key(reply: &Reply, source: &str) {
    reply.assert_error(
        401,
        "authentication_error",
        "authentication_failed",
        &format!("Personal API key found in request {source} is invalid."),
        None,
    );
    assert_eq!(reply.header("www-authenticate"), Some("Session"));
}

async fn with_authorization(app: &TestApp, value: &str) -> Reply {
    app.send(
        app.request(Method::GET, "/api/users/@me/")
            .header("Authorization", value),
    )
    .await
}

/// `^Bearer\s+(\S.+)$`, the token trimmed; "Bearer" is case-sensitive.
async fn bearer_header_variants(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("bearer@example.com", false, &["user:read"])
        .await;
    for value in [
        format!("Bearer {key}"),
        format!("Bearer   {key}"),
        format!("Bearer {key}   "),
        format!("Bearer\t{key}"),
    ] {
        let reply = with_authorization(&app, &value).await;
        assert_eq!(reply.assert_ok()["id"], json!(user.id), "{value:?}");
    }
    // Not recognised as a key at all: no credentials.
    for value in [
        format!("bearer {key}"),
        format!("BEARER {key}"),
        format!("Token {key}"),
        format!("Basic {key}"),
        format!("Bearer{key}"),
        "Bearer ".to_string(),
        "Bearer".to_string(),
        key.clone(),
    ] {
        not_authenticated(&with_authorization(&app, &value).await);
    }
    // Recognised but wrong.
    for value in [
        format!("Bearer {key}x"),
        format!("Bearer {}", &key[..key.len() - 1]),
        "Bearer phx_".to_string(),
        "Bearer not-even-a-phx-key".to_string(),
        format!("Bearer {key} extra"),
    ] {
        invalid_key(
            &with_authorization(&app, &value).await,
            "Authorization header",
        );
    }
    app.stop().await;
}

/// The body field `personal_api_key` (JSON or form) and the query parameter of the same name.
async fn key_in_the_body_or_the_query_string(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app.user_with_key("where@example.com", false, &["*"]).await;

    // Query string, on reads and writes, with or without the slash.
    for path in [
        format!("/api/users/@me/?personal_api_key={key}"),
        format!("/api/users/@me?personal_api_key={key}"),
        format!("/api/users/@me/hedgehog_config/?personal_api_key={key}"),
    ] {
        let reply = app.call(Method::GET, &path, None, None).await;
        reply.assert_ok();
    }
    let list = app
        .call(
            Method::GET,
            &format!("/api/users/?personal_api_key={key}"),
            None,
            None,
        )
        .await;
    assert_eq!(list.assert_ok()["count"], 1);
    let reply = app
        .call(
            Method::PATCH,
            &format!("/api/users/@me/?personal_api_key={key}"),
            None,
            Some(json!({"first_name": "Query"})),
        )
        .await;
    assert_eq!(reply.assert_ok()["first_name"], "Query");
    invalid_key(
        &app.call(
            Method::GET,
            "/api/users/@me/?personal_api_key=phx_wrong",
            None,
            None,
        )
        .await,
        "query string",
    );

    // JSON body: the key is not a user field, so it is simply ignored by the update.
    let reply = app
        .call(
            Method::PATCH,
            "/api/users/@me/",
            None,
            Some(json!({"personal_api_key": key, "first_name": "Body"})),
        )
        .await;
    assert_eq!(reply.assert_ok()["first_name"], "Body");
    assert_eq!(reply.json["id"], json!(user.id));
    invalid_key(
        &app.call(
            Method::PATCH,
            "/api/users/@me/",
            None,
            Some(json!({"personal_api_key": "phx_wrong", "first_name": "Nope"})),
        )
        .await,
        "body",
    );
    // A body on a GET is read too (DRF parses `request.data` whatever the method).
    let reply = app
        .call(
            Method::GET,
            "/api/users/@me/",
            None,
            Some(json!({"personal_api_key": key})),
        )
        .await;
    assert_eq!(reply.assert_ok()["id"], json!(user.id));
    invalid_key(
        &app.call(
            Method::GET,
            "/api/users/",
            None,
            Some(json!({"personal_api_key": "phx_wrong"})),
        )
        .await,
        "body",
    );
    // A malformed body on a GET that carries its key in the header is never looked at.
    let reply = app
        .raw(
            Method::GET,
            "/api/users/@me/",
            Some(&key),
            "application/json",
            "{oops",
        )
        .await;
    reply.assert_ok();
    // Form body.
    let reply = app
        .send(
            app.request(Method::PATCH, "/api/users/@me")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(format!("personal_api_key={key}&last_name=Form")),
        )
        .await;
    assert_eq!(reply.assert_ok()["last_name"], "Form");
    let reply = app
        .send(
            app.request(Method::PATCH, "/api/users/@me/")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("personal_api_key=phx_nope&last_name=Nope"),
        )
        .await;
    invalid_key(&reply, "body");
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.first_name, "Body");
    assert_eq!(stored.last_name, "Form");
    app.stop().await;
}

/// Only the first candidate (header, then body, then query string) is tried; a bad one does not
/// fall through.
async fn the_first_candidate_decides(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("first@example.com", false, &["*"]).await;
    let reply = app
        .call(
            Method::PATCH,
            "/api/users/@me/?personal_api_key=phx_wrong",
            Some(&key),
            Some(json!({"personal_api_key": "phx_wrong_too", "first_name": "Header"})),
        )
        .await;
    assert_eq!(reply.assert_ok()["first_name"], "Header");
    invalid_key(
        &app.call(
            Method::PATCH,
            &format!("/api/users/@me/?personal_api_key={key}"),
            Some("phx_wrong"),
            Some(json!({"personal_api_key": key})),
        )
        .await,
        "Authorization header",
    );
    invalid_key(
        &app.call(
            Method::PATCH,
            &format!("/api/users/@me/?personal_api_key={key}"),
            None,
            Some(json!({"personal_api_key": "phx_wrong"})),
        )
        .await,
        "body",
    );
    let reply = app
        .call(
            Method::PATCH,
            "/api/users/@me/?personal_api_key=phx_wrong",
            None,
            Some(json!({"personal_api_key": key, "last_name": "Body wins"})),
        )
        .await;
    assert_eq!(reply.assert_ok()["last_name"], "Body wins");
    // A header that is not a bearer token is no candidate: the query string is used.
    let reply = app
        .send(
            app.request(
                Method::GET,
                &format!("/api/users/@me/?personal_api_key={key}"),
            )
            .header("Authorization", "Basic dXNlcjpwYXNz"),
        )
        .await;
    reply.assert_ok();
    app.stop().await;
}

/// Test case 12 as far as hoglet goes: it issues no OAuth tokens, so `Bearer pha_…` is an invalid
/// access token, never a personal key and never a fall-through to other candidates.
async fn oauth_access_tokens_are_not_keys(db: Db) {
    let app = spawn_app(db).await;
    let (_, key) = app.user_with_key("oauth@example.com", false, &["*"]).await;
    for path in [
        "/api/users/@me/".to_string(),
        "/api/users/".to_string(),
        format!("/api/users/@me/?personal_api_key={key}"),
    ] {
        let reply = app
            .send(
                app.request(Method::GET, &path)
                    .bearer_auth("pha_abcdefghijklmnop"),
            )
            .await;
        reply.assert_error(
            401,
            "authentication_error",
            "authentication_failed",
            "Invalid access token.",
            None,
        );
        assert_eq!(reply.header("www-authenticate"), Some("Session"));
    }
    app.stop().await;
}

/// No negative caching: a value refused once authenticates as soon as a key with that value
/// exists; keys made by admin commands while serving work at once.
async fn keys_created_after_start_work_at_once(db: Db) {
    let app = spawn_app(db).await;
    let user = app.create_user("late@example.com", false).await;
    let value = hoglet::domain::api_key::generate_value();
    for _ in 0..3 {
        invalid_key(
            &app.get("/api/users/@me/", &value).await,
            "Authorization header",
        );
    }
    app.store
        .insert_api_key(
            hoglet::store::NewApiKey {
                id: hoglet::domain::api_key::generate_id(),
                user_id: user.id,
                label: "late".into(),
                secure_value: hoglet::domain::api_key::secure_value(&value),
                mask_value: hoglet::domain::api_key::mask(&value),
                scopes: vec!["user:read".into()],
                scoped_teams: None,
                scoped_organizations: None,
                expires_at: None,
                created_at: hoglet::time::system_now(),
            },
            10,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        app.get("/api/users/@me/", &value).await.assert_ok()["id"],
        json!(user.id)
    );
    let admin_key = app.create_key("late@example.com", &["user:write"]).await;
    app.patch("/api/users/@me/", &admin_key, json!({"first_name": "Late"}))
        .await
        .assert_ok();
    assert_eq!(
        app.get("/api/users/@me/", &value).await.assert_ok()["first_name"],
        "Late"
    );
    app.stop().await;
}

/// A key stops authenticating once its user is deleted or deactivated outside the API (admin
/// tooling writing to the database): within the cache invalidation delay, then for good.
async fn keys_of_deleted_or_deactivated_users_stop_working(db: Db) {
    let app = spawn_app(db).await;
    let doomed = app.create_user("doomed@example.com", false).await;
    let doomed_key = app.create_key("doomed@example.com", &["user:read"]).await;
    let (sleeper, sleeper_key) = app
        .user_with_key("sleeper@example.com", false, &["*"])
        .await;
    let (_, staff_key) = app.user_with_key("staff@example.com", true, &["*"]).await;
    // Warm every cache: the key, and the rendered `@me`.
    for key in [&doomed_key, &sleeper_key] {
        for _ in 0..2 {
            app.get("/api/users/@me/", key).await.assert_ok();
        }
    }

    assert_eq!(
        app.store.delete_user(doomed.id).await.unwrap(),
        hoglet::store::UserDeletion::Deleted
    );
    let mut record = app.user_record(sleeper.id).await;
    record.is_active = false;
    app.store_user(&record).await;

    for key in [&doomed_key, &sleeper_key] {
        let reply = eventually("the key to be refused", Duration::from_secs(10), || async {
            let reply = app.get("/api/users/@me/", key).await;
            (reply.status.as_u16() == 401 && reply.json["code"] == "authentication_failed")
                .then_some(reply)
        })
        .await;
        invalid_key(&reply, "Authorization header");
        // And it stays refused, on every route.
        for path in [
            "/api/users/@me/",
            "/api/users/",
            "/api/users/@me/hedgehog_config/",
        ] {
            invalid_key(&app.get(path, key).await, "Authorization header");
        }
        invalid_key(
            &app.patch("/api/users/@me/", key, json!({"first_name": "Ghost"}))
                .await,
            "Authorization header",
        );
    }
    // Neither is visible to staff any more.
    let list = app.get("/api/users/", &staff_key).await.assert_ok().clone();
    let emails: Vec<&str> = list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["staff@example.com"]);
    for uuid in [&doomed.uuid, &sleeper.uuid] {
        app.get(&format!("/api/users/{uuid}/"), &staff_key)
            .await
            .assert_error(404, "invalid_request", "not_found", "Not found.", None);
    }
    app.stop().await;
}

/// integrations-auth.md §C.1: keys stored with PostHog's legacy PBKDF2 hashes still authenticate,
/// and the stored hash becomes the sha256 form.
async fn legacy_pbkdf2_keys_authenticate_and_are_upgraded(db: Db) {
    let app = spawn_app(db).await;
    let user = app.create_user("legacy@example.com", false).await;
    let value = "phx_legacyKeyMadeByAnOlderPostHog0123456789abcdef".to_string();
    let id = hoglet::domain::api_key::generate_id();
    app.store
        .insert_api_key(
            hoglet::store::NewApiKey {
                id: id.clone(),
                user_id: user.id,
                label: "legacy".into(),
                secure_value: hoglet::domain::api_key::legacy_secure_value(&value, 260_000),
                mask_value: hoglet::domain::api_key::mask(&value),
                scopes: vec![],
                scoped_teams: None,
                scoped_organizations: None,
                expires_at: None,
                created_at: hoglet::time::system_now(),
            },
            10,
            &[],
        )
        .await
        .unwrap();
    invalid_key(
        &app.get("/api/users/@me/", "phx_other").await,
        "Authorization header",
    );
    assert_eq!(
        app.get("/api/users/@me/", &value).await.assert_ok()["id"],
        json!(user.id)
    );
    let upgraded = app
        .store
        .api_key_by_secure_value(&hoglet::domain::api_key::secure_value(&value))
        .await
        .unwrap()
        .expect("the hash was upgraded to sha256");
    assert_eq!(upgraded.id, id);
    assert!(!app.store.has_legacy_api_keys().await.unwrap());
    app.get("/api/users/@me/", &value).await.assert_ok();
    app.stop().await;
}

/// integrations-auth.md §C.4 on the users routes: `:read` is met by read or write, `*` and legacy
/// keys pass, other objects' scopes do not.
async fn read_scopes_on_every_route(db: Db) {
    let app = spawn_app(db).await;
    let (user, _) = app
        .user_with_key("reads@example.com", false, &["user:read"])
        .await;
    let reads = [
        "/api/users/@me/",
        "/api/users/@me",
        "/api/users/",
        "/api/users/@me/hedgehog_config/",
    ];
    for scopes in [
        vec!["user:read"],
        vec!["user:write"],
        vec!["*"],
        vec![],
        vec!["insight:read", "user:read"],
    ] {
        let key = app.create_key("reads@example.com", &scopes).await;
        for path in reads {
            let reply = app.get(path, &key).await;
            assert_eq!(
                reply.status.as_u16(),
                200,
                "{scopes:?} {path}: {}",
                reply.text
            );
        }
        let me = app.get("/api/users/@me/", &key).await;
        assert_eq!(me.json["id"], json!(user.id));
        // Test case 11: no session, so no session deadline.
        assert_eq!(me.json["sensitive_session_expires_at"], Value::Null);
    }
    // Team and organization scoping is not applied to user endpoints (§C.4 step 5).
    let value = hoglet::domain::api_key::generate_value();
    app.store
        .insert_api_key(
            hoglet::store::NewApiKey {
                id: hoglet::domain::api_key::generate_id(),
                user_id: user.id,
                label: "scoped".into(),
                secure_value: hoglet::domain::api_key::secure_value(&value),
                mask_value: hoglet::domain::api_key::mask(&value),
                scopes: vec!["user:write".into()],
                scoped_teams: Some(vec![987_654]),
                scoped_organizations: Some(vec![uuid::Uuid::new_v4().to_string()]),
                expires_at: None,
                created_at: hoglet::time::system_now(),
            },
            10,
            &[],
        )
        .await
        .unwrap();
    for path in reads {
        app.get(path, &value).await.assert_ok();
    }
    app.patch("/api/users/@me/", &value, json!({"first_name": "Scoped"}))
        .await
        .assert_ok();
    for scopes in [
        vec!["insight:read"],
        vec!["insight:write", "feature_flag:read"],
    ] {
        let key = app.create_key("reads@example.com", &scopes).await;
        for path in reads {
            app.get(path, &key).await.assert_error(
                403,
                "authentication_error",
                "permission_denied",
                "API key missing required scope 'user:read'",
                None,
            );
        }
        // Missing scope is reported before the target is resolved.
        app.get("/api/users/not-a-uuid/", &key).await.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "API key missing required scope 'user:read'",
            None,
        );
    }
    app.stop().await;
}

/// integrations-auth.md §C.2: `last_used_at` is written when it is null or more than an hour old,
/// not on every request.
async fn last_used_at_is_written_at_most_hourly(db: Db) {
    let app = spawn_app(db).await;
    app.user_with_key("used@example.com", false, &["user:read"])
        .await;
    let hour = 3600 * hoglet::time::SECOND;
    let now = hoglet::time::system_now();
    let mut keys = Vec::new();
    for previous in [
        None,
        Some(now - 10 * 60 * hoglet::time::SECOND),
        Some(now - 2 * hour),
    ] {
        let value = app.create_key("used@example.com", &["user:read"]).await;
        let record = app
            .store
            .api_key_by_secure_value(&hoglet::domain::api_key::secure_value(&value))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.last_used_at, None);
        if let Some(at) = previous {
            app.store
                .touch_api_keys(&[(record.id.clone(), at)])
                .await
                .unwrap();
        }
        keys.push((value, previous));
    }
    let started = hoglet::time::system_now();
    for (value, _) in &keys {
        for _ in 0..3 {
            app.get("/api/users/@me/", value).await.assert_ok();
        }
    }
    // Write whatever is queued now instead of waiting for the background flush.
    app.state.caches.flush_last_used(&app.store).await;
    for (value, previous) in &keys {
        let stored = app
            .store
            .api_key_by_secure_value(&hoglet::domain::api_key::secure_value(value))
            .await
            .unwrap()
            .unwrap()
            .last_used_at;
        match previous {
            Some(at) if now - at < hour => assert_eq!(stored, Some(*at), "recent: kept"),
            _ => {
                let stored = stored.expect("written");
                assert!(stored >= started && stored <= hoglet::time::system_now());
            }
        }
    }
    app.stop().await;
}
