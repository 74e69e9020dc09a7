//! The web pages through HTTP, as a browser without JavaScript uses them: statuses, 303 targets,
//! CSRF, `next`, security headers, the stylesheet's caching, and HTML errors outside `/api/`.

use hoglet::BuildOptions;
use hoglet::config::{EmailDelivery, SignupPolicy};
use hoglet::time::{Clock, SECOND};
use serde_json::json;

use crate::browser::{Browser, wait_for_mail};
use crate::db_tests;
use crate::helpers::{
    Db, PASSWORD, Reply, TestApp, TestDatabase, spawn_app, spawn_app_with, start, totp_code,
};

db_tests!(
    pages_carry_security_headers_and_errors_are_pages_outside_the_api,
    the_stylesheet_is_served_by_content_hash_and_cached,
    home_sends_visitors_to_login_and_users_to_settings,
    forms_without_the_csrf_token_are_refused,
    login_shows_the_api_error_and_signs_in,
    login_follows_only_safe_next_paths,
    login_lockout_is_shown_with_its_wait,
    login_throttle_and_unverified_accounts_are_shown,
    login_with_two_factor_goes_through_the_code_page,
    signup_without_email_signs_in_and_follows_the_policy,
    signup_with_email_asks_to_verify_and_get_never_uses_the_token,
    password_reset_from_the_mailed_link,
    settings_need_a_session_and_save_the_profile,
    an_old_session_is_asked_for_its_password_before_a_change,
    pages_follow_the_users_theme,
);

const CSP: &str = "default-src 'self'; frame-ancestors 'none'";

#[track_caller]
pub(crate) fn assert_page(reply: &Reply, status: u16) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.text);
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(reply.header("content-security-policy"), Some(CSP));
    assert_eq!(reply.header("referrer-policy"), Some("same-origin"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
}

#[track_caller]
pub(crate) fn assert_see_other(reply: &Reply, location: &str) {
    assert_eq!(reply.status.as_u16(), 303, "{}", reply.text);
    assert_eq!(reply.header("location"), Some(location));
}

/// The message tied to input `name` with `aria-describedby`.
#[track_caller]
fn assert_field_error(reply: &Reply, name: &str, message: &str) {
    assert!(
        reply
            .text
            .contains(&format!("aria-describedby=\"{name}-error\"")),
        "{name} is not tied to its error: {}",
        reply.text
    );
    assert!(
        reply.text.contains(&format!(
            "<p class=\"field-error\" id=\"{name}-error\">{message}</p>"
        )),
        "no {message:?} for {name}: {}",
        reply.text
    );
}

/// An error about the whole form.
#[track_caller]
fn assert_form_error(reply: &Reply, message: &str) {
    let alerts: Vec<&str> = reply
        .text
        .split("role=\"alert\"")
        .skip(1)
        .filter_map(|rest| rest.split("</p>").next())
        .collect();
    assert!(
        alerts.iter().any(|a| a.ends_with(&format!(">{message}"))),
        "no alert {message:?}: {}",
        reply.text
    );
}

/// A browser that has opened the login page (and so holds a CSRF cookie).
async fn visitor(app: &TestApp) -> Browser {
    let browser = Browser::new(app);
    assert_page(&browser.get("/login").await, 200);
    assert!(browser.cookie("posthog_csrftoken").is_some());
    browser
}

async fn mail_app(db: Db, dir: &std::path::Path) -> TestApp {
    let dir = dir.to_path_buf();
    spawn_app_with(db, move |c| {
        c.email = EmailDelivery::Directory(dir);
        c.signup = SignupPolicy::Open;
    })
    .await
}

async fn pages_carry_security_headers_and_errors_are_pages_outside_the_api(db: Db) {
    let app = spawn_app(db).await;
    let browser = Browser::new(&app);
    for path in ["/login", "/login/", "/signup", "/reset"] {
        let page = browser.get(path).await;
        assert_page(&page, 200);
        assert!(page.text.starts_with("<!doctype html>"), "{path}");
        assert!(!page.text.contains("<script"), "{path}");
        assert!(!page.text.contains(" style="), "{path}");
    }
    let missing = browser.get("/no/such/page").await;
    assert_page(&missing, 404);
    assert!(missing.text.contains("Page not found"));
    browser.get("/api/no-such-thing/").await.assert_error(
        404,
        "invalid_request",
        "not_found",
        "Endpoint not found.",
        None,
    );
}

async fn the_stylesheet_is_served_by_content_hash_and_cached(db: Db) {
    let app = spawn_app(db).await;
    let browser = Browser::new(&app);
    let page = browser.get("/login").await;
    let href = page
        .text
        .split("<link rel=\"stylesheet\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a stylesheet link")
        .to_string();
    let hash = href
        .strip_prefix("/static/style.")
        .and_then(|h| h.strip_suffix(".css"))
        .expect("a hashed name");
    assert!(
        hash.len() >= 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{href}"
    );
    let css = browser.get(&href).await;
    assert_eq!(css.status.as_u16(), 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
    assert_eq!(
        css.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert!(css.text.contains("prefers-color-scheme"));
    assert!(css.text.contains("[data-theme=\"dark\"]"));
    let stale = browser.get("/static/style.0123456789ab.css").await;
    assert_page(&stale, 404);
}

async fn home_sends_visitors_to_login_and_users_to_settings(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("home@example.com", false).await;
    let browser = visitor(&app).await;
    assert_see_other(&browser.get("/").await, "/login");
    browser
        .login("home@example.com", PASSWORD)
        .await
        .assert_ok();
    assert_see_other(&browser.get("/").await, "/settings/user");
    // A signed-in user opening the login page goes on too.
    assert_see_other(&browser.get("/login").await, "/settings/user");
}

async fn forms_without_the_csrf_token_are_refused(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("csrf@example.com", false).await;
    let login = [("email", "csrf@example.com"), ("password", PASSWORD)];
    // No cookie at all.
    let fresh = Browser::new(&app);
    let refused = fresh.submit_exactly("/login", &login).await;
    assert_page(&refused, 403);
    assert!(refused.text.contains("CSRF Failed: CSRF cookie not set."));
    assert!(fresh.cookie("sessionid").is_none());
    // A cookie but no field, or a field that is not the cookie's.
    let browser = visitor(&app).await;
    let refused = browser.submit_exactly("/login", &login).await;
    assert_page(&refused, 403);
    assert!(refused.text.contains("CSRF Failed: CSRF token missing."));
    let mut forged = login.to_vec();
    forged.push(("csrfmiddlewaretoken", "forged"));
    let refused = browser.submit_exactly("/login", &forged).await;
    assert!(refused.text.contains("CSRF Failed: CSRF token incorrect."));
    assert!(browser.cookie("sessionid").is_none());
    for path in ["/signup", "/reset"] {
        assert_page(&browser.submit_exactly(path, &[("email", "x")]).await, 403);
    }
    // Signed in: the session's token, checked as the API checks it.
    assert_see_other(&browser.submit("/login", &login).await, "/settings/user");
    let refused = browser
        .submit_exactly("/settings/user/profile", &[("first_name", "Mallory")])
        .await;
    assert_page(&refused, 403);
    assert!(refused.text.contains("CSRF Failed: CSRF token missing."));
    let user = app
        .store
        .user_by_email("csrf@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.first_name, "Test");
}

async fn login_shows_the_api_error_and_signs_in(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("ada@example.com", false).await;
    let browser = visitor(&app).await;
    let wrong = browser
        .submit(
            "/login",
            &[("email", "ada@example.com"), ("password", "not it")],
        )
        .await;
    assert_page(&wrong, 400);
    assert_form_error(&wrong, "Invalid email or password.");
    assert!(
        wrong.text.contains("value=\"ada@example.com\""),
        "the email is kept"
    );
    assert!(browser.cookie("sessionid").is_none());
    let bad_email = browser
        .submit("/login", &[("email", "nope"), ("password", "x")])
        .await;
    assert_page(&bad_email, 400);
    assert_field_error(&bad_email, "email", "Enter a valid email address.");
    let done = browser
        .submit(
            "/login",
            &[("email", "ada@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_see_other(&done, "/settings/user");
    let settings = browser.get("/settings/user").await;
    assert_page(&settings, 200);
    assert!(settings.text.contains("ada@example.com"));
    assert!(settings.text.contains("action=\"/logout/\""));
    // The same session works for the API.
    browser.get("/api/users/@me/").await.assert_ok();
    // Logging out ends it and lands on the login page.
    let out = browser.submit("/logout/", &[]).await;
    assert_eq!(out.header("location"), Some("/login"));
    assert_see_other(
        &browser.get("/settings/user").await,
        "/login?next=/settings/user",
    );
}

async fn login_follows_only_safe_next_paths(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("next@example.com", false).await;
    let login = |next: &'static str| {
        let app = &app;
        async move {
            let browser = visitor(app).await;
            browser
                .submit(
                    "/login",
                    &[
                        ("email", "next@example.com"),
                        ("password", PASSWORD),
                        ("next", next),
                    ],
                )
                .await
        }
    };
    assert_see_other(
        &login("/settings/user?tab=profile").await,
        "/settings/user?tab=profile",
    );
    for evil in [
        "//evil.example/",
        "/\\evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "/%2F%2Fevil.example",
        "evil.example",
    ] {
        assert_see_other(&login(evil).await, "/settings/user");
    }
    // The form carries a safe `next` from the query, and drops an unsafe one.
    let browser = Browser::new(&app);
    let page = browser.get("/login?next=/settings/user").await;
    assert!(page.text.contains("name=\"next\" value=\"/settings/user\""));
    let page = browser.get("/login?next=%2F%2Fevil.example").await;
    assert!(!page.text.contains("name=\"next\""), "{}", page.text);
}

/// `times` logins with a wrong password, each refused with the login page (400).
async fn fail_logins(browser: &Browser, email: &str, times: usize) {
    for _ in 0..times {
        let wrong = browser
            .submit("/login", &[("email", email), ("password", "wrong")])
            .await;
        assert_page(&wrong, 400);
    }
}

async fn login_lockout_is_shown_with_its_wait(db: Db) {
    let app = spawn_app_with(db, |c| c.login_failure_limit = 2).await;
    app.create_user("locked@example.com", false).await;
    let browser = visitor(&app).await;
    fail_logins(&browser, "locked@example.com", 2).await;
    let locked = browser
        .submit(
            "/login",
            &[("email", "locked@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_page(&locked, 403);
    assert_form_error(
        &locked,
        "Too many failed login attempts. Please try again in 10 minutes.",
    );
}

async fn login_throttle_and_unverified_accounts_are_shown(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    app.create_user("guessed@example.com", false).await;
    let browser = visitor(&app).await;
    fail_logins(&browser, "guessed@example.com", 10).await;
    let throttled = browser
        .submit(
            "/login",
            &[("email", "guessed@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_page(&throttled, 429);
    assert_eq!(throttled.header("retry-after"), Some("30"));
    assert_form_error(
        &throttled,
        "Request was throttled. Expected available in 30 seconds.",
    );
    // Signed up but not verified yet, while email is configured.
    browser
        .submit(
            "/signup",
            &[
                ("first_name", "New"),
                ("email", "new@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    let unverified = browser
        .submit(
            "/login",
            &[("email", "new@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_page(&unverified, 400);
    assert_form_error(
        &unverified,
        "Your account is awaiting verification. Please check your email for a verification link.",
    );
    assert!(browser.cookie("sessionid").is_none());
}

async fn login_with_two_factor_goes_through_the_code_page(db: Db) {
    let clock = Clock::manual();
    let app = start(
        TestDatabase::create(db).await,
        |_| {},
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    app.create_user("totp@example.com", false).await;
    let api = Browser::new(&app);
    api.login("totp@example.com", PASSWORD).await.assert_ok();
    let secret = api
        .get("/api/users/@me/two_factor_start_setup/")
        .await
        .assert_ok()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    api.post(
        "/api/users/@me/two_factor_validate/",
        json!({"token": totp_code(&secret, &clock)}),
    )
    .await
    .assert_ok();
    clock.advance(60 * SECOND);

    let browser = visitor(&app).await;
    let login = [
        ("email", "totp@example.com"),
        ("password", PASSWORD),
        ("next", "/settings/user?from=2fa"),
    ];
    assert_see_other(
        &browser.submit("/login", &login).await,
        "/login/2fa?next=/settings/user%3Ffrom%3D2fa",
    );
    // Not signed in yet.
    assert_see_other(&browser.get("/").await, "/login");
    let page = browser
        .get("/login/2fa?next=/settings/user%3Ffrom%3D2fa")
        .await;
    assert_page(&page, 200);
    assert!(page.text.contains("name=\"remember\""));
    let wrong = browser
        .submit(
            "/login/2fa",
            &[("token", "000000"), ("next", "/settings/user?from=2fa")],
        )
        .await;
    assert_page(&wrong, 400);
    assert_form_error(&wrong, "Invalid authentication code");
    // A miss throttles the device for a while, and the page says so.
    let throttled = browser
        .submit("/login/2fa", &[("token", &totp_code(&secret, &clock))])
        .await;
    assert_page(&throttled, 400);
    assert_form_error(&throttled, "Too many attempts.");
    clock.advance(60 * SECOND);
    let code = totp_code(&secret, &clock);
    let done = browser
        .submit(
            "/login/2fa",
            &[
                ("token", code.as_str()),
                ("remember", "1"),
                ("next", "/settings/user?from=2fa"),
            ],
        )
        .await;
    assert_see_other(&done, "/settings/user?from=2fa");
    assert!(
        browser
            .cookie_names()
            .iter()
            .any(|n| n.starts_with("remember-cookie_")),
        "remember was checked"
    );
    assert_page(&browser.get("/settings/user").await, 200);
    // Unchecked, `remember` leaves no device cookie.
    clock.advance(60 * SECOND);
    let other = visitor(&app).await;
    other.submit("/login", &login[..2]).await;
    let code = totp_code(&secret, &clock);
    assert_see_other(
        &other
            .submit("/login/2fa", &[("token", code.as_str())])
            .await,
        "/settings/user",
    );
    assert!(
        !other
            .cookie_names()
            .iter()
            .any(|n| n.starts_with("remember-cookie_")),
        "remember was not checked"
    );
    // Without a login waiting, the page says so.
    let fresh = visitor(&app).await;
    let expired = fresh.get("/login/2fa").await;
    assert_page(&expired, 400);
    assert_form_error(
        &expired,
        "Login attempt has expired. Re-enter username/password.",
    );
}

async fn signup_without_email_signs_in_and_follows_the_policy(db: Db) {
    let app = spawn_app(db).await;
    let browser = Browser::new(&app);
    assert_page(&browser.get("/signup").await, 200);
    let weak = browser
        .submit(
            "/signup",
            &[
                ("first_name", "Grace"),
                ("email", "grace@example.com"),
                ("password", "short"),
                ("organization_name", ""),
            ],
        )
        .await;
    assert_page(&weak, 400);
    assert!(weak.text.contains("aria-describedby=\"password-error\""));
    assert!(weak.text.contains("value=\"grace@example.com\""));
    let done = browser
        .submit(
            "/signup",
            &[
                ("first_name", "Grace"),
                ("email", "grace@example.com"),
                ("password", PASSWORD),
                ("organization_name", "Compilers"),
            ],
        )
        .await;
    assert_see_other(&done, "/");
    assert_see_other(&browser.get("/").await, "/settings/user");
    let settings = browser.get("/settings/user").await;
    assert!(settings.text.contains("grace@example.com"));
    // first-user: once someone exists, sign-up is closed, with the API's words.
    let late = Browser::new(&app);
    let closed = late.get("/signup").await;
    assert_page(&closed, 403);
    assert!(!closed.text.contains("name=\"password\""));
    let refused = late
        .submit(
            "/signup",
            &[
                ("first_name", "Late"),
                ("email", "late@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_page(&refused, 403);
    assert!(
        app.store
            .user_by_email("late@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

async fn signup_with_email_asks_to_verify_and_get_never_uses_the_token(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    let browser = Browser::new(&app);
    browser.get("/signup").await;
    let sent = browser
        .submit(
            "/signup",
            &[
                ("first_name", "Linus"),
                ("email", "linus@example.com"),
                ("password", PASSWORD),
                ("organization_name", ""),
            ],
        )
        .await;
    assert_page(&sent, 200);
    assert!(sent.text.contains("Check your inbox"));
    assert!(browser.cookie("sessionid").is_none());
    let link = wait_for_mail(dir.path(), "the verification mail", |m| {
        m.to.contains("linus@example.com")
    })
    .await
    .link("/verify_email/")
    .expect("a verification link");
    let path = link
        .strip_prefix(&app.base)
        .expect("a link to this site")
        .to_string();
    // Opening the link (twice, as a mail scanner and then the person) changes nothing.
    let visitor = Browser::new(&app);
    for _ in 0..2 {
        let page = visitor.get(&path).await;
        assert_page(&page, 200);
        assert!(page.text.contains("Verify my email address"));
    }
    let user = app
        .store
        .user_by_email("linus@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.is_email_verified, Some(false));
    assert_see_other(&visitor.submit(&path, &[]).await, "/settings/user");
    assert_page(&visitor.get("/settings/user").await, 200);
    let user = app
        .store
        .user_by_email("linus@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(user.is_email_verified, Some(true));
    // A used link says so, and offers another.
    let again = Browser::new(&app);
    again.get(&path).await;
    let used = again.submit(&path, &[]).await;
    assert_page(&used, 400);
    assert_form_error(&used, "This verification token is invalid or has expired.");
    assert!(
        used.text
            .contains(&format!("action=\"/verify_email/{}/\"", user.uuid))
    );
    let resent = again
        .submit(&format!("/verify_email/{}/", user.uuid), &[])
        .await;
    assert_page(&resent, 200);
    // Asking again and again meets the API's daily limit, shown with its wait.
    let mut throttled = None;
    for _ in 0..10 {
        let reply = again
            .submit(&format!("/verify_email/{}/", user.uuid), &[])
            .await;
        if reply.status.as_u16() == 429 {
            throttled = Some(reply);
            break;
        }
        assert_page(&reply, 200);
    }
    let throttled = throttled.expect("the resend limit");
    assert_page(&throttled, 429);
    assert!(throttled.header("retry-after").is_some());
    assert!(
        throttled
            .text
            .contains("role=\"alert\">Request was throttled. Expected available in ")
    );
    // The API's sign-up `redirect_url` is a page too.
    assert_page(
        &again.get(&format!("/verify_email/{}", user.uuid)).await,
        200,
    );
}

async fn password_reset_from_the_mailed_link(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    app.create_user("reset@example.com", false).await;
    let browser = Browser::new(&app);
    assert_page(&browser.get("/reset").await, 200);
    let known = browser
        .submit("/reset", &[("email", "reset@example.com")])
        .await;
    let unknown = browser
        .submit("/reset", &[("email", "nobody@example.com")])
        .await;
    assert_page(&known, 200);
    assert_page(&unknown, 200);
    assert!(known.text.contains("If an account exists for this address"));
    assert!(
        unknown
            .text
            .contains("If an account exists for this address")
    );
    let link = wait_for_mail(dir.path(), "the reset mail", |m| {
        m.to.contains("reset@example.com")
    })
    .await
    .link("/reset/")
    .expect("a reset link");
    let path = link.strip_prefix(&app.base).unwrap().to_string();
    let form = browser.get(&path).await;
    assert_page(&form, 200);
    assert!(form.text.contains("name=\"password_confirm\""));
    let mismatch = browser
        .submit(
            &path,
            &[
                ("password", "another-Good-passw0rd"),
                ("password_confirm", "something else"),
            ],
        )
        .await;
    assert_page(&mismatch, 400);
    assert_field_error(
        &mismatch,
        "password_confirm",
        "The two passwords do not match.",
    );
    let weak = browser
        .submit(&path, &[("password", "123"), ("password_confirm", "123")])
        .await;
    assert_page(&weak, 400);
    assert!(weak.text.contains("aria-describedby=\"password-error\""));
    let done = browser
        .submit(
            &path,
            &[
                ("password", "another-Good-passw0rd"),
                ("password_confirm", "another-Good-passw0rd"),
            ],
        )
        .await;
    assert_see_other(&done, "/login?notice=password_reset");
    let login = browser.get("/login?notice=password_reset").await;
    assert!(login.text.contains("Your password has been changed."));
    assert_see_other(
        &browser
            .submit(
                "/login",
                &[
                    ("email", "reset@example.com"),
                    ("password", "another-Good-passw0rd"),
                ],
            )
            .await,
        "/settings/user",
    );
    // The link is used up.
    let used = Browser::new(&app).get(&path).await;
    assert_page(&used, 400);
    assert_form_error(&used, "This reset token is invalid or has expired.");
    assert!(used.text.contains("href=\"/reset\""));
}

async fn settings_need_a_session_and_save_the_profile(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("profile@example.com", false).await;
    let browser = visitor(&app).await;
    assert_see_other(
        &browser.get("/settings/user").await,
        "/login?next=/settings/user",
    );
    assert_see_other(
        &browser
            .submit("/settings/user/profile", &[("first_name", "X")])
            .await,
        "/login?next=/settings/user",
    );
    browser
        .submit(
            "/login",
            &[("email", "profile@example.com"), ("password", PASSWORD)],
        )
        .await;
    let saved = browser
        .submit(
            "/settings/user/profile",
            &[("first_name", "Barbara"), ("last_name", "Liskov")],
        )
        .await;
    assert_see_other(&saved, "/settings/user?notice=profile_saved");
    let page = browser.get("/settings/user?notice=profile_saved").await;
    assert!(page.text.contains("value=\"Barbara\""));
    assert!(page.text.contains("value=\"Liskov\""));
    assert!(page.text.contains("Your profile is saved."));
    let too_long = "x".repeat(200);
    let refused = browser
        .submit(
            "/settings/user/profile",
            &[("first_name", too_long.as_str()), ("last_name", "L")],
        )
        .await;
    assert_page(&refused, 400);
    assert!(
        refused
            .text
            .contains("aria-describedby=\"first_name-error\"")
    );
    // The form's address, opened again, leads back to the page.
    assert_see_other(
        &browser.get("/settings/user/profile").await,
        "/settings/user",
    );
    let user = app
        .store
        .user_by_email("profile@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (user.first_name.as_str(), user.last_name.as_str()),
        ("Barbara", "Liskov")
    );
}

async fn an_old_session_is_asked_for_its_password_before_a_change(db: Db) {
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
    let browser = visitor(&app).await;
    browser
        .submit(
            "/login",
            &[("email", "old@example.com"), ("password", PASSWORD)],
        )
        .await;
    clock.advance(7201 * SECOND);
    let change = browser
        .submit("/settings/user/profile", &[("first_name", "Later")])
        .await;
    assert_see_other(&change, "/login?next=/settings/user&reauth=1");
    let prompt = browser.get("/login?next=/settings/user&reauth=1").await;
    assert_page(&prompt, 200);
    assert!(prompt.text.contains("Confirm your password"));
    let confirmed = browser
        .submit(
            "/login",
            &[
                ("email", "old@example.com"),
                ("password", PASSWORD),
                ("next", "/settings/user"),
                ("reauth", "1"),
            ],
        )
        .await;
    assert_see_other(&confirmed, "/settings/user");
    assert_see_other(
        &browser
            .submit("/settings/user/profile", &[("first_name", "Later")])
            .await,
        "/settings/user?notice=profile_saved",
    );
}

async fn pages_follow_the_users_theme(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("theme@example.com", false).await;
    let browser = Browser::new(&app);
    let login = browser.get("/login").await;
    assert!(
        login
            .text
            .contains("<html lang=\"en\" data-theme=\"system\">")
    );
    browser
        .login("theme@example.com", PASSWORD)
        .await
        .assert_ok();
    for (mode, theme) in [("dark", "dark"), ("light", "light"), ("system", "system")] {
        browser
            .patch("/api/users/@me/", json!({"theme_mode": mode}))
            .await
            .assert_ok();
        let page = browser.get("/settings/user").await;
        assert!(
            page.text
                .contains(&format!("<html lang=\"en\" data-theme=\"{theme}\">")),
            "{mode}: {}",
            page.text
        );
    }
}

/// The real binary with every request logged: a token in a page's path (the emailed links) never
/// reaches the log; the line names the route instead.
#[test]
fn tokens_in_page_paths_are_not_logged() {
    use std::process::Command;

    use crate::helpers::BinaryServer;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pages.db").display());
    let hoglet = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hoglet"));
        command
            .env("HOGLET_DATABASE_URL", &url)
            .env("HOGLET_LOG", "warn,hoglet::access=debug")
            .env_remove("HOGLET_REDIS_URL")
            .env_remove("HOGLET_BIND")
            .env_remove("HOGLET_SITE_URL");
        command
    };
    let server = BinaryServer::start(hoglet());
    let base = server.base.clone();
    let uuid = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    let token = "sekrit-token-4242";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for path in [
            format!("/reset/{uuid}/{token}"),
            format!("/verify_email/{uuid}/{token}"),
        ] {
            let reply = client.get(format!("{base}{path}")).send().await.unwrap();
            assert!(reply.status().as_u16() < 500, "{path}");
        }
    });
    let stderr = server.stop();
    assert!(!stderr.contains(token), "a token was logged: {stderr}");
    assert!(stderr.contains("/reset/{uuid}/{token}/"), "{stderr}");
    assert!(stderr.contains("/verify_email/{uuid}/{token}/"), "{stderr}");
}

/// When the database goes away, a page answers an HTML error page (with the page headers) and
/// the API its JSON envelope. Postgres only: its database can be dropped under the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn a_failing_database_is_an_html_error_page() {
    let server = crate::helpers::postgres_server();
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(Db::Postgres, dir.path()).await;
    let browser = visitor(&app).await;
    let hoglet::config::DatabaseUrl::Postgres(url) = &app.db.url else {
        unreachable!("a Postgres test database")
    };
    let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    task.abort();
    let page = browser
        .submit("/reset", &[("email", "someone@example.com")])
        .await;
    assert!(page.status.is_server_error(), "{}", page.text);
    assert_page(&page, page.status.as_u16());
    assert!(page.text.contains("Something went wrong"), "{}", page.text);
    let api = browser
        .post("/api/reset/", json!({"email": "someone@example.com"}))
        .await;
    assert!(api.status.is_server_error());
    assert_eq!(api.header("content-type"), Some("application/json"));
}
