//! Mail leaves the request path: a request queues its message in the outbox and answers; the
//! worker delivers it later, retries with backoff, gives up after the last attempt, and what it
//! has not delivered survives a restart. Bodies are sealed at rest and gone once delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hoglet::BuildOptions;
use hoglet::config::{DatabaseUrl, EmailDelivery};
use hoglet::outbox::{FIRST_RETRY_DELAY, MAX_ATTEMPTS};
use hoglet::time::Clock;
use reqwest::Method;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::browser::wait_for_mail;
use crate::db_tests;
use crate::helpers::{Db, TestApp, TestDatabase, eventually, spawn_app_with, start};

db_tests!(
    reset_answers_while_the_mail_server_hangs,
    queued_mail_survives_a_restart_and_is_sealed_at_rest,
    failed_delivery_backs_off_then_gives_up,
    reset_request_fails_when_its_mail_cannot_be_stored,
);

const PATIENCE: Duration = Duration::from_secs(10);

/// A mail server that accepts connections and never sends a byte, holding them open until the
/// client gives up; it counts connections accepted and connections the client closed.
struct SilentSmtp {
    port: u16,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<()>,
}

impl SilentSmtp {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let (on_accept, on_close) = (accepted.clone(), closed.clone());
        tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                on_accept.fetch_add(1, Ordering::SeqCst);
                let on_close = on_close.clone();
                connections.spawn(async move {
                    let mut buffer = [0u8; 512];
                    // Read whatever comes (nothing does: SMTP clients wait for the greeting)
                    // until the client hangs up.
                    while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
                    on_close.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            port,
            accepted,
            closed,
            tasks,
        }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for SilentSmtp {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// An SMTP URL nobody listens on: every delivery attempt fails at once (connection refused).
async fn refusing_smtp() -> EmailDelivery {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    EmailDelivery::Smtp(format!("smtp://127.0.0.1:{port}").into())
}

/// One `outbox` row as stored, read with SQL behind the store's back.
#[derive(Debug, Clone)]
struct OutboxRow {
    recipient: String,
    subject: String,
    body: Option<String>,
    created_at: i64,
    attempts: i64,
    next_attempt_at: i64,
    locked_until: Option<i64>,
    last_error: Option<String>,
    dead_at: Option<i64>,
}

const OUTBOX_ROWS: &str = "SELECT recipient, subject, body, created_at, attempts, \
     next_attempt_at, locked_until, last_error, dead_at FROM outbox ORDER BY id";

async fn outbox_rows(url: &DatabaseUrl) -> Vec<OutboxRow> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(&path).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                let mut statement = conn.prepare(OUTBOX_ROWS).unwrap();
                statement
                    .query_map([], |r| {
                        Ok(OutboxRow {
                            recipient: r.get(0)?,
                            subject: r.get(1)?,
                            body: r.get(2)?,
                            created_at: r.get(3)?,
                            attempts: r.get(4)?,
                            next_attempt_at: r.get(5)?,
                            locked_until: r.get(6)?,
                            last_error: r.get(7)?,
                            dead_at: r.get(8)?,
                        })
                    })
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap()
            })
            .await
            .unwrap()
        }
        DatabaseUrl::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(connection);
            let rows = client
                .query(OUTBOX_ROWS, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| OutboxRow {
                    recipient: r.get(0),
                    subject: r.get(1),
                    body: r.get(2),
                    created_at: r.get(3),
                    attempts: r.get(4),
                    next_attempt_at: r.get(5),
                    locked_until: r.get(6),
                    last_error: r.get(7),
                    dead_at: r.get(8),
                })
                .collect();
            drop(client);
            task.abort();
            rows
        }
    }
}

/// Runs raw statements behind the store's back: `sqlite` on SQLite, `postgres` on Postgres.
async fn raw_exec(url: &DatabaseUrl, sqlite: &str, postgres: &str) {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let (path, sql) = (path.clone(), sqlite.to_string());
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(&path).unwrap();
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute_batch(&sql).unwrap();
            })
            .await
            .unwrap();
        }
        DatabaseUrl::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(connection);
            client.batch_execute(postgres).await.unwrap();
            drop(client);
            task.abort();
        }
    }
}

/// The value of an unlabelled sample on `/metrics`.
async fn metric(app: &TestApp, name: &str) -> i64 {
    let metrics = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status.as_u16(), 200);
    metrics
        .text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} missing from {}", metrics.text))
        .parse()
        .unwrap()
}

/// `(depth, delivered, failures, dead)` as `/metrics` shows them.
async fn mail_metrics(app: &TestApp) -> (i64, i64, i64, i64) {
    (
        metric(app, "hoglet_mail_outbox_depth").await,
        metric(app, "hoglet_mail_delivered_total").await,
        metric(app, "hoglet_mail_failures_total").await,
        metric(app, "hoglet_mail_dead_total").await,
    )
}

async fn request_reset(app: &TestApp, email: &str) {
    let reply = app
        .call(
            Method::POST,
            "/api/reset/",
            None,
            Some(json!({"email": email})),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 204, "{}", reply.text);
    assert!(reply.text.is_empty());
}

async fn reset_answers_while_the_mail_server_hangs(db: Db) {
    let smtp = SilentSmtp::start().await;
    let url = smtp.url();
    let app = spawn_app_with(db, move |c| c.email = EmailDelivery::Smtp(url.into())).await;
    let user = app.create_user("known@example.com", false).await;
    let before = app.user_record(user.id).await;

    // Inline delivery would answer only once the client gave up on the silent server and hung
    // up (lettre's async transport bounds only the connect: never, without a bound of ours). The
    // deadline only turns such a hang into a failure; it measures nothing.
    tokio::time::timeout(3 * PATIENCE, request_reset(&app, "known@example.com"))
        .await
        .expect("the reset request waited for the mail server");
    assert_eq!(smtp.closed(), 0, "the request waited for the mail server");
    eventually("the worker to reach the mail server", PATIENCE, || async {
        (smtp.accepted() >= 1).then_some(())
    })
    .await;
    let rows = outbox_rows(&app.db.url).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.recipient, "known@example.com");
    assert_eq!(row.subject, "Reset your PostHog password");
    assert_eq!(row.attempts, 1, "claimed for its first attempt");
    assert!(row.locked_until.is_some(), "leased while the attempt runs");
    assert_eq!((&row.last_error, row.dead_at), (&None, None));
    assert_eq!(
        smtp.closed(),
        0,
        "the attempt is still waiting for the server"
    );

    request_reset(&app, "unknown@example.com").await;
    assert_eq!(
        outbox_rows(&app.db.url).await.len(),
        1,
        "no mail for nobody"
    );
    assert_eq!(smtp.closed(), 0);

    // The request wrote `requested_password_reset_at` and nothing else.
    let after = app.user_record(user.id).await;
    assert!(after.requested_password_reset_at.is_some());
    let mut expected = before.clone();
    expected.requested_password_reset_at = after.requested_password_reset_at;
    assert_eq!(format!("{after:?}"), format!("{expected:?}"));
    app.stop().await;
}

async fn queued_mail_survives_a_restart_and_is_sealed_at_rest(db: Db) {
    let clock = Clock::manual();
    let refused = refusing_smtp().await;
    let first = start(
        TestDatabase::create(db).await,
        move |c| c.email = refused,
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    let user = first.create_user("restart@example.com", false).await;
    request_reset(&first, "restart@example.com").await;
    let queued = eventually("the first attempt to fail", PATIENCE, || async {
        outbox_rows(&first.db.url)
            .await
            .into_iter()
            .find(|r| r.last_error.is_some())
    })
    .await;
    assert_eq!(queued.attempts, 1);
    assert_eq!(queued.next_attempt_at, clock.now() + FIRST_RETRY_DELAY);
    assert_eq!((queued.locked_until, queued.dead_at), (None, None));
    let body = queued.body.clone().expect("the body waits with the row");
    assert!(body.starts_with("v1:"), "sealed: {body}");
    assert!(!body.contains("/reset/"));
    assert_eq!(mail_metrics(&first).await, (1, 0, 1, 0));
    let database = first.stop().await;

    // A new process on the same database, now with working delivery, once the retry is due.
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().to_path_buf();
    let later = Clock::manual();
    later.advance(FIRST_RETRY_DELAY);
    let second = start(
        database,
        move |c| c.email = EmailDelivery::Directory(mail_dir),
        BuildOptions { clock: Some(later) },
    )
    .await;
    let mail = wait_for_mail(dir.path(), "the reset mail after the restart", |m| {
        m.to == "restart@example.com"
    })
    .await;
    assert_eq!(mail.subject, "Reset your PostHog password");
    let link = mail.link("/reset/").expect("reset link");
    let prefix = format!("/reset/{}/", user.uuid);
    let token = &link[link.find(&prefix).expect("link to the user") + prefix.len()..];
    assert!(token.len() > 10, "{link}");
    assert!(
        !format!("{queued:?}").contains(token),
        "the stored row held the token in clear: {queued:?}"
    );

    let done = second
        .call(
            Method::POST,
            &format!("/api/reset/{}/", user.uuid),
            None,
            Some(json!({"token": token, "password": "brand new Passw0rd 42"})),
        )
        .await;
    assert_eq!(
        done.assert_ok(),
        &json!({"success": true, "email": "restart@example.com"})
    );
    wait_for_mail(dir.path(), "the password change notice", |m| {
        m.subject == "Your password has been changed"
    })
    .await;
    // Delivered: the rows, and their bodies with them, are gone.
    eventually("the delivered row to go", PATIENCE, || async {
        outbox_rows(&second.db.url).await.is_empty().then_some(())
    })
    .await;
    let metrics = eventually("the depth to drop", PATIENCE, || async {
        let metrics = mail_metrics(&second).await;
        (metrics.0 == 0).then_some(metrics)
    })
    .await;
    assert_eq!(metrics, (0, 2, 0, 0), "the reset link and the notice");
    second.stop().await;
}

async fn failed_delivery_backs_off_then_gives_up(db: Db) {
    let clock = Clock::manual();
    let refused = refusing_smtp().await;
    let app = start(
        TestDatabase::create(db).await,
        move |c| c.email = refused,
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    app.create_user("retry@example.com", false).await;
    let queued_at = clock.now();
    request_reset(&app, "retry@example.com").await;

    let mut delays = Vec::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let row = eventually(&format!("attempt {attempt} to fail"), PATIENCE, || async {
            outbox_rows(&app.db.url)
                .await
                .into_iter()
                .find(|r| r.attempts == attempt && r.locked_until.is_none())
        })
        .await;
        assert_eq!(row.created_at, queued_at);
        assert!(
            row.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("SMTP delivery")),
            "{row:?}"
        );
        let failures = metric(&app, "hoglet_mail_failures_total").await;
        assert_eq!(failures, attempt);
        if attempt < MAX_ATTEMPTS {
            assert_eq!(row.dead_at, None);
            assert!(row.body.is_some(), "kept for the next attempt");
            assert_eq!(metric(&app, "hoglet_mail_outbox_depth").await, 1);
            let delay = row.next_attempt_at - clock.now();
            delays.push(delay / hoglet::time::SECOND);
            clock.advance(delay);
            app.state.outbox.wake();
        } else {
            assert_eq!(row.dead_at, Some(clock.now()), "given up");
            assert_eq!(row.body, None, "a dead letter keeps no body");
        }
    }
    assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920]);
    let depth_zero = eventually("the depth to drop", PATIENCE, || async {
        let metrics = mail_metrics(&app).await;
        (metrics.0 == 0).then_some(metrics)
    })
    .await;
    assert_eq!(depth_zero, (0, 0, MAX_ATTEMPTS, 1));
    let rows = outbox_rows(&app.db.url).await;
    assert_eq!(rows.len(), 1, "the dead letter stays, for the record");
    assert_eq!(rows[0].attempts, MAX_ATTEMPTS);
    app.stop().await;
}

async fn reset_request_fails_when_its_mail_cannot_be_stored(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().to_path_buf();
    let app = spawn_app_with(db, move |c| c.email = EmailDelivery::Directory(mail_dir)).await;
    let user = app.create_user("stuck@example.com", false).await;
    let before = app.user_record(user.id).await;
    raw_exec(
        &app.db.url,
        "CREATE TRIGGER refuse_mail BEFORE INSERT ON outbox \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        "CREATE FUNCTION refuse_mail() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$; \
         CREATE TRIGGER refuse_mail BEFORE INSERT ON outbox \
         FOR EACH ROW EXECUTE FUNCTION refuse_mail();",
    )
    .await;

    // A link that will never arrive is not acknowledged, and the request leaves no trace.
    app.call(
        Method::POST,
        "/api/reset/",
        None,
        Some(json!({"email": "stuck@example.com"})),
    )
    .await
    .assert_error(
        500,
        "server_error",
        "error",
        "A server error occurred.",
        None,
    );
    let after = app.user_record(user.id).await;
    assert_eq!(after.requested_password_reset_at, None);
    assert_eq!(format!("{after:?}"), format!("{before:?}"));
    assert!(outbox_rows(&app.db.url).await.is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    app.stop().await;
}
