//! The user sub-resources reachable with keys: `hedgehog_config`, `scene_personalisation` (keys
//! refused, even legacy ones) and `DELETE` (session only) (users.md §2.1, §2.3, §4.6–§4.8; test cases
//! 44–52).

use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::logged_in_member;
use crate::db_tests;
use crate::helpers::{Db, spawn_app};

db_tests!(
    hedgehog_config_is_an_object_replaced_wholesale,
    hedgehog_config_scopes_methods_and_targets,
    scene_personalisation_refuses_scoped_keys,
    scene_personalisation_upserts_per_scene,
    scene_personalisation_validation,
    delete_needs_a_session,
);

/// Test cases 49 and 50.
async fn hedgehog_config_is_an_object_replaced_wholesale(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("hog@example.com", false, &["user:write"])
        .await;
    for path in [
        "/api/users/@me/hedgehog_config/",
        "/api/users/@me/hedgehog_config",
        "/api/users/%40me/hedgehog_config/",
    ] {
        assert_eq!(app.get(path, &key).await.assert_ok(), &json!({}), "{path}");
    }
    // Stored through the user itself, read back verbatim.
    app.patch(
        "/api/users/@me/",
        &key,
        json!({"hedgehog_config": {"a bag": "of data"}}),
    )
    .await
    .assert_ok();
    assert_eq!(
        app.get("/api/users/@me/hedgehog_config/", &key)
            .await
            .assert_ok(),
        &json!({"a bag": "of data"})
    );

    let config = json!({"enabled": true, "color": "red", "accessories": ["beret"], "n": 1.5});
    let reply = app
        .patch("/api/users/@me/hedgehog_config/", &key, config.clone())
        .await;
    assert_eq!(
        reply.assert_ok(),
        &config,
        "exactly the body, old keys gone"
    );
    assert_eq!(
        app.get("/api/users/@me/hedgehog_config", &key)
            .await
            .assert_ok(),
        &config
    );
    assert_eq!(
        app.user_record(user.id).await.hedgehog_config,
        Some(config.clone())
    );
    assert_eq!(
        app.get("/api/users/@me/", &key).await.assert_ok()["hedgehog_config"],
        config
    );

    let reply = app
        .patch(
            "/api/users/@me/hedgehog_config",
            &key,
            json!({"skin": "robo"}),
        )
        .await;
    assert_eq!(reply.assert_ok(), &json!({"skin": "robo"}));
    // An empty body stores `{}`.
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/hedgehog_config/",
            Some(&key),
            "application/json",
            "",
        )
        .await;
    assert_eq!(reply.assert_ok(), &json!({}));
    assert_eq!(
        app.user_record(user.id).await.hedgehog_config,
        Some(json!({}))
    );
    // Content is not validated; a form body is a flat map of strings.
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/hedgehog_config/",
            Some(&key),
            "application/x-www-form-urlencoded",
            "color=green&enabled=true",
        )
        .await;
    assert_eq!(
        reply.assert_ok(),
        &json!({"color": "green", "enabled": "true"})
    );
    let reply = app
        .patch("/api/users/@me/hedgehog_config/", &key, json!([1, 2]))
        .await;
    assert_eq!(reply.assert_ok(), &json!([1, 2]));
    assert_eq!(
        app.get("/api/users/@me/hedgehog_config/", &key)
            .await
            .assert_ok(),
        &json!([1, 2])
    );
    // Like PostHog's `hedgehog_config or {}`: an empty stored value reads as `{}`.
    for empty in [json!([]), json!(false), json!(""), json!(0)] {
        app.patch("/api/users/@me/hedgehog_config/", &key, empty.clone())
            .await
            .assert_ok();
        assert_eq!(
            app.get("/api/users/@me/hedgehog_config/", &key)
                .await
                .assert_ok(),
            &json!({}),
            "stored {empty}"
        );
    }
    // Malformed JSON is a parse error and changes nothing.
    let reply = app
        .raw(
            Method::PATCH,
            "/api/users/@me/hedgehog_config/",
            Some(&key),
            "application/json",
            "{\"color\":",
        )
        .await;
    assert_eq!(reply.status.as_u16(), 400);
    assert_eq!(reply.json["code"], "parse_error");
    assert_eq!(
        app.user_record(user.id).await.hedgehog_config,
        Some(json!(0))
    );
    app.stop().await;
}

/// `user:read` reads, `user:write` writes; only GET and PATCH exist; staff reach other users.
async fn hedgehog_config_scopes_methods_and_targets(db: Db) {
    let app = spawn_app(db).await;
    let (user, read_key) = app
        .user_with_key("reader@example.com", false, &["user:read"])
        .await;
    app.patch(
        "/api/users/@me/hedgehog_config/",
        &app.create_key("reader@example.com", &["*"]).await,
        json!({"color": "red"}),
    )
    .await
    .assert_ok();
    assert_eq!(
        app.get("/api/users/@me/hedgehog_config/", &read_key)
            .await
            .assert_ok(),
        &json!({"color": "red"})
    );
    app.patch(
        "/api/users/@me/hedgehog_config/",
        &read_key,
        json!({"color": "blue"}),
    )
    .await
    .assert_error(
        403,
        "authentication_error",
        "permission_denied",
        "API key missing required scope 'user:write'",
        None,
    );
    assert_eq!(
        app.user_record(user.id).await.hedgehog_config,
        Some(json!({"color": "red"}))
    );
    let write_key = app.create_key("reader@example.com", &["user:write"]).await;
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let name = method.to_string();
        app.call(
            method,
            "/api/users/@me/hedgehog_config/",
            Some(&write_key),
            Some(json!({"color": "x"})),
        )
        .await
        .assert_error(
            405,
            "invalid_request",
            "method_not_allowed",
            &format!("Method \"{name}\" not allowed."),
            None,
        );
    }

    // Staff read and replace someone else's; a legacy key works like `*`.
    app.user_with_key("staff@example.com", true, &["*"]).await;
    let (_, staff_key) = app.create_legacy_key("staff@example.com").await;
    let path = format!("/api/users/{}/hedgehog_config/", user.uuid);
    assert_eq!(
        app.get(&path, &staff_key).await.assert_ok(),
        &json!({"color": "red"})
    );
    assert_eq!(
        app.patch(&path, &staff_key, json!({"by": "staff"}))
            .await
            .assert_ok(),
        &json!({"by": "staff"})
    );
    assert_eq!(
        app.get("/api/users/@me/hedgehog_config/", &read_key)
            .await
            .assert_ok(),
        &json!({"by": "staff"})
    );
    app.stop().await;
}

const NO_KEY_ACCESS: &str = "This action does not support Personal API Key access";

/// Test case 52 (last part): any scoped key, even `*`, is refused before the target or the body
/// is looked at.
async fn scene_personalisation_refuses_scoped_keys(db: Db) {
    let app = spawn_app(db).await;
    let (user, star) = app.user_with_key("scene@example.com", true, &["*"]).await;
    let team = app.get("/api/users/@me/", &star).await.assert_ok()["team"]["id"]
        .as_i64()
        .unwrap();
    let dashboard = app.create_dashboard(team, "Pinned").await;
    let body = json!({"scene": "Person", "dashboard": dashboard});
    for scopes in [
        vec!["*"],
        vec!["user:write"],
        vec!["user:read"],
        vec!["user:read", "user:write"],
        vec!["dashboard:write"],
    ] {
        let key = app.create_key("scene@example.com", &scopes).await;
        for path in [
            "/api/users/@me/scene_personalisation/",
            "/api/users/@me/scene_personalisation",
            "/api/users/00000000-0000-0000-0000-000000000000/scene_personalisation/",
        ] {
            app.call(Method::POST, path, Some(&key), Some(body.clone()))
                .await
                .assert_error(
                    403,
                    "authentication_error",
                    "permission_denied",
                    NO_KEY_ACCESS,
                    None,
                );
        }
        app.raw(
            Method::POST,
            "/api/users/@me/scene_personalisation/",
            Some(&key),
            "application/json",
            "[not json",
        )
        .await
        .assert_error(
            403,
            "authentication_error",
            "permission_denied",
            NO_KEY_ACCESS,
            None,
        );
    }
    let me = app.get("/api/users/@me/", &star).await.assert_ok().clone();
    assert_eq!(me["scene_personalisation"], json!([]));
    assert_eq!(me["id"], json!(user.id));
    // Only POST is routed.
    app.get("/api/users/@me/scene_personalisation/", &star)
        .await
        .assert_error(
            405,
            "invalid_request",
            "method_not_allowed",
            "Method \"GET\" not allowed.",
            None,
        );
    app.stop().await;
}

/// Test case 51 (a browser session: keys, even legacy ones without scopes, are refused).
async fn scene_personalisation_upserts_per_scene(db: Db) {
    let app = spawn_app(db).await;
    let (user, browser) = logged_in_member(&app, "pin@example.com").await;
    let me = browser.get("/api/users/@me/").await.assert_ok().clone();
    let team = me["team"]["id"].as_i64().unwrap();
    let d1 = app.create_dashboard(team, "One").await;
    let d2 = app.create_dashboard(team, "Two").await;
    let post = |body: Value| browser.post("/api/users/@me/scene_personalisation/", body);
    let reply =
        post(json!({"user": 12345, "team": 12345, "dashboard": d1.to_string(), "scene": "Person"}))
            .await;
    let body = reply.assert_ok();
    crate::users::assert_user_shape(body);
    assert_eq!(body["id"], json!(user.id));
    assert_eq!(
        body["scene_personalisation"],
        json!([{"scene": "Person", "dashboard": d1}])
    );
    let reply = post(json!({"dashboard": d2, "scene": "Person"})).await;
    assert_eq!(
        reply.assert_ok()["scene_personalisation"],
        json!([{"scene": "Person", "dashboard": d2}])
    );
    let reply = post(json!({"dashboard": d2, "scene": "Group"})).await;
    assert_eq!(
        reply.assert_ok()["scene_personalisation"],
        json!([{"scene": "Person", "dashboard": d2}, {"scene": "Group", "dashboard": d2}])
    );
    // Rows of every team are listed, oldest first; the write goes to the current team.
    let org = me["organization"]["id"].as_str().unwrap().to_string();
    let other_team = app.create_team(&org, "Second").await;
    let d3 = app.create_dashboard(other_team, "Three").await;
    browser
        .patch("/api/users/@me/", json!({"set_current_team": other_team}))
        .await
        .assert_ok();
    let reply = post(json!({"dashboard": d3, "scene": "Person"})).await;
    assert_eq!(
        reply.assert_ok()["scene_personalisation"],
        json!([
            {"scene": "Person", "dashboard": d2},
            {"scene": "Group", "dashboard": d2},
            {"scene": "Person", "dashboard": d3},
        ])
    );
    // Form bodies work too.
    let reply = browser
        .raw(
            Method::POST,
            "/api/users/@me/scene_personalisation",
            "application/x-www-form-urlencoded",
            format!("scene=Group&dashboard={d3}"),
        )
        .await;
    assert_eq!(
        reply.assert_ok()["scene_personalisation"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        browser.get("/api/users/@me/").await.assert_ok()["scene_personalisation"],
        reply.json["scene_personalisation"]
    );
    app.stop().await;
}

/// Test case 52 and users.md §4.8's validation order.
async fn scene_personalisation_validation(db: Db) {
    let app = spawn_app(db).await;
    let (_, browser) = logged_in_member(&app, "pin@example.com").await;
    let team = browser.get("/api/users/@me/").await.assert_ok()["team"]["id"]
        .as_i64()
        .unwrap();
    let own = app.create_dashboard(team, "Mine").await;
    app.user_with_key("else@example.com", false, &["*"]).await;
    let (_, foreign_team) = app.create_org("Foreign", "else@example.com").await;
    let foreign = app.create_dashboard(foreign_team, "Theirs").await;
    let cases: Vec<(Value, &str, String, Option<&str>)> = vec![
        (
            json!({"dashboard": foreign, "scene": "Person"}),
            "invalid_input",
            "Dashboard must belong to the user's current team.".into(),
            Some("dashboard"),
        ),
        (
            json!({"dashboard": 12345, "scene": "Person"}),
            "does_not_exist",
            "Invalid pk \"12345\" - object does not exist.".into(),
            Some("dashboard"),
        ),
        (
            json!({"dashboard": "12345", "scene": "Person"}),
            "does_not_exist",
            "Invalid pk \"12345\" - object does not exist.".into(),
            Some("dashboard"),
        ),
        (
            json!({"dashboard": "abc", "scene": "Person"}),
            "incorrect_type",
            "Incorrect type. Expected pk value, received str.".into(),
            Some("dashboard"),
        ),
        (
            json!({"dashboard": [own], "scene": "Person"}),
            "incorrect_type",
            "Incorrect type. Expected pk value, received list.".into(),
            Some("dashboard"),
        ),
        (
            json!({"dashboard": null, "scene": "Person"}),
            "null",
            "This field may not be null.".into(),
            Some("dashboard"),
        ),
        (
            json!({"scene": "Person"}),
            "invalid_input",
            "Dashboard must be provided.".into(),
            None,
        ),
        (
            json!({"dashboard": own}),
            "invalid_input",
            "Scene must be provided.".into(),
            None,
        ),
        (
            json!({}),
            "invalid_input",
            "Dashboard must be provided.".into(),
            None,
        ),
        (
            json!({"dashboard": own, "scene": "x".repeat(201)}),
            "max_length",
            "Ensure this field has no more than 200 characters.".into(),
            Some("scene"),
        ),
        (
            json!({"dashboard": own, "scene": ""}),
            "blank",
            "This field may not be blank.".into(),
            Some("scene"),
        ),
        (
            json!({"dashboard": own, "scene": null}),
            "null",
            "This field may not be null.".into(),
            Some("scene"),
        ),
        // The scene is checked before the dashboard.
        (
            json!({"dashboard": "abc", "scene": "x".repeat(201)}),
            "max_length",
            "Ensure this field has no more than 200 characters.".into(),
            Some("scene"),
        ),
        (
            json!({"scene": ""}),
            "blank",
            "This field may not be blank.".into(),
            Some("scene"),
        ),
    ];
    for (body, detail) in [
        ("[]", "Invalid data. Expected a dictionary, but got list."),
        (
            "\"Person\"",
            "Invalid data. Expected a dictionary, but got str.",
        ),
    ] {
        browser
            .raw(
                Method::POST,
                "/api/users/@me/scene_personalisation/",
                "application/json",
                body,
            )
            .await
            .assert_error(400, "validation_error", "invalid_input", detail, None);
    }
    browser
        .raw(
            Method::POST,
            "/api/users/@me/scene_personalisation/",
            "application/json",
            "null",
        )
        .await
        .assert_error(400, "validation_error", "null", "No data provided", None);
    for (body, code, detail, attr) in cases {
        let reply = browser
            .post("/api/users/@me/scene_personalisation/", body.clone())
            .await;
        reply.assert_error(400, "validation_error", code, &detail, attr);
    }
    let reply = browser
        .post(
            "/api/users/@me/scene_personalisation/",
            json!({"dashboard": own, "scene": "x".repeat(200)}),
        )
        .await;
    assert_eq!(
        reply.assert_ok()["scene_personalisation"],
        json!([{"scene": "x".repeat(200), "dashboard": own}])
    );
    app.stop().await;
}

/// Test cases 44–48 as far as keys go: DELETE accepts only a session, so any key (or none) is
/// 401 `not_authenticated` with `WWW-Authenticate: Session`, and nothing is deleted.
async fn delete_needs_a_session(db: Db) {
    let app = spawn_app(db).await;
    let (member, star) = app.user_with_key("member@example.com", true, &["*"]).await;
    let loner = app.create_user("loner@example.com", false).await;
    let loner_keys = [
        app.create_key("loner@example.com", &["*"]).await,
        app.create_legacy_key("loner@example.com").await.1,
        app.create_key("loner@example.com", &["user:write"]).await,
    ];
    let not_authenticated = |reply: crate::helpers::Reply| {
        reply.assert_error(
            401,
            "authentication_error",
            "not_authenticated",
            "Authentication credentials were not provided.",
            None,
        );
        assert_eq!(reply.header("www-authenticate"), Some("Session"));
    };
    for key in loner_keys.iter().chain([&star]) {
        for path in ["/api/users/@me/", "/api/users/@me"] {
            not_authenticated(app.call(Method::DELETE, path, Some(key), None).await);
        }
    }
    not_authenticated(
        app.call(
            Method::DELETE,
            &format!("/api/users/{}/", loner.uuid),
            Some(&star),
            None,
        )
        .await,
    );
    // A key that is not even valid is ignored the same way (not `authentication_failed`).
    not_authenticated(
        app.call(Method::DELETE, "/api/users/@me/", Some("phx_bogus"), None)
            .await,
    );
    not_authenticated(
        app.call(
            Method::DELETE,
            &format!("/api/users/@me/?personal_api_key={}", loner_keys[0]),
            None,
            None,
        )
        .await,
    );
    not_authenticated(
        app.call(Method::DELETE, "/api/users/@me/", None, None)
            .await,
    );
    // Everyone is still there, and the keys still work.
    for id in [member.id, loner.id] {
        assert!(app.user_record(id).await.is_active);
    }
    assert_eq!(
        app.get("/api/users/@me/", &loner_keys[0]).await.assert_ok()["id"],
        json!(loner.id)
    );
    app.stop().await;
}
