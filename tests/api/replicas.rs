//! Two replicas on one Postgres database and one Redis: a key revoked on one stops working on the
//! other within 5 s, and rate limits and the login lockout are shared.

use std::time::{Duration, Instant};

use hoglet::BuildOptions;
use hoglet::config::EmailDelivery;
use reqwest::Method;
use serde_json::json;

use crate::browser::Browser;
use crate::helpers::{Db, PASSWORD, Reply, TestApp, TestDatabase, start};

fn redis_url() -> String {
    std::env::var("HOGLET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn replica(database: TestDatabase, mail: &std::path::Path) -> TestApp {
    let mail = mail.to_path_buf();
    start(
        database,
        move |c| {
            c.redis_url = Some(redis_url().into());
            c.email = EmailDelivery::Directory(mail);
            c.login_failure_limit = 3;
            // The test's addresses come in `X-Forwarded-For`: Redis outlives test runs, and
            // counters kept for 127.0.0.1 there would add up across them.
            c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        },
        BuildOptions::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn two_replicas_share_revocation_and_limits() {
    let mail = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(Db::Postgres).await;
    let second = database.shared();
    let a = replica(database, mail.path()).await;
    let b = replica(second, mail.path()).await;
    assert!(
        a.state.limiter.uses_redis() && b.state.limiter.uses_redis(),
        "Redis at {}",
        redis_url()
    );

    // A new address per run: the per-account login counter lives in Redis too.
    let email = format!("replica-{}@example.com", uuid::Uuid::new_v4().simple());
    let user = a.create_user(&email, false).await;
    a.create_org("Replicas", &email).await;
    let mut verified = a.user_record(user.id).await;
    verified.is_email_verified = Some(true);
    a.store_user(&verified).await;
    let browser = Browser::new(&a);
    browser.login(&email, PASSWORD).await.assert_ok();
    let created = browser
        .post(
            "/api/personal_api_keys/",
            json!({"label": "both", "scopes": ["*"]}),
        )
        .await;
    let key = created.json["value"].as_str().unwrap().to_string();
    let id = created.json["id"].as_str().unwrap().to_string();
    // Both replicas have the key cached.
    assert_eq!(a.get("/api/users/@me/", &key).await.status.as_u16(), 200);
    assert_eq!(b.get("/api/users/@me/", &key).await.status.as_u16(), 200);

    let deleted = browser
        .call(
            Method::DELETE,
            &format!("/api/personal_api_keys/{id}/"),
            None,
        )
        .await;
    assert_eq!(deleted.status.as_u16(), 204);
    assert_eq!(
        a.get("/api/users/@me/", &key).await.status.as_u16(),
        401,
        "at once on the replica that revoked it"
    );
    let started = Instant::now();
    loop {
        let status = b.get("/api/users/@me/", &key).await.status.as_u16();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the other replica still accepts the key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Six verification mails a day per address, counted across both replicas.
    let ask = |app: &TestApp| {
        app.client
            .post(app.url("/api/users/request_email_verification/"))
            .json(&json!({"uuid": user.uuid}))
            .send()
    };
    for i in 0..6 {
        let app = if i % 2 == 0 { &a } else { &b };
        let reply = Reply::read(ask(app).await.unwrap()).await;
        assert_eq!(reply.json, json!({"success": true}), "request {i}");
    }
    assert_eq!(
        Reply::read(ask(&b).await.unwrap()).await.status.as_u16(),
        429
    );
    assert_eq!(
        Reply::read(ask(&a).await.unwrap()).await.status.as_u16(),
        429
    );

    // The login lockout counts failures from one address on every replica.
    let ip = format!("10.{}.{}.{}", rand_octet(), rand_octet(), rand_octet());
    let login = |app: &TestApp, password: &'static str| {
        app.client
            .post(app.url("/api/login/"))
            .header("X-Forwarded-For", ip.clone())
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    for app in [&a, &b, &a] {
        assert_eq!(
            Reply::read(login(app, "wrong").await.unwrap())
                .await
                .status
                .as_u16(),
            400
        );
    }
    Reply::read(login(&b, PASSWORD).await.unwrap())
        .await
        .assert_error(
            403,
            "authentication_error",
            "too_many_failed_attempts",
            "Too many failed login attempts. Please try again in 10 minutes.",
            None,
        );

    // The per-account lock counts failures from every address on every replica: 3 so far, 7
    // more from new addresses lock the account.
    let login_from = |app: &TestApp, password: &'static str| {
        let ip = format!("10.{}.{}.{}", rand_octet(), rand_octet(), rand_octet());
        app.client
            .post(app.url("/api/login/"))
            .header("X-Forwarded-For", ip)
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    for app in [&a, &b, &a, &b, &a, &b, &a] {
        let reply = Reply::read(login_from(app, "wrong").await.unwrap()).await;
        assert_eq!(reply.json["code"], "invalid_credentials", "{}", reply.text);
    }
    let locked = Reply::read(login_from(&b, PASSWORD).await.unwrap()).await;
    assert_eq!(locked.status.as_u16(), 429, "{}", locked.text);
    assert_eq!(locked.json["code"], "throttled");
    assert_eq!(locked.header("retry-after"), Some("30"));
    b.stop().await;
    a.stop().await;
}

fn rand_octet() -> u8 {
    (uuid::Uuid::new_v4().as_u128() % 250) as u8 + 1
}

crate::db_tests!(redis_outage_falls_back_to_local_limits);

async fn redis_outage_falls_back_to_local_limits(db: Db) {
    // Nothing listens on port 1: the limiter must keep answering with local state.
    let app = crate::helpers::spawn_app_with(db, |c| {
        c.redis_url = Some("redis://127.0.0.1:1".to_string().into());
        c.login_failure_limit = 2;
    })
    .await;
    app.create_user("down@example.com", false).await;
    let browser = Browser::new(&app);
    for _ in 0..2 {
        assert_eq!(
            browser
                .login("down@example.com", "wrong")
                .await
                .status
                .as_u16(),
            400
        );
    }
    browser
        .login("down@example.com", PASSWORD)
        .await
        .assert_error(
            403,
            "authentication_error",
            "too_many_failed_attempts",
            "Too many failed login attempts. Please try again in 10 minutes.",
            None,
        );
    assert_eq!(
        app.call(Method::GET, "/_health", None, None)
            .await
            .status
            .as_u16(),
        200
    );
    app.stop().await;
}
