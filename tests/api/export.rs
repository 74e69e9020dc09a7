//! `GET /api/users/@me/export/` and the settings page's "Download my data": every section, no
//! hash or secret, a browser session that logged in recently, the export in the activity log.

use hoglet::time::SECOND;
use serde_json::json;

use crate::browser::{Browser, logged_in_member};
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, spawn_app_on_clock, totp_code};

db_tests!(
    export_has_every_section_and_no_secret,
    export_needs_a_recent_browser_session,
    the_settings_page_downloads_the_export,
);

const SECTIONS: [&str; 11] = [
    "format",
    "version",
    "exported_at",
    "user",
    "organizations",
    "personal_api_keys",
    "two_factor",
    "login_sessions",
    "integrations",
    "signal_autonomy",
    "activity",
];

async fn export_has_every_section_and_no_secret(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let email = "export@example.com";
    let (user, browser) = logged_in_member(&app, email).await;
    let key = app.create_key(email, &["user:read"]).await;
    // Two-factor authentication with its backup codes.
    let setup = browser.get("/api/users/@me/two_factor_start_setup/").await;
    let secret = setup.assert_ok()["secret"].as_str().unwrap().to_string();
    browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": totp_code(&secret, &clock)}),
        )
        .await
        .assert_ok();
    let codes: Vec<String> = browser
        .post("/api/users/@me/two_factor_backup_codes/", json!({}))
        .await
        .assert_ok()["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    browser
        .post(
            "/api/users/@me/signal_autonomy/",
            json!({"autostart_priority": "P1"}),
        )
        .await
        .assert_ok();

    let reply = browser.get("/api/users/@me/export/").await;
    let document = reply.assert_ok();
    let today: String = hoglet::time::iso_z(clock.now()).chars().take(10).collect();
    assert_eq!(
        reply.header("content-disposition"),
        Some(format!("attachment; filename=\"hoglet-export-{today}.json\"").as_str())
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let keys: Vec<&str> = document
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, SECTIONS);
    assert_eq!(document["format"], "hoglet-export");
    assert_eq!(document["version"], 1);
    assert_eq!(document["user"]["email"], email);
    assert_eq!(document["user"]["uuid"], user.uuid);
    assert_eq!(document["user"]["has_password"], true);
    assert_eq!(
        document["organizations"][0]["name"],
        format!("Org of {email}")
    );
    assert_eq!(document["organizations"][0]["level"], "owner");
    assert_eq!(
        document["organizations"][0]["teams"][0]["name"],
        "Default project"
    );
    let listed = &document["personal_api_keys"][0];
    assert_eq!(listed["scopes"], json!(["user:read"]));
    assert!(listed["mask_value"].as_str().unwrap().starts_with("phx_"));
    assert_eq!(
        document["two_factor"],
        json!({
            "enabled": true,
            "enabled_at": document["two_factor"]["enabled_at"],
            "backup_codes_remaining": 10,
        })
    );
    assert!(document["two_factor"]["enabled_at"].is_string());
    // When and from where (the client columns are filled by the login), never the session's id.
    let session = document["login_sessions"][0].as_object().unwrap();
    let fields: Vec<&str> = session.keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "created_at",
            "last_activity",
            "expires_at",
            "ip",
            "user_agent",
            "device",
            "login_method"
        ]
    );
    assert_eq!(session["login_method"], "password");
    assert!(session["ip"].is_string());
    assert_eq!(document["integrations"], json!([]));
    assert_eq!(document["signal_autonomy"]["autostart_priority"], "P1");
    let activity = document["activity"].as_array().unwrap();
    let exported = &activity[0];
    assert_eq!(exported["activity"], "user_data_exported");
    assert_eq!(exported["actor"]["type"], "user");
    assert_eq!(exported["actor"]["label"], email);

    // No secret, hash or token of any kind, in clear or as stored.
    let stored_user = app.user_record(user.id).await;
    let stored_keys = app.store.api_keys_of(user.id).await.unwrap();
    let device = app.store.totp_device(user.id).await.unwrap().unwrap();
    let session_token = browser.cookie("sessionid").unwrap();
    let mut secrets = vec![
        PASSWORD.to_string(),
        stored_user.password.0.clone(),
        key.clone(),
        stored_keys[0].secure_value.clone(),
        secret.clone(),
        device.secret.clone(),
        session_token.clone(),
        hoglet::service::sessions::session_id(&session_token),
        browser.cookie("posthog_csrftoken").unwrap(),
    ];
    for code in &codes {
        secrets.push(code.clone());
        secrets.push(hoglet::service::accounts::backup_code_hash(
            &app.state, user.id, code,
        ));
    }
    for team in app
        .store
        .teams_of(&[stored_user.current_organization_id.unwrap()])
        .await
        .unwrap()
    {
        secrets.push(team.api_token);
    }
    for secret in &secrets {
        assert!(
            !reply.text.contains(secret.as_str()),
            "the export holds a secret"
        );
    }
    app.stop().await;
}

async fn export_needs_a_recent_browser_session(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let email = "stale@example.com";
    let (_, browser) = logged_in_member(&app, email).await;
    let key = app.create_key(email, &["*"]).await;
    app.call(reqwest::Method::GET, "/api/users/@me/export/", None, None)
        .await
        .assert_error(
            401,
            "authentication_error",
            "not_authenticated",
            "Authentication credentials were not provided.",
            None,
        );
    // A key is not a session.
    assert_eq!(app.get("/api/users/@me/export/", &key).await.status, 401);
    // Only the caller's own data.
    let other = app.create_user("other@example.com", false).await;
    let refused = browser
        .get(&format!("/api/users/{}/export/", other.uuid))
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    // Percent-encoded `@me` is `@me`; no trailing slash works too.
    assert_eq!(browser.get("/api/users/%40me/export").await.status, 200);

    clock.advance(2 * 3600 * SECOND + SECOND);
    browser.get("/api/users/@me/export/").await.assert_error(
        403,
        "authentication_error",
        "sensitive_action_required_reauth",
        "This action requires you to be recently authenticated.",
        None,
    );
    // Logging in again makes it recent.
    browser.login(email, PASSWORD).await.assert_ok();
    browser.get("/api/users/@me/export/").await.assert_ok();

    // At most ten an hour (one was made in this hour above).
    for _ in 0..9 {
        browser.get("/api/users/@me/export/").await.assert_ok();
    }
    let throttled = browser.get("/api/users/@me/export/").await;
    assert_eq!(throttled.status, 429, "{}", throttled.text);
    assert!(throttled.header("retry-after").is_some());
    app.stop().await;
}

async fn the_settings_page_downloads_the_export(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let email = "page@example.com";
    let (_, browser) = logged_in_member(&app, email).await;
    let page = browser.get("/settings/user").await;
    assert!(page.text.contains("Download my data"), "{}", page.text);
    assert!(page.text.contains("action=\"/settings/user/export\""));

    let download = browser.get("/settings/user/export").await;
    assert_eq!(download.status, 200, "{}", download.text);
    assert!(
        download
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"hoglet-export-")
    );
    assert_eq!(download.json["format"], "hoglet-export");

    // An old session is asked for its password first, and comes back here.
    clock.advance(2 * 3600 * SECOND + SECOND);
    let stale = browser.get("/settings/user/export").await;
    assert_eq!(stale.status, 303);
    let location = stale.header("location").unwrap();
    assert!(location.starts_with("/login?next="), "{location}");
    assert!(location.contains("reauth=1"), "{location}");
    assert!(location.contains("export"), "{location}");
    // Signed out: to the login page.
    let anonymous = Browser::new(&app);
    let login = anonymous.get("/settings/user/export").await;
    assert_eq!(login.status, 303);
    app.stop().await;
}
