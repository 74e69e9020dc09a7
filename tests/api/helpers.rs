//! Test harness: `spawn_app(db)` starts hoglet in-process on `127.0.0.1:0`, with typed helpers to
//! seed data through the admin operations and to call the HTTP API.

use std::net::SocketAddr;

use hoglet::config::{Config, DatabaseUrl};
use hoglet::store::DynStore;
use hoglet::{App, AppState, BuildOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The password every test user gets.
pub const PASSWORD: &str = "a-Good-passw0rd!";

/// Which database a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// The server of a test that needs PostgreSQL (only built to run with `HOGLET_TEST_POSTGRES_URL`;
/// see `build.rs`).
pub fn postgres_server() -> String {
    postgres_url().expect("HOGLET_TEST_POSTGRES_URL (set when the tests were built) is not set now")
}

/// `HOGLET_TEST_POSTGRES_URL`, when set: the server every Postgres test creates its database on.
pub fn postgres_url() -> Option<String> {
    std::env::var("HOGLET_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// Declares each listed `async fn name(db: Db)` as a SQLite test and a Postgres test. Built
/// without `HOGLET_TEST_POSTGRES_URL` (see `build.rs`), the Postgres tests are ignored, with the
/// reason, and the run counts them as such; with it set, a server that cannot be reached fails
/// them.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Db::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(hoglet_test_postgres), ignore = "HOGLET_TEST_POSTGRES_URL is not set")]
                async fn $name() {
                    super::$name($crate::helpers::Db::Postgres).await;
                }
            )*
        }
    };
}

/// A database created for one test and dropped afterwards.
pub struct TestDatabase {
    pub url: DatabaseUrl,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    pub async fn create(db: Db) -> Self {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("hoglet.db");
                Self {
                    url: DatabaseUrl::Sqlite(path),
                    _dir: Some(dir),
                    postgres: None,
                }
            }
            Db::Postgres => {
                let server = postgres_url().expect("HOGLET_TEST_POSTGRES_URL");
                let name = format!("hoglet_test_{}", uuid::Uuid::new_v4().simple());
                let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("HOGLET_TEST_POSTGRES_URL is set but Postgres is unreachable: {e}")
                    });
                let task = tokio::spawn(connection);
                client
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                drop(client);
                task.abort();
                let url = with_database(&server, &name);
                Self {
                    url: DatabaseUrl::Postgres(url),
                    _dir: None,
                    postgres: Some((server, name)),
                }
            }
        }
    }

    /// Another handle on the same database that does not drop it (for a second replica).
    pub fn shared(&self) -> Self {
        Self {
            url: self.url.clone(),
            _dir: None,
            postgres: None,
        }
    }

    /// Another handle that reaches the same database through `url` (a proxy, say), without
    /// dropping it.
    #[allow(dead_code)]
    pub fn shared_at(&self, url: DatabaseUrl) -> Self {
        Self {
            url,
            _dir: None,
            postgres: None,
        }
    }

    /// The URL as the CLI takes it.
    #[allow(dead_code)] // for CLI tests that run commands against a test's database
    pub fn cli_url(&self) -> String {
        match &self.url {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => url.clone(),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime, so the cleanup gets a thread and runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&server, tokio_postgres::NoTls).await
                {
                    let task = tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    task.abort();
                }
            });
        })
        .join();
    }
}

/// Replaces the database name of a `postgres://…/db` URL.
pub fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

pub struct TestApp {
    #[allow(dead_code)] // the bound address, for tests that speak raw TCP
    pub addr: SocketAddr,
    /// Where `/metrics` is served apart (`HOGLET_METRICS_BIND`), if it is.
    pub metrics_addr: Option<SocketAddr>,
    pub base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub store: DynStore,
    pub db: TestDatabase,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// Starts the app with a configuration adjusted by `configure`.
pub async fn spawn_app_with(db: Db, configure: impl FnOnce(&mut Config)) -> TestApp {
    let database = TestDatabase::create(db).await;
    start(database, configure, BuildOptions::default()).await
}

/// An app on a manual clock (`configure` adjusts its configuration), and the clock.
pub async fn spawn_app_on_clock(
    db: Db,
    configure: impl FnOnce(&mut Config),
) -> (TestApp, hoglet::time::Clock) {
    let clock = hoglet::time::Clock::manual();
    let app = start(
        TestDatabase::create(db).await,
        configure,
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await;
    (app, clock)
}

/// The TOTP code of a base32 secret at the clock's time.
pub fn totp_code(secret_b32: &str, clock: &hoglet::time::Clock) -> String {
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_b32.trim().as_bytes())
        .expect("a base32 secret");
    hoglet::domain::totp::code_at(&secret, clock.now_secs()).expect("a code")
}

pub async fn start(
    database: TestDatabase,
    configure: impl FnOnce(&mut Config),
    options: BuildOptions,
) -> TestApp {
    // Quiet unless TEST_LOG=1.
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
    let mut config = Config::new(database.url.clone());
    config.bind = "127.0.0.1:0".into();
    configure(&mut config);
    if config.secret_key.is_none() && config.secret_key_file.is_none() {
        // PostgreSQL needs a key; replicas on one database (`TestDatabase::shared`) share it.
        if let DatabaseUrl::Postgres(url) = &config.database_url {
            config.secret_key = Some(format!("test-secret-key:{url}").into());
        }
    }
    let app = App::build_with(config, options).await.expect("app builds");
    let addr = app.local_addr().expect("bound");
    let metrics_addr = app.metrics_addr().expect("metrics bound");
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.serve(
            async {
                let _ = rx.await;
            },
            |_| {},
        )
        .await
        .expect("server runs");
    });
    TestApp {
        addr,
        metrics_addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        store: state.store.clone(),
        state,
        db: database,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server, waiting for in-flight requests.
    pub async fn stop(mut self) -> TestDatabase {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let TestApp { db, .. } = self;
        db
    }

    pub async fn create_user(&self, email: &str, staff: bool) -> TestUser {
        self.create_user_with_password(email, PASSWORD, staff).await
    }

    pub async fn create_user_with_password(
        &self,
        email: &str,
        password: &str,
        staff: bool,
    ) -> TestUser {
        let json = hoglet::admin::create_user(
            &self.store,
            hoglet::admin::NewUserArgs {
                email: email.into(),
                password: password.into(),
                first_name: "Test".into(),
                last_name: "User".into(),
                staff,
                // Tests choose passwords the API would refuse (to test logins with them).
                allow_weak_password: true,
            },
        )
        .await
        .expect("user created");
        TestUser {
            id: json["id"].as_i64().unwrap(),
            uuid: json["uuid"].as_str().unwrap().to_string(),
            email: email.to_string(),
        }
    }

    /// Creates an organization owned by `owner`; returns `(org id, first team id)`.
    pub async fn create_org(&self, name: &str, owner: &str) -> (String, i64) {
        let json = hoglet::admin::create_organization(&self.store, name, owner)
            .await
            .expect("organization created");
        (
            json["id"].as_str().unwrap().to_string(),
            json["team"]["id"].as_i64().unwrap(),
        )
    }

    pub async fn add_member(&self, org: &str, email: &str, level: hoglet::store::MembershipLevel) {
        hoglet::admin::add_member(&self.store, org, email, level)
            .await
            .expect("member added");
    }

    pub async fn create_team(&self, org: &str, name: &str) -> i64 {
        hoglet::admin::create_team(&self.store, org, name)
            .await
            .expect("team created")["id"]
            .as_i64()
            .unwrap()
    }

    pub async fn create_dashboard(&self, team: i64, name: &str) -> i64 {
        hoglet::admin::create_dashboard(&self.store, team, name)
            .await
            .expect("dashboard created")["id"]
            .as_i64()
            .unwrap()
    }

    /// A personal API key for `email` with the given scopes; returns its value. No scopes makes a
    /// legacy key (see [`Self::create_legacy_key`]): the admin command refuses an empty list.
    pub async fn create_key(&self, email: &str, scopes: &[&str]) -> String {
        if scopes.is_empty() {
            return self.create_legacy_key(email).await.1;
        }
        hoglet::admin::create_key(
            &self.store,
            hoglet::admin::NewKeyArgs {
                email: email.into(),
                label: "test".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expires_at: None,
            },
        )
        .await
        .expect("key created")["value"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A key stored as an old PostHog (or hoglet) database may hold it: with no scopes at all;
    /// returns `(id, value)`.
    pub async fn create_legacy_key(&self, email: &str) -> (String, String) {
        use hoglet::domain::api_key;
        let user = self
            .store
            .user_by_email(email)
            .await
            .expect("store answers")
            .expect("user exists");
        let value = api_key::generate_value();
        let record = self
            .store
            .insert_api_key(
                hoglet::store::NewApiKey {
                    id: api_key::generate_id(),
                    user_id: user.id,
                    label: "legacy".into(),
                    secure_value: api_key::secure_value(&value),
                    mask_value: api_key::mask(&value),
                    scopes: vec![],
                    scoped_teams: None,
                    scoped_organizations: None,
                    expires_at: None,
                    created_at: hoglet::time::system_now(),
                },
                api_key::MAX_KEYS_PER_USER,
                &[],
            )
            .await
            .expect("key stored");
        (record.id, value)
    }

    /// A user with an organization and a key with the given scopes.
    pub async fn user_with_key(
        &self,
        email: &str,
        staff: bool,
        scopes: &[&str],
    ) -> (TestUser, String) {
        let user = self.create_user(email, staff).await;
        self.create_org(&format!("Org of {email}"), email).await;
        let key = self.create_key(email, scopes).await;
        (user, key)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request with an optional key and JSON body and reads the answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.request(method, path);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::read(request.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(key), Some(body)).await
    }

    pub async fn put(&self, path: &str, key: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(key), Some(body)).await
    }

    /// Sends a request built by hand (custom headers, raw bodies).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        Reply::read(request.send().await.expect("request sent")).await
    }

    /// Sends `body` as is with the given `Content-Type`, authenticated by a bearer key.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut request = self
            .request(method, path)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        self.send(request).await
    }

    /// The user's row as stored (to check what a request wrote, or did not write).
    pub async fn user_record(&self, id: i64) -> hoglet::store::UserRecord {
        self.store
            .user_by_id(id)
            .await
            .expect("store answers")
            .expect("user exists")
    }

    /// Writes a user row directly, bypassing the API (to set up states the API cannot reach).
    pub async fn store_user(&self, user: &hoglet::store::UserRecord) {
        let before = self.user_record(user.id).await;
        let write = hoglet::store::UserWrite {
            changes: hoglet::store::UserChanges::between(&before, user),
            ..Default::default()
        };
        self.store
            .write_user(user.id, &write)
            .await
            .expect("user updated");
    }
}

/// Polls `check` until it returns `Some`, for at most `limit` (for effects that reach the server
/// asynchronously, such as cache invalidations recorded by another writer).
pub async fn eventually<T, F, Fut>(what: &str, limit: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

pub struct TestUser {
    pub id: i64,
    pub uuid: String,
    pub email: String,
}

/// A response with its body parsed as JSON (`Value::Null` for an empty body).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body read");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        Self {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and PostHog's error envelope.
    #[track_caller]
    pub fn assert_error(
        &self,
        status: u16,
        kind: &str,
        code: &str,
        detail: &str,
        attr: Option<&str>,
    ) {
        assert_eq!(self.status.as_u16(), status, "status of {}", self.text);
        assert_eq!(
            self.json,
            serde_json::json!({"type": kind, "code": code, "detail": detail, "attr": attr}),
            "error body"
        );
    }

    #[track_caller]
    pub fn assert_ok(&self) -> &Value {
        assert_eq!(self.status, StatusCode::OK, "body: {}", self.text);
        &self.json
    }
}

/// The real binary serving on a free port of 127.0.0.1 with its stderr (the logs) captured.
pub struct BinaryServer {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`, as the server printed it.
    pub base: String,
}

impl BinaryServer {
    /// Runs `command` (the binary with its environment) as `serve --bind 127.0.0.1:0`, once it
    /// prints that it listens.
    pub fn start(mut command: std::process::Command) -> Self {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hoglet started");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let base = loop {
            line.clear();
            assert!(
                stdout.read_line(&mut line).expect("stdout read") > 0,
                "hoglet did not start"
            );
            if let Some(base) = line.trim().strip_prefix("hoglet listening on ") {
                break base.to_string();
            }
        };
        Self { child, base }
    }

    /// Stops the server with SIGTERM (it drains and flushes its log) and returns what it wrote
    /// on stderr.
    pub fn stop(mut self) -> String {
        use std::io::Read;
        let stopped = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill ran");
        assert!(stopped.success());
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr read");
        self.child.wait().expect("hoglet stopped");
        stderr
    }
}
