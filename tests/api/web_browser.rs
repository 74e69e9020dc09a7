//! The web pages in a real browser: headless Chromium (Debian's `chromium-headless-shell`)
//! driven over the DevTools protocol by `chromiumoxide`, against the real server on both
//! databases. Each test gets a fresh profile directory (so fresh cookies) and saves a screenshot
//! to `target/browser-failures/<db>-<test>.png` when it fails.
//!
//! Without a browser the tests fail in CI (`CI` set, or `HOGLET_REQUIRE_BROWSER=1`); elsewhere
//! they print `SKIPPED: no browser at …` and return, never silently.

use std::future::Future;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::emulation::{
    MediaFeature, SetDeviceMetricsOverrideParams,
};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::{Browser as Chrome, BrowserConfig, Page};
use futures_util::{FutureExt, StreamExt};
use hoglet::config::{EmailDelivery, SignupPolicy};

use crate::browser::wait_for_mail;
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, TestApp, eventually, spawn_app, spawn_app_with};

db_tests!(
    sign_up_then_verify_through_the_mailed_link,
    login_after_a_failed_login_showing_the_error,
    password_reset_from_the_mailed_link,
    keyboard_only_login,
    pages_fit_a_narrow_screen_in_light_and_dark,
);

/// Where the browser binary is looked for, after `$CHROME`.
const BROWSER_PATHS: &[&str] = &[
    "/usr/bin/chromium-headless-shell",
    "/usr/lib/chromium/chromium-headless-shell",
    "/usr/bin/chromium",
];

/// How long a page gets to show what a step waits for.
const STEP_DEADLINE: Duration = Duration::from_secs(15);

fn browser_binary() -> Option<PathBuf> {
    let from_env = std::env::var("CHROME").ok().filter(|p| !p.is_empty());
    from_env
        .into_iter()
        .chain(BROWSER_PATHS.iter().map(|p| p.to_string()))
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn browser_required() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var("HOGLET_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// Runs `flow` on a new tab of a fresh headless Chromium; on failure saves a screenshot of the
/// tab, then fails as the flow did.
pub(crate) async fn in_browser<F, Fut>(test: &str, db: Db, flow: F)
where
    F: FnOnce(Page) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(binary) = browser_binary() else {
        let looked = format!("$CHROME or {}", BROWSER_PATHS.join(", "));
        assert!(
            !browser_required(),
            "no browser at {looked}: CI (or HOGLET_REQUIRE_BROWSER=1) needs the browser tests; \
             install Debian's chromium-headless-shell"
        );
        // Straight to the process's stderr, past the test harness's capture, so `cargo test`
        // shows it; nextest shows these tests' output too (`.config/nextest.toml`).
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no browser at {looked}; {test} did not run \
             (apt-get install chromium-headless-shell, or set CHROME)"
        );
        return;
    };
    let profile = tempfile::tempdir().expect("profile dir");
    let config = BrowserConfig::builder()
        .chrome_executable(&binary)
        .no_sandbox()
        .user_data_dir(profile.path())
        .window_size(1024, 900)
        .arg("--disable-dev-shm-usage")
        .arg("--disable-gpu")
        .build()
        .expect("browser config");
    let (mut chrome, mut handler) = Chrome::launch(config)
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = chrome.new_page("about:blank").await.expect("a tab");
    let outcome = AssertUnwindSafe(flow(page.clone())).catch_unwind().await;
    if let Err(panic) = outcome {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-failures");
        let _ = std::fs::create_dir_all(&dir);
        let db = format!("{db:?}").to_lowercase();
        let file = dir.join(format!("{db}-{test}.png"));
        match page
            .save_screenshot(ScreenshotParams::builder().full_page(true).build(), &file)
            .await
        {
            Ok(_) => eprintln!("screenshot of the failure: {}", file.display()),
            Err(e) => eprintln!("no screenshot of the failure: {e}"),
        }
        let _ = chrome.close().await;
        let _ = chrome.wait().await;
        events.abort();
        std::panic::resume_unwind(panic);
    }
    let _ = chrome.close().await;
    let _ = chrome.wait().await;
    events.abort();
}

/// Opens `path` of the app.
pub(crate) async fn open(page: &Page, app: &TestApp, path: &str) {
    page.goto(app.url(path)).await.expect("navigates");
    wait_for_path(page, app, path).await;
}

/// Waits until the tab shows `path` (with its query) of the app.
pub(crate) async fn wait_for_path(page: &Page, app: &TestApp, path: &str) {
    let want = app.url(path);
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    loop {
        let url = page.url().await.ok().flatten().unwrap_or_default();
        if url == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tab never reached {want}; it shows {url}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The text of the first element matching `selector`, once there is one whose text contains
/// `wanted`.
pub(crate) async fn wait_for_text(page: &Page, selector: &str, wanted: &str) -> String {
    eventually(
        &format!("{selector} to say {wanted:?}"),
        STEP_DEADLINE,
        || {
            let page = page.clone();
            async move {
                let elements = page.find_elements(selector).await.ok()?;
                for element in elements {
                    if let Ok(Some(text)) = element.inner_text().await
                        && text.contains(wanted)
                    {
                        return Some(text);
                    }
                }
                None
            }
        },
    )
    .await
}

/// Clicks into the input `#id` and types `text`.
pub(crate) async fn fill(page: &Page, id: &str, text: &str) {
    let input = element(page, &format!("#{id}")).await;
    input
        .click()
        .await
        .expect("click")
        .type_str(text)
        .await
        .expect("typed");
}

/// Clicks the button whose text is `label`.
pub(crate) async fn press(page: &Page, label: &str) {
    let button = eventually(&format!("a {label:?} button"), STEP_DEADLINE, || {
        let page = page.clone();
        async move {
            for button in page.find_elements("button").await.ok()? {
                if button.inner_text().await.ok().flatten().as_deref() == Some(label) {
                    return Some(button);
                }
            }
            None
        }
    })
    .await;
    button.click().await.expect("clicked");
}

/// The id of the focused element.
async fn focused_id(page: &Page) -> String {
    evaluate(
        page,
        "document.activeElement ? document.activeElement.id : ''",
    )
    .await
}

/// An element of the current document, once there is one.
pub(crate) async fn element(page: &Page, selector: &str) -> chromiumoxide::Element {
    eventually(selector, STEP_DEADLINE, || {
        let page = page.clone();
        async move { page.find_element(selector).await.ok() }
    })
    .await
}

/// Presses a key on whatever has the focus.
async fn key(page: &Page, name: &str) {
    element(page, "body")
        .await
        .press_key(name)
        .await
        .expect("key pressed");
}

async fn mail_app(db: Db, dir: &Path) -> TestApp {
    let dir = dir.to_path_buf();
    spawn_app_with(db, move |c| {
        c.email = EmailDelivery::Directory(dir);
        c.signup = SignupPolicy::Open;
    })
    .await
}

async fn sign_up_then_verify_through_the_mailed_link(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    in_browser("sign_up_then_verify", db, |page| async move {
        open(&page, &app, "/signup").await;
        fill(&page, "first_name", "Ada").await;
        fill(&page, "email", "ada@example.com").await;
        fill(&page, "password", PASSWORD).await;
        fill(&page, "organization_name", "Analytical Engines").await;
        press(&page, "Sign up").await;
        wait_for_text(&page, "h1", "Check your inbox").await;
        let link = wait_for_mail(dir.path(), "the verification mail", |m| {
            m.to.contains("ada@example.com")
        })
        .await
        .link("/verify_email/")
        .expect("a verification link");
        let path = link
            .strip_prefix(&app.base)
            .expect("a link here")
            .to_string();
        open(&page, &app, &path).await;
        press(&page, "Verify my email address").await;
        wait_for_path(&page, &app, "/settings/user").await;
        wait_for_text(&page, "#account-email", "ada@example.com").await;
        let user = app
            .store
            .user_by_email("ada@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.is_email_verified, Some(true));
    })
    .await;
}

async fn login_after_a_failed_login_showing_the_error(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("grace@example.com", false).await;
    in_browser("login_after_a_failed_login", db, |page| async move {
        open(&page, &app, "/login").await;
        fill(&page, "email", "grace@example.com").await;
        fill(&page, "password", "not the password").await;
        press(&page, "Log in").await;
        wait_for_text(&page, "[role=alert]", "Invalid email or password.").await;
        // The address is kept; the password is typed again.
        fill(&page, "password", PASSWORD).await;
        press(&page, "Log in").await;
        wait_for_path(&page, &app, "/settings/user").await;
        wait_for_text(&page, "#account-email", "grace@example.com").await;
        press(&page, "Log out").await;
        wait_for_path(&page, &app, "/login").await;
        // Signed out, the start page leads to the login page.
        page.goto(app.url("/")).await.expect("navigates");
        wait_for_path(&page, &app, "/login").await;
    })
    .await;
}

async fn password_reset_from_the_mailed_link(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let app = mail_app(db, dir.path()).await;
    app.create_user("barbara@example.com", false).await;
    in_browser("password_reset", db, |page| async move {
        open(&page, &app, "/login").await;
        element(&page, "a[href=\"/reset\"]")
            .await
            .click()
            .await
            .expect("clicked");
        wait_for_path(&page, &app, "/reset").await;
        fill(&page, "email", "barbara@example.com").await;
        press(&page, "Send the link").await;
        wait_for_text(&page, "p", "If an account exists for this address").await;
        let link = wait_for_mail(dir.path(), "the reset mail", |m| {
            m.to.contains("barbara@example.com")
        })
        .await
        .link("/reset/")
        .expect("a reset link");
        let path = link
            .strip_prefix(&app.base)
            .expect("a link here")
            .to_string();
        open(&page, &app, &path).await;
        fill(&page, "password", "a-New-passw0rd-42").await;
        fill(&page, "password_confirm", "a-New-passw0rd-42").await;
        press(&page, "Set the new password").await;
        wait_for_path(&page, &app, "/login?notice=password_reset").await;
        wait_for_text(&page, "[role=status]", "Your password has been changed.").await;
        fill(&page, "email", "barbara@example.com").await;
        fill(&page, "password", "a-New-passw0rd-42").await;
        press(&page, "Log in").await;
        wait_for_path(&page, &app, "/settings/user").await;
    })
    .await;
}

async fn keyboard_only_login(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("keys@example.com", false).await;
    in_browser("keyboard_only_login", db, |page| async move {
        open(&page, &app, "/login").await;
        // Tab from the top of the page until the email field has the focus.
        let mut tabs = 0;
        while focused_id(&page).await != "email" {
            assert!(tabs < 10, "Tab never reached the email field");
            key(&page, "Tab").await;
            tabs += 1;
        }
        key_in(&page, "keys@example.com").await;
        key(&page, "Tab").await;
        assert_eq!(focused_id(&page).await, "password");
        key_in(&page, PASSWORD).await;
        key(&page, "Enter").await;
        wait_for_path(&page, &app, "/settings/user").await;
        wait_for_text(&page, "#account-email", "keys@example.com").await;
    })
    .await;
}

/// Types `text` into whatever has the focus.
async fn key_in(page: &Page, text: &str) {
    element(page, "body")
        .await
        .type_str(text)
        .await
        .expect("typed");
}

/// A value the page computes, once it can (right after a navigation the new document may not
/// have a body yet).
pub(crate) async fn evaluate<T: serde::de::DeserializeOwned>(page: &Page, expression: &str) -> T {
    eventually(
        &format!("the page to compute {expression}"),
        STEP_DEADLINE,
        || {
            let page = page.clone();
            async move { page.evaluate(expression).await.ok()?.into_value::<T>().ok() }
        },
    )
    .await
}

/// Waits until `expression` computes `wanted` (styles apply once the stylesheet has loaded).
async fn wait_for_value(page: &Page, expression: &str, wanted: &str) {
    eventually(
        &format!("{expression} to be {wanted}"),
        STEP_DEADLINE,
        || {
            let page = page.clone();
            async move {
                let value: String = page.evaluate(expression).await.ok()?.into_value().ok()?;
                (value == wanted).then_some(())
            }
        },
    )
    .await
}

async fn pages_fit_a_narrow_screen_in_light_and_dark(db: Db) {
    let app = spawn_app(db).await;
    app.create_user("narrow@example.com", false).await;
    in_browser("pages_fit_a_narrow_screen", db, |page| async move {
        page.execute(SetDeviceMetricsOverrideParams::new(360, 740, 2.0, true))
            .await
            .expect("a 360 px screen");
        let background = "getComputedStyle(document.body).backgroundColor";
        let (light, dark) = ("rgb(247, 247, 244)", "rgb(21, 23, 28)");
        for path in ["/login", "/signup", "/reset"] {
            open(&page, &app, path).await;
            // Measured once the stylesheet applies.
            wait_for_value(&page, background, light).await;
            let (scroll, client): (i64, i64) = (
                evaluate(&page, "document.documentElement.scrollWidth").await,
                evaluate(&page, "document.documentElement.clientWidth").await,
            );
            assert!(
                scroll <= client,
                "{path} scrolls sideways: {scroll} > {client}"
            );
        }
        page.emulate_media_features(vec![MediaFeature::new("prefers-color-scheme", "dark")])
            .await
            .expect("dark mode");
        wait_for_value(&page, background, dark).await;
        // A signed-in user's theme_mode wins over the browser's preference.
        open(&page, &app, "/login").await;
        fill(&page, "email", "narrow@example.com").await;
        fill(&page, "password", PASSWORD).await;
        press(&page, "Log in").await;
        wait_for_path(&page, &app, "/settings/user").await;
        let user = app
            .store
            .user_by_email("narrow@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.theme_mode, None);
        wait_for_text(&page, "#account-email", "narrow@example.com").await;
        wait_for_value(&page, background, dark).await;
        let api = crate::browser::Browser::new(&app);
        api.login("narrow@example.com", PASSWORD).await.assert_ok();
        api.patch(
            "/api/users/@me/",
            serde_json::json!({"theme_mode": "light"}),
        )
        .await
        .assert_ok();
        page.reload().await.expect("reloaded");
        wait_for_value(&page, background, light).await;
    })
    .await;
}
