//! Sign-up, login, CSRF, logout, the recent-login rule, password reset and email verification,
//! end to end through HTTP.

use hoglet::BuildOptions;
use hoglet::config::{EmailDelivery, SignupPolicy};
use hoglet::time::{Clock, SECOND};
use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::{Browser, read_mails, wait_for_mail, wait_for_mails};
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, TestApp, TestDatabase, spawn_app, spawn_app_with, start};

db_tests!(
    first_signup_creates_staff_owner_and_logs_in,
    signup_validation_errors_change_nothing,
    signup_policy_is_enforced,
    signup_with_email_configured_needs_verification,
    login_sets_session_and_csrf_and_logout_ends_it,
    wrong_credentials_answer_the_same_and_lock_out_per_ip,
    session_delete_of_user_follows_membership_rule,
    stale_session_needs_recent_login_for_sensitive_changes,
    password_reset_by_emailed_link,
    email_verification_requests_are_throttled,
    password_change_needs_current_password_and_ends_other_sessions,
    email_change_is_staged_until_verified,
    django_password_hashes_are_accepted_and_upgraded,
);

async fn mail_app(db: Db, dir: &std::path::Path) -> TestApp {
    let dir = dir.to_path_buf();
    spawn_app_with(db, move |c| {
        c.email = EmailDelivery::Directory(dir);
        c.signup = SignupPolicy::Open;
    })
    .await
}

fn signup_body(email: &str) -> Value {
    json!({
        "first_name": "John", "last_name": "Doe", "email": email, "password": PASSWORD,
        "organization_name": "Hedgehogs United, LLC", "role_at_organization": "product"
    })
}

async fn first_signup_creates_staff_owner_and_logs_in(db: Db) {
    let app = spawn_app(db).await;
    let browser = Browser::new(&app);
    let reply = browser
        .post("/api/signup", signup_body("John@Example.com"))
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text);
    let body = &reply.json;
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "uuid",
            "distinct_id",
            "first_name",
            "last_name",
            "email",
            "is_email_verified",
            "hedgehog_config",
            "role_at_organization",
            "redirect_url"
        ]
    );
    assert_eq!(body["email"], "john@example.com");
    assert_eq!(body["redirect_url"], "/");
    assert_eq!(body["is_email_verified"], false);
    assert_eq!(body["hedgehog_config"], Value::Null);
    assert_eq!(body["role_at_organization"], "product");
    assert!(browser.cookie("sessionid").is_some());
    assert!(browser.cookie("posthog_csrftoken").is_some());

    let me = browser.get("/api/users/@me/").await;
    let me = me.assert_ok();
    assert_eq!(me["is_staff"], true);
    assert_eq!(me["team"]["name"], "Default project");
    assert_eq!(me["organization"]["name"], "Hedgehogs United, LLC");
    assert_eq!(me["organization"]["membership_level"], 15);
    assert!(
        me["sensitive_session_expires_at"]
            .as_str()
            .unwrap()
            .ends_with("+00:00")
    );

    // The default policy lets only the first user sign up.
    let again = Browser::new(&app)
        .post("/api/signup/", signup_body("jane@example.com"))
        .await;
    again.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        "New organizations cannot be created in this instance. Contact your administrator if you think this is a mistake.",
        None,
    );
    assert_eq!(app.store.count_users().await.unwrap(), 1);
    app.stop().await;
}

async fn signup_validation_errors_change_nothing(db: Db) {
    let app = spawn_app_with(db, |c| c.signup = SignupPolicy::Open).await;
    let browser = Browser::new(&app);
    let cases: Vec<(Value, &str, &str, &str)> = vec![
        (
            json!({"email": "a@b.co", "password": PASSWORD}),
            "first_name",
            "required",
            "This field is required.",
        ),
        (
            json!({"first_name": "   ", "email": "a@b.co", "password": PASSWORD}),
            "first_name",
            "blank",
            "This field may not be blank.",
        ),
        (
            json!({"first_name": null, "email": "a@b.co", "password": PASSWORD}),
            "first_name",
            "null",
            "This field may not be null.",
        ),
        (
            json!({"first_name": "J", "password": PASSWORD}),
            "email",
            "required",
            "This field is required.",
        ),
        (
            json!({"first_name": "J", "email": null, "password": PASSWORD}),
            "email",
            "null",
            "This field may not be null.",
        ),
        (
            json!({"first_name": "J", "email": "nope", "password": PASSWORD}),
            "email",
            "invalid_input",
            "Enter a valid email address.",
        ),
        (
            json!({"first_name": "J", "email": "a@b.co"}),
            "password",
            "required",
            "This field is required.",
        ),
        (
            json!({"first_name": "J", "email": "a@b.co", "password": "123"}),
            "password",
            "password_too_short",
            "This password is too short. It must contain at least 8 characters.",
        ),
        (
            json!({"first_name": "J", "email": "a@b.co", "password": "password"}),
            "password",
            "password_too_weak",
            "Add another word or two. Uncommon words are better.",
        ),
        (
            json!({"first_name": "J", "email": "a@b.co", "password": "a".repeat(73)}),
            "password",
            "max_length",
            "Ensure this field has no more than 72 characters.",
        ),
    ];
    for (body, attr, code, detail) in cases {
        browser
            .post("/api/signup", body.clone())
            .await
            .assert_error(400, "validation_error", code, detail, Some(attr));
    }
    assert_eq!(app.store.count_users().await.unwrap(), 0);

    let ok = browser
        .post(
            "/api/signup/",
            json!({"first_name": "Jane", "email": "jane@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(ok.status.as_u16(), 201, "{}", ok.text);
    let me = browser.get("/api/users/@me/").await;
    assert_eq!(me.json["organization"]["name"], "Jane's Organization");
    Browser::new(&app)
        .post(
            "/api/signup/",
            json!({"first_name": "X", "email": "JANE@example.com", "password": PASSWORD}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "unique",
            "There is already an account with this email address.",
            Some("email"),
        );
    assert_eq!(app.store.count_users().await.unwrap(), 1);
    app.stop().await;
}

async fn signup_policy_is_enforced(db: Db) {
    let app = spawn_app_with(db, |c| c.signup = SignupPolicy::Closed).await;
    Browser::new(&app)
        .post("/api/signup/", signup_body("a@example.com"))
        .await
        .assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "New organizations cannot be created in this instance. Contact your administrator if you think this is a mistake.",
            None,
        );
    assert_eq!(app.store.count_users().await.unwrap(), 0);
    app.stop().await;
}

async fn signup_with_email_configured_needs_verification(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    let browser = Browser::new(&app);
    let reply = browser
        .post("/api/signup/", signup_body("jane@example.com"))
        .await;
    assert_eq!(reply.status.as_u16(), 201, "{}", reply.text);
    let uuid = reply.json["uuid"].as_str().unwrap().to_string();
    assert_eq!(reply.json["redirect_url"], format!("/verify_email/{uuid}"));
    assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 401);

    let mails = wait_for_mails(dir.path(), 1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, "jane@example.com");
    assert_eq!(mails[0].subject, "Verify your email address");
    let link = mails[0].link("/verify_email/").expect("verification link");
    let prefix = format!("{}/verify_email/{uuid}/", app.base);
    assert!(link.starts_with(&prefix), "{link}");
    let token = link[prefix.len()..].to_string();

    // Unverified accounts cannot log in while email is configured.
    browser.login("jane@example.com", PASSWORD).await.assert_error(
        400,
        "validation_error",
        "not_verified",
        "Your account is awaiting verification. Please check your email for a verification link.",
        None,
    );
    browser
        .post("/api/users/verify_email/", json!({"uuid": uuid}))
        .await
        .assert_error(
            400,
            "validation_error",
            "required",
            "This field is required.",
            Some("token"),
        );
    browser
        .post(
            "/api/users/verify_email/",
            json!({"uuid": uuid, "token": "garbage"}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_token",
            "This verification token is invalid or has expired.",
            Some("token"),
        );
    // The failed login sent a second link; the first one is still valid (nothing it covers changed).
    let ok = browser
        .post(
            "/api/users/verify_email/",
            json!({"uuid": uuid, "token": token}),
        )
        .await;
    assert_eq!(ok.json, json!({"success": true, "token": token}));
    let me = browser.get("/api/users/@me/").await;
    assert_eq!(me.assert_ok()["is_email_verified"], true);
    // Single use.
    Browser::new(&app)
        .post(
            "/api/users/verify_email/",
            json!({"uuid": uuid, "token": token}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_token",
            "This verification token is invalid or has expired.",
            Some("token"),
        );
    app.stop().await;
}

async fn login_sets_session_and_csrf_and_logout_ends_it(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("ann@example.com", false).await;
    app.create_org("Ann's", "ann@example.com").await;
    let browser = Browser::new(&app);
    browser
        .post("/api/login", json!({"email": "ann@example.com"}))
        .await
        .assert_error(
            400,
            "validation_error",
            "required",
            "This field is required.",
            Some("password"),
        );
    let reply = browser.login("ANN@example.com", PASSWORD).await;
    assert_eq!(reply.json, json!({"success": true}), "{}", reply.text);
    assert!(browser.cookie("sessionid").is_some());
    let me = browser.get("/api/users/@me").await;
    assert_eq!(me.assert_ok()["email"], "ann@example.com");

    browser
        .call_without_csrf(
            Method::PATCH,
            "/api/users/@me/",
            Some(json!({"first_name": "A"})),
        )
        .await
        .assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "CSRF Failed: CSRF token missing.",
            None,
        );
    let wrong = browser
        .client
        .patch(app.url("/api/users/@me/"))
        .header("X-CSRFToken", "wrong")
        .json(&json!({"first_name": "A"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 403);
    assert!(wrong.text().await.unwrap().contains("CSRF Failed"));
    let patched = browser
        .patch("/api/users/@me/", json!({"first_name": "Annie"}))
        .await;
    assert_eq!(patched.assert_ok()["first_name"], "Annie");

    let out = browser
        .client
        .post(app.url("/logout"))
        .header("X-CSRFToken", browser.cookie("posthog_csrftoken").unwrap())
        .form(&[("next", "/settings/user-notifications")])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 302);
    assert_eq!(
        out.headers()["location"],
        "/login?next=/settings/user-notifications"
    );
    assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 401);

    // Unsafe `next` values are dropped.
    let other = Browser::new(&app);
    other.login("ann@example.com", PASSWORD).await.assert_ok();
    let out = other
        .post("/logout/", json!({"next": "//evil.com/path"}))
        .await;
    assert_eq!(out.status.as_u16(), 302);
    assert_eq!(out.header("location"), Some("/login"));
    app.stop().await;
}

/// Test case 78, behind a trusted proxy (the test client's loopback address) that reports the
/// client's address in `X-Forwarded-For`.
async fn wrong_credentials_answer_the_same_and_lock_out_per_ip(db: Db) {
    let app = spawn_app_with(db, |c| {
        c.login_failure_limit = 3;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    app.create_user("bob@example.com", false).await;
    let browser = Browser::new(&app);
    let login_from = |ip: &'static str, email: &'static str, password: &'static str| {
        browser
            .client
            .post(app.url("/api/login/"))
            .header("X-Forwarded-For", ip)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    for (email, password) in [
        ("bob@example.com", "1234"),
        ("nobody@example.com", PASSWORD),
        ("bob@example.com", "🦔🦔🦔"),
    ] {
        let reply =
            crate::helpers::Reply::read(login_from("1.1.1.1", email, password).await.unwrap())
                .await;
        reply.assert_error(
            400,
            "validation_error",
            "invalid_credentials",
            "Invalid email or password.",
            None,
        );
    }
    let locked = crate::helpers::Reply::read(
        login_from("1.1.1.1", "bob@example.com", PASSWORD)
            .await
            .unwrap(),
    )
    .await;
    locked.assert_error(
        403,
        "authentication_error",
        "too_many_failed_attempts",
        "Too many failed login attempts. Please try again in 10 minutes.",
        None,
    );
    let elsewhere = crate::helpers::Reply::read(
        login_from("2.2.2.2", "bob@example.com", PASSWORD)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(elsewhere.json, json!({"success": true}));
    app.stop().await;
}

async fn session_delete_of_user_follows_membership_rule(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("member@example.com", false).await;
    app.create_org("Org", "member@example.com").await;
    app.create_user("loner@example.com", false).await;

    let member = Browser::new(&app);
    member
        .login("member@example.com", PASSWORD)
        .await
        .assert_ok();
    member
        .call(Method::DELETE, "/api/users/@me/", None)
        .await
        .assert_error(
            409,
            "server_error",
            "conflict",
            "Cannot delete user with organization memberships.",
            None,
        );

    let loner = Browser::new(&app);
    loner.login("loner@example.com", PASSWORD).await.assert_ok();
    let deleted = loner.call(Method::DELETE, "/api/users/@me/", None).await;
    assert_eq!(deleted.status.as_u16(), 204);
    assert!(deleted.text.is_empty());
    assert_eq!(loner.get("/api/users/@me/").await.status.as_u16(), 401);
    assert!(
        app.store
            .user_by_email("loner@example.com")
            .await
            .unwrap()
            .is_none()
    );
    app.stop().await;
}

async fn stale_session_needs_recent_login_for_sensitive_changes(db: Db) {
    let clock = Clock::manual();
    let app = start(
        TestDatabase::create(db).await,
        |_| {},
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    app.create_user("old@example.com", false).await;
    app.create_org("Old", "old@example.com").await;
    let browser = Browser::new(&app);
    browser.login("old@example.com", PASSWORD).await.assert_ok();
    clock.advance(7201 * SECOND);
    let reauth = |r: crate::helpers::Reply| {
        r.assert_error(
            403,
            "authentication_error",
            "sensitive_action_required_reauth",
            "This action requires you to be recently authenticated.",
            None,
        )
    };
    reauth(
        browser
            .patch("/api/users/@me/", json!({"first_name": "x"}))
            .await,
    );
    reauth(browser.patch("/api/users/@me/", json!({})).await);
    reauth(
        browser
            .patch(
                "/api/users/@me/",
                json!({"theme_mode": "system", "first_name": "x"}),
            )
            .await,
    );
    assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 200);
    assert_eq!(
        browser
            .patch("/api/users/@me/", json!({"theme_mode": "light"}))
            .await
            .assert_ok()["theme_mode"],
        "light"
    );
    assert_eq!(
        browser
            .patch("/api/users/@me/hedgehog_config/", json!({"color": "red"}))
            .await
            .assert_ok(),
        &json!({"color": "red"})
    );
    app.stop().await;
}

async fn password_reset_by_emailed_link(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    let user = app.create_user("reset@example.com", false).await;
    let browser = Browser::new(&app);
    let requested = browser
        .post("/api/reset/", json!({"email": "RESET@example.com"}))
        .await;
    assert_eq!(requested.status.as_u16(), 204);
    assert!(requested.text.is_empty());
    assert_eq!(
        browser
            .post("/api/reset", json!({"email": "nobody@example.com"}))
            .await
            .status
            .as_u16(),
        204
    );
    browser
        .post("/api/reset/", json!({"email": "not-an-email"}))
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_input",
            "Enter a valid email address.",
            Some("email"),
        );

    let mails = wait_for_mails(dir.path(), 1).await;
    assert_eq!(mails.len(), 1, "only the known address gets mail");
    assert_eq!(mails[0].subject, "Reset your PostHog password");
    let link = mails[0].link("/reset/").unwrap();
    let prefix = format!("{}/reset/{}/", app.base, user.uuid);
    assert!(link.starts_with(&prefix), "{link}");
    let token = &link[prefix.len()..];

    let path = format!("/api/reset/{}/", user.uuid);
    let valid = browser.get(&format!("{path}?token={token}")).await;
    assert_eq!(valid.status.as_u16(), 200);
    assert!(valid.text.is_empty());
    browser.get(&path).await.assert_error(
        400,
        "validation_error",
        "required",
        "This field is required.",
        Some("token"),
    );
    browser
        .get(&format!("{path}?token=garbage"))
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_token",
            "This reset token is invalid or has expired.",
            Some("token"),
        );
    browser
        .post(&path, json!({"token": token, "password": "123"}))
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_input",
            "This password is too short. It must contain at least 8 characters.",
            Some("password"),
        );
    let done = browser
        .post(
            &path,
            json!({"token": token, "password": "brand new Passw0rd 42"}),
        )
        .await;
    assert_eq!(
        done.json,
        json!({"success": true, "email": "reset@example.com"})
    );
    assert_eq!(
        browser.get("/api/users/@me/").await.status.as_u16(),
        401,
        "not logged in"
    );
    browser
        .post(
            &path,
            json!({"token": token, "password": "another Passw0rd 43"}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_token",
            "This reset token is invalid or has expired.",
            Some("token"),
        );
    browser
        .login("reset@example.com", PASSWORD)
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_credentials",
            "Invalid email or password.",
            None,
        );
    browser
        .login("reset@example.com", "brand new Passw0rd 42")
        .await
        .assert_ok();
    app.stop().await;
}

async fn email_verification_requests_are_throttled(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    let user = app.create_user("v@example.com", false).await;
    let browser = Browser::new(&app);
    browser
        .post("/api/users/request_email_verification/", json!({}))
        .await
        .assert_error(
            400,
            "validation_error",
            "required",
            "This field is required.",
            Some("uuid"),
        );
    for _ in 0..6 {
        let ok = browser
            .post(
                "/api/users/request_email_verification/",
                json!({"uuid": user.uuid}),
            )
            .await;
        assert_eq!(ok.json, json!({"success": true}));
    }
    let throttled = browser
        .post(
            "/api/users/request_email_verification/",
            json!({"uuid": user.uuid}),
        )
        .await;
    assert_eq!(throttled.status.as_u16(), 429, "{}", throttled.text);
    assert_eq!(throttled.json["type"], "throttled_error");
    assert_eq!(throttled.json["code"], "throttled");
    let wait: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!(wait > 86_000, "{wait}");
    assert_eq!(
        throttled.json["detail"],
        format!("Request was throttled. Expected available in {wait} seconds.")
    );
    assert_eq!(wait_for_mails(dir.path(), 6).await.len(), 6);

    let app_without_mail = spawn_app(Db::Sqlite).await;
    let u = app_without_mail.create_user("w@example.com", false).await;
    Browser::new(&app_without_mail)
        .post("/api/users/request_email_verification/", json!({"uuid": u.uuid}))
        .await
        .assert_error(
            400,
            "validation_error",
            "email_not_available",
            "Cannot verify email address because email is not configured for your instance. Please contact your administrator.",
            None,
        );
    app_without_mail.stop().await;
    app.stop().await;
}

async fn password_change_needs_current_password_and_ends_other_sessions(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("pw@example.com", false).await;
    app.create_org("PW", "pw@example.com").await;
    let browser = Browser::new(&app);
    browser.login("pw@example.com", PASSWORD).await.assert_ok();
    let elsewhere = Browser::new(&app);
    elsewhere
        .login("pw@example.com", PASSWORD)
        .await
        .assert_ok();

    browser
        .patch("/api/users/@me/", json!({"password": "12345678"}))
        .await
        .assert_error(
            400,
            "validation_error",
            "required",
            "This field is required when updating your password.",
            Some("current_password"),
        );
    browser
        .patch(
            "/api/users/@me/",
            json!({"current_password": "wrong", "password": "12345678"}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "incorrect_password",
            "Your current password is incorrect.",
            Some("current_password"),
        );
    browser
        .patch(
            "/api/users/@me/",
            json!({"current_password": PASSWORD, "password": "123"}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_input",
            "This password is too short. It must contain at least 8 characters.",
            Some("password"),
        );
    let changed = browser
        .patch(
            "/api/users/@me/",
            json!({"current_password": PASSWORD, "password": "n3w and Stronger pass"}),
        )
        .await;
    let body = changed.assert_ok();
    assert!(body.get("password").is_none() && body.get("current_password").is_none());
    assert_eq!(
        browser.get("/api/users/@me/").await.status.as_u16(),
        200,
        "this session stays"
    );
    assert_eq!(
        elsewhere.get("/api/users/@me/").await.status.as_u16(),
        401,
        "other sessions end"
    );
    Browser::new(&app)
        .login("pw@example.com", PASSWORD)
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_credentials",
            "Invalid email or password.",
            None,
        );
    Browser::new(&app)
        .login("pw@example.com", "n3w and Stronger pass")
        .await
        .assert_ok();

    // Five attempts with `current_password` a minute (three above); the sixth is throttled.
    for _ in 0..2 {
        assert_eq!(
            browser
                .patch(
                    "/api/users/@me/",
                    json!({"current_password": "wrong", "password": "12345678"})
                )
                .await
                .status
                .as_u16(),
            400
        );
        assert_eq!(browser.get("/api/users/@me/").await.status.as_u16(), 200);
    }
    let throttled = browser
        .patch(
            "/api/users/@me/",
            json!({"current_password": "wrong", "password": "12345678"}),
        )
        .await;
    assert_eq!(throttled.status.as_u16(), 429, "{}", throttled.text);
    assert_eq!(throttled.json["code"], "throttled");
    assert!(throttled.header("retry-after").is_some());
    assert_eq!(
        browser
            .patch("/api/users/@me/", json!({"first_name": "Still"}))
            .await
            .status
            .as_u16(),
        200
    );
    app.stop().await;
}

async fn email_change_is_staged_until_verified(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    let user = app.create_user("alpha@example.com", false).await;
    app.create_org("Mail", "alpha@example.com").await;
    app.create_user("taken@example.com", false).await;
    let browser = Browser::new(&app);
    browser
        .login("alpha@example.com", PASSWORD)
        .await
        .assert_ok();

    browser
        .patch("/api/users/@me/", json!({"email": "TAKEN@example.com"}))
        .await
        .assert_error(
            400,
            "validation_error",
            "unique",
            "There is already an account with this email address.",
            Some("email"),
        );
    let case_only = browser
        .patch("/api/users/@me/", json!({"email": "ALPHA@example.com"}))
        .await;
    assert_eq!(case_only.assert_ok()["email"], "ALPHA@example.com");
    assert_eq!(case_only.json["pending_email"], Value::Null);

    let staged = browser
        .patch("/api/users/@me/", json!({"email": "beta@example.com"}))
        .await;
    assert_eq!(staged.assert_ok()["email"], "ALPHA@example.com");
    assert_eq!(staged.json["pending_email"], "beta@example.com");
    // The login sent the unverified address a link; the staged change sends the new one its own.
    let mut sent: Vec<(String, String)> = wait_for_mails(dir.path(), 2)
        .await
        .into_iter()
        .map(|m| (m.to, m.subject))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (
                "alpha@example.com".into(),
                "Verify your email address".into()
            ),
            (
                "beta@example.com".into(),
                "Verify your email address".into()
            ),
        ]
    );
    let mail = wait_for_mail(dir.path(), "the link to beta@", |m| {
        m.to == "beta@example.com"
    })
    .await;
    let link = mail.link("/verify_email/").unwrap();
    let token = link.rsplit('/').next().unwrap().to_string();

    let verified = Browser::new(&app)
        .post(
            "/api/users/verify_email/",
            json!({"uuid": user.uuid, "token": token}),
        )
        .await;
    assert_eq!(verified.json["success"], true, "{}", verified.text);
    let me = browser.get("/api/users/@me/").await;
    assert_eq!(me.json["email"], "beta@example.com");
    assert_eq!(me.json["pending_email"], Value::Null);
    let changed = "Your email address has been changed";
    wait_for_mail(dir.path(), "the notice to the new address", |m| {
        m.subject == changed && m.to == "beta@example.com"
    })
    .await;
    wait_for_mail(dir.path(), "the notice to the old address", |m| {
        m.subject == changed && m.to == "ALPHA@example.com"
    })
    .await;
    let mut notices: Vec<String> = read_mails(dir.path())
        .iter()
        .filter(|m| m.subject == changed)
        .map(|m| m.to.clone())
        .collect();
    notices.sort();
    assert_eq!(notices, ["ALPHA@example.com", "beta@example.com"]);

    // A staged change can be cancelled; with nothing staged that is an error.
    browser
        .patch("/api/users/@me/", json!({"email": "gamma@example.com"}))
        .await
        .assert_ok();
    let cancelled = browser
        .patch("/api/users/cancel_email_change_request/", json!({}))
        .await;
    assert_eq!(cancelled.assert_ok()["pending_email"], Value::Null);
    browser
        .patch("/api/users/cancel_email_change_request", json!({}))
        .await
        .assert_error(
            400,
            "validation_error",
            "email_change_request_not_found",
            "No active email change requests found.",
            None,
        );

    // Without email configured, the change is immediate.
    let plain = spawn_app(Db::Sqlite).await;
    plain.create_user("one@example.com", false).await;
    let b = Browser::new(&plain);
    b.login("one@example.com", PASSWORD).await.assert_ok();
    let replaced = b
        .patch("/api/users/@me/", json!({"email": "two@example.com"}))
        .await;
    assert_eq!(replaced.assert_ok()["email"], "two@example.com");
    assert_eq!(replaced.json["pending_email"], Value::Null);
    plain.stop().await;
    app.stop().await;
}

async fn django_password_hashes_are_accepted_and_upgraded(db: Db) {
    let app = spawn_app(db).await;
    let user = app.create_user("legacy@example.com", false).await;
    let mut record = app.store.user_by_id(user.id).await.unwrap().unwrap();
    record.password = hoglet::store::PasswordHash(hoglet::domain::password::django_pbkdf2(
        "old django password",
        "somesalt",
        1000,
    ));
    app.store_user(&record).await;
    let browser = Browser::new(&app);
    browser
        .login("legacy@example.com", "not it")
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_credentials",
            "Invalid email or password.",
            None,
        );
    assert_eq!(
        browser
            .login("legacy@example.com", "old django password")
            .await
            .json,
        json!({"success": true})
    );
    let stored = app
        .store
        .user_by_id(user.id)
        .await
        .unwrap()
        .unwrap()
        .password
        .0;
    assert!(stored.starts_with("$argon2id$"), "upgraded on login");
    assert_eq!(
        Browser::new(&app)
            .login("legacy@example.com", "old django password")
            .await
            .json,
        json!({"success": true})
    );
    app.stop().await;
}
