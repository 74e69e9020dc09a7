//! The activity log: every recorded action once, with its actor and client address and never a
//! secret; `GET /api/users/{uuid}/activity/` (access, filter, cursor pages); the security log
//! line and counter; retention.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hoglet::config::EmailDelivery;
use hoglet::serve::BuildOptions;
use hoglet::time::{Clock, SECOND};
use reqwest::Method;
use serde_json::{Value, json};

use crate::browser::{Browser, wait_for_mail};
use crate::db_tests;
use crate::helpers::{
    BinaryServer, Db, PASSWORD, TestApp, TestDatabase, eventually, start, totp_code,
};
use crate::store_contract::raw_i64;
use crate::web_pages::{assert_page, assert_see_other};

db_tests!(
    the_activity_page_lists_filters_and_pages_the_log,
    every_action_is_recorded_once_with_its_actor_and_address_and_no_secret,
    the_log_is_for_its_user_and_staff_filtered_and_paged_by_cursor,
    entries_older_than_the_retention_are_deleted,
);

const AGENT: &str = "activity-test/1.0 (X11; Linux x86_64)";

/// An app with mail written to `mail` and a manual clock; `configure` adjusts the rest.
async fn app_with(
    db: Db,
    mail: &Path,
    configure: impl FnOnce(&mut hoglet::config::Config),
) -> (TestApp, Clock) {
    let clock = Clock::manual();
    let dir = mail.to_path_buf();
    let app = start(
        TestDatabase::create(db).await,
        move |c| {
            c.email = EmailDelivery::Directory(dir);
            configure(c);
        },
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    (app, clock)
}

/// The `…/<uuid>/<token>` link (under `prefix`) of the mail to `to` with this subject, once
/// delivered, as `(uuid, token)`.
async fn mailed_link(dir: &Path, subject: &str, to: &str, prefix: &str) -> (String, String) {
    let mail = wait_for_mail(dir, subject, |m| m.subject == subject && m.to.contains(to)).await;
    let link = mail.link(prefix).expect("a link");
    let mut parts = link.trim_end_matches('/').rsplit('/');
    let token = parts.next().expect("token").to_string();
    let uuid = parts.next().expect("uuid").to_string();
    (uuid, token)
}

/// Every entry of the user's log through the API, newest first.
async fn log_of(browser: &Browser, uuid: &str) -> Vec<Value> {
    let reply = browser
        .get(&format!("/api/users/{uuid}/activity/?limit=100"))
        .await;
    reply.assert_ok()["results"]
        .as_array()
        .expect("results")
        .clone()
}

/// How many entries of each kind.
fn counts(entries: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in entries {
        *counts
            .entry(e["activity"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

/// Rows of the whole log (any user, or none) whose text holds `secret` anywhere.
async fn rows_holding(db: &TestDatabase, secret: &str) -> i64 {
    let secret = secret.replace('\'', "''");
    raw_i64(
        db,
        &format!(
            "SELECT count(*) FROM activity_log WHERE (activity || detail || \
             coalesce(ip, '') || coalesce(user_agent, '') || coalesce(actor_id, '') || \
             coalesce(actor_label, '')) LIKE '%{secret}%'"
        ),
    )
    .await
}

async fn every_action_is_recorded_once_with_its_actor_and_address_and_no_secret(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let (app, clock) = app_with(db, mail.path(), |_| {}).await;
    let email = "ann@example.com";
    let ann = app.create_user(email, false).await;
    app.create_org("Ann's", email).await;
    let browser = Browser::with_user_agent(&app, Some(AGENT));
    let mut secrets: Vec<String> = vec![PASSWORD.into()];

    // Sign-in: a wrong password (ann's), an unknown address (nobody's), then a success.
    let wrong = "Not-the-passw0rd";
    secrets.push(wrong.into());
    assert_eq!(browser.login(email, wrong).await.status.as_u16(), 400);
    assert_eq!(
        browser
            .login("nobody@example.com", wrong)
            .await
            .status
            .as_u16(),
        400
    );
    browser.login(email, PASSWORD).await.assert_ok();
    secrets.push(browser.cookie("sessionid").expect("a session"));

    // Profile, password and email.
    browser
        .patch(
            "/api/users/@me/",
            json!({"first_name": "Ann", "theme_mode": "dark"}),
        )
        .await
        .assert_ok();
    let changed = "Changed g00d passw0rd";
    secrets.push(changed.into());
    browser
        .patch(
            "/api/users/@me/",
            json!({"current_password": PASSWORD, "password": changed}),
        )
        .await
        .assert_ok();
    browser
        .patch("/api/users/@me/", json!({"email": "ann.new@example.com"}))
        .await
        .assert_ok();
    let (uuid, token) = mailed_link(
        mail.path(),
        "Verify your email address",
        "ann.new@example.com",
        "/verify_email/",
    )
    .await;
    secrets.push(token.clone());
    browser
        .post(
            "/api/users/verify_email/",
            json!({"uuid": uuid, "token": token}),
        )
        .await
        .assert_ok();
    let email = "ann.new@example.com";

    // 2FA on, new backup codes, out, and back in with a wrong code and then a backup code.
    let setup = browser.get("/api/users/@me/two_factor_start_setup/").await;
    let secret = setup.assert_ok()["secret"].as_str().unwrap().to_string();
    secrets.push(secret.clone());
    browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": totp_code(&secret, &clock)}),
        )
        .await
        .assert_ok();
    let codes = browser
        .post("/api/users/@me/two_factor_backup_codes/", json!({}))
        .await;
    let codes: Vec<String> = codes.assert_ok()["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    secrets.extend(codes.iter().cloned());
    let reply = browser.call(Method::POST, "/logout/", None).await;
    assert_eq!(reply.status.as_u16(), 302);
    assert_eq!(
        browser.login(email, changed).await.json["code"],
        "2fa_required"
    );
    browser
        .post("/api/login/token/", json!({"token": "000000"}))
        .await;
    clock.advance(60 * SECOND); // past the backoff of the failed code
    browser
        .post("/api/login/token/", json!({"token": codes[0]}))
        .await
        .assert_ok();

    // Keys: create, change, roll; the rolled key changes the profile; then it is deleted.
    let created = browser
        .post(
            "/api/personal_api_keys/",
            json!({"label": "ci", "scopes": ["user:read", "user:write"]}),
        )
        .await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    let key_id = created.json["id"].as_str().unwrap().to_string();
    secrets.push(created.json["value"].as_str().unwrap().to_string());
    browser
        .patch(
            &format!("/api/personal_api_keys/{key_id}/"),
            json!({"label": "ci-2"}),
        )
        .await
        .assert_ok();
    let rolled = browser
        .post(&format!("/api/personal_api_keys/{key_id}/roll/"), json!({}))
        .await;
    let value = rolled.assert_ok()["value"].as_str().unwrap().to_string();
    secrets.push(value.clone());
    app.patch("/api/users/@me/", &value, json!({"last_name": "Key"}))
        .await
        .assert_ok();
    let deleted = browser
        .call(
            Method::DELETE,
            &format!("/api/personal_api_keys/{key_id}/"),
            None,
        )
        .await;
    assert_eq!(deleted.status.as_u16(), 204);

    // 2FA off; a password reset; in again.
    browser
        .post("/api/users/@me/two_factor_disable/", json!({}))
        .await
        .assert_ok();
    let anonymous = Browser::with_user_agent(&app, Some(AGENT));
    let requested = anonymous.post("/api/reset/", json!({"email": email})).await;
    assert_eq!(requested.status.as_u16(), 204);
    let (uuid, token) =
        mailed_link(mail.path(), "Reset your PostHog password", email, "/reset/").await;
    secrets.push(token.clone());
    let reset = "Reset g00d passw0rd";
    secrets.push(reset.into());
    anonymous
        .post(
            &format!("/api/reset/{uuid}/"),
            json!({"token": token, "password": reset}),
        )
        .await
        .assert_ok();
    browser.login(email, reset).await.assert_ok();

    // Each action once, newest first.
    let entries = log_of(&browser, "@me").await;
    let expected: BTreeMap<String, usize> = [
        ("login_failed", 2),
        ("logged_in", 4),
        ("user_updated", 2),
        ("password_changed", 1),
        ("email_change_requested", 1),
        ("email_changed", 1),
        ("two_factor_enabled", 1),
        ("backup_codes_regenerated", 1),
        ("logged_out", 1),
        ("backup_code_used", 1),
        ("personal_api_key_created", 1),
        ("personal_api_key_updated", 1),
        ("personal_api_key_rolled", 1),
        ("personal_api_key_deleted", 1),
        ("two_factor_disabled", 1),
        ("password_reset_requested", 1),
        ("password_reset", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(counts(&entries), expected, "{entries:#?}");
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Who and from where.
    let by_key = |e: &&Value| e["actor"]["type"] == "personal_api_key";
    let key_entries: Vec<&Value> = entries.iter().filter(by_key).collect();
    assert_eq!(key_entries.len(), 1, "{entries:#?}");
    assert_eq!(key_entries[0]["activity"], "user_updated");
    assert_eq!(
        key_entries[0]["actor"],
        json!({"type": "personal_api_key", "id": key_id, "label": "ci-2"})
    );
    assert_eq!(key_entries[0]["user_agent"], Value::Null);
    assert_eq!(
        key_entries[0]["detail"],
        json!({"fields": ["last_name"], "values": {"last_name": "Key"}})
    );
    for e in &entries {
        assert_eq!(e["ip"], "127.0.0.1", "{e}");
        let anonymous = e["detail"]["reason"] == "invalid_password"
            || e["activity"] == "password_reset_requested";
        if anonymous {
            // Nobody proven: a wrong password, a reset asked for by whoever knows the address.
            // (A wrong second factor comes after the right password: the user.)
            assert_eq!(
                e["actor"],
                json!({"type": "system", "id": null, "label": "anonymous"})
            );
        } else if !by_key(&e) {
            assert_eq!(
                e["actor"],
                json!({"type": "user", "id": ann.id.to_string(), "label": email}),
                "{e}"
            );
            assert_eq!(e["user_agent"], AGENT, "{e}");
        }
    }
    let methods: Vec<&str> = entries
        .iter()
        .filter(|e| e["activity"] == "logged_in")
        .map(|e| e["detail"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        ["password", "backup_code", "email_link", "password"]
    );
    let reasons: Vec<&str> = entries
        .iter()
        .filter(|e| e["activity"] == "login_failed")
        .map(|e| e["detail"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["invalid_second_factor", "invalid_password"]);
    let updated = entries
        .iter()
        .rfind(|e| e["activity"] == "user_updated")
        .unwrap();
    assert_eq!(
        updated["detail"],
        json!({"fields": ["first_name", "theme_mode"],
               "values": {"first_name": "Ann", "theme_mode": "dark"}})
    );
    let email_changed = entries
        .iter()
        .find(|e| e["activity"] == "email_changed")
        .unwrap();
    assert_eq!(
        email_changed["detail"],
        json!({"previous_email": "ann@example.com", "email": email})
    );

    // The unknown address is recorded for no user; the stored rows hold no secret, hash or
    // token.
    assert_eq!(
        raw_i64(
            &app.db,
            "SELECT count(*) FROM activity_log WHERE user_id IS NULL AND activity = 'login_failed'"
        )
        .await,
        1
    );
    let stored = app.user_record(ann.id).await;
    secrets.push(stored.password.0.clone());
    for secret in &secrets {
        assert_eq!(rows_holding(&app.db, secret).await, 0, "{secret} is stored");
    }

    // The counter.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hoglet_security_events_total{activity=\"login_failed\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hoglet_security_events_total{activity=\"logged_in\"} 4"),
        "{metrics}"
    );
}

async fn the_log_is_for_its_user_and_staff_filtered_and_paged_by_cursor(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let (app, _clock) = app_with(db, mail.path(), |_| {}).await;
    let ann = app.create_user("ann@example.com", false).await;
    app.create_user("bob@example.com", false).await;
    app.create_user("staff@example.com", true).await;
    let browser = Browser::new(&app);
    // Seven logins: seven entries, and the sessions they leave.
    for _ in 0..7 {
        browser.login("ann@example.com", PASSWORD).await.assert_ok();
    }
    let ann_uuid = ann.uuid.clone();
    let all = log_of(&browser, "@me").await;
    assert_eq!(all.len(), 7);

    // Pages of three: next, next (one left), then back.
    let page = |path: String| {
        let browser = &browser;
        async move { browser.get(&path).await }
    };
    let first = page("/api/users/@me/activity/?limit=3".into()).await;
    let first = first.assert_ok().clone();
    let ids = |page: &Value| -> Vec<i64> {
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    };
    let all_ids: Vec<i64> = all.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids(&first), all_ids[..3]);
    assert_eq!(first["previous"], Value::Null);
    let path_of = |link: &Value| {
        let link = link.as_str().expect("a link");
        assert!(link.starts_with(&app.base), "{link}");
        link[app.base.len()..].to_string()
    };
    let second = page(path_of(&first["next"])).await.assert_ok().clone();
    assert_eq!(ids(&second), all_ids[3..6]);
    let third = page(path_of(&second["next"])).await.assert_ok().clone();
    assert_eq!(ids(&third), all_ids[6..]);
    assert_eq!(third["next"], Value::Null);
    let back = page(path_of(&third["previous"])).await.assert_ok().clone();
    assert_eq!(ids(&back), all_ids[3..6]);
    let front = page(path_of(&back["previous"])).await.assert_ok().clone();
    assert_eq!(ids(&front), all_ids[..3]);
    assert_eq!(front["previous"], Value::Null);
    assert!(
        path_of(&first["next"]).contains("limit=3"),
        "{}",
        first["next"]
    );

    // The filter; a kind that does not exist; a cursor hoglet did not make.
    let failed = browser
        .login("ann@example.com", "Wrong-passw0rd")
        .await
        .status;
    assert_eq!(failed.as_u16(), 400);
    let only = browser
        .get("/api/users/@me/activity/?activity=login_failed")
        .await;
    let only = only.assert_ok()["results"].as_array().unwrap().clone();
    assert_eq!(only.len(), 1);
    browser
        .get("/api/users/@me/activity/?activity=nonsense")
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_choice",
            "Select a valid choice. nonsense is not one of the available choices.",
            Some("activity"),
        );
    let bad_cursor = browser.get("/api/users/@me/activity/?cursor=bm9wZQ").await;
    assert_eq!(bad_cursor.status.as_u16(), 404, "{}", bad_cursor.text);
    assert_eq!(bad_cursor.json["detail"], "Invalid cursor");

    // Another user may not read it; staff may; a key needs user:read.
    let bob = Browser::new(&app);
    bob.login("bob@example.com", PASSWORD).await.assert_ok();
    assert_eq!(
        bob.get(&format!("/api/users/{ann_uuid}/activity/"))
            .await
            .status
            .as_u16(),
        403
    );
    assert!(
        log_of(&bob, "@me")
            .await
            .iter()
            .all(|e| e["activity"] == "logged_in")
    );
    let staff = Browser::new(&app);
    staff.login("staff@example.com", PASSWORD).await.assert_ok();
    let seen = log_of(&staff, &ann_uuid).await;
    assert_eq!(seen.len(), 8, "{seen:#?}");
    let reader = app.create_key("ann@example.com", &["user:read"]).await;
    // The key's creation (by the admin command) is the ninth entry, by the CLI.
    let reply = app.get("/api/users/@me/activity/", &reader).await;
    let results = reply.assert_ok()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 9);
    assert_eq!(results[0]["activity"], "personal_api_key_created");
    assert_eq!(
        results[0]["actor"],
        json!({"type": "cli", "id": null, "label": "hoglet CLI"})
    );
    let writer_only = app
        .create_key("ann@example.com", &["feature_flag:read"])
        .await;
    assert_eq!(
        app.get("/api/users/@me/activity/", &writer_only)
            .await
            .status
            .as_u16(),
        403
    );
    assert_eq!(
        app.client
            .get(app.url("/api/users/@me/activity/"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
}

async fn entries_older_than_the_retention_are_deleted(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let (app, clock) = app_with(db, mail.path(), |c| {
        c.activity_retention = Duration::from_secs(86_400);
        c.janitor_interval = Duration::from_millis(200);
    })
    .await;
    app.create_user("old@example.com", false).await;
    let browser = Browser::new(&app);
    browser.login("old@example.com", PASSWORD).await.assert_ok();
    clock.advance(2 * 86_400 * SECOND);
    browser.login("old@example.com", PASSWORD).await.assert_ok();
    // The first login is two days old, past the one-day retention: the janitor deletes it.
    eventually("the old entry deleted", Duration::from_secs(10), || async {
        (raw_i64(&app.db, "SELECT count(*) FROM activity_log").await == 1).then_some(())
    })
    .await;
    assert_eq!(log_of(&browser, "@me").await.len(), 1);
}

/// The real binary with text logs: a failed login writes one `hoglet::security` line with the
/// client address and no user, which the README's fail2ban filter matches.
#[test]
fn a_failed_login_writes_a_security_log_line_for_fail2ban() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("security.db").display());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hoglet"));
    command
        .env("HOGLET_DATABASE_URL", &url)
        .env("HOGLET_LOG", "warn,hoglet::security=info")
        .env("HOGLET_LOG_FORMAT", "text")
        .env_remove("HOGLET_REDIS_URL")
        .env_remove("HOGLET_BIND")
        .env_remove("HOGLET_SITE_URL");
    let server = BinaryServer::start(command);
    let base = server.base.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reply = reqwest::Client::new()
            .post(format!("{base}/api/login/"))
            .json(&json!({"email": "nobody@example.com", "password": "Guess-passw0rd"}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 400);
    });
    let log = server.stop();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hoglet::security"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    // The README's filter: `^.* INFO hoglet::security: login_(failed|locked_out) ip=<HOST> `.
    let line = lines[0];
    let after = line
        .split_once(" INFO hoglet::security: login_failed ip=")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("the filter's shape: {line}"));
    assert!(after.starts_with("127.0.0.1 user_id=- "), "{line}");
    assert!(
        !line.contains("Guess-passw0rd") && !line.contains("nobody@"),
        "{line}"
    );
}

/// `/settings/user-activity`: the entries, a filter, older and newer pages; signed out, the
/// login page.
async fn the_activity_page_lists_filters_and_pages_the_log(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let (app, _clock) = app_with(db, mail.path(), |_| {}).await;
    app.create_user("pages@example.com", false).await;
    let anonymous = Browser::new(&app);
    assert_see_other(
        &anonymous.get("/settings/user-activity").await,
        "/login?next=/settings/user-activity",
    );
    let browser = Browser::with_user_agent(&app, Some(AGENT));
    assert_eq!(
        browser
            .login("pages@example.com", "Wrong-passw0rd")
            .await
            .status
            .as_u16(),
        400
    );
    for _ in 0..60 {
        browser
            .login("pages@example.com", PASSWORD)
            .await
            .assert_ok();
    }
    let page = browser.get("/settings/user-activity").await;
    assert_page(&page, 200);
    assert_eq!(
        page.text.matches("<td>Signed in</td>").count(),
        50,
        "a page of 50"
    );
    assert!(page.text.contains(AGENT) && page.text.contains("127.0.0.1"));
    assert!(
        page.text
            .contains(r#"<td class="small">method: password</td>"#),
        "{}",
        page.text
    );
    assert!(!page.text.contains(r#"id="newer""#));
    let older = page
        .text
        .split(r#"href=""#)
        .map(|s| s.split('"').next().unwrap().replace("&amp;", "&"))
        .find(|href| href.starts_with("/settings/user-activity?cursor="))
        .expect("an older page");
    let older = browser.get(&older).await;
    assert_page(&older, 200);
    assert_eq!(older.text.matches("<td>Signed in</td>").count(), 10);
    assert!(older.text.contains("<td>Failed sign-in</td>"));
    assert!(older.text.contains("Someone not signed in"));
    assert!(older.text.contains(r#"id="newer""#));
    let failed = browser
        .get("/settings/user-activity?activity=login_failed")
        .await;
    assert_page(&failed, 200);
    assert_eq!(failed.text.matches("<td>Failed sign-in</td>").count(), 1);
    assert!(!failed.text.contains("<td>Signed in</td>"));
    assert!(
        failed
            .text
            .contains(r#"<option value="login_failed" selected>"#)
    );
    // Nonsense in the query shows the first page.
    let nonsense = browser
        .get("/settings/user-activity?activity=nope&cursor=%%%")
        .await;
    assert_page(&nonsense, 200);
    assert_eq!(nonsense.text.matches("<td>Signed in</td>").count(), 50);
}
