//! The use-case layer's promises, through HTTP on both databases: a write touches only the columns
//! it changes (a login never undoes a concurrent PATCH), and a credential change commits with
//! everything it implies or not at all.

use serde_json::json;

use crate::browser::{Browser, logged_in_member};
use crate::db_tests;
use crate::helpers::{Db, PASSWORD, TestDatabase, spawn_app};

db_tests!(
    a_login_never_undoes_a_concurrent_patch,
    a_failed_password_change_changes_nothing,
    a_failed_two_factor_setup_changes_nothing,
);

/// Before the targeted writes, a login read the user, spent ~30 ms hashing, then wrote the whole
/// row back: a PATCH landing in between was acknowledged and then lost (143 of 150 on SQLite).
async fn a_login_never_undoes_a_concurrent_patch(db: Db) {
    let app = spawn_app(db).await;
    let user = app.create_user("racer@example.com", false).await;
    let key = app.create_key(&user.email, &["user:write"]).await;
    let mut lost = Vec::new();
    for round in 0..40 {
        let name = format!("Name {round}");
        let browser = Browser::new(&app);
        let login = browser.login(&user.email, PASSWORD);
        let patch = app.patch("/api/users/@me/", &key, json!({ "first_name": name }));
        let (login, patch) = tokio::join!(login, patch);
        login.assert_ok();
        patch.assert_ok();
        if app.user_record(user.id).await.first_name != name {
            lost.push(round);
        }
    }
    assert!(
        lost.is_empty(),
        "acknowledged PATCHes lost in rounds {lost:?}"
    );
    assert!(app.user_record(user.id).await.last_login.is_some());
}

/// A password change ends the user's other sessions in the same transaction. A failure injected
/// between the steps (a trigger refusing the session delete) must leave the old password and
/// every session as they were.
async fn a_failed_password_change_changes_nothing(db: Db) {
    let app = spawn_app(db).await;
    let (user, browser) = logged_in_member(&app, "careful@example.com").await;
    let other = Browser::new(&app);
    other.login(&user.email, PASSWORD).await.assert_ok();
    let before = app.user_record(user.id).await;

    refuse_session_deletes(&app.db, true).await;
    let reply = browser
        .patch(
            "/api/users/@me/",
            json!({"password": "a new Sufficiently-long passphrase 42", "current_password": PASSWORD}),
        )
        .await;
    assert_eq!(reply.status, 500, "{}", reply.text);
    refuse_session_deletes(&app.db, false).await;

    let after = app.user_record(user.id).await;
    assert_eq!(after.password, before.password, "the password was written");
    other.get("/api/users/@me/").await.assert_ok();
    browser.get("/api/users/@me/").await.assert_ok();
    Browser::new(&app)
        .login(&user.email, PASSWORD)
        .await
        .assert_ok();
}

/// Turning 2FA on stores the device, marks this session as verified and ends the others, in one
/// transaction: when ending the others fails, no device is left behind (before, the device was
/// stored first and stayed, with the other sessions still alive).
async fn a_failed_two_factor_setup_changes_nothing(db: Db) {
    let app = spawn_app(db).await;
    let (user, browser) = logged_in_member(&app, "setup@example.com").await;
    let other = Browser::new(&app);
    other.login(&user.email, PASSWORD).await.assert_ok();
    let setup = browser.get("/api/users/@me/two_factor_start_setup/").await;
    let secret = setup.assert_ok()["secret"].as_str().unwrap().to_string();
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret.as_bytes())
        .unwrap();
    let code =
        hoglet::domain::totp::code_at(&secret, hoglet::time::system_now() / 1_000_000).unwrap();

    refuse_session_deletes(&app.db, true).await;
    let reply = browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": code}),
        )
        .await;
    assert_eq!(reply.status, 500, "{}", reply.text);
    refuse_session_deletes(&app.db, false).await;

    assert!(app.store.totp_device(user.id).await.unwrap().is_none());
    let status = browser.get("/api/users/@me/two_factor_status/").await;
    assert_eq!(status.assert_ok()["is_enabled"], false);
    other.get("/api/users/@me/").await.assert_ok();
}

/// Installs (or removes) a trigger that makes every `DELETE FROM sessions` fail.
async fn refuse_session_deletes(db: &TestDatabase, refuse: bool) {
    let (sqlite, postgres) = if refuse {
        (
            "CREATE TRIGGER refuse_session_deletes BEFORE DELETE ON sessions \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            "CREATE FUNCTION refuse_session_deletes() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$; \
             CREATE TRIGGER refuse_session_deletes BEFORE DELETE ON sessions \
             FOR EACH ROW EXECUTE FUNCTION refuse_session_deletes()",
        )
    } else {
        (
            "DROP TRIGGER refuse_session_deletes",
            "DROP TRIGGER refuse_session_deletes ON sessions; DROP FUNCTION refuse_session_deletes()",
        )
    };
    crate::store_contract::raw_exec(db, sqlite, postgres).await;
}

/// The command line and the API apply one rule to the same input: a first name of 129
/// characters is refused by both, with the same message (the CLI used to allow 150).
#[tokio::test]
async fn the_cli_and_the_api_refuse_the_same_name() {
    let app = spawn_app(Db::Sqlite).await;
    let long = "N".repeat(129);
    let api = app
        .send(
            app.request(reqwest::Method::POST, "/api/signup/")
                .json(&json!({
                    "first_name": long,
                    "email": "long@example.com",
                    "password": "a Sufficiently-long passphrase 42",
                })),
        )
        .await;
    api.assert_error(
        400,
        "validation_error",
        "max_length",
        "Ensure this field has no more than 128 characters.",
        Some("first_name"),
    );
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_hoglet"))
        .args(["user", "create", "--email", "long@example.com"])
        .args([
            "--password",
            "a Sufficiently-long passphrase 42",
            "--first-name",
            &long,
        ])
        .env("HOGLET_DATABASE_URL", app.db.cli_url())
        .env_remove("HOGLET_LOG")
        .output()
        .expect("hoglet runs");
    assert_eq!(cli.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&cli.stderr).trim(),
        "error: invalid first name: Ensure this field has no more than 128 characters."
    );
    assert!(
        app.store
            .user_by_email("long@example.com")
            .await
            .unwrap()
            .is_none()
    );
}
