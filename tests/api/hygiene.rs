//! Input hygiene (issue 10, items 10 and 12): NUL and control characters never reach the
//! database — a 400 naming the field, the same on both backends — passwords keep every character
//! but NUL, JSON settings keep NUL as data, and credentials never reappear in a link.

use hoglet::config::SignupPolicy;
use reqwest::Method;
use serde_json::json;

use crate::browser::{Browser, logged_in_member};
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, spawn_app, spawn_app_with};

const NUL: (&str, &str) = (
    "null_characters_not_allowed",
    "Null characters are not allowed.",
);
const CONTROL: (&str, &str) = ("invalid_input", "Control characters are not allowed.");

db_tests!(
    user_updates_refuse_control_characters_and_change_nothing,
    signup_and_login_refuse_control_characters_but_passwords_keep_them,
    key_labels_and_ids_refuse_control_characters,
    json_settings_keep_nul_as_data,
    password_reset_refuses_control_characters,
    logout_next_loses_credentials,
);

/// Every string field of PATCH/PUT `/api/users/…`: NUL and control characters are refused with
/// the field in `attr`, and nothing is written (also not the valid fields sent alongside).
async fn user_updates_refuse_control_characters_and_change_nothing(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("ada@example.com", false, &["user:write"])
        .await;
    let before = app.user_record(user.id).await;
    let cases: Vec<(&str, &str, (&str, &str))> = vec![
        ("first_name", "Ada\u{0}", NUL),
        ("first_name", "\u{0}", NUL),
        ("first_name", "A\u{0}d\u{1}a", NUL),
        ("first_name", "A\tda", CONTROL),
        ("first_name", "Ada\nLovelace", CONTROL),
        ("first_name", "A\u{7f}", CONTROL),
        ("first_name", "A\u{85}da", CONTROL),
        ("last_name", "\u{1b}[31mred", CONTROL),
        ("last_name", "Love\u{0}lace", NUL),
    ];
    for (field, value, (code, detail)) in cases {
        for method in [Method::PATCH, Method::PUT] {
            app.call(
                method.clone(),
                "/api/users/@me/",
                Some(&key),
                Some(json!({"last_name": "Changed", field: value})),
            )
            .await
            .assert_error(400, "validation_error", code, detail, Some(field));
        }
    }
    let after = app.user_record(user.id).await;
    assert_eq!(
        (after.first_name.as_str(), after.last_name.as_str()),
        (before.first_name.as_str(), before.last_name.as_str())
    );
    // Whitespace around a value is trimmed before the check, as DRF trims it; other Unicode
    // (not a control character) is data.
    let me = app
        .patch(
            "/api/users/@me/",
            &key,
            json!({"first_name": " \tAda\r\n", "last_name": "Lövelace \u{200b}🦔"}),
        )
        .await;
    assert_eq!(me.assert_ok()["first_name"], "Ada");
    assert_eq!(me.json["last_name"], "Lövelace \u{200b}🦔");
    app.stop().await;
}

/// Sign-up and login: email, names and organization name refuse NUL and control characters
/// (an address like `"a\u0001b"@example.com` is valid to Django, not to hoglet); a password
/// refuses only NUL, and one with a tab signs up and logs in.
async fn signup_and_login_refuse_control_characters_but_passwords_keep_them(db: Db) {
    let app = spawn_app_with(db, |c| c.signup = SignupPolicy::Open).await;
    let browser = Browser::new(&app);
    let body = |field: &str, value: &str| {
        let mut body = json!({
            "first_name": "Jane", "email": "jane@example.com", "password": PASSWORD,
            "organization_name": "Jane's", "last_name": "Doe",
        });
        body[field] = json!(value);
        body
    };
    let cases: Vec<(&str, &str, (&str, &str))> = vec![
        ("email", "jane\u{0}@example.com", NUL),
        ("email", "\u{0}", NUL),
        ("email", "\"jane\u{1}\"@example.com", CONTROL),
        ("email", "\"ja\tne\"@example.com", CONTROL),
        ("first_name", "Ja\u{0}ne", NUL),
        ("first_name", "Ja\u{8}ne", CONTROL),
        ("last_name", "Doe\u{7}", CONTROL),
        ("organization_name", "Jane's\nEvil", CONTROL),
        ("organization_name", "\u{0}", NUL),
        ("password", "a-Good-\u{0}passw0rd!", NUL),
    ];
    for (field, value, (code, detail)) in &cases {
        browser
            .post("/api/signup/", body(field, value))
            .await
            .assert_error(400, "validation_error", code, detail, Some(field));
    }
    assert_eq!(app.store.count_users().await.unwrap(), 0);

    let tabbed = "correct\thorse battery staple";
    let reply = browser.post("/api/signup/", body("password", tabbed)).await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text);

    let login = |email: &str, password: &str| {
        let (browser, email, password) =
            (Browser::new(&app), email.to_string(), password.to_string());
        async move { browser.login(&email, &password).await }
    };
    for (email, password, attr, (code, detail)) in [
        ("jane@example.com\u{0}", tabbed, "email", NUL),
        ("\"jane\u{1}\"@example.com", tabbed, "email", CONTROL),
        ("jane@example.com", "correct\u{0}horse", "password", NUL),
    ] {
        login(email, password).await.assert_error(
            400,
            "validation_error",
            code,
            detail,
            Some(attr),
        );
    }
    let ok = login("jane@example.com", tabbed).await;
    assert_eq!(ok.json, json!({"success": true}), "{}", ok.text);
    app.stop().await;
}

/// Personal API keys: a label with NUL or a control character is a 400 on `label` (on create
/// and update, which then changes nothing); an id with one names no key (404, where PostgreSQL
/// answered 500), on every route that looks a key up.
async fn key_labels_and_ids_refuse_control_characters(db: Db) {
    let app = spawn_app(db).await;
    let browser = logged_in_member(&app, "keys@example.com").await.1;
    for (label, (code, detail)) in [
        ("ci\u{0}", NUL),
        ("\u{0}", NUL),
        ("ci\nprod", CONTROL),
        ("ci\u{9b}", CONTROL),
    ] {
        browser
            .post(
                "/api/personal_api_keys/",
                json!({"label": label, "scopes": ["user:read"]}),
            )
            .await
            .assert_error(400, "validation_error", code, detail, Some("label"));
    }
    assert_eq!(
        browser.get("/api/personal_api_keys/").await.assert_ok(),
        &json!([])
    );
    let created = browser
        .post(
            "/api/personal_api_keys/",
            json!({"label": "ci", "scopes": ["user:read"]}),
        )
        .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    let id = created.json["id"].as_str().unwrap().to_string();
    for method in [Method::PATCH, Method::PUT] {
        browser
            .call(
                method,
                &format!("/api/personal_api_keys/{id}/"),
                Some(json!({"label": "ci\u{0}", "scopes": ["user:write"]})),
            )
            .await
            .assert_error(400, "validation_error", NUL.0, NUL.1, Some("label"));
    }
    let stored = browser.get(&format!("/api/personal_api_keys/{id}/")).await;
    assert_eq!(stored.assert_ok()["label"], "ci");
    assert_eq!(stored.json["scopes"], json!(["user:read"]));

    for bad in [
        "%00",
        "a%00b",
        &format!("{id}%00"),
        "%0A",
        &format!("{id}%09"),
    ] {
        let path = format!("/api/personal_api_keys/{bad}/");
        for (method, body) in [
            (Method::GET, None),
            (Method::PATCH, Some(json!({"label": "x"}))),
            (Method::DELETE, None),
        ] {
            browser.call(method, &path, body).await.assert_error(
                404,
                "invalid_request",
                "not_found",
                "Not found.",
                None,
            );
        }
        browser
            .call(Method::POST, &format!("{path}roll/"), None)
            .await
            .assert_error(404, "invalid_request", "not_found", "Not found.", None);
    }
    let listed = browser.get("/api/personal_api_keys/").await;
    assert_eq!(listed.assert_ok().as_array().unwrap().len(), 1);
    assert_eq!(listed.json[0]["label"], "ci");
    app.stop().await;
}

/// JSON settings are stored as serialized JSON, where a NUL is the escape `\u0000`, never a raw
/// byte: a NUL inside them (values and keys) round-trips on both databases.
async fn json_settings_keep_nul_as_data(db: Db) {
    let app = spawn_app(db).await;
    let (user, key) = app
        .user_with_key("json@example.com", false, &["user:read", "user:write"])
        .await;
    let hedgehog = json!({"a": "x\u{0}y", "k\u{0}\u{1}": ["\u{0}"], "color": "green"});
    let reply = app
        .patch("/api/users/@me/hedgehog_config/", &key, hedgehog.clone())
        .await;
    assert_eq!(reply.assert_ok(), &hedgehog);
    let read = app.get("/api/users/@me/hedgehog_config/", &key).await;
    assert_eq!(read.assert_ok(), &hedgehog);

    let columns = json!({"active": ["person", "x\u{0}y", "\u{1b}"]});
    let seen = json!({"feature\u{0}flags": true});
    let me = app
        .patch(
            "/api/users/@me/",
            &key,
            json!({"events_column_config": columns, "has_seen_product_intro_for": seen}),
        )
        .await;
    assert_eq!(me.assert_ok()["events_column_config"], columns);
    let me = app.get("/api/users/@me/", &key).await;
    assert_eq!(me.assert_ok()["events_column_config"], columns);
    assert_eq!(me.json["has_seen_product_intro_for"], seen);
    let stored = app.user_record(user.id).await;
    assert_eq!(stored.hedgehog_config, Some(hedgehog));
    assert_eq!(stored.events_column_config, columns);
    app.stop().await;
}

/// The reset request's email goes through the same rule (the 400 comes before any lookup).
async fn password_reset_refuses_control_characters(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("reset@example.com", false).await;
    for (email, (code, detail)) in [
        ("reset@example.com\u{0}", NUL),
        ("\"re\u{1}set\"@example.com", CONTROL),
    ] {
        app.call(
            Method::POST,
            "/api/reset/",
            None,
            Some(json!({"email": email})),
        )
        .await
        .assert_error(400, "validation_error", code, detail, Some("email"));
    }
    app.stop().await;
}

/// Issue 10 item 10, for the other link hoglet builds from a request: logout's redirect keeps a
/// same-site `next`, but not the credentials in its query; every other parameter stays as sent.
async fn logout_next_loses_credentials(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("ann@example.com", false).await;
    for (next, location) in [
        (
            "/insights?personal_api_key=phx_secret&tab=a%20b&token=t1#top",
            // `next` is escaped as one query value: the login page decodes it back to the path.
            "/login?next=/insights%3Ftab%3Da%2520b%23top",
        ),
        ("/insights?token=t1", "/login?next=/insights"),
        (
            "/insights?tokens=kept",
            "/login?next=/insights%3Ftokens%3Dkept",
        ),
    ] {
        let browser = Browser::new(&app);
        browser.login("ann@example.com", PASSWORD).await.assert_ok();
        let out = browser.post("/logout/", json!({"next": next})).await;
        assert_eq!(out.status.as_u16(), 302, "{}", out.text);
        assert_eq!(out.header("location"), Some(location), "{next}");
        assert_eq!(
            browser.get("/api/users/@me/").await.status.as_u16(),
            401,
            "logged out"
        );
    }
    // Also from the query string, without a session.
    let out = app
        .request(
            Method::POST,
            "/logout/?next=/x%3Fpersonal_api_key%3Dphx_1%26a%3D1",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 302);
    assert_eq!(out.headers()["location"], "/login?next=/x%3Fa%3D1");
    app.stop().await;
}
