//! The 2FA and personal API key settings pages through HTTP, as a browser without JavaScript
//! uses them, on both databases.

use hoglet::time::SECOND;

use hoglet::config::EmailDelivery;

use crate::browser::{Browser, wait_for_mail};
use crate::db_tests;
use crate::helpers::{
    Db, PASSWORD, Reply, TestApp, spawn_app, spawn_app_on_clock, spawn_app_with, totp_code,
};
use crate::web_pages::{assert_page, assert_see_other};

db_tests!(
    two_factor_setup_shows_the_secret_and_qr_then_backup_codes_once,
    two_factor_regenerate_and_disable_from_the_status_page,
    api_key_created_in_the_page_works_then_rolls_and_deletes,
    api_key_form_errors_use_the_apis_words_and_keep_the_input,
    settings_pages_need_a_session,
    api_docs_viewers_are_served_from_the_binary,
    email_change_waits_for_the_link_and_can_be_cancelled,
    email_change_without_email_is_immediate_and_refuses_a_taken_address,
    password_change_needs_the_current_one_and_ends_other_sessions,
    an_old_session_is_asked_for_its_password_before_an_email_change,
    an_organization_that_enforces_two_factor_sends_members_to_set_it_up,
);

#[track_caller]
fn assert_secret_page(reply: &Reply, status: u16) {
    assert_page(reply, status);
    assert!(!reply.text.contains("<script>"), "no inline script");
}

/// The text of the element with `id` (its first child text, up to the next tag).
fn element_text(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[at..];
    let start = rest.find('>')? + 1;
    let end = rest[start..].find('<')? + start;
    Some(rest[start..end].trim().to_string())
}

/// The `value` attribute of the input with `id`.
fn input_value(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let tag_end = html[at..].find('>')? + at;
    let tag = &html[at..tag_end];
    let v = tag.find("value=\"")? + "value=\"".len();
    let end = tag[v..].find('"')? + v;
    Some(tag[v..end].to_string())
}

/// The codes listed in `#backup-codes`.
fn backup_codes(html: &str) -> Vec<String> {
    let Some(at) = html.find("id=\"backup-codes\"") else {
        return Vec::new();
    };
    let list = &html[at..at + html[at..].find("</ul>").unwrap()];
    list.split("<li><code>")
        .skip(1)
        .map(|item| item[..item.find("</code>").unwrap()].to_string())
        .collect()
}

async fn signed_in(app: &TestApp, email: &str) -> Browser {
    app.create_user(email, false).await;
    let browser = Browser::new(app);
    browser.get("/login").await;
    let login = browser
        .submit("/login", &[("email", email), ("password", PASSWORD)])
        .await;
    assert_see_other(&login, "/settings/user");
    browser
}

async fn two_factor_setup_shows_the_secret_and_qr_then_backup_codes_once(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let browser = signed_in(&app, "tfa-page@example.com").await;

    let setup = browser.get("/settings/user-2fa").await;
    assert_secret_page(&setup, 200);
    let secret = element_text(&setup.text, "totp-secret").expect("secret shown");
    assert_eq!(secret.len(), 32, "{secret}");
    assert!(setup.text.contains("<svg"), "an inline QR code");
    assert!(!setup.text.contains("<?xml"));
    assert!(setup.text.contains("action=\"/settings/user-2fa/enable\""));
    // Showing the page again keeps the secret the user may have scanned.
    let again = browser.get("/settings/user-2fa").await;
    assert_eq!(
        element_text(&again.text, "totp-secret"),
        Some(secret.clone())
    );

    // A wrong code: the API's words, 2FA stays off, the same secret is offered again.
    let wrong = browser
        .submit("/settings/user-2fa/enable", &[("token", "000000")])
        .await;
    assert_secret_page(&wrong, 400);
    assert!(wrong.text.contains("Token is not valid"), "{}", wrong.text);
    assert_eq!(
        element_text(&wrong.text, "totp-secret"),
        Some(secret.clone())
    );
    let user = app
        .store
        .user_by_email("tfa-page@example.com")
        .await
        .unwrap()
        .unwrap();
    assert!(app.store.totp_device(user.id).await.unwrap().is_none());

    let enabled = browser
        .submit(
            "/settings/user-2fa/enable",
            &[("token", totp_code(&secret, &clock).as_str())],
        )
        .await;
    assert_secret_page(&enabled, 200);
    let codes = backup_codes(&enabled.text);
    assert_eq!(codes.len(), 10, "{}", enabled.text);
    assert!(
        enabled
            .text
            .contains("download=\"hoglet-backup-codes.txt\"")
    );
    assert!(
        enabled
            .text
            .contains(&format!("data:text/plain;charset=utf-8,{}", codes[0]))
    );
    assert!(app.store.totp_device(user.id).await.unwrap().is_some());
    assert_eq!(app.store.backup_code_count(user.id).await.unwrap(), 10);

    // Shown once: the status page has no codes, only how many are left.
    let status = browser.get("/settings/user-2fa").await;
    assert_secret_page(&status, 200);
    assert!(backup_codes(&status.text).is_empty());
    assert_eq!(
        element_text(&status.text, "backup-codes-remaining").as_deref(),
        Some("10")
    );
    assert!(!status.text.contains("totp-secret"));

    // A backup code from the page signs in on a new browser.
    clock.advance(60 * SECOND);
    let other = Browser::new(&app);
    other.get("/login").await;
    let login = other
        .submit(
            "/login",
            &[("email", "tfa-page@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_see_other(&login, "/login/2fa");
    let second = other
        .submit("/login/2fa", &[("token", codes[3].as_str())])
        .await;
    assert_see_other(&second, "/settings/user");
}

async fn two_factor_regenerate_and_disable_from_the_status_page(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let browser = signed_in(&app, "tfa-status@example.com").await;
    let setup = browser.get("/settings/user-2fa").await;
    let secret = element_text(&setup.text, "totp-secret").unwrap();
    let first = browser
        .submit(
            "/settings/user-2fa/enable",
            &[("token", totp_code(&secret, &clock).as_str())],
        )
        .await;
    let old_codes = backup_codes(&first.text);

    let regenerated = browser.submit("/settings/user-2fa/backup-codes", &[]).await;
    assert_secret_page(&regenerated, 200);
    let new_codes = backup_codes(&regenerated.text);
    assert_eq!(new_codes.len(), 10);
    assert!(new_codes.iter().all(|c| !old_codes.contains(c)));

    // Without the form's CSRF token nothing happens.
    let forged = browser
        .submit_exactly("/settings/user-2fa/disable", &[])
        .await;
    assert_eq!(forged.status.as_u16(), 403, "{}", forged.text);
    let user = app
        .store
        .user_by_email("tfa-status@example.com")
        .await
        .unwrap()
        .unwrap();
    assert!(app.store.totp_device(user.id).await.unwrap().is_some());

    let disabled = browser.submit("/settings/user-2fa/disable", &[]).await;
    assert_see_other(&disabled, "/settings/user-2fa?notice=two_factor_disabled");
    let page = browser
        .get("/settings/user-2fa?notice=two_factor_disabled")
        .await;
    assert!(page.text.contains("Two-factor authentication is off."));
    assert!(
        page.text.contains("id=\"totp-secret\""),
        "setup offered again"
    );
    assert!(app.store.totp_device(user.id).await.unwrap().is_none());
    assert_eq!(app.store.backup_code_count(user.id).await.unwrap(), 0);
}

async fn api_key_created_in_the_page_works_then_rolls_and_deletes(db: Db) {
    let (app, _) = spawn_app_on_clock(db, |_| {}).await;
    let browser = signed_in(&app, "keys-page@example.com").await;
    let empty = browser.get("/settings/user-api-keys").await;
    assert_secret_page(&empty, 200);
    assert!(empty.text.contains("id=\"no-keys\""));
    assert!(empty.text.contains("value=\"user:read\""));
    assert!(empty.text.contains("value=\"feature_flag:write\""));

    let created = browser
        .submit(
            "/settings/user-api-keys",
            &[
                ("label", "laptop"),
                ("scopes", "user:read"),
                ("scopes", "user:write"),
                ("expires_at", "2099-01-02"),
            ],
        )
        .await;
    assert_secret_page(&created, 200);
    let value = input_value(&created.text, "new-key-value").expect("value shown");
    assert!(
        created.text.contains("data-copy=\"new-key-value\" hidden"),
        "the Copy button waits for its script"
    );
    assert!(value.starts_with("phx_"), "{value}");
    let me = app.get("/api/users/@me/", &value).await;
    assert_eq!(me.status.as_u16(), 200, "{}", me.text);
    assert_eq!(me.json["email"], "keys-page@example.com");

    // The list shows the key but never its value again.
    let list = browser.get("/settings/user-api-keys").await;
    assert!(list.text.contains("laptop"));
    assert!(list.text.contains("user:read, user:write"));
    assert!(list.text.contains("2099-01-02"));
    assert!(!list.text.contains(&value));
    assert!(!list.text.contains("new-key-value"));
    let keys = browser.get("/api/personal_api_keys/").await;
    let id = keys.json[0]["id"].as_str().unwrap().to_string();
    assert_eq!(keys.json[0]["expires_at"], "2099-01-02T00:00:00Z");

    let rolled = browser
        .submit(&format!("/settings/user-api-keys/{id}/roll"), &[])
        .await;
    assert_secret_page(&rolled, 200);
    let new_value = input_value(&rolled.text, "new-key-value").unwrap();
    assert_ne!(new_value, value);
    assert_eq!(
        app.get("/api/users/@me/", &value).await.status.as_u16(),
        401
    );
    assert_eq!(
        app.get("/api/users/@me/", &new_value).await.status.as_u16(),
        200
    );

    // Delete asks first; only the confirmed form deletes.
    let asked = browser
        .submit(&format!("/settings/user-api-keys/{id}/delete"), &[])
        .await;
    assert_secret_page(&asked, 200);
    assert!(asked.text.contains("name=\"confirm\" value=\"yes\""));
    assert_eq!(
        app.get("/api/users/@me/", &new_value).await.status.as_u16(),
        200
    );
    let deleted = browser
        .submit(
            &format!("/settings/user-api-keys/{id}/delete"),
            &[("confirm", "yes")],
        )
        .await;
    assert_see_other(&deleted, "/settings/user-api-keys?notice=key_deleted");
    assert_eq!(
        app.get("/api/users/@me/", &new_value).await.status.as_u16(),
        401
    );
    let after = browser
        .get("/settings/user-api-keys?notice=key_deleted")
        .await;
    assert!(after.text.contains("The key is deleted."));
    assert!(after.text.contains("id=\"no-keys\""));

    // Another user's key id is not found.
    let stranger = signed_in(&app, "keys-stranger@example.com").await;
    let created = stranger
        .submit(
            "/settings/user-api-keys",
            &[("label", "mine"), ("scopes", "*")],
        )
        .await;
    let theirs = input_value(&created.text, "new-key-value").unwrap();
    let their_id = stranger.get("/api/personal_api_keys/").await.json[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = browser
        .submit(&format!("/settings/user-api-keys/{their_id}/roll"), &[])
        .await;
    assert_eq!(refused.status.as_u16(), 404, "{}", refused.text);
    assert_eq!(
        app.get("/api/users/@me/", &theirs).await.status.as_u16(),
        200
    );
}

async fn api_key_form_errors_use_the_apis_words_and_keep_the_input(db: Db) {
    let (app, _) = spawn_app_on_clock(db, |_| {}).await;
    let browser = signed_in(&app, "keys-errors@example.com").await;
    let no_scopes = browser
        .submit("/settings/user-api-keys", &[("label", "nothing")])
        .await;
    assert_secret_page(&no_scopes, 400);
    assert!(no_scopes.text.contains("This list may not be empty."));
    assert!(no_scopes.text.contains("aria-describedby=\"scopes-error\""));
    assert!(no_scopes.text.contains("value=\"nothing\""), "label kept");

    let past = browser
        .submit(
            "/settings/user-api-keys",
            &[
                ("label", "old"),
                ("scopes", "user:read"),
                ("expires_at", "2000-01-01"),
            ],
        )
        .await;
    assert_secret_page(&past, 400);
    assert!(past.text.contains("The expiry must be in the future."));
    assert!(past.text.contains("aria-describedby=\"expires_at-error\""));
    assert!(
        past.text
            .contains("name=\"scopes\" value=\"user:read\" checked"),
        "checked scopes kept"
    );
    let bad_scope = browser
        .submit(
            "/settings/user-api-keys",
            &[("label", "odd"), ("scopes", "user:raed")],
        )
        .await;
    assert_secret_page(&bad_scope, 400);
    assert!(bad_scope.text.contains("Invalid scope: user:raed"));
    let user = app
        .store
        .user_by_email("keys-errors@example.com")
        .await
        .unwrap()
        .unwrap();
    assert!(app.store.api_keys_of(user.id).await.unwrap().is_empty());
}

async fn settings_pages_need_a_session(db: Db) {
    let (app, _) = spawn_app_on_clock(db, |_| {}).await;
    app.create_user("nobody@example.com", false).await;
    let browser = Browser::new(&app);
    browser.get("/login").await;
    for (path, next) in [
        ("/settings/user-2fa", "/settings/user-2fa"),
        ("/settings/user-api-keys", "/settings/user-api-keys"),
    ] {
        assert_see_other(&browser.get(path).await, &format!("/login?next={next}"));
    }
    let posted = browser
        .submit(
            "/settings/user-api-keys",
            &[("label", "x"), ("scopes", "*")],
        )
        .await;
    assert_see_other(&posted, "/login?next=/settings/user-api-keys");
    // A personal API key does not open the pages.
    let key = app.create_key("nobody@example.com", &["*"]).await;
    let reply = app.get("/settings/user-api-keys", &key).await;
    assert_eq!(reply.status.as_u16(), 303, "{}", reply.text);
}

async fn api_docs_viewers_are_served_from_the_binary(db: Db) {
    let (app, _) = spawn_app_on_clock(db, |_| {}).await;
    let client = reqwest::Client::new();
    for (path, mount) in [
        ("/api/schema/swagger-ui/", "swagger-ui"),
        ("/api/schema/redoc/", "redoc"),
    ] {
        let page = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let html = page.text().await.unwrap();
        assert!(
            html.contains(&format!("<div id=\"{mount}\"></div>")),
            "{html}"
        );
        assert!(!html.contains("<script>"), "no inline script");
        let mut assets: Vec<String> = html
            .split("src=\"")
            .chain(html.split("href=\""))
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|url| url.starts_with("/static/"))
            .map(str::to_string)
            .collect();
        assets.sort();
        assets.dedup();
        assert!(assets.len() >= 2, "{html}");
        for asset in assets {
            let reply = client
                .get(app.url(&asset))
                .header("accept-encoding", "gzip, deflate")
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 200, "{asset}");
            assert_eq!(
                reply.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
            let body = reply.bytes().await.unwrap();
            assert!(body.len() > 100, "{asset}");
            if asset.contains("bundle") || asset.contains("standalone") || asset.ends_with(".css") {
                // The vendored builds are sent gzip-compressed; a client that refuses gzip is told.
                assert_eq!(&body[..2], &[0x1f, 0x8b], "{asset} is gzip");
                let refused = client
                    .get(app.url(&asset))
                    .header("accept-encoding", "identity")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(refused.status(), 406, "{asset}");
            }
        }
    }
    let missing = client
        .get(app.url("/static/swagger-ui-bundle.000000000000.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

async fn email_change_waits_for_the_link_and_can_be_cancelled(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let dir = mail.path().to_path_buf();
    let app = spawn_app_with(db, move |c| c.email = EmailDelivery::Directory(dir)).await;
    let user = app.create_user("before@example.com", false).await;
    let mut verified = app.user_record(user.id).await;
    verified.is_email_verified = Some(true);
    app.store_user(&verified).await;
    let browser = Browser::new(&app);
    browser.get("/login").await;
    browser
        .submit(
            "/login",
            &[("email", "before@example.com"), ("password", PASSWORD)],
        )
        .await;

    let requested = browser
        .submit("/settings/user/email", &[("email", "after@example.com")])
        .await;
    assert_see_other(&requested, "/settings/user?notice=email_change_requested");
    let page = browser
        .get("/settings/user?notice=email_change_requested")
        .await;
    assert!(page.text.contains("Check your inbox"), "{}", page.text);
    let pending = element_text(&page.text, "pending-email").unwrap_or_default();
    assert!(page.text.contains("id=\"pending-email\""), "{pending}");
    assert!(page.text.contains("<strong>after@example.com</strong>"));
    let stored = app.user_record(user.id).await;
    assert_eq!(
        (stored.email.as_str(), stored.pending_email.as_deref()),
        ("before@example.com", Some("after@example.com"))
    );
    let sent = wait_for_mail(mail.path(), "the verification mail", |m| {
        m.to == "after@example.com"
    })
    .await;
    assert!(sent.link("http").is_some(), "{}", sent.body);

    let cancelled = browser.submit("/settings/user/email/cancel", &[]).await;
    assert_see_other(&cancelled, "/settings/user?notice=email_change_cancelled");
    let page = browser.get("/settings/user").await;
    assert!(!page.text.contains("id=\"pending-email\""));
    assert_eq!(app.user_record(user.id).await.pending_email, None);
    // Cancelling again ends the same way.
    let again = browser.submit("/settings/user/email/cancel", &[]).await;
    assert_see_other(&again, "/settings/user?notice=email_change_cancelled");
}

async fn email_change_without_email_is_immediate_and_refuses_a_taken_address(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("taken@example.com", false).await;
    let browser = signed_in(&app, "mover@example.com").await;
    let refused = browser
        .submit("/settings/user/email", &[("email", "TAKEN@example.com")])
        .await;
    assert_eq!(refused.status.as_u16(), 400, "{}", refused.text);
    assert!(refused.text.contains("aria-describedby=\"email-error\""));
    assert!(refused.text.contains("value=\"TAKEN@example.com\""), "kept");
    let changed = browser
        .submit("/settings/user/email", &[("email", "moved@example.com")])
        .await;
    assert_see_other(&changed, "/settings/user?notice=email_changed");
    let page = browser.get("/settings/user?notice=email_changed").await;
    assert_eq!(
        element_text(&page.text, "account-email").as_deref(),
        Some("moved@example.com")
    );
    assert!(
        app.store
            .user_by_email("mover@example.com")
            .await
            .unwrap()
            .is_none()
    );
}

async fn password_change_needs_the_current_one_and_ends_other_sessions(db: Db) {
    let app = spawn_app(db).await;
    let browser = signed_in(&app, "changer@example.com").await;
    let other = Browser::new(&app);
    other
        .login("changer@example.com", PASSWORD)
        .await
        .assert_ok();
    assert_eq!(other.get("/api/users/@me/").await.status.as_u16(), 200);

    let wrong = browser
        .submit(
            "/settings/user/password",
            &[
                ("current_password", "not the password"),
                ("password", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(wrong.status.as_u16(), 400, "{}", wrong.text);
    assert!(
        wrong
            .text
            .contains("aria-describedby=\"current_password-error\"")
    );
    assert!(!wrong.text.contains("not the password"), "never echoed");
    assert_eq!(other.get("/api/users/@me/").await.status.as_u16(), 200);

    let changed = browser
        .submit(
            "/settings/user/password",
            &[
                ("current_password", PASSWORD),
                ("password", "a brand new passphrase"),
            ],
        )
        .await;
    assert_see_other(&changed, "/settings/user?notice=password_changed");
    assert_eq!(
        browser.get("/settings/user").await.status.as_u16(),
        200,
        "this session goes on"
    );
    let ended = other.get("/api/users/@me/").await;
    assert!(
        matches!(ended.status.as_u16(), 401 | 403),
        "the other session ended: {}",
        ended.text
    );
    let again = Browser::new(&app);
    again
        .login("changer@example.com", "a brand new passphrase")
        .await
        .assert_ok();
}

async fn an_old_session_is_asked_for_its_password_before_an_email_change(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    let browser = signed_in(&app, "stale@example.com").await;
    clock.advance(3 * 3600 * SECOND);
    let change = browser
        .submit("/settings/user/email", &[("email", "fresh@example.com")])
        .await;
    assert_see_other(&change, "/login?next=/settings/user&reauth=1");
    let password = browser
        .submit(
            "/settings/user/password",
            &[
                ("current_password", PASSWORD),
                ("password", "another passphrase"),
            ],
        )
        .await;
    assert_see_other(&password, "/login?next=/settings/user&reauth=1");
    assert!(
        app.store
            .user_by_email("stale@example.com")
            .await
            .unwrap()
            .is_some()
    );
}

async fn an_organization_that_enforces_two_factor_sends_members_to_set_it_up(db: Db) {
    let (app, clock) = spawn_app_on_clock(db, |_| {}).await;
    app.create_user("member@example.com", false).await;
    let (org, _team) = app.create_org("Strict", "member@example.com").await;
    let org_id = uuid::Uuid::parse_str(&org).unwrap();
    app.store
        .update_organization(
            org_id,
            hoglet::store::OrganizationChanges {
                name: None,
                enforce_2fa: Some(true),
            },
        )
        .await
        .unwrap();
    let browser = Browser::new(&app);
    browser.get("/login").await;
    browser
        .submit(
            "/login",
            &[("email", "member@example.com"), ("password", PASSWORD)],
        )
        .await;
    // Every account page leads to the set-up, which is open; the API stays closed.
    for path in ["/settings/user", "/settings/user-api-keys"] {
        assert_see_other(&browser.get(path).await, "/settings/user-2fa");
    }
    assert_eq!(
        browser
            .get("/api/users/@me/hedgehog_config/")
            .await
            .status
            .as_u16(),
        403
    );
    let setup = browser.get("/settings/user-2fa").await;
    assert_secret_page(&setup, 200);
    let secret = element_text(&setup.text, "totp-secret").unwrap();
    let enabled = browser
        .submit(
            "/settings/user-2fa/enable",
            &[("token", totp_code(&secret, &clock).as_str())],
        )
        .await;
    assert_secret_page(&enabled, 200);
    assert_eq!(backup_codes(&enabled.text).len(), 10);
    // With the second factor passed in this session, the rest opens.
    let account = browser.get("/settings/user").await;
    assert_eq!(account.status.as_u16(), 200, "{}", account.text);
}
