//! `hoglet import posthog` end to end (issue 14): a PostHog-shaped database on the test
//! PostgreSQL, with rows made the way Django makes them, imported by the binary into a hoglet
//! database (SQLite and PostgreSQL) that a server is already serving; then everything is checked
//! through HTTP. Needs `HOGLET_TEST_POSTGRES_URL` for the PostHog side, on both targets.

use std::process::{Command, Output, Stdio};

use base64::Engine;
use hoglet::config::DatabaseUrl;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::browser::Browser;
use crate::helpers::{Db, TestApp, TestDatabase, spawn_app_on_clock, spawn_app_with};
use crate::store_contract::{raw_exec, raw_i64};

/// PostHog's tables with their real column sets.
pub const POSTHOG_SCHEMA: &str = include_str!("fixtures/posthog_schema.sql");

const SECRET_KEY: &str = "import-test-secret-key-0123456789abcdefghijklmnopqrstuvwxyz";
const ORG_A: &str = "0188a0a0-0000-7000-8000-00000000000a";
const ORG_B: &str = "0188a0a0-0000-7000-8000-00000000000b";
const ANN_PASSWORD: &str = "ann's original PostHog passphrase";
const BOB_PASSWORD: &str = "bob's original PostHog passphrase";
const SHA_KEY: &str = "phx_ann0sha0key0made0by0posthog0recently0abcdefghij";
const LEGACY_260K_KEY: &str = "phx_bob0legacy0key0hashed0with0260000iterations0abc";
const LEGACY_390K_KEY: &str = "phx_ann0legacy0key0hashed0with0390000iterations0xyz";
const PLAINTEXT_KEY: &str = "phx_ann0plaintext0key0from0before0hashing0xcdef";
/// The TOTP secret of Ann's device, as django-otp stores it (hex of 20 bytes).
const TOTP_HEX: &str = "3132333435363738393031323334353637383930";
const BACKUP_CODES: [&str; 2] = ["abcd1234", "efgh5678"];
const GUS_KEY: &str = "phx_gus0joined0posthog0after0the0first0import0abcdefg";

/// Both hoglet backends; each needs PostgreSQL for the PostHog side.
macro_rules! on_both_targets {
    ($name:ident) => {
        mod sqlite {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(hoglet_test_postgres),
                ignore = "HOGLET_TEST_POSTGRES_URL is not set"
            )]
            async fn $name() {
                super::$name(crate::helpers::Db::Sqlite).await;
            }
        }
        mod postgres {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(hoglet_test_postgres),
                ignore = "HOGLET_TEST_POSTGRES_URL is not set"
            )]
            async fn $name() {
                super::$name(crate::helpers::Db::Postgres).await;
            }
        }
    };
}

on_both_targets!(a_posthog_database_imports_and_its_users_keys_and_2fa_work);

/// Django's `PBKDF2PasswordHasher`: `pbkdf2_sha256$<iterations>$<salt>$<base64 digest>`.
fn django_pbkdf2(secret: &str, salt: &str, iterations: u32) -> String {
    let mut digest = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(secret.as_bytes(), salt.as_bytes(), iterations, &mut digest);
    let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
    format!("pbkdf2_sha256${iterations}${salt}${encoded}")
}

/// PostHog's current key hash.
fn sha256_value(key: &str) -> String {
    format!("sha256${}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// The rows: two organizations, their teams, five users (two of them clash with what hoglet
/// holds), memberships, keys of every kind, TOTP devices and static tokens.
fn posthog_rows(hoglet_user_id: i64, last_t: i64) -> String {
    let ann = django_pbkdf2(ANN_PASSWORD, "annsalt0123456789abc", 600_000);
    let bob = django_pbkdf2(BOB_PASSWORD, "bobsalt0123456789abc", 390_000);
    let sha = sha256_value(SHA_KEY);
    let legacy_260k = django_pbkdf2(LEGACY_260K_KEY, "posthog_personal_api_key", 260_000);
    let legacy_390k = django_pbkdf2(LEGACY_390K_KEY, "posthog_personal_api_key", 390_000);
    let clash = sha256_value("phx_a0key0whose0id0hoglet0already0uses0for0someone0else");
    format!(
        r#"
INSERT INTO posthog_organization (id, name, slug, created_at, enforce_2fa, members_can_use_personal_api_keys) VALUES
    ('{ORG_A}', 'Alpha', 'alpha', '2023-11-14 22:13:20+00', false, true),
    ('{ORG_B}', 'Beta', 'beta', '2023-11-15 00:00:00+00', NULL, true);
INSERT INTO posthog_team (id, uuid, organization_id, project_id, api_token, name, timezone, created_at) VALUES
    (2, '0188a0a0-0000-7000-8000-0000000000f2', '{ORG_A}', 1, 'phc_alpha2', 'Alpha web', 'Europe/Paris', '2023-11-14 22:13:21+00'),
    (5, '0188a0a0-0000-7000-8000-0000000000f5', '{ORG_B}', NULL, 'phc_beta5', 'Beta', 'UTC', '2023-11-15 00:00:01+00');
INSERT INTO posthog_user (id, uuid, email, password, first_name, last_name, date_joined, last_login,
    distinct_id, current_organization_id, current_team_id, is_email_verified, hedgehog_config,
    theme_mode, is_staff) VALUES
    (7, '0188a0a0-0000-7000-8000-0000000000e7', 'ann@alpha.example', '{ann}', 'Ann', 'Alder',
     '2023-11-14 22:13:20.5+00', '2024-01-01 00:00:00+00', 'ann-distinct', '{ORG_A}', 2, true,
     '{{"use_as_profile": true}}', 'dark', true),
    (9, '0188a0a0-0000-7000-8000-0000000000e9', 'bob@beta.example', '{bob}', 'Bob', '',
     '2023-11-15 00:00:00+00', NULL, 'bob-distinct', '{ORG_B}', 5, NULL, NULL, NULL, false),
    (11, '0188a0a0-0000-7000-8000-0000000000eb', 'Carol@Shared.example', '{bob}', 'Carol', '',
     '2023-11-15 00:00:00+00', NULL, 'carol-distinct', '{ORG_A}', 2, NULL, NULL, NULL, false),
    ({hoglet_user_id}, '0188a0a0-0000-7000-8000-0000000000e1', 'dave@alpha.example', '{bob}', 'Dave', '',
     '2023-11-15 00:00:00+00', NULL, 'dave-distinct', NULL, NULL, NULL, NULL, NULL, false),
    (12, '0188a0a0-0000-7000-8000-0000000000ec', 'erin@alpha.example', '!unusablepasswordmarker', 'Erin', '',
     '2023-11-16 00:00:00+00', NULL, 'erin-distinct', '{ORG_A}', 2, NULL, NULL, NULL, false);
INSERT INTO posthog_organizationmembership (id, organization_id, user_id, level, joined_at, updated_at) VALUES
    ('0188a0a0-0000-7000-8000-0000000000d1', '{ORG_A}', 7, 15, '2023-11-14 22:13:20+00', '2023-11-14 22:13:20+00'),
    ('0188a0a0-0000-7000-8000-0000000000d2', '{ORG_B}', 9, 1, '2023-11-15 00:00:00+00', '2023-11-15 00:00:00+00'),
    ('0188a0a0-0000-7000-8000-0000000000d3', '{ORG_A}', 11, 1, '2023-11-15 00:00:00+00', '2023-11-15 00:00:00+00'),
    ('0188a0a0-0000-7000-8000-0000000000d4', '{ORG_A}', 12, 8, '2023-11-16 00:00:00+00', '2023-11-16 00:00:00+00');
INSERT INTO posthog_personalapikey (id, user_id, label, value, mask_value, secure_value, created_at, last_used_at, scopes, scoped_teams) VALUES
    ('key-sha', 7, 'ci', NULL, 'phx_...ghij', '{sha}', '2024-01-02 00:00:00+00', '2024-02-01 00:00:00+00', '{{user:read,user:write}}', '{{2}}'),
    ('key-390k', 7, 'old laptop', NULL, 'phx_...0xyz', '{legacy_390k}', '2023-06-01 00:00:00+00', NULL, '{{*}}', NULL),
    ('key-plain', 7, 'before hashing', '{PLAINTEXT_KEY}', NULL, NULL, '2022-01-01 00:00:00+00', NULL, NULL, NULL),
    ('key-clash', 7, 'clash', NULL, 'phx_...else', '{clash}', '2024-01-03 00:00:00+00', NULL, '{{*}}', NULL),
    ('key-260k', 9, 'bob', NULL, 'phx_...0abc', '{legacy_260k}', '2023-01-03 00:00:00+00', NULL, '{{}}', NULL),
    ('key-carol', 11, 'carol', NULL, 'phx_...carl', 'sha256$00', '2024-01-03 00:00:00+00', NULL, '{{*}}', NULL);
INSERT INTO otp_totp_totpdevice (id, user_id, name, confirmed, key, step, t0, digits, tolerance, drift, last_t) VALUES
    (1, 7, 'default', true, '{TOTP_HEX}', 30, 0, 6, 1, 0, {last_t}),
    (2, 9, 'default', false, '{TOTP_HEX}', 30, 0, 6, 1, 0, 0),
    (3, 12, 'default', true, '{TOTP_HEX}', 60, 0, 6, 1, 0, 0);
INSERT INTO otp_static_staticdevice (id, user_id, name, confirmed) VALUES (1, 7, 'backup', true), (2, 9, 'backup', false);
INSERT INTO otp_static_statictoken (id, device_id, token) VALUES (1, 1, '{}'), (2, 1, '{}'), (3, 2, 'zzzz0000');
"#,
        BACKUP_CODES[0], BACKUP_CODES[1]
    )
}

/// A fresh PostHog-shaped database holding `rows`.
pub async fn posthog_database(rows: &str) -> (TestDatabase, String) {
    let posthog = TestDatabase::create(Db::Postgres).await;
    raw_exec(&posthog, "", &format!("{POSTHOG_SCHEMA}{rows}")).await;
    let DatabaseUrl::Postgres(url) = &posthog.url else {
        unreachable!("a Postgres test database")
    };
    let url = url.clone();
    (posthog, url)
}

/// Runs `hoglet ARGS` on the app's database with the app's secret key.
/// Runs `hoglet` on the app's database with the server's secret key, off the runtime (the app
/// serving in this test's runtime must go on answering meanwhile).
async fn hoglet(app: &TestApp, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let database_url = app.db.cli_url();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_hoglet"))
            .args(&args)
            .env("HOGLET_DATABASE_URL", database_url)
            .env("HOGLET_SECRET_KEY", SECRET_KEY)
            .env_remove("HOGLET_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("hoglet runs")
    })
    .await
    .expect("joined")
}

/// The import's summary (the command must have succeeded), and its stderr.
pub async fn import(app: &TestApp, from: &str, extra: &[&str]) -> (Value, String) {
    let mut args = vec!["import", "posthog", "--from", from];
    args.extend_from_slice(extra);
    let output = hoglet(app, &args).await;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "import failed ({:?}): {stderr}",
        output.status.code()
    );
    let summary = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    (summary, stderr)
}

fn skipped(table: &str, id: &str, reason: &str) -> Value {
    json!({"table": table, "id": id, "reason": reason})
}

async fn a_posthog_database_imports_and_its_users_keys_and_2fa_work(db: Db) {
    // A server already runs on the hoglet database; one user there is in the import's way.
    let (app, clock) = spawn_app_on_clock(db, |c| c.secret_key = Some(SECRET_KEY.into())).await;
    let resident = app.create_user("carol@shared.example", false).await;
    let resident_key = app.create_key("carol@shared.example", &["*"]).await;
    raw_exec(
        &app.db,
        "UPDATE personal_api_keys SET id = 'key-clash'",
        "UPDATE personal_api_keys SET id = 'key-clash'",
    )
    .await;
    let last_t = clock.now_secs() / 30;
    let (posthog, from) = posthog_database(&posthog_rows(resident.id, last_t)).await;

    let expected_skips = json!([
        skipped(
            "posthog_user",
            "11",
            &format!(
                "the email Carol@Shared.example belongs to another user (id {})",
                resident.id
            )
        ),
        skipped(
            "posthog_user",
            &resident.id.to_string(),
            &format!(
                "user id {} belongs to another user (uuid {})",
                resident.id, resident.uuid
            )
        ),
        skipped(
            "posthog_organizationmembership",
            &format!("{ORG_A}:11"),
            "its user was skipped"
        ),
        skipped(
            "posthog_personalapikey",
            "key-clash",
            &format!(
                "the key id belongs to a key of another user (id {})",
                resident.id
            )
        ),
        skipped(
            "posthog_personalapikey",
            "key-carol",
            "its user was skipped"
        ),
        skipped("otp_totp_totpdevice", "2", "the device was never confirmed"),
        skipped(
            "otp_totp_totpdevice",
            "3",
            "its codes change every 60 seconds; hoglet's every 30"
        ),
    ]);
    let expected = |skipped: &Value| {
        json!({
            "users": 3, "organizations": 2, "memberships": 3, "teams": 2,
            "personal_api_keys": 4, "totp_devices": 1, "backup_codes": 2,
            "skipped": skipped,
        })
    };

    // A dry run reports the same and writes nothing.
    let (dry, _) = import(&app, &from, &["--dry-run"]).await;
    assert_eq!(sorted(dry), sorted(expected(&expected_skips)));
    assert_eq!(raw_i64(&app.db, "SELECT count(*) FROM users").await, 1);
    assert_eq!(
        raw_i64(&app.db, "SELECT count(*) FROM organizations").await,
        0
    );
    assert_eq!(
        raw_i64(&app.db, "SELECT count(*) FROM import_ledger").await,
        0
    );

    // Batches of two rows: many transactions, each table in several.
    let (summary, _) = import(&app, &from, &["--batch", "2"]).await;
    assert_eq!(sorted(summary), sorted(expected(&expected_skips)));

    // Every kind of key works on @me at once, on the server that was already running.
    let me = app.get("/api/users/@me/", SHA_KEY).await;
    let me = me.assert_ok().clone();
    assert_eq!(me["email"], "ann@alpha.example");
    assert_eq!(me["uuid"], "0188a0a0-0000-7000-8000-0000000000e7");
    assert_eq!(me["distinct_id"], "ann-distinct");
    assert_eq!(me["is_staff"], true);
    assert_eq!(me["theme_mode"], "dark");
    assert_eq!(me["hedgehog_config"], json!({"use_as_profile": true}));
    assert_eq!(me["date_joined"], "2023-11-14T22:13:20.500000Z");
    assert_eq!(me["organization"]["id"], ORG_A);
    assert_eq!(me["organization"]["membership_level"], 15);
    assert_eq!(me["team"]["id"], 2);
    assert_eq!(me["team"]["project_id"], 1);
    assert_eq!(me["team"]["api_token"], "phc_alpha2");
    assert_eq!(me["is_2fa_enabled"], true);
    for key in [LEGACY_390K_KEY, PLAINTEXT_KEY] {
        let reply = app.get("/api/users/@me/", key).await;
        assert_eq!(reply.assert_ok()["email"], "ann@alpha.example", "{key}");
    }
    let bob = app.get("/api/users/@me/", LEGACY_260K_KEY).await;
    let bob = bob.assert_ok().clone();
    assert_eq!(bob["email"], "bob@beta.example");
    assert_eq!(bob["organization"]["id"], ORG_B);
    assert_eq!(
        bob["team"]["project_id"], 5,
        "a team without a project is its own"
    );
    // Legacy hashes were rewritten on first use; the plaintext key was never stored.
    for (id, key) in [
        ("key-260k", LEGACY_260K_KEY),
        ("key-390k", LEGACY_390K_KEY),
        ("key-plain", PLAINTEXT_KEY),
    ] {
        let stored = app.store.api_key(id).await.unwrap().expect("imported key");
        assert_eq!(stored.secure_value, sha256_value(key), "{id}");
    }
    let plain = app.store.api_key("key-plain").await.unwrap().unwrap();
    assert_eq!(plain.mask_value, "phx_...cdef");
    assert_eq!(plain.scopes, ["*"], "no scopes: every scope, as `*`");
    // The resident's key kept its id and still works.
    assert_eq!(
        app.get("/api/users/@me/", &resident_key)
            .await
            .status
            .as_u16(),
        200
    );

    // Bob signs in with his PostHog password, and the hash is upgraded to Argon2id.
    let browser = Browser::new(&app);
    assert_eq!(
        browser.login("bob@beta.example", BOB_PASSWORD).await.json,
        json!({"success": true})
    );
    assert_eq!(
        browser.get("/api/users/@me/").await.json["organization"]["id"],
        ORG_B
    );
    let stored = app.user_record(9).await.password.0;
    assert!(
        stored.starts_with("$argon2id$"),
        "upgraded: {}",
        &stored[..12]
    );
    // An unusable PostHog password stays unusable.
    Browser::new(&app)
        .login("erin@alpha.example", "!unusablepasswordmarker")
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_credentials",
            "Invalid email or password.",
            None,
        );

    // Ann's TOTP: PostHog's last used step is refused, a fresh code completes the login.
    let secret = hex::decode(TOTP_HEX).unwrap();
    let totp = Browser::new(&app);
    let first = totp.login("ann@alpha.example", ANN_PASSWORD).await;
    first.assert_error(
        401,
        "server_error",
        "2fa_required",
        "2FA is required.",
        None,
    );
    let replay = hoglet::domain::totp::code_at(&secret, last_t * 30).unwrap();
    totp.post("/api/login/token/", json!({"token": replay}))
        .await
        .assert_error(
            400,
            "validation_error",
            "2fa_invalid",
            "Invalid authentication code",
            None,
        );
    clock.advance(60 * 1_000_000);
    let fresh = hoglet::domain::totp::code_at(&secret, clock.now_secs()).unwrap();
    let ok = totp
        .post("/api/login/token/", json!({"token": fresh}))
        .await;
    assert_eq!(ok.json, json!({"success": true}), "{}", ok.text);
    assert_eq!(
        totp.get("/api/users/@me/").await.json["email"],
        "ann@alpha.example"
    );

    // A PostHog backup code works once.
    for (attempt, code) in [BACKUP_CODES[0], BACKUP_CODES[0]].into_iter().enumerate() {
        let browser = Browser::new(&app);
        browser.login("ann@alpha.example", ANN_PASSWORD).await;
        clock.advance(60 * 1_000_000);
        let reply = browser
            .post("/api/login/token/", json!({"token": code}))
            .await;
        match attempt {
            0 => assert_eq!(reply.json, json!({"success": true}), "{}", reply.text),
            _ => reply.assert_error(
                400,
                "validation_error",
                "2fa_invalid",
                "Invalid authentication code",
                None,
            ),
        }
    }

    // hoglet's own ids continue after the imported ones.
    let fresh_user = app.create_user("fresh@example.com", false).await;
    assert!(fresh_user.id > 12, "new user id {}", fresh_user.id);

    // A second run brings nothing: not even the key revoked in hoglet since.
    let revoked = app.store.delete_api_key("key-sha", &[]).await.unwrap();
    assert!(revoked.is_some());
    let users_before = raw_i64(&app.db, "SELECT count(*) FROM users").await;
    let (again, stderr) = import(&app, &from, &[]).await;
    assert_eq!(
        sorted(again),
        sorted(json!({
            "users": 0, "organizations": 0, "memberships": 0, "teams": 0,
            "personal_api_keys": 0, "totp_devices": 0, "backup_codes": 0,
            "skipped": expected_skips,
        }))
    );
    assert!(stderr.contains("nothing new"), "{stderr}");
    // Not a terminal: plain progress lines, one per table at its end.
    assert!(
        stderr.contains("import: posthog_user 5/5 read, 0 written, 2 skipped done"),
        "{stderr}"
    );
    assert_eq!(
        raw_i64(&app.db, "SELECT count(*) FROM users").await,
        users_before
    );
    assert_eq!(
        app.get("/api/users/@me/", SHA_KEY).await.status.as_u16(),
        401
    );

    // Rows that appeared in PostHog since are all a later run brings.
    raw_exec(
        &posthog,
        "",
        &format!(
            "INSERT INTO posthog_user (id, uuid, email, password, first_name, date_joined) VALUES \
             (20, '0188a0a0-0000-7000-8000-000000000020', 'gus@beta.example', '!x', 'Gus', now()); \
             INSERT INTO posthog_organizationmembership (id, organization_id, user_id, level, \
             joined_at, updated_at) VALUES (gen_random_uuid(), '{ORG_B}', 20, 1, now(), now()); \
             INSERT INTO posthog_personalapikey (id, user_id, label, secure_value, mask_value, \
             created_at, scopes) VALUES ('key-gus', 20, 'gus', '{}', 'phx_...gus0', now(), '{{*}}');",
            sha256_value(GUS_KEY)
        ),
    )
    .await;
    let (newer, _) = import(&app, &from, &[]).await;
    assert_eq!(
        (
            &newer["users"],
            &newer["memberships"],
            &newer["personal_api_keys"],
            &newer["teams"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(0))
    );
    let gus = app.get("/api/users/@me/", GUS_KEY).await;
    assert_eq!(gus.assert_ok()["organization"]["id"], ORG_B);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn one_organization_imports_alone_and_encrypted_totp_keys_are_reported() {
    let app = spawn_app_with(Db::Sqlite, |c| c.secret_key = Some(SECRET_KEY.into())).await;
    let (posthog, from) = posthog_database(&posthog_rows(1000, 0)).await;
    raw_exec(
        &posthog,
        "",
        "INSERT INTO django_migrations (app, name, applied) VALUES \
         ('otp_totp', '0001_initial', now()), ('otp_totp', '0004_encrypted_key', now());",
    )
    .await;
    let (summary, _) = import(&app, &from, &["--org", ORG_B]).await;
    assert_eq!(
        summary,
        json!({
            "users": 1, "organizations": 1, "memberships": 1, "teams": 1,
            "personal_api_keys": 1, "totp_devices": 0, "backup_codes": 0,
            "skipped": [skipped(
                "otp_totp_totpdevice",
                "2",
                "django-otp encrypts TOTP keys in this database (migration 0004_encrypted_key), \
                 so the key cannot be read",
            )],
        })
    );
    let bob = app.get("/api/users/@me/", LEGACY_260K_KEY).await;
    assert_eq!(bob.assert_ok()["email"], "bob@beta.example");
    assert_eq!(
        app.get("/api/users/@me/", SHA_KEY).await.status.as_u16(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_refuses_what_it_cannot_read() {
    let app = spawn_app_with(Db::Sqlite, |c| c.secret_key = Some(SECRET_KEY.into())).await;
    let not_postgres = hoglet(
        &app,
        &["import", "posthog", "--from", "sqlite://posthog.db"],
    )
    .await;
    assert_eq!(not_postgres.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&not_postgres.stderr).contains("PostHog's database is PostgreSQL"),
        "{}",
        String::from_utf8_lossy(&not_postgres.stderr)
    );
    let bad_org = hoglet(
        &app,
        &[
            "import",
            "posthog",
            "--from",
            "postgres://x@127.0.0.1:1/p",
            "--org",
            "alpha",
        ],
    )
    .await;
    assert_eq!(bad_org.status.code(), Some(2));
    // Nothing listens on port 1: a clear error naming the source, its password hidden.
    let unreachable = hoglet(
        &app,
        &[
            "import",
            "posthog",
            "--from",
            "postgres://u:hunter2@127.0.0.1:1/posthog",
        ],
    )
    .await;
    assert_eq!(unreachable.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("connecting to postgres://u:"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(unreachable.stdout.is_empty());
    assert_eq!(
        raw_i64(&app.db, "SELECT count(*) FROM import_ledger").await,
        0
    );
}

/// Skips in a stable order, so summaries compare as sets.
fn sorted(mut summary: Value) -> Value {
    if let Some(skipped) = summary["skipped"].as_array_mut() {
        skipped.sort_by_key(|s| s.to_string());
    }
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn an_interrupted_import_leaves_hoglet_consistent_and_the_next_run_completes_it() {
    let app = spawn_app_with(Db::Sqlite, |c| c.secret_key = Some(SECRET_KEY.into())).await;
    let (posthog, from) = posthog_database(&posthog_rows(1000, 0)).await;
    // A role that may read every table but the keys: the first run stops there. SELECT is all
    // the import needs.
    let role = format!("importer_{}", uuid::Uuid::new_v4().simple());
    raw_exec(
        &posthog,
        "",
        &format!(
            "CREATE ROLE {role} LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; \
             REVOKE SELECT ON posthog_personalapikey FROM {role};"
        ),
    )
    .await;
    let mut limited = url::Url::parse(&from).unwrap();
    limited.set_username(&role).unwrap();
    limited.set_password(None).unwrap();

    let interrupted = hoglet(&app, &["import", "posthog", "--from", limited.as_str()]).await;
    assert_eq!(interrupted.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&interrupted.stderr);
    assert!(stderr.contains("posthog_personalapikey"), "{stderr}");
    // What was written before is whole: users with their memberships, no key yet.
    assert_eq!(raw_i64(&app.db, "SELECT count(*) FROM users").await, 5);
    assert_eq!(
        raw_i64(&app.db, "SELECT count(*) FROM organization_memberships").await,
        4
    );
    assert_eq!(
        raw_i64(&app.db, "SELECT count(*) FROM personal_api_keys").await,
        0
    );
    let bob = Browser::new(&app);
    assert_eq!(
        bob.login("bob@beta.example", BOB_PASSWORD).await.json,
        json!({"success": true})
    );
    assert_eq!(
        bob.get("/api/users/@me/").await.json["organization"]["id"],
        ORG_B
    );

    let (rest, _) = import(&app, &from, &[]).await;
    assert_eq!(
        (
            &rest["users"],
            &rest["memberships"],
            &rest["organizations"],
            &rest["teams"]
        ),
        (&json!(0), &json!(0), &json!(0), &json!(0))
    );
    assert_eq!(
        (
            &rest["personal_api_keys"],
            &rest["totp_devices"],
            &rest["backup_codes"]
        ),
        (&json!(6), &json!(1), &json!(2))
    );
    assert_eq!(
        app.get("/api/users/@me/", SHA_KEY).await.assert_ok()["email"],
        "ann@alpha.example"
    );
    raw_exec(
        &posthog,
        "",
        &format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}; DROP ROLE {role};"),
    )
    .await;
}
