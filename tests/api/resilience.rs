//! Startup and recovery: the secret key never in the database (and the same on every server that
//! shares one), a PostgreSQL that is not up yet, a Redis that comes and goes, expired sessions.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hoglet::config::{Config, DatabaseUrl, EmailDelivery};
use hoglet::store::{MailFailure, NewMail, SessionRecord};
use hoglet::time::{Clock, SECOND};
use hoglet::{App, BuildOptions};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::browser::{Browser, wait_for_mail};
use crate::db_tests;
use crate::helpers::{
    Db, PASSWORD, TestApp, TestDatabase, eventually, spawn_app, spawn_app_with, start, totp_code,
};

db_tests!(
    a_key_left_in_the_database_moves_out_and_keeps_working,
    a_server_with_another_key_refuses_to_start,
    expired_sessions_are_pruned_while_serving,
);

fn key_file_of(db: &TestDatabase) -> PathBuf {
    match &db.url {
        DatabaseUrl::Sqlite(path) => PathBuf::from(format!("{}.secret", path.display())),
        DatabaseUrl::Postgres(_) => panic!("no default key file on PostgreSQL"),
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Builds (without serving) an app on `database`; the error text when it refuses to start.
async fn build(
    database: &TestDatabase,
    configure: impl FnOnce(&mut Config),
) -> Result<App, String> {
    let mut config = Config::new(database.url.clone());
    config.bind = "127.0.0.1:0".into();
    configure(&mut config);
    App::build(config).await.map_err(|e| format!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_sqlite_database_gets_a_private_key_file_and_no_key_inside() {
    let app = spawn_app(Db::Sqlite).await;
    let file = key_file_of(&app.db);
    let key = std::fs::read_to_string(&file).expect("the key file exists next to the database");
    assert_eq!(key.trim(), app.state.secret_key.expose_secret());
    assert!(key.trim().len() >= 60, "a long random key");
    assert_eq!(mode_of(&file), 0o600);
    assert_eq!(app.store.setting("secret_key").await.unwrap(), None);
    assert!(
        app.store
            .setting("secret_key_check")
            .await
            .unwrap()
            .is_some()
    );
    let check = app
        .store
        .setting("secret_key_check")
        .await
        .unwrap()
        .unwrap();
    assert!(
        !check.contains(key.trim()),
        "the check value is not the key"
    );

    // The next start reads the same key.
    let db = app.stop().await;
    let again = start(db, |_| {}, BuildOptions::default()).await;
    assert_eq!(again.state.secret_key.expose_secret(), key.trim());
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_key_file_is_a_clear_startup_error() {
    let database = TestDatabase::create(Db::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.secret");
    std::fs::write(&empty, "\n").unwrap();
    let error = build(&database, |c| c.secret_key_file = Some(empty.clone()))
        .await
        .err()
        .expect("an empty key file is refused");
    assert!(
        error.contains(&format!("the secret key file {} is empty", empty.display())),
        "{error}"
    );
    let unreadable = dir.path().join("a-directory");
    std::fs::create_dir(&unreadable).unwrap();
    let error = build(&database, |c| c.secret_key_file = Some(unreadable.clone()))
        .await
        .err()
        .expect("an unreadable key file is refused");
    assert!(
        error.contains(&format!(
            "reading the secret key file {}",
            unreadable.display()
        )),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn postgres_needs_a_key_and_never_generates_one() {
    let database = TestDatabase::create(Db::Postgres).await;
    let error = build(&database, |_| {})
        .await
        .err()
        .expect("no key: refused");
    assert!(
        error.contains(
            "HOGLET_SECRET_KEY is not set: on PostgreSQL every replica must use the same secret key"
        ),
        "{error}"
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("shared.secret");
    let error = build(&database, |c| c.secret_key_file = Some(missing.clone()))
        .await
        .err()
        .expect("a missing key file is not created on PostgreSQL");
    assert!(
        error.contains(&format!(
            "the secret key file {} does not exist",
            missing.display()
        )),
        "{error}"
    );
    assert!(!missing.exists());

    std::fs::write(&missing, "a-key-shared-by-every-replica\n").unwrap();
    let app = build(&database, |c| c.secret_key_file = Some(missing.clone()))
        .await
        .expect("an explicit key file works on PostgreSQL");
    assert_eq!(
        app.state().secret_key.expose_secret(),
        "a-key-shared-by-every-replica"
    );
    assert_eq!(app.state().store.setting("secret_key").await.unwrap(), None);
}

/// A database as an earlier hoglet left it: a user with TOTP and a reset link, both made with a
/// generated key that sits in the `settings` table (and no key check). Returns the database, the
/// key, the TOTP secret and the reset link's path.
async fn legacy_database(
    db: Db,
    mail: &Path,
    clock: &Clock,
) -> (TestDatabase, String, String, String) {
    let legacy_key = format!("legacy-key-{}", uuid::Uuid::new_v4().simple());
    let mail_dir = mail.to_path_buf();
    let key = legacy_key.clone();
    let old = start(
        TestDatabase::create(db).await,
        move |c| {
            c.secret_key = Some(key.into());
            c.email = EmailDelivery::Directory(mail_dir);
        },
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    let user = old.create_user("legacy@example.com", false).await;
    old.create_org("Legacy", "legacy@example.com").await;
    let browser = Browser::new(&old);
    browser
        .login("legacy@example.com", PASSWORD)
        .await
        .assert_ok();
    let setup = browser.get("/api/users/@me/two_factor_start_setup/").await;
    let secret = setup.assert_ok()["secret"].as_str().unwrap().to_string();
    let validated = browser
        .post(
            "/api/users/@me/two_factor_validate/",
            json!({"token": totp_code(&secret, clock)}),
        )
        .await;
    assert_eq!(validated.json, json!({"success": true}));
    let reset = Browser::new(&old)
        .post("/api/reset/", json!({"email": "legacy@example.com"}))
        .await;
    assert_eq!(reset.status.as_u16(), 204);
    let link = wait_for_mail(mail, "a reset mail", |m| m.link("/reset/").is_some())
        .await
        .link("/reset/")
        .unwrap();
    let token = link.rsplit('/').next().unwrap().to_string();
    let reset_path = format!("/api/reset/{}/?token={token}", user.uuid);

    let store = old.store.clone();
    let check = store.setting("secret_key_check").await.unwrap().unwrap();
    assert!(
        store
            .delete_setting("secret_key_check", &check)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .setting_or_insert("secret_key", &legacy_key)
            .await
            .unwrap(),
        legacy_key
    );
    drop(store);
    let database = old.stop().await;
    (database, legacy_key, secret, reset_path)
}

async fn a_key_left_in_the_database_moves_out_and_keeps_working(db: Db) {
    let mail = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let (database, legacy_key, secret, reset_path) = legacy_database(db, mail.path(), &clock).await;

    // A different key is refused, and the stored key is neither printed nor touched.
    let error = build(&database, |c| {
        c.secret_key = Some("another-key".to_string().into())
    })
    .await
    .err()
    .expect("a different key is refused");
    assert!(
        error.contains("the database holds a secret key generated by an earlier hoglet")
            && error.contains("HOGLET_SECRET_KEY holds a different one"),
        "{error}"
    );
    assert!(!error.contains(&legacy_key), "the key is never printed");
    let probe = hoglet::store::connect(&database.url).await.unwrap();
    assert_eq!(
        probe.setting("secret_key").await.unwrap().as_deref(),
        Some(legacy_key.as_str())
    );
    drop(probe);

    let key = legacy_key.clone();
    let app = start(
        database,
        move |c| {
            c.email = EmailDelivery::Directory(mail.path().to_path_buf());
            if db == Db::Postgres {
                // PostgreSQL: the operator sets the stored key; hoglet then deletes its copy.
                c.secret_key = Some(key.into());
            }
        },
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    assert_eq!(app.state.secret_key.expose_secret(), legacy_key);
    assert_eq!(app.store.setting("secret_key").await.unwrap(), None);
    if db == Db::Sqlite {
        let file = key_file_of(&app.db);
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), legacy_key);
        assert_eq!(mode_of(&file), 0o600);
    }

    // What the old key sealed and signed still opens (the reset link first: a login voids it).
    let browser = Browser::new(&app);
    assert_eq!(browser.get(&reset_path).await.status.as_u16(), 200);
    clock.advance(60 * SECOND);
    browser
        .login("legacy@example.com", PASSWORD)
        .await
        .assert_error(
            401,
            "server_error",
            "2fa_required",
            "2FA is required.",
            None,
        );
    let second_factor = browser
        .post(
            "/api/login/token/",
            json!({"token": totp_code(&secret, &clock)}),
        )
        .await;
    assert_eq!(
        second_factor.json,
        json!({"success": true}),
        "{}",
        second_factor.text
    );

    // The next start finds the key where it was moved, and nothing in the database.
    let database = app.stop().await;
    let key = legacy_key.clone();
    let again = start(
        database,
        move |c| {
            if db == Db::Postgres {
                c.secret_key = Some(key.into());
            }
        },
        BuildOptions::default(),
    )
    .await;
    assert_eq!(again.state.secret_key.expose_secret(), legacy_key);
    assert_eq!(again.store.setting("secret_key").await.unwrap(), None);
    again.stop().await;
}

async fn a_server_with_another_key_refuses_to_start(db: Db) {
    let first = spawn_app_with(db, |c| {
        c.secret_key = Some("the-key-this-database-was-set-up-with".to_string().into());
    })
    .await;
    let second = first.db.shared();
    let error = build(&second, |c| {
        c.secret_key = Some("some-other-key".to_string().into());
    })
    .await
    .err()
    .expect("a replica with another key is refused");
    assert!(
        error.contains(
            "the secret key (HOGLET_SECRET_KEY) differs from the one this database was set up with"
        ),
        "{error}"
    );
    assert!(!error.contains("some-other-key") && !error.contains("the-key-this"));
    build(&second, |c| {
        c.secret_key = Some("the-key-this-database-was-set-up-with".to_string().into());
    })
    .await
    .expect("the same key starts");
    first.stop().await;
}

async fn expired_sessions_are_pruned_while_serving(db: Db) {
    let clock = Clock::manual();
    let app = start(
        TestDatabase::create(db).await,
        |c| c.janitor_interval = Duration::from_millis(20),
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    let user = app.create_user("sessions@example.com", false).await;
    let now = clock.now();
    let session = |id: &str, expires_at, pending_at: Option<i64>| SessionRecord {
        id: id.to_string(),
        user_id: pending_at.is_none().then_some(user.id),
        created_at: now - 3600 * SECOND,
        login_at: pending_at.is_none().then_some(now - 3600 * SECOND),
        expires_at,
        csrf_token: "csrf".into(),
        two_factor_verified: pending_at.is_none(),
        pending_user_id: pending_at.map(|_| user.id),
        pending_at,
        totp_setup_secret: None,
        totp_setup_at: None,
        client: Default::default(),
        last_activity_at: None,
    };
    let day = 86_400 * SECOND;
    for record in [
        session("live", now + day, None),
        session("expired", now - SECOND, None),
        session(
            "second-factor-abandoned",
            now + 14 * day,
            Some(now - 11 * 60 * SECOND),
        ),
        session(
            "second-factor-waiting",
            now + 14 * day,
            Some(now - 60 * SECOND),
        ),
    ] {
        app.store.insert_session(&record).await.unwrap();
    }
    let exists = |id: &'static str| {
        let store = app.store.clone();
        async move { store.session(id).await.unwrap().is_some() }
    };
    eventually(
        "the expired session to be pruned",
        Duration::from_secs(10),
        || async {
            (!exists("expired").await && !exists("second-factor-abandoned").await).then_some(())
        },
    )
    .await;
    assert!(exists("live").await);
    assert!(exists("second-factor-waiting").await);

    // Mail given up stays 30 days for the operator, then goes. (Queued as due in 100 days, so
    // the app's own worker leaves the rows to the test.)
    let later = now + 100 * day;
    for (recipient, given_up) in [
        ("dead-long-ago@example.com", now - 31 * day),
        ("dead-lately@example.com", now - 29 * day),
    ] {
        app.store
            .enqueue_mail(NewMail {
                recipient: recipient.into(),
                subject: "Reset".into(),
                sealed_body: "sealed".into(),
                created_at: later,
            })
            .await
            .unwrap();
        let claimed = app.store.claim_mail(later, later + day, 1).await.unwrap();
        assert_eq!(claimed[0].recipient, recipient);
        let failure = MailFailure::GiveUp(given_up);
        let given_up = app
            .store
            .mail_failed(claimed[0].id, later + day, "refused", failure);
        assert!(given_up.await.unwrap());
    }
    let database = &app.db;
    let dead = async |recipient: &str| {
        let sql = format!("SELECT count(*) FROM outbox WHERE recipient = '{recipient}'");
        crate::store_contract::raw_i64(database, &sql).await
    };
    eventually(
        "old dead mail to be pruned",
        Duration::from_secs(10),
        || async { (dead("dead-long-ago@example.com").await == 0).then_some(()) },
    )
    .await;
    assert_eq!(dead("dead-lately@example.com").await, 1);

    clock.advance(day + SECOND);
    eventually(
        "the session to be pruned after it expired",
        Duration::from_secs(10),
        || async {
            (!exists("live").await && !exists("second-factor-waiting").await).then_some(())
        },
    )
    .await;
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL not up yet
// ---------------------------------------------------------------------------------------------

/// A local port nothing listens on (bound once, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_postgres_that_never_answers_is_retried_then_named_without_its_password() {
    let port = free_port();
    let url = format!("postgres://bob:hunter2@127.0.0.1:{port}/hoglet");
    let output = Command::new(env!("CARGO_BIN_EXE_hoglet"))
        .args(["migrate"])
        .env("HOGLET_DATABASE_URL", &url)
        .env("HOGLET_DATABASE_WAIT_SECONDS", "2")
        .env_remove("HOGLET_LOG")
        .output()
        .expect("hoglet runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let server = format!("postgres://bob:***@127.0.0.1:{port}/hoglet");
    // Log lines come from a writer thread: the error line is not necessarily the last.
    let last = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    let prefix = format!("error: cannot connect to PostgreSQL at {server}: gave up after ");
    let attempts: u32 = last
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected error line {last:?}"));
    assert!(attempts >= 2, "it retried: {last}");
    assert!(last.contains("(HOGLET_DATABASE_WAIT_SECONDS=2)"), "{last}");
    assert_eq!(
        stderr.matches("is not answering yet; retrying").count(),
        attempts as usize - 1,
        "each retry is logged: {stderr}"
    );

    // 0: one attempt, no retry.
    let once = Command::new(env!("CARGO_BIN_EXE_hoglet"))
        .args(["migrate", "--database-wait-seconds", "0"])
        .env("HOGLET_DATABASE_URL", &url)
        .env_remove("HOGLET_LOG")
        .output()
        .expect("hoglet runs");
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert!(stderr.contains("gave up after 1 attempt over"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn a_postgres_that_comes_up_late_is_waited_for() {
    let server = crate::helpers::postgres_server();
    let database = TestDatabase::create(Db::Postgres).await;
    let DatabaseUrl::Postgres(real_url) = &database.url else {
        unreachable!()
    };
    let real: tokio_postgres::Config = server.parse().unwrap();
    let target = match (&real.get_hosts()[0], real.get_ports().first()) {
        (tokio_postgres::config::Host::Tcp(host), port) => {
            format!("{host}:{}", port.unwrap_or(&5432))
        }
        _ => panic!("the test server must be reached over TCP"),
    };
    // The database "starts" a moment after hoglet: a proxy to the real server that begins to
    // listen only later.
    let port = free_port();
    let late_url = real_url.replace(&target, &format!("127.0.0.1:{port}"));
    assert_ne!(&late_url, real_url);
    let proxy = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let late = database.shared_at(DatabaseUrl::Postgres(late_url));
    let app = start(
        late,
        |c| c.database_wait = Duration::from_secs(30),
        BuildOptions::default(),
    )
    .await;
    assert_eq!(
        app.call(reqwest::Method::GET, "/_health", None, None)
            .await
            .status
            .as_u16(),
        200
    );
    app.stop().await;
    proxy.abort();
    drop(database);
}

// ---------------------------------------------------------------------------------------------
// Redis that comes and goes
// ---------------------------------------------------------------------------------------------

/// A private, throwaway `redis-server` (no persistence) on `port`; killed when dropped.
struct RedisServer(Child);

impl RedisServer {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test starts its own redis-server, which must be on PATH: {e}")
            });
        Self(child)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn reset_request(app: &TestApp, email: &str) {
    let reply = app
        .call(
            reqwest::Method::POST,
            "/api/reset/",
            None,
            Some(json!({"email": email})),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 204, "{}", reply.text);
}

/// How many reset requests the Redis at `port` counted for `email`.
async fn counted_in_redis(port: u16, email: &str) -> u64 {
    let mut redis = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the private Redis answers");
    let key = format!(
        "hoglet:throttle:password_reset_email:{}",
        hoglet::crypto::sha256_hex(email.as_bytes())
    );
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut redis)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_was_down_at_start_is_used_once_it_answers() {
    let port = free_port();
    let mail = tempfile::tempdir().unwrap();
    let mail_dir = mail.path().to_path_buf();
    let app = spawn_app_with(Db::Sqlite, move |c| {
        c.redis_url = Some(format!("redis://127.0.0.1:{port}").into());
        c.email = EmailDelivery::Directory(mail_dir);
    })
    .await;
    assert!(!app.state.limiter.uses_redis());
    reset_request(&app, "while-down@example.com").await;

    let redis = RedisServer::start(port);
    eventually(
        "hoglet to connect to Redis",
        Duration::from_secs(30),
        || async { app.state.limiter.uses_redis().then_some(()) },
    )
    .await;
    reset_request(&app, "shared@example.com").await;
    assert_eq!(counted_in_redis(port, "shared@example.com").await, 1);
    assert_eq!(
        counted_in_redis(port, "while-down@example.com").await,
        0,
        "counted locally"
    );

    // Redis goes away mid-run: requests keep working, and it is used again when it is back.
    drop(redis);
    reset_request(&app, "gone@example.com").await;
    assert!(!app.state.limiter.uses_redis());
    let _redis = RedisServer::start(port);
    eventually(
        "hoglet to reconnect to Redis",
        Duration::from_secs(30),
        || async { app.state.limiter.uses_redis().then_some(()) },
    )
    .await;
    reset_request(&app, "back@example.com").await;
    assert_eq!(counted_in_redis(port, "back@example.com").await, 1);
    app.stop().await;
}
