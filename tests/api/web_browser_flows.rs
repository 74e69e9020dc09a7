//! The account pages in headless Chromium (the harness is in `web_browser.rs`): 2FA set up and
//! used to sign in (a TOTP, a backup code that then fails, a remembered device), personal API keys
//! made, rolled and deleted, an email change and its cancellation, a password change that ends
//! another session, the re-authentication prompt — each on both databases. Every page visited is
//! checked with axe-core (vendored, injected by the test): no serious or critical violation.
//! One test renders the main pages to PNG for the README.

use std::path::{Path, PathBuf};

use chromiumoxide::Page;
use chromiumoxide::page::ScreenshotParams;
use hoglet::config::EmailDelivery;
use hoglet::time::{Clock, SECOND};

use crate::browser::{Browser, wait_for_mail};
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, TestApp, eventually, spawn_app_on_clock, totp_code};
use crate::web_browser::{
    element, evaluate, fill, in_browser, open, press, wait_for_path, wait_for_text,
};

db_tests!(
    two_factor_setup_then_sign_in_with_a_code_and_a_backup_code,
    a_remembered_device_skips_the_second_factor,
    api_key_create_use_roll_and_delete,
    email_change_shows_pending_and_cancels,
    password_change_ends_another_session,
    an_old_session_confirms_the_password_then_returns,
    main_pages_render_to_screenshots,
);

/// How long a step may take in the browser.
const STEP: std::time::Duration = std::time::Duration::from_secs(15);

const AXE: &str = include_str!("fixtures/axe/axe.min.js");

/// Runs axe-core on the current document; fails on any serious or critical violation.
pub(crate) async fn assert_accessible(page: &Page, what: &str) {
    let loaded: bool = evaluate(page, "typeof window.axe !== 'undefined'").await;
    if !loaded {
        page.evaluate(AXE).await.expect("axe-core injected");
    }
    let violations: Vec<String> = page
        .evaluate(
            "() => axe.run(document).then(r => r.violations \
               .filter(v => v.impact === 'serious' || v.impact === 'critical') \
               .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', ')))",
        )
        .await
        .expect("axe ran")
        .into_value()
        .expect("violations");
    assert!(violations.is_empty(), "{what}: {violations:#?}");
}

async fn app_with_clock(db: Db, email_dir: Option<PathBuf>) -> (TestApp, Clock) {
    spawn_app_on_clock(db, move |c| {
        if let Some(dir) = email_dir {
            c.email = EmailDelivery::Directory(dir);
        }
    })
    .await
}

/// Signs in through the login page and waits for the account page.
pub(crate) async fn log_in(page: &Page, app: &TestApp, email: &str, password: &str) {
    open(page, app, "/login").await;
    fill(page, "email", email).await;
    fill(page, "password", password).await;
    press(page, "Log in").await;
}

async fn log_out(page: &Page, app: &TestApp) {
    press(page, "Log out").await;
    wait_for_path(page, app, "/login").await;
}

/// The text of `#id`.
async fn text_of(page: &Page, id: &str) -> String {
    element(page, &format!("#{id}"))
        .await
        .inner_text()
        .await
        .expect("text")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Turns 2FA on through the page; returns the secret and the backup codes shown.
async fn set_up_two_factor(page: &Page, app: &TestApp, clock: &Clock) -> (String, Vec<String>) {
    open(page, app, "/settings/user-2fa").await;
    assert_accessible(page, "2FA setup").await;
    let secret = text_of(page, "totp-secret").await;
    element(page, ".qr svg").await;
    fill(page, "token", &totp_code(&secret, clock)).await;
    press(page, "Turn on two-factor authentication").await;
    wait_for_text(page, "#codes-heading", "Your backup codes").await;
    assert_accessible(page, "backup codes").await;
    let codes: Vec<String> = evaluate(
        page,
        "Array.from(document.querySelectorAll('#backup-codes li')).map(li => li.innerText.trim())",
    )
    .await;
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

async fn two_factor_setup_then_sign_in_with_a_code_and_a_backup_code(db: Db) {
    in_browser("2fa-flow", db, |page| async move {
        let (app, clock) = app_with_clock(db, None).await;
        app.create_user("tfa@example.com", false).await;
        log_in(&page, &app, "tfa@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
        let (secret, codes) = set_up_two_factor(&page, &app, &clock).await;
        log_out(&page, &app).await;

        // A code from the app, in a later 30-second step.
        clock.advance(60 * SECOND);
        log_in(&page, &app, "tfa@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/login/2fa").await;
        assert_accessible(&page, "second factor").await;
        fill(&page, "token", &totp_code(&secret, &clock)).await;
        press(&page, "Verify").await;
        wait_for_path(&page, &app, "/settings/user").await;
        log_out(&page, &app).await;

        // A backup code works once.
        for attempt in 0..2 {
            log_in(&page, &app, "tfa@example.com", PASSWORD).await;
            wait_for_path(&page, &app, "/login/2fa").await;
            fill(&page, "token", &codes[0]).await;
            press(&page, "Verify").await;
            if attempt == 0 {
                wait_for_path(&page, &app, "/settings/user").await;
                log_out(&page, &app).await;
                clock.advance(60 * SECOND);
            } else {
                wait_for_text(&page, "[role=alert]", "").await;
                let url = page.url().await.unwrap().unwrap_or_default();
                assert!(url.ends_with("/login/2fa"), "still asked: {url}");
            }
        }
    })
    .await;
}

async fn a_remembered_device_skips_the_second_factor(db: Db) {
    in_browser("remember-device", db, |page| async move {
        let (app, clock) = app_with_clock(db, None).await;
        app.create_user("remember@example.com", false).await;
        log_in(&page, &app, "remember@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
        let (secret, _) = set_up_two_factor(&page, &app, &clock).await;
        log_out(&page, &app).await;
        clock.advance(60 * SECOND);
        log_in(&page, &app, "remember@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/login/2fa").await;
        fill(&page, "token", &totp_code(&secret, &clock)).await;
        element(&page, "#remember")
            .await
            .click()
            .await
            .expect("checked");
        press(&page, "Verify").await;
        wait_for_path(&page, &app, "/settings/user").await;
        log_out(&page, &app).await;
        // The same browser: password only.
        log_in(&page, &app, "remember@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
    })
    .await;
}

async fn api_key_create_use_roll_and_delete(db: Db) {
    in_browser("api-keys", db, |page| async move {
        let (app, _) = app_with_clock(db, None).await;
        app.create_user("keys@example.com", false).await;
        log_in(&page, &app, "keys@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
        open(&page, &app, "/settings/user-api-keys").await;
        assert_accessible(&page, "API keys").await;
        fill(&page, "label", "laptop").await;
        element(&page, "input[name=scopes][value='user:read']")
            .await
            .click()
            .await
            .expect("checked");
        press(&page, "Create key").await;
        let value: String = {
            element(&page, "#new-key-value").await;
            evaluate(&page, "document.getElementById('new-key-value').value").await
        };
        assert!(value.starts_with("phx_"), "{value}");
        assert_accessible(&page, "new key").await;
        // With JavaScript the Copy button shows (without it the field can be selected).
        let copy_shown: bool = evaluate(
            &page,
            "document.querySelector('button[data-copy]') !== null \
             && !document.querySelector('button[data-copy]').hidden",
        )
        .await;
        assert!(copy_shown);
        let me = app.get("/api/users/@me/", &value).await;
        assert_eq!(me.status.as_u16(), 200, "{}", me.text);

        press(&page, "Roll").await;
        let rolled = eventually("the rolled value", STEP, || {
            let (page, value) = (page.clone(), value.clone());
            async move {
                let shown: String = page
                    .evaluate("document.getElementById('new-key-value')?.value ?? ''")
                    .await
                    .ok()?
                    .into_value()
                    .ok()?;
                (shown.starts_with("phx_") && shown != value).then_some(shown)
            }
        })
        .await;
        assert_eq!(
            app.get("/api/users/@me/", &value).await.status.as_u16(),
            401
        );
        assert_eq!(
            app.get("/api/users/@me/", &rolled).await.status.as_u16(),
            200
        );

        press(&page, "Delete").await;
        wait_for_text(&page, "#confirm-heading", "Delete the key").await;
        press(&page, "Delete the key").await;
        wait_for_text(&page, "#no-keys", "no personal API keys").await;
        assert_eq!(
            app.get("/api/users/@me/", &rolled).await.status.as_u16(),
            401
        );
    })
    .await;
}

async fn email_change_shows_pending_and_cancels(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let dir = mail.path().to_path_buf();
    in_browser("email-change", db, |page| async move {
        let (app, _) = app_with_clock(db, Some(dir.clone())).await;
        let user = app.create_user("old@example.com", false).await;
        let mut verified = app.user_record(user.id).await;
        verified.is_email_verified = Some(true);
        app.store_user(&verified).await;
        log_in(&page, &app, "old@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
        assert_accessible(&page, "account").await;
        fill(&page, "email", "new@example.com").await;
        press(&page, "Change email address").await;
        wait_for_text(&page, "#pending-email", "new@example.com").await;
        assert_accessible(&page, "pending email").await;
        wait_for_mail(Path::new(&dir), "the verification mail", |m| {
            m.to == "new@example.com"
        })
        .await;
        press(&page, "Cancel the change").await;
        wait_for_text(&page, "[role=status]", "The email change is cancelled.").await;
        let pending: bool =
            evaluate(&page, "document.getElementById('pending-email') !== null").await;
        assert!(!pending);
        assert_eq!(app.user_record(user.id).await.pending_email, None);
    })
    .await;
}

async fn password_change_ends_another_session(db: Db) {
    in_browser("password-change", db, |page| async move {
        let (app, _) = app_with_clock(db, None).await;
        app.create_user("pw@example.com", false).await;
        let elsewhere = Browser::new(&app);
        elsewhere
            .login("pw@example.com", PASSWORD)
            .await
            .assert_ok();
        log_in(&page, &app, "pw@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
        fill(&page, "current_password", PASSWORD).await;
        fill(&page, "password", "an entirely new passphrase").await;
        press(&page, "Change password").await;
        wait_for_text(&page, "[role=status]", "Your password is changed.").await;
        let ended = elsewhere.get("/api/users/@me/").await;
        assert!(matches!(ended.status.as_u16(), 401 | 403), "{}", ended.text);
        log_out(&page, &app).await;
        log_in(&page, &app, "pw@example.com", "an entirely new passphrase").await;
        wait_for_path(&page, &app, "/settings/user").await;
    })
    .await;
}

async fn an_old_session_confirms_the_password_then_returns(db: Db) {
    in_browser("reauth", db, |page| async move {
        let (app, clock) = app_with_clock(db, None).await;
        app.create_user("reauth@example.com", false).await;
        log_in(&page, &app, "reauth@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
        clock.advance(3 * 3600 * SECOND);
        fill(&page, "email", "later@example.com").await;
        press(&page, "Change email address").await;
        wait_for_path(&page, &app, "/login?next=/settings/user&reauth=1").await;
        assert_accessible(&page, "re-authentication").await;
        let email: String = evaluate(&page, "document.getElementById('email').value").await;
        if email.is_empty() {
            fill(&page, "email", "reauth@example.com").await;
        }
        fill(&page, "password", PASSWORD).await;
        press(&page, "Log in").await;
        wait_for_path(&page, &app, "/settings/user").await;
        fill(&page, "email", "later@example.com").await;
        press(&page, "Change email address").await;
        wait_for_text(&page, "#account-email", "later@example.com").await;
    })
    .await;
}

/// Renders the main pages to PNG: into `docs/screenshots/` with `HOGLET_UPDATE_SCREENSHOTS=1`
/// (the README shows them), else into `target/screenshots/` so a test run leaves the tree clean.
async fn main_pages_render_to_screenshots(db: Db) {
    in_browser("screenshots", db, |page| async move {
        let (app, _) = app_with_clock(db, None).await;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = if std::env::var("HOGLET_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
            root.join("docs/screenshots")
        } else {
            root.join("target/screenshots")
                .join(format!("{db:?}").to_lowercase())
        };
        std::fs::create_dir_all(&dir).unwrap();
        let shoot = |name: &'static str| {
            let page = page.clone();
            let file = dir.join(format!("{name}.png"));
            async move {
                // A full-page shot needs the new document laid out.
                eventually(&format!("{name} laid out"), STEP, || {
                    let page = page.clone();
                    async move {
                        let ready: bool = page
                            .evaluate(
                                "document.readyState === 'complete' && document.body !== null \
                                 && document.body.scrollWidth > 0",
                            )
                            .await
                            .ok()?
                            .into_value()
                            .ok()?;
                        ready.then_some(())
                    }
                })
                .await;
                page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &file)
                    .await
                    .expect("screenshot");
                let written = std::fs::metadata(&file).expect("png written").len();
                assert!(written > 1000, "{name}: {written} bytes");
            }
        };
        open(&page, &app, "/login").await;
        assert_accessible(&page, "login").await;
        shoot("login").await;
        open(&page, &app, "/signup").await;
        assert_accessible(&page, "signup").await;
        shoot("signup").await;
        app.create_user("ada@example.com", false).await;
        log_in(&page, &app, "ada@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
        shoot("settings-user").await;
        open(&page, &app, "/settings/user-2fa").await;
        element(&page, ".qr svg").await;
        shoot("settings-2fa").await;
        open(&page, &app, "/settings/user-api-keys").await;
        shoot("settings-api-keys").await;
        open(&page, &app, "/settings/user-personal-integrations").await;
        assert_accessible(&page, "integrations").await;
        shoot("settings-integrations").await;
    })
    .await;
}
