//! The recovery and control commands of the real binary against a running server's database:
//! their JSON, their exit codes (2 for bad usage, 1 with one line on stderr otherwise), their
//! effect on the running server within a second (the invalidation feed), and their activity
//! entries with the actor `cli`.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::browser::{Browser, logged_in_member};
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, TestApp, eventually, spawn_app, totp_code};

db_tests!(
    recovery_commands_take_effect_on_a_running_server,
    control_commands_print_json_and_refuse_cleanly,
);

/// How soon a running server must honour a command (the feed is polled every 250 ms).
const AT_ONCE: Duration = Duration::from_secs(1);
const NEW_PASSWORD: &str = "An0ther-Good-passphrase";

/// Runs `hoglet ARGS` on the app's database, `stdin` written to its standard input.
async fn hoglet(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Output {
    let url = app.db.cli_url();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_hoglet"))
            .args(&args)
            .env("HOGLET_DATABASE_URL", url)
            .env_remove("HOGLET_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hoglet runs");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("stdin written");
        }
        drop(input);
        child.wait_with_output().expect("hoglet ends")
    })
    .await
    .expect("joined")
}

/// The command's JSON answer (it must have succeeded).
async fn ok(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Value {
    let output = hoglet(app, args, stdin).await;
    assert!(
        output.status.success(),
        "{args:?}: exit {:?}, stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

/// The command failed with `code`, printing nothing on stdout and one line on stderr; the line.
async fn refused(app: &TestApp, args: &[&str], stdin: Option<&str>, code: i32) -> String {
    let output = hoglet(app, args, stdin).await;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?}");
    if code == 1 {
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
    stderr
}

/// Waits (at most [`AT_ONCE`]) until `GET /api/users/@me/` with the key answers `status`.
async fn key_answers(app: &TestApp, key: &str, status: StatusCode, what: &str) {
    eventually(what, AT_ONCE, || async {
        (app.get("/api/users/@me/", key).await.status == status).then_some(())
    })
    .await;
}

async fn session_answers(browser: &Browser, status: StatusCode, what: &str) {
    eventually(what, AT_ONCE, || async {
        (browser.get("/api/users/@me/").await.status == status).then_some(())
    })
    .await;
}

/// The kinds of the user's activity entries recorded by the CLI, oldest first.
async fn cli_activity(app: &TestApp, user_id: i64) -> Vec<String> {
    let entries = app
        .store
        .activity(&hoglet::store::ActivityQuery {
            user_id,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    entries
        .iter()
        .rev()
        .filter(|e| e.actor.kind == "cli")
        .map(|e| e.activity.clone())
        .collect()
}

async fn recovery_commands_take_effect_on_a_running_server(db: Db) {
    let app = spawn_app(db).await;
    let email = "locked-out@example.com";
    let (user, browser) = logged_in_member(&app, email).await;
    let key = app.create_key(email, &["user:read"]).await;
    app.get("/api/users/@me/", &key).await.assert_ok();
    browser.get("/api/users/@me/").await.assert_ok();

    // Deactivate: the session and the key stop working at once.
    let deactivated = ok(&app, &["user", "deactivate", "--email", email], None).await;
    assert_eq!(deactivated["is_active"], false);
    assert_eq!(deactivated["id"], user.id);
    key_answers(&app, &key, StatusCode::UNAUTHORIZED, "the key refused").await;
    session_answers(&browser, StatusCode::UNAUTHORIZED, "the session ended").await;
    let again = refused(&app, &["user", "deactivate", "--email", email], None, 1).await;
    assert!(again.contains("already deactivated"), "{again}");
    assert_eq!(
        browser.login(email, PASSWORD).await.status,
        StatusCode::BAD_REQUEST
    );

    // Activate: the key works again; the ended session stays ended.
    let activated = ok(&app, &["user", "activate", "--email", email], None).await;
    assert_eq!(activated["is_active"], true);
    key_answers(&app, &key, StatusCode::OK, "the key accepted again").await;
    assert_eq!(
        browser.get("/api/users/@me/").await.status,
        StatusCode::UNAUTHORIZED
    );

    // Set the password: checked like the API's, the old session ends, the new password logs in.
    browser.login(email, PASSWORD).await.assert_ok();
    let set = ["user", "set-password", "--email", email, "--password-stdin"];
    let weak = refused(&app, &set, Some("password\n"), 1).await;
    assert!(weak.contains("invalid password"), "{weak}");
    let changed = ok(&app, &set, Some(&format!("{NEW_PASSWORD}\n"))).await;
    assert_eq!(changed["sessions_ended"], true);
    session_answers(&browser, StatusCode::UNAUTHORIZED, "the old session ended").await;
    assert_eq!(
        browser.login(email, PASSWORD).await.status,
        StatusCode::BAD_REQUEST
    );
    browser.login(email, NEW_PASSWORD).await.assert_ok();

    // Disable 2FA: the next login needs no code.
    let clock = hoglet::time::Clock::system();
    let setup = browser.get("/api/users/@me/two_factor_start_setup/").await;
    let secret = setup.assert_ok()["secret"].as_str().unwrap().to_string();
    browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": totp_code(&secret, &clock)}),
        )
        .await
        .assert_ok();
    let fresh = Browser::new(&app);
    assert_eq!(
        fresh.login(email, NEW_PASSWORD).await.json["code"],
        "2fa_required"
    );
    let shown = ok(&app, &["user", "show", "--email", email], None).await;
    assert_eq!(shown["two_factor"]["enabled"], true);
    let disabled = ok(&app, &["user", "disable-2fa", "--email", email], None).await;
    assert_eq!(disabled["two_factor_enabled"], false);
    let fresh = Browser::new(&app);
    assert_eq!(
        fresh.login(email, NEW_PASSWORD).await.json,
        json!({"success": true})
    );
    refused(&app, &["user", "disable-2fa", "--email", email], None, 1).await;

    // Revoke a key: refused at once; the list shows metadata only.
    let listed = ok(&app, &["key", "list", "--email", email], None).await;
    assert_eq!(listed["count"], 1);
    let id = listed["results"][0]["id"].as_str().unwrap().to_string();
    assert!(listed["results"][0].get("value").is_none());
    assert!(!listed.to_string().contains(&key));
    let revoked = ok(&app, &["key", "revoke", "--id", &id], None).await;
    assert_eq!(revoked["revoked"], true);
    assert_eq!(revoked["id"], id);
    key_answers(
        &app,
        &key,
        StatusCode::UNAUTHORIZED,
        "the revoked key refused",
    )
    .await;
    let gone = refused(&app, &["key", "revoke", "--id", &id], None, 1).await;
    assert!(gone.contains("no personal API key"), "{gone}");

    // Every change is in the user's log with the actor `cli`, once.
    assert_eq!(
        cli_activity(&app, user.id).await,
        [
            // The test's key, made by the admin operation `key create` runs.
            "personal_api_key_created",
            "user_deactivated",
            "user_activated",
            "password_changed",
            "two_factor_disabled",
            "personal_api_key_deleted",
        ]
    );
    app.stop().await;
}

async fn control_commands_print_json_and_refuse_cleanly(db: Db) {
    let app = spawn_app(db).await;
    let owner = "owner@example.com";
    let (_, owner_browser) = logged_in_member(&app, owner).await;
    let org = app.store.memberships_of(&[1]).await.unwrap()[0]
        .organization
        .id
        .to_string();

    // user create: the API's password rules unless told otherwise, the password from stdin.
    let create = |email: &'static str| ["user", "create", "--email", email, "--password-stdin"];
    let weak = refused(&app, &create("weak@example.com"), Some("12345678\n"), 1).await;
    assert!(weak.contains("invalid password"), "{weak}");
    let mut weak_ok = create("weak@example.com").to_vec();
    weak_ok.push("--allow-weak-password");
    ok(&app, &weak_ok, Some("12345678\n")).await;
    let member = ok(&app, &create("member@example.com"), Some(PASSWORD)).await;
    assert_eq!(member["email"], "member@example.com");
    refused(&app, &create("empty@example.com"), Some(""), 2).await;
    refused(
        &app,
        &[
            "user",
            "create",
            "--email",
            "x@example.com",
            "--password",
            PASSWORD,
            "--password-stdin",
        ],
        None,
        2,
    )
    .await;
    let browser = Browser::new(&app);
    browser
        .login("member@example.com", PASSWORD)
        .await
        .assert_ok();

    // user list and show.
    let listed = ok(&app, &["user", "list", "--email-contains", "EXAMPLE"], None).await;
    assert_eq!(listed["count"], 3);
    let staff = ok(&app, &["user", "list", "--staff"], None).await;
    assert_eq!(staff["count"], 0);
    let limited = ok(&app, &["user", "list", "--limit", "1"], None).await;
    assert_eq!(limited["results"].as_array().unwrap().len(), 1);
    assert_eq!(limited["count"], 3);
    refused(&app, &["user", "list", "--limit", "0"], None, 2).await;
    app.add_member(
        &org,
        "member@example.com",
        hoglet::store::MembershipLevel::Member,
    )
    .await;
    let shown = ok(
        &app,
        &["user", "show", "--email", "member@example.com"],
        None,
    )
    .await;
    assert_eq!(shown["organizations"][0]["id"], org);
    assert_eq!(shown["organizations"][0]["level"], "member");
    assert_eq!(shown["two_factor"]["enabled"], false);
    assert_eq!(shown["personal_api_keys"], 0);
    assert_eq!(shown["login_sessions"], 1);
    assert_eq!(shown["is_active"], true);
    let unknown = refused(
        &app,
        &["user", "show", "--email", "nobody@example.com"],
        None,
        1,
    )
    .await;
    assert_eq!(
        unknown.trim(),
        "error: no user with email \"nobody@example.com\""
    );

    // Usage refusals exit 2 and change nothing.
    let delete = ["user", "delete", "--email", "member@example.com"];
    let unconfirmed = refused(&app, &delete, None, 2).await;
    assert!(unconfirmed.contains("--yes"), "{unconfirmed}");
    refused(
        &app,
        &["user", "set-password", "--email", "member@example.com"],
        None,
        2,
    )
    .await;
    let mut confirmed = delete.to_vec();
    confirmed.push("--yes");
    let member_of_org = refused(&app, &confirmed, None, 1).await;
    assert!(member_of_org.contains("remove-member"), "{member_of_org}");

    // org remove-member: the running server shows it at once; the only owner stays.
    let owner_view = owner_browser.get("/api/users/@me/").await;
    assert_eq!(owner_view.json["organization"]["member_count"], 2);
    let removed = ok(
        &app,
        &[
            "org",
            "remove-member",
            "--org",
            &org,
            "--email",
            "member@example.com",
        ],
        None,
    )
    .await;
    assert_eq!(removed["removed"], true);
    assert_eq!(removed["level"], "member");
    eventually("the member left", AT_ONCE, || async {
        let me = browser.get("/api/users/@me/").await;
        me.json["organization"].is_null().then_some(())
    })
    .await;
    let last = refused(
        &app,
        &["org", "remove-member", "--org", &org, "--email", owner],
        None,
        1,
    )
    .await;
    assert!(last.contains("only owner"), "{last}");
    refused(
        &app,
        &[
            "org",
            "remove-member",
            "--org",
            "not-a-uuid",
            "--email",
            owner,
        ],
        None,
        1,
    )
    .await;
    let member_id = member["id"].as_i64().unwrap();
    assert_eq!(
        cli_activity(&app, member_id).await,
        ["organization_member_removed"]
    );

    // user export: the API's document, recorded with the actor `cli`.
    let exported = ok(
        &app,
        &["user", "export", "--email", "member@example.com"],
        None,
    )
    .await;
    assert_eq!(exported["format"], "hoglet-export");
    assert_eq!(exported["user"]["email"], "member@example.com");
    assert_eq!(exported["activity"][0]["activity"], "user_data_exported");
    assert_eq!(exported["activity"][0]["actor"]["type"], "cli");
    assert!(!exported.to_string().contains(PASSWORD));

    // user delete --yes: the user, their sessions and everything else go.
    let deleted = ok(&app, &confirmed, None).await;
    assert_eq!(deleted["deleted"], true);
    session_answers(
        &browser,
        StatusCode::UNAUTHORIZED,
        "the deleted user's session",
    )
    .await;
    refused(&app, &confirmed, None, 1).await;
    app.stop().await;
}
