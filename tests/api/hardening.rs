//! The security review's findings (issue 10): each test shows a hole closed, on both databases.

use reqwest::Method;
use serde_json::json;

use crate::browser::Browser;
use crate::db_tests;
use crate::helpers::{Db, TestApp, spawn_app};

const PASSWORD: &str = "a-Good-passw0rd!";

db_tests!(
    empty_scope_lists_are_refused_and_legacy_empty_keys_act_as_star,
    logout_keeps_only_a_same_site_next_and_escapes_it,
);

async fn logged_in(app: &TestApp, email: &str) -> Browser {
    app.create_user(email, false).await;
    app.create_org(&format!("Org of {email}"), email).await;
    let browser = Browser::new(app);
    browser.login(email, PASSWORD).await.assert_ok();
    browser
}

/// Stores a key exactly as an old PostHog or hoglet database may hold it: with no scopes.
async fn legacy_key_without_scopes(app: &TestApp, user_id: i64) -> (String, String) {
    use hoglet::domain::api_key;
    let value = api_key::generate_value();
    let record = app
        .store
        .insert_api_key(
            hoglet::store::NewApiKey {
                id: api_key::generate_id(),
                user_id,
                label: "legacy".into(),
                secure_value: api_key::secure_value(&value),
                mask_value: api_key::mask(&value),
                scopes: vec![],
                scoped_teams: None,
                scoped_organizations: None,
                expires_at: None,
                created_at: hoglet::time::system_now(),
            },
            api_key::MAX_KEYS_PER_USER,
        )
        .await
        .unwrap();
    (record.id, value)
}

async fn empty_scope_lists_are_refused_and_legacy_empty_keys_act_as_star(db: Db) {
    let app = spawn_app(db).await;
    let browser = logged_in(&app, "scopes@example.com").await;
    let user = app
        .store
        .user_by_email("scopes@example.com")
        .await
        .unwrap()
        .unwrap();

    browser
        .post(
            "/api/personal_api_keys/",
            json!({"label": "none", "scopes": []}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "empty",
            "This list may not be empty.",
            Some("scopes"),
        );
    assert_eq!(browser.get("/api/personal_api_keys/").await.json, json!([]));

    let created = browser
        .post(
            "/api/personal_api_keys/",
            json!({"label": "read", "scopes": ["user:read"]}),
        )
        .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    for method in [Method::PATCH, Method::PUT] {
        browser
            .call(
                method,
                &format!("/api/personal_api_keys/{id}/"),
                Some(json!({"label": "read", "scopes": []})),
            )
            .await
            .assert_error(
                400,
                "validation_error",
                "empty",
                "This list may not be empty.",
                Some("scopes"),
            );
    }
    assert_eq!(
        app.store.api_key(&id).await.unwrap().unwrap().scopes,
        vec!["user:read".to_string()],
        "a refused update changes nothing"
    );

    // An empty-scope key already in the database is a `*` key: shown so, and refused what `*` is.
    let (legacy_id, legacy) = legacy_key_without_scopes(&app, user.id).await;
    let listed = browser.get("/api/personal_api_keys/").await;
    let shown = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == json!(legacy_id))
        .cloned();
    assert_eq!(shown.unwrap()["scopes"], json!(["*"]));
    let current = app.get("/api/personal_api_keys/@current/", &legacy).await;
    assert_eq!(current.assert_ok()["scopes"], json!(["*"]));
    assert_eq!(
        app.get("/api/users/@me/", &legacy).await.assert_ok()["email"],
        "scopes@example.com"
    );
    for (method, path) in [
        (Method::POST, "/api/users/@me/two_factor_backup_codes/"),
        (Method::POST, "/api/users/@me/two_factor_disable/"),
        (Method::GET, "/api/users/@me/two_factor_status/"),
        (Method::POST, "/api/users/@me/scene_personalisation/"),
    ] {
        let star = app.create_key("scopes@example.com", &["*"]).await;
        let with_star = app
            .call(method.clone(), path, Some(&star), Some(json!({})))
            .await;
        let with_legacy = app
            .call(method.clone(), path, Some(&legacy), Some(json!({})))
            .await;
        with_legacy.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "This action does not support Personal API Key access",
            None,
        );
        assert_eq!(
            (with_star.status, &with_star.json),
            (with_legacy.status, &with_legacy.json),
            "{path}"
        );
    }
    app.stop().await;
}

async fn logout_keeps_only_a_same_site_next_and_escapes_it(db: Db) {
    let app = spawn_app(db).await;
    let browser = logged_in(&app, "next@example.com").await;
    let cases = [
        (
            "next=/settings/user-notifications",
            "/login?next=/settings/user-notifications",
        ),
        // Decoded once this is `/%2F%2Fevil.com`, which the login page would decode to `//evil.com`.
        ("next=/%252F%252Fevil.com", "/login"),
        ("next=/%255Cevil.com", "/login"),
        ("next=%2F%2Fevil.com", "/login"),
        ("next=https://evil.com", "/login"),
        ("next=/a%250d%250aSet-Cookie:%20x=y", "/login"),
        // A second parameter smuggled inside `next` stays inside it.
        (
            "next=/settings%26next%3D%2F%2Fevil.com",
            "/login?next=/settings%26next%3D//evil.com",
        ),
    ];
    for path in ["/logout/", "/api/logout/"] {
        for (query, location) in cases {
            let reply = app
                .send(app.request(Method::POST, &format!("{path}?{query}")))
                .await;
            assert_eq!(reply.status.as_u16(), 302, "{path}?{query}");
            assert_eq!(reply.header("location"), Some(location), "{path}?{query}");
        }
    }
    // The same rules for a form body, and the session really ended.
    let reply = browser
        .client
        .post(app.url("/logout/"))
        .header("X-CSRFToken", browser.cookie("posthog_csrftoken").unwrap())
        .form(&[("next", "/%252F%252Fevil.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 302);
    assert_eq!(reply.headers()["location"], "/login");
    assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 401);
    app.stop().await;
}
