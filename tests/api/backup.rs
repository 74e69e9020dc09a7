//! `hoglet backup` and `hoglet restore` through the real binary, against a real SQLite file that
//! a server writes while the copy is made.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::cli::{hoglet, json_of};
use crate::helpers::{BinaryServer, Db, PASSWORD, postgres_url, spawn_app, spawn_app_with};

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

#[track_caller]
fn assert_refused(output: &Output, code: i32, reason: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "{output:?}");
    assert!(stderr.contains(reason), "{stderr}");
    stderr
}

/// A backup of a database with a user and a key: (the directory, the backup's path).
fn small_backup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir.path().join("live.db"));
    json_of(&hoglet(
        &url,
        &[
            "user",
            "create",
            "--email",
            "a@example.com",
            "--password",
            PASSWORD,
        ],
    ));
    let backup = dir.path().join("backup.db");
    let made = json_of(&hoglet(&url, &["backup", "--to", backup.to_str().unwrap()]));
    assert_eq!(made["users"], 1);
    (dir, backup)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_writing_restores_every_acknowledged_write() {
    let app = spawn_app_with(Db::Sqlite, |c| {
        c.signup = hoglet::config::SignupPolicy::Open;
    })
    .await;
    let (_, key) = app.user_with_key("ops@example.com", true, &["*"]).await;
    let hoglet::config::DatabaseUrl::Sqlite(live) = app.db.url.clone() else {
        unreachable!()
    };

    // A writer signs up users through the API and records each one acknowledged.
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acknowledged, stop, base) = (acknowledged.clone(), stop.clone(), app.base.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let email = format!("writer{n}@example.com");
                let reply = client
                    .post(format!("{base}/api/signup/"))
                    .json(&json!({
                        "first_name": "W", "email": email, "password": PASSWORD,
                        "organization_name": format!("Org {n}")
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    reply.status().as_u16(),
                    201,
                    "{}",
                    reply.text().await.unwrap()
                );
                acknowledged.lock().push(email);
            }
        })
    };
    crate::helpers::eventually(
        "writes acknowledged",
        std::time::Duration::from_secs(60),
        || {
            let count = acknowledged.lock().len();
            async move { (count >= 3).then_some(()) }
        },
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("snapshot.db");
    let before_backup = acknowledged.lock().clone();
    let made = {
        let (url, backup) = (sqlite_url(&live), backup.clone());
        tokio::task::spawn_blocking(move || {
            json_of(&hoglet(&url, &["backup", "--to", backup.to_str().unwrap()]))
        })
        .await
        .unwrap()
    };
    // The writer went on during the backup and after it.
    let during = acknowledged.lock().len();
    crate::helpers::eventually(
        "writes after the backup",
        std::time::Duration::from_secs(60),
        || {
            let count = acknowledged.lock().len();
            async move { (count > during).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(made["path"], backup.to_str().unwrap());
    assert_eq!(made["bytes"], std::fs::metadata(&backup).unwrap().len());
    assert!(made["seconds"].as_f64().unwrap() >= 0.0);
    let users = made["users"].as_u64().unwrap() as usize;
    assert!(users > before_backup.len(), "{made}");

    // Restored into a fresh location (with the server's key file, which backups leave out).
    let fresh = dir.path().join("restored/hoglet.db");
    let fresh_url = sqlite_url(&fresh);
    let restored = json_of(&hoglet(
        &fresh_url,
        &["restore", "--from", backup.to_str().unwrap()],
    ));
    assert_eq!(restored["path"], fresh.to_str().unwrap());
    assert_eq!(restored["users"], users);
    assert_eq!(restored["bytes"], std::fs::metadata(&fresh).unwrap().len());
    let mut secret = live.clone().into_os_string();
    secret.push(".secret");
    std::fs::copy(&secret, dir.path().join("restored/hoglet.db.secret")).unwrap();
    app.stop().await;

    let mut command = Command::new(env!("CARGO_BIN_EXE_hoglet"));
    command
        .env("HOGLET_DATABASE_URL", &fresh_url)
        .env("HOGLET_LOG", "warn")
        .env_remove("HOGLET_REDIS_URL")
        .env_remove("HOGLET_BIND")
        .env_remove("HOGLET_SITE_URL");
    let server = BinaryServer::start(command);
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/api/users/?limit=1000", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    server.stop();
    let emails: Vec<&str> = listed["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(emails.len(), users, "{listed}");
    assert!(emails.contains(&"ops@example.com"));
    for email in &before_backup {
        assert!(emails.contains(&email.as_str()), "{email} lost: {emails:?}");
    }
}

#[test]
fn backup_refuses_an_existing_file_unless_forced() {
    let (dir, backup) = small_backup();
    let url = sqlite_url(&dir.path().join("live.db"));
    std::fs::write(&backup, b"keep me").unwrap();
    let refused = hoglet(&url, &["backup", "--to", backup.to_str().unwrap()]);
    assert_refused(&refused, 2, "already exists");
    assert_eq!(std::fs::read(&backup).unwrap(), b"keep me");

    let forced = json_of(&hoglet(
        &url,
        &["backup", "--to", backup.to_str().unwrap(), "--force"],
    ));
    assert_eq!(forced["users"], 1);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn restore_refuses_a_damaged_backup_and_keeps_the_database() {
    let (dir, backup) = small_backup();
    let live = sqlite_url(&dir.path().join("live.db"));
    let mut bytes = std::fs::read(&backup).unwrap();
    let page = 4096;
    let middle = bytes.len() / 2 / page * page;
    bytes[middle..middle + page].fill(0xA5);
    std::fs::write(&backup, &bytes).unwrap();

    let refused = hoglet(&live, &["restore", "--from", backup.to_str().unwrap()]);
    assert_refused(&refused, 1, "backup.db");
    let listed = json_of(&hoglet(&live, &["user", "list"]));
    assert_eq!(listed["count"], 1);
}

#[test]
fn restore_refuses_a_schema_newer_than_it_knows() {
    let (dir, backup) = small_backup();
    {
        let conn = rusqlite::Connection::open(&backup).unwrap();
        conn.execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (9999, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
            [],
        )
        .unwrap();
    }
    let target = sqlite_url(&dir.path().join("elsewhere.db"));
    let refused = hoglet(&target, &["restore", "--from", backup.to_str().unwrap()]);
    assert_refused(&refused, 1, "schema version 9999");
    assert!(!dir.path().join("elsewhere.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_database_a_server_has_open() {
    let (_dir, backup) = small_backup();
    let app = spawn_app(Db::Sqlite).await;
    app.create_user("running@example.com", false).await;
    let url = app.db.cli_url();
    let from = backup.to_str().unwrap().to_string();
    let refused = {
        let (url, from) = (url.clone(), from.clone());
        tokio::task::spawn_blocking(move || hoglet(&url, &["restore", "--from", &from]))
            .await
            .unwrap()
    };
    assert_refused(&refused, 1, "in use");
    // The server goes on with its own data.
    let user = app.create_user("still-running@example.com", false).await;
    assert!(user.id > 0);

    // Once it stopped, the same restore goes through and the backup is what the next server sees.
    let db = app.stop().await;
    let restored = json_of(&hoglet(&url, &["restore", "--from", &from]));
    assert_eq!(restored["users"], 1);
    let listed = json_of(&hoglet(&url, &["user", "list"]));
    assert_eq!(listed["results"][0]["email"], "a@example.com");
    drop(db);
}

#[test]
fn restore_refuses_a_file_that_is_not_a_hoglet_database() {
    let dir = tempfile::tempdir().unwrap();
    let target = sqlite_url(&dir.path().join("hoglet.db"));
    let not_sqlite = dir.path().join("notes.txt");
    std::fs::write(&not_sqlite, "hello ".repeat(2000)).unwrap();
    let refused = hoglet(
        &target,
        &["restore", "--from", not_sqlite.to_str().unwrap()],
    );
    assert_refused(&refused, 1, "notes.txt");
    let missing = hoglet(&target, &["restore", "--from", "/nonexistent/backup.db"]);
    assert_refused(&missing, 2, "no file");
}

#[test]
fn postgres_is_pointed_at_its_own_tools() {
    let Some(server) = postgres_url() else {
        eprintln!("HOGLET_TEST_POSTGRES_URL is not set: PostgreSQL backup commands not checked");
        return;
    };
    // A password in the URL is never repeated.
    let mut url = url::Url::parse(&server).unwrap();
    url.set_password(Some("hunter2")).unwrap();
    let url = url.to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.dump");
    let backup = hoglet(&url, &["backup", "--to", file.to_str().unwrap()]);
    let stderr = assert_refused(&backup, 2, "pg_dump");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!file.exists());
    std::fs::write(&file, b"dump").unwrap();
    let restore = hoglet(&url, &["restore", "--from", file.to_str().unwrap()]);
    let stderr = assert_refused(&restore, 2, "pg_restore");
    assert!(stderr.contains("psql"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
