//! The security review's findings (issue 10): each test shows a hole closed, on both databases.

use std::path::Path;
use std::time::Duration;

use hoglet::BuildOptions;
use hoglet::config::EmailDelivery;
use hoglet::time::{Clock, SECOND};
use reqwest::Method;
use serde_json::json;

use crate::browser::{Browser, logged_in_member};
use crate::browser::{Mail, read_mails, wait_for_mail};
use crate::db_tests;
use crate::helpers::{
    Db, PASSWORD, TestApp, TestDatabase, eventually, spawn_app, start, totp_code,
};

db_tests!(
    empty_scope_lists_are_refused_and_legacy_empty_keys_act_as_star,
    logout_keeps_only_a_same_site_next_and_escapes_it,
    remembered_devices_end_with_a_password_change_reset_or_new_device,
    reset_tokens_die_when_the_user_logs_in,
    parallel_second_factor_guesses_get_one_evaluation,
    cross_site_posts_are_refused_before_any_cookie,
    organizations_can_enforce_two_factor_on_sessions,
    mail_throttles_count_by_the_recipient,
    credential_changes_end_pending_second_factor_logins,
    forwarded_addresses_count_only_from_trusted_proxies,
    failed_logins_lock_the_account_from_any_address,
);

async fn empty_scope_lists_are_refused_and_legacy_empty_keys_act_as_star(db: Db) {
    let app = spawn_app(db).await;
    let browser = logged_in_member(&app, "scopes@example.com").await.1;
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
    let (legacy_id, legacy) = app.create_legacy_key("scopes@example.com").await;
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
    let browser = logged_in_member(&app, "next@example.com").await.1;
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

/// An app with mail written to `dir` (when given) and a clock the test moves.
async fn app_with(db: Db, mail: Option<&Path>) -> (TestApp, Clock) {
    let clock = Clock::manual();
    let mail = mail.map(Path::to_path_buf);
    let app = start(
        TestDatabase::create(db).await,
        move |c| {
            if let Some(dir) = mail {
                c.email = EmailDelivery::Directory(dir);
            }
        },
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    (app, clock)
}

/// The reset link mailed to `dir`, once delivered.
async fn reset_token(dir: &Path) -> String {
    wait_for_mail(dir, "the reset mail", |m| {
        m.subject == "Reset your PostHog password"
    })
    .await
    .link("/reset/")
    .and_then(|link| link.rsplit('/').next().map(str::to_string))
    .expect("a reset link")
}

/// Turns on TOTP for the browser's user; returns the base32 secret.
async fn enable_totp(browser: &Browser, clock: &Clock) -> String {
    let setup = browser.get("/api/users/@me/two_factor_start_setup/").await;
    let secret = setup.assert_ok()["secret"].as_str().unwrap().to_string();
    browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": totp_code(&secret, clock)}),
        )
        .await
        .assert_ok();
    clock.advance(60 * SECOND);
    secret
}

/// Logs in with password and TOTP, which sets a remember-device cookie.
async fn login_with_totp(
    browser: &Browser,
    email: &str,
    password: &str,
    secret: &str,
    clock: &Clock,
) {
    let first = browser.login(email, password).await;
    assert_eq!(first.json["code"], "2fa_required", "{}", first.text);
    browser
        .post(
            "/api/login/token/",
            json!({"token": totp_code(secret, clock)}),
        )
        .await
        .assert_ok();
    clock.advance(60 * SECOND);
}

async fn logout(browser: &Browser) {
    let reply = browser.call(Method::POST, "/logout/", None).await;
    assert_eq!(reply.status.as_u16(), 302);
}

async fn remembered_devices_end_with_a_password_change_reset_or_new_device(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let (app, clock) = app_with(db, Some(mail.path())).await;
    let email = "remember@example.com";
    let user = app.create_user(email, false).await;
    app.create_org("Remember", email).await;
    let browser = Browser::new(&app);
    browser.login(email, PASSWORD).await.assert_ok();
    let secret = enable_totp(&browser, &clock).await;
    logout(&browser).await;
    login_with_totp(&browser, email, PASSWORD, &secret, &clock).await;
    logout(&browser).await;
    assert_eq!(
        browser.login(email, PASSWORD).await.json,
        json!({"success": true}),
        "the remembered device skips the second factor"
    );

    // A password change voids it.
    let changed = "Another g00d password";
    browser
        .patch(
            "/api/users/@me/",
            json!({"current_password": PASSWORD, "password": changed}),
        )
        .await
        .assert_ok();
    logout(&browser).await;
    browser.login(email, changed).await.assert_error(
        401,
        "server_error",
        "2fa_required",
        "2FA is required.",
        None,
    );

    // So does a reset by emailed link.
    login_with_totp(&browser, email, changed, &secret, &clock).await;
    logout(&browser).await;
    assert_eq!(
        browser.login(email, changed).await.json,
        json!({"success": true})
    );
    logout(&browser).await;
    let anonymous = Browser::new(&app);
    assert_eq!(
        anonymous
            .post("/api/reset/", json!({"email": email}))
            .await
            .status
            .as_u16(),
        204
    );
    let token = reset_token(mail.path()).await;
    let reset = "A third g00d password";
    anonymous
        .post(
            &format!("/api/reset/{}/", user.uuid),
            json!({"token": token, "password": reset}),
        )
        .await
        .assert_ok();
    browser.login(email, reset).await.assert_error(
        401,
        "server_error",
        "2fa_required",
        "2FA is required.",
        None,
    );

    // And so does turning 2FA off and on again, even within the same instant.
    login_with_totp(&browser, email, reset, &secret, &clock).await;
    browser
        .post("/api/users/@me/two_factor_disable/", json!({}))
        .await
        .assert_ok();
    let secret = enable_totp(&browser, &clock).await;
    logout(&browser).await;
    browser.login(email, reset).await.assert_error(
        401,
        "server_error",
        "2fa_required",
        "2FA is required.",
        None,
    );
    login_with_totp(&browser, email, reset, &secret, &clock).await;
    app.stop().await;
}

async fn reset_tokens_die_when_the_user_logs_in(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let (app, _clock) = app_with(db, Some(mail.path())).await;
    let user = app.create_user("relogin@example.com", false).await;
    let anonymous = Browser::new(&app);
    assert_eq!(
        anonymous
            .post("/api/reset/", json!({"email": "relogin@example.com"}))
            .await
            .status
            .as_u16(),
        204
    );
    let token = reset_token(mail.path()).await;
    let path = format!("/api/reset/{}/", user.uuid);
    assert_eq!(
        anonymous
            .get(&format!("{path}?token={token}"))
            .await
            .status
            .as_u16(),
        200,
        "valid until the user logs in"
    );
    Browser::new(&app)
        .login("relogin@example.com", PASSWORD)
        .await
        .assert_ok();
    anonymous
        .get(&format!("{path}?token={token}"))
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_token",
            "This reset token is invalid or has expired.",
            Some("token"),
        );
    anonymous
        .post(
            &path,
            json!({"token": token, "password": "Some new passw0rd"}),
        )
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_token",
            "This reset token is invalid or has expired.",
            Some("token"),
        );
    Browser::new(&app)
        .login("relogin@example.com", PASSWORD)
        .await
        .assert_ok();
    app.stop().await;
}

async fn parallel_second_factor_guesses_get_one_evaluation(db: Db) {
    let (app, clock) = app_with(db, None).await;
    let email = "guess@example.com";
    let user = app.create_user(email, false).await;
    app.create_org("Guess", email).await;
    let owner = Browser::new(&app);
    owner.login(email, PASSWORD).await.assert_ok();
    let secret = enable_totp(&owner, &clock).await;

    let attacker = Browser::new(&app);
    assert_eq!(
        attacker.login(email, PASSWORD).await.json["code"],
        "2fa_required"
    );
    let right = totp_code(&secret, &clock);
    let wrong = format!("{:06}", (right.parse::<u32>().unwrap() + 1) % 1_000_000);
    let mut guesses = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let request = attacker
            .client
            .post(app.url("/api/login/token/"))
            .json(&json!({"token": wrong}));
        guesses
            .spawn(async move { crate::helpers::Reply::read(request.send().await.unwrap()).await });
    }
    let mut codes = Vec::new();
    while let Some(reply) = guesses.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(reply.status.as_u16(), 400, "{}", reply.text);
        codes.push(reply.json["code"].as_str().unwrap().to_string());
    }
    let evaluated = codes.iter().filter(|c| *c == "2fa_invalid").count();
    let refused = codes
        .iter()
        .filter(|c| *c == "2fa_too_many_attempts")
        .count();
    assert_eq!((evaluated, refused), (1, 39), "{codes:?}");
    let device = app.store.totp_device(user.id).await.unwrap().unwrap();
    assert_eq!(device.failures, 2, "one miss, counted twice");
    assert_eq!(device.throttled_until, clock.now() + 2 * SECOND);

    // Even the right code waits for the window to pass; then it works and clears the count.
    attacker
        .post("/api/login/token/", json!({"token": right}))
        .await
        .assert_error(
            400,
            "validation_error",
            "2fa_too_many_attempts",
            "Too many attempts.",
            None,
        );
    clock.advance(2 * SECOND);
    attacker
        .post(
            "/api/login/token/",
            json!({"token": totp_code(&secret, &clock)}),
        )
        .await
        .assert_ok();
    let device = app.store.totp_device(user.id).await.unwrap().unwrap();
    assert_eq!((device.failures, device.throttled_until), (0, 0));
    app.stop().await;
}

async fn cross_site_posts_are_refused_before_any_cookie(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let dir = mail.path().to_path_buf();
    let app = crate::helpers::spawn_app_with(db, move |c| {
        c.email = EmailDelivery::Directory(dir);
        c.signup = hoglet::config::SignupPolicy::Open;
    })
    .await;
    let user = app.create_user("victim@example.com", false).await;
    let login = json!({"email": "victim@example.com", "password": PASSWORD});
    let evil = "CSRF Failed: Origin checking failed - https://evil.example does not match any trusted origins.";
    let cross_site = "CSRF Failed: Cross-site requests are not allowed.";
    let fresh = || {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let signup = json!({"first_name": "Mallory", "email": "mallory@example.com",
                        "password": "an0ther Good password", "organization_name": "Evil"});
    let users_before = app.store.count_users().await.unwrap();
    for path in [
        "/api/login/",
        "/api/login/token/",
        "/api/signup/",
        "/api/users/verify_email/",
    ] {
        let body = if path == "/api/signup/" {
            signup.clone()
        } else {
            login.clone()
        };
        for (header, value, detail) in [
            ("Origin", "https://evil.example", evil),
            (
                "Origin",
                "null",
                "CSRF Failed: Origin checking failed - null does not match any trusted origins.",
            ),
            ("Sec-Fetch-Site", "cross-site", cross_site),
        ] {
            let client = fresh();
            // As a browser's cross-site form sends it, and as JSON.
            for request in [
                client.post(app.url(path)).header(header, value).form(&body),
                client.post(app.url(path)).header(header, value).json(&body),
            ] {
                let reply = app.send(request).await;
                reply.assert_error(
                    403,
                    "authentication_error",
                    "permission_denied",
                    detail,
                    None,
                );
                assert!(reply.header("set-cookie").is_none(), "{path}: no cookie");
            }
            let me = app.send(client.get(app.url("/api/users/@me/"))).await;
            assert_eq!(me.status.as_u16(), 401, "{path}: not logged in");
        }
    }
    assert_eq!(
        app.store.count_users().await.unwrap(),
        users_before,
        "nobody signed up"
    );

    // Same-site browsers and API clients (no Origin) log in as before.
    let same_site = fresh();
    let reply = app
        .send(
            same_site
                .post(app.url("/api/login/"))
                .header("Origin", app.base.clone())
                .form(&login),
        )
        .await;
    assert_eq!(reply.json, json!({"success": true}), "{}", reply.text);
    let me = app.send(same_site.get(app.url("/api/users/@me/"))).await;
    assert_eq!(me.assert_ok()["id"], json!(user.id));
    let api_client = fresh();
    let reply = app
        .send(api_client.post(app.url("/api/login/")).json(&login))
        .await;
    assert_eq!(reply.json, json!({"success": true}));
    let reply = app
        .send(
            fresh()
                .post(app.url("/api/login/"))
                .header("Sec-Fetch-Site", "same-origin")
                .json(&login),
        )
        .await;
    assert_eq!(reply.json, json!({"success": true}));
    app.stop().await;
}

/// Runs the real `hoglet` binary on the app's database; returns (exit code, stdout JSON, stderr).
async fn cli(app: &TestApp, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let url = app.db.cli_url();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_hoglet"))
            .args(&args)
            .env("HOGLET_DATABASE_URL", url)
            .env_remove("HOGLET_LOG")
            .output()
            .expect("hoglet runs")
    })
    .await
    .unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    (output.status.code(), json, stderr)
}

async fn organizations_can_enforce_two_factor_on_sessions(db: Db) {
    let (app, clock) = app_with(db, None).await;
    let email = "strict@example.com";
    let user = app.create_user(email, false).await;
    let (org, _) = app.create_org("Strict", email).await;
    let key = app.create_key(email, &["*"]).await;
    let browser = Browser::new(&app);
    browser.login(email, PASSWORD).await.assert_ok();
    let hedgehog = "/api/users/@me/hedgehog_config/";
    browser.get(hedgehog).await.assert_ok();

    // Bad usage changes nothing.
    let (code, _, stderr) = cli(&app, &["org", "update", "--org", &org]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nothing to change"), "{stderr}");
    let (code, _, stderr) = cli(
        &app,
        &[
            "org",
            "update",
            "--org",
            "not-an-id",
            "--enforce-2fa",
            "true",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    let (code, _, _) = cli(
        &app,
        &["org", "update", "--org", &org, "--enforce-2fa", "maybe"],
    )
    .await;
    assert_eq!(
        code,
        Some(2),
        "clap refuses a value that is not true or false"
    );
    assert_eq!(
        browser.get("/api/users/@me/").await.json["organization"]["enforce_2fa"],
        json!(null)
    );

    let (code, printed, stderr) = cli(
        &app,
        &[
            "org",
            "update",
            "--org",
            &org,
            "--enforce-2fa",
            "true",
            "--name",
            "Stricter",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(printed["id"], json!(org));
    assert_eq!(printed["name"], "Stricter");
    assert_eq!(printed["enforce_2fa"], true);

    // The running server learns it from the invalidation feed.
    let setup_required = |reply: &crate::helpers::Reply| {
        reply.assert_error(
            403,
            "authentication_error",
            "two_factor_setup_required",
            "2FA setup required",
            None,
        )
    };
    eventually(
        "enforcement reaches the server",
        Duration::from_secs(5),
        || async { (browser.get(hedgehog).await.status.as_u16() == 403).then_some(()) },
    )
    .await;
    for path in [
        hedgehog,
        "/api/users/%40me/hedgehog_config/",
        "/api/users/@me",
        "/api/users/",
        "/api/personal_api_keys/",
    ] {
        setup_required(&browser.get(path).await);
    }
    setup_required(&browser.patch(hedgehog, json!({"color": "red"})).await);
    // The exact allow-list still answers, with the organization showing the setting.
    let me = browser.get("/api/users/@me/").await;
    assert_eq!(me.assert_ok()["organization"]["enforce_2fa"], true);
    assert_eq!(me.json["organization"]["name"], "Stricter");
    browser.get("/api/users/%40me/").await.assert_ok();
    browser
        .get("/api/users/@me/two_factor_status/")
        .await
        .assert_ok();
    // Keys are not affected.
    app.get(hedgehog, &key).await.assert_ok();

    // Setting up 2FA in this session lets it through; a new login passes the second factor.
    let secret = enable_totp(&browser, &clock).await;
    browser.get(hedgehog).await.assert_ok();
    let second = Browser::new(&app);
    login_with_totp(&second, email, PASSWORD, &secret, &clock).await;
    second.get(hedgehog).await.assert_ok();

    // A member whose device appeared without this session passing it must verify.
    let member = "member@example.com";
    let member_user = app.create_user(member, false).await;
    app.add_member(&org, member, hoglet::store::MembershipLevel::Member)
        .await;
    let member_browser = Browser::new(&app);
    member_browser.login(member, PASSWORD).await.assert_ok();
    setup_required(&member_browser.get(hedgehog).await);
    let device = app.store.totp_device(user.id).await.unwrap().unwrap();
    app.store
        .put_totp_device(&hoglet::store::TotpDeviceRecord {
            user_id: member_user.id,
            ..device
        })
        .await
        .unwrap();
    eventually(
        "the new device reaches the session",
        Duration::from_secs(5),
        || async {
            let reply = member_browser.get(hedgehog).await;
            (reply.json["code"] == "two_factor_verification_required").then_some(reply)
        },
    )
    .await
    .assert_error(
        403,
        "authentication_error",
        "two_factor_verification_required",
        "2FA verification required",
        None,
    );

    // Turning enforcement off lets every session through again.
    let (code, printed, _) = cli(
        &app,
        &["org", "update", "--org", &org, "--enforce-2fa", "false"],
    )
    .await;
    assert_eq!((code, &printed["enforce_2fa"]), (Some(0), &json!(false)));
    eventually("enforcement off", Duration::from_secs(5), || async {
        (member_browser.get(hedgehog).await.status.as_u16() == 200).then_some(())
    })
    .await;
    app.stop().await;
}

async fn mail_throttles_count_by_the_recipient(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let (app, _clock) = app_with(db, Some(mail.path())).await;
    let bob = app.create_user("bob@a.test", false).await;
    app.create_user("carol@a.test", false).await;
    let anonymous = Browser::new(&app);
    let spellings = [
        "bob@a.test",
        " bob@a.test",
        "BOB@a.test",
        "Bob@A.Test ",
        "\tbob@a.test",
        "bob@A.TEST",
    ];
    for email in spellings {
        let reply = anonymous.post("/api/reset/", json!({"email": email})).await;
        assert_eq!(reply.status.as_u16(), 204, "{email:?}: {}", reply.text);
    }
    for email in ["bob@a.test", "BOB@A.TEST", " bob@a.test "] {
        let reply = anonymous.post("/api/reset/", json!({"email": email})).await;
        assert_eq!(reply.status.as_u16(), 429, "{email:?}: {}", reply.text);
        assert_eq!(reply.json["code"], "throttled");
        assert!(reply.header("retry-after").is_some());
    }
    // A logged-in caller is counted by the address too, not by who asks.
    let caller = Browser::new(&app);
    caller.login("carol@a.test", PASSWORD).await.assert_ok();
    let reply = caller
        .post("/api/reset/", json!({"email": "BOB@a.test"}))
        .await;
    assert_eq!(reply.status.as_u16(), 429, "{}", reply.text);
    // Other addresses are unaffected.
    let reply = anonymous
        .post("/api/reset/", json!({"email": "carol@a.test"}))
        .await;
    assert_eq!(reply.status.as_u16(), 204);
    let resets = eventually("seven reset mails", Duration::from_secs(10), || async {
        let mails: Vec<Mail> = read_mails(mail.path())
            .into_iter()
            .filter(|m| m.subject == "Reset your PostHog password")
            .collect();
        (mails.len() >= 7).then_some(mails)
    })
    .await;
    assert_eq!(
        resets
            .iter()
            .filter(|m| m.to.contains("bob@a.test"))
            .count(),
        6
    );

    // Verification mail goes to the uuid's user whatever `email` the body names, and is counted
    // by that recipient.
    for n in 0..6 {
        let reply = anonymous
            .post(
                "/api/users/request_email_verification/",
                json!({"uuid": bob.uuid, "email": format!("decoy{n}@a.test")}),
            )
            .await;
        assert_eq!(reply.json, json!({"success": true}), "{}", reply.text);
    }
    let reply = anonymous
        .post(
            "/api/users/request_email_verification/",
            json!({"uuid": bob.uuid, "email": "decoy-last@a.test"}),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 429, "{}", reply.text);
    let verifications = eventually(
        "six verification mails",
        Duration::from_secs(10),
        || async {
            let mails: Vec<Mail> = read_mails(mail.path())
                .into_iter()
                .filter(|m| m.subject == "Verify your email address" && m.to.contains("bob@"))
                .collect();
            (mails.len() >= 6).then_some(mails)
        },
    )
    .await;
    assert_eq!(verifications.len(), 6, "(carol's login sent her one too)");
    app.stop().await;
}

async fn credential_changes_end_pending_second_factor_logins(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let (app, clock) = app_with(db, Some(mail.path())).await;
    let email = "pending@example.com";
    let user = app.create_user(email, false).await;
    app.create_org("Pending", email).await;
    let owner = Browser::new(&app);
    owner.login(email, PASSWORD).await.assert_ok();
    let secret = enable_totp(&owner, &clock).await;
    let expired = |reply: crate::helpers::Reply| {
        reply.assert_error(
            400,
            "validation_error",
            "2fa_expired",
            "Login attempt has expired. Re-enter username/password.",
            None,
        )
    };

    // A login begun with the old password cannot be finished after a password change…
    let intruder = Browser::new(&app);
    assert_eq!(
        intruder.login(email, PASSWORD).await.json["code"],
        "2fa_required"
    );
    let changed = "Changed g00d password";
    owner
        .patch(
            "/api/users/@me/",
            json!({"current_password": PASSWORD, "password": changed}),
        )
        .await
        .assert_ok();
    expired(
        intruder
            .post(
                "/api/login/token/",
                json!({"token": totp_code(&secret, &clock)}),
            )
            .await,
    );
    owner.get("/api/users/@me/").await.assert_ok();

    // …nor after a reset by emailed link.
    clock.advance(60 * SECOND);
    let intruder = Browser::new(&app);
    assert_eq!(
        intruder.login(email, changed).await.json["code"],
        "2fa_required"
    );
    assert_eq!(
        Browser::new(&app)
            .post("/api/reset/", json!({"email": email}))
            .await
            .status
            .as_u16(),
        204
    );
    let token = reset_token(mail.path()).await;
    Browser::new(&app)
        .post(
            &format!("/api/reset/{}/", user.uuid),
            json!({"token": token, "password": "Reset g00d password"}),
        )
        .await
        .assert_ok();
    expired(
        intruder
            .post(
                "/api/login/token/",
                json!({"token": totp_code(&secret, &clock)}),
            )
            .await,
    );
    app.stop().await;
}

async fn attempt_login(app: &TestApp, forwarded: &str, password: &str) -> crate::helpers::Reply {
    app.send(
        reqwest::Client::new()
            .post(app.url("/api/login/"))
            .header("X-Forwarded-For", forwarded.to_string())
            .json(&json!({"email": "lock@example.com", "password": password})),
    )
    .await
}

async fn forwarded_addresses_count_only_from_trusted_proxies(db: Db) {
    let attempt = attempt_login;
    let locked = |reply: crate::helpers::Reply| {
        reply.assert_error(
            403,
            "authentication_error",
            "too_many_failed_attempts",
            "Too many failed login attempts. Please try again in 10 minutes.",
            None,
        )
    };
    // No trusted proxies (the default): the header is the client's word and is ignored, so
    // rotating it does not reset the count, and naming a victim's address locks out nobody else.
    let app = crate::helpers::spawn_app_with(db, |c| c.login_failure_limit = 3).await;
    app.create_user("lock@example.com", false).await;
    for forwarded in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let reply = attempt(&app, forwarded, "wrong").await;
        assert_eq!(reply.json["code"], "invalid_credentials", "{}", reply.text);
    }
    locked(attempt(&app, "4.4.4.4", PASSWORD).await);
    app.stop().await;

    // Behind a trusted proxy the proxy's own hop counts, not what the client wrote before it.
    let app = crate::helpers::spawn_app_with(db, |c| {
        c.login_failure_limit = 3;
        c.trusted_proxies = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
    })
    .await;
    app.create_user("lock@example.com", false).await;
    for spoofed in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let reply = attempt(&app, &format!("{spoofed}, 203.0.113.9, 10.0.0.2"), "wrong").await;
        assert_eq!(reply.json["code"], "invalid_credentials", "{}", reply.text);
    }
    locked(attempt(&app, "4.4.4.4, 203.0.113.9", PASSWORD).await);
    let other = attempt(&app, "203.0.113.10, 10.0.0.2", PASSWORD).await;
    assert_eq!(
        other.json,
        json!({"success": true}),
        "another client behind the proxy"
    );
    app.stop().await;
}

async fn failed_logins_lock_the_account_from_any_address(db: Db) {
    // Every attempt comes from a new address behind a trusted proxy, so the per-IP limit never
    // counts twice: only the per-account limit can stop the guessing.
    let clock = Clock::manual();
    let app = start(
        TestDatabase::create(db).await,
        |c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()],
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    app.create_user("victim@example.com", false).await;
    let mut next_address = 0u32;
    let mut login = async |email: &str, password: &str| {
        next_address += 1;
        let [_, a, b, c] = next_address.to_be_bytes();
        app.send(
            reqwest::Client::new()
                .post(app.url("/api/login/"))
                .header("X-Forwarded-For", format!("198.{a}.{b}.{c}"))
                .json(&json!({"email": email, "password": password})),
        )
        .await
    };
    let refused = |reply: &crate::helpers::Reply| {
        reply.assert_error(
            400,
            "validation_error",
            "invalid_credentials",
            "Invalid email or password.",
            None,
        )
    };
    let throttled = |reply: &crate::helpers::Reply, wait: u64| {
        reply.assert_error(
            429,
            "throttled_error",
            "throttled",
            &format!("Request was throttled. Expected available in {wait} seconds."),
            None,
        );
        assert_eq!(reply.header("retry-after"), Some(wait.to_string().as_str()));
    };

    // Ten failures within ten minutes lock the account; the tenth still answers 400.
    for attempt in 0..10 {
        if attempt > 0 {
            clock.advance(30 * SECOND);
        }
        refused(&login("victim@example.com", "wrong").await);
    }
    throttled(&login("victim@example.com", PASSWORD).await, 30);
    throttled(&login("VICTIM@example.com ", "wrong").await, 30);

    // An address nobody has gets the same answers, so the lock reveals nothing.
    for _ in 0..10 {
        refused(&login("nobody@example.com", "wrong").await);
    }
    throttled(&login("nobody@example.com", PASSWORD).await, 30);

    // Each failure after the wait doubles the lock, up to five minutes.
    for wait in [60, 120, 240, 300, 300] {
        clock.advance(300 * SECOND);
        refused(&login("victim@example.com", "wrong").await);
        throttled(&login("victim@example.com", PASSWORD).await, wait);
    }

    // A correct login after the wait succeeds and forgets the failures: one more failure does
    // not lock again.
    clock.advance(300 * SECOND);
    let ok = login("victim@example.com", PASSWORD).await;
    assert_eq!(ok.json, json!({"success": true}), "{}", ok.text);
    refused(&login("victim@example.com", "wrong").await);
    let ok = login("victim@example.com", PASSWORD).await;
    assert_eq!(ok.json, json!({"success": true}), "{}", ok.text);

    // Ten quiet minutes forget the failures counted so far.
    for _ in 0..9 {
        refused(&login("quiet@example.com", "wrong").await);
    }
    clock.advance(600 * SECOND);
    for _ in 0..9 {
        refused(&login("quiet@example.com", "wrong").await);
    }
    refused(&login("quiet@example.com", "wrong").await);
    throttled(&login("quiet@example.com", "wrong").await, 30);
    app.stop().await;
}
