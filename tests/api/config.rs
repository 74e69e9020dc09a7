//! Configuration: the README's table is the command line's, bad values stop the start with a
//! usage error, and the settings that used to be fixed reach the running server (through the real
//! binary, set by environment variables as operators do).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use hoglet::cli::Cli;
use serde_json::{Value, json};

/// (flag, env) of every setting the command line defines, hidden ones left out.
fn command_line_settings() -> BTreeSet<(String, String)> {
    fn walk(cmd: &clap::Command, into: &mut BTreeSet<(String, String)>) {
        for arg in cmd.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            if arg.is_hide_set() {
                continue;
            }
            let long = arg
                .get_long()
                .unwrap_or_else(|| panic!("the setting {env:?} has no --flag"));
            assert!(
                arg.get_help().is_some(),
                "--{long} has no help text in `hoglet --help`"
            );
            into.insert((format!("--{long}"), env.to_string_lossy().into_owned()));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, into);
        }
    }
    let mut settings = BTreeSet::new();
    walk(&Cli::command(), &mut settings);
    settings
}

/// (flag, env) of every row of the table under README.md's `## Configuration`.
fn readme_settings() -> BTreeSet<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split_once("\n## Configuration\n")
        .expect("README.md has a `## Configuration` section")
        .1;
    let section = section.split("\n#").next().unwrap_or(section);
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let mut rows = BTreeSet::new();
    let mut header_seen = false;
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if !header_seen {
            assert_eq!(
                &cells[1..5],
                ["flag", "env", "default", "meaning"],
                "the configuration table's columns"
            );
            header_seen = true;
            continue;
        }
        if cells[1].starts_with("---") {
            continue;
        }
        let (flags, envs) = (ticked(cells[1]), ticked(cells[2]));
        assert!(
            flags.len() == 1 && flags[0].starts_with("--") && envs.len() == 1,
            "each configuration row names one `--flag` and one `ENV`: {line}"
        );
        assert!(
            !cells[3].is_empty() && !cells[4].is_empty(),
            "the row for {} needs a default and a meaning",
            flags[0]
        );
        assert!(
            rows.insert((flags[0].clone(), envs[0].clone())),
            "{} is listed twice",
            flags[0]
        );
    }
    assert!(header_seen, "no table under `## Configuration`");
    rows
}

#[test]
fn readme_configuration_table_is_the_command_line() {
    let code = command_line_settings();
    let readme = readme_settings();
    let show = |rows: Vec<&(String, String)>| {
        rows.iter()
            .map(|(flag, env)| format!("`{flag}` / `{env}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<_> = code.difference(&readme).collect();
    let extra: Vec<_> = readme.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README.md's configuration table and the command line differ.\n  \
         missing from the README: {}\n  \
         in the README but not on the command line: {}",
        show(missing),
        show(extra)
    );
    // Every environment variable is a HOGLET_ one, named after its flag.
    for (flag, env) in &code {
        let expected = format!(
            "HOGLET_{}",
            flag.trim_start_matches("--")
                .to_uppercase()
                .replace('-', "_")
        );
        assert_eq!(env, &expected, "{flag}");
    }
}

/// The binary with a clean environment for settings (tests may run with `HOGLET_*` exported).
fn hoglet() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hoglet"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if (name.starts_with("HOGLET_") && !name.starts_with("HOGLET_TEST_")) || name == "RUST_LOG"
        {
            command.env_remove(&*name);
        }
    }
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("hoglet runs")
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

#[test]
fn bad_settings_stop_the_start_with_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let url = format!("sqlite://{}", db.display());
    // (arguments, variables, the name the error must give)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["serve"],
            vec![("HOGLET_SITE_URL", "not a url")],
            "HOGLET_SITE_URL",
        ),
        (
            vec!["serve", "--site-url", "not a url"],
            vec![],
            "--site-url",
        ),
        (
            vec!["serve", "--site-url", "ftp://example.com"],
            vec![],
            "--site-url",
        ),
        (
            vec!["migrate"],
            vec![("HOGLET_LOG", "hoglet=loud")],
            "HOGLET_LOG",
        ),
        (
            vec!["serve"],
            vec![("HOGLET_LOG_FORMAT", "xml")],
            "HOGLET_LOG_FORMAT",
        ),
        (
            vec!["serve"],
            vec![("HOGLET_MAX_BODY_BYTES", "1MB")],
            "HOGLET_MAX_BODY_BYTES",
        ),
        (
            vec!["serve"],
            vec![("HOGLET_LOGIN_FAILURE_LIMIT", "0")],
            "HOGLET_LOGIN_FAILURE_LIMIT",
        ),
        (
            vec!["serve"],
            vec![("HOGLET_RATE_LIMIT_KEYS", "sometimes")],
            "HOGLET_RATE_LIMIT_KEYS",
        ),
        (
            vec!["serve"],
            vec![("HOGLET_EMAIL_FROM", "nobody")],
            "HOGLET_EMAIL_FROM",
        ),
        (
            vec!["serve"],
            vec![("HOGLET_TRUSTED_PROXIES", "proxy.local")],
            "HOGLET_TRUSTED_PROXIES",
        ),
        (
            vec!["serve"],
            vec![("HOGLET_BIND", "127.0.0.1")],
            "HOGLET_BIND",
        ),
        (
            vec!["serve"],
            vec![("HOGLET_GITHUB_API_URL", "api.github")],
            "HOGLET_GITHUB_API_URL",
        ),
    ];
    for (args, envs, named) in cases {
        let output = run(hoglet()
            .args(&args)
            .env("HOGLET_DATABASE_URL", &url)
            .envs(envs.iter().copied()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {envs:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} {envs:?}");
        assert!(
            stderr.starts_with("error: invalid value") && stderr.contains(named),
            "{args:?} {envs:?}: {stderr}"
        );
    }
    assert!(!db.exists(), "nothing started");

    // A secret value is not repeated.
    for (name, value) in [
        ("HOGLET_DATABASE_URL", "postgres://bob:hunter2@db:port/x"),
        ("HOGLET_REDIS_URL", "redis://:hunter2@[cache"),
        ("HOGLET_EMAIL", "smtp://me:hunter2@"),
    ] {
        let output = run(hoglet().arg("serve").env(name, value));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(name), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}

/// A `hoglet serve` child, killed when dropped.
struct Server {
    child: Child,
    base: String,
    stderr: Option<ChildStderr>,
}

impl Server {
    /// Starts `hoglet serve` on a free port with these variables (and the database's).
    fn start(database_url: &str, envs: &[(&str, &str)]) -> Self {
        let mut child = hoglet()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env("HOGLET_DATABASE_URL", database_url)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hoglet serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("hoglet listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self {
            stderr: child.stderr.take(),
            child,
            base: format!("http://{addr}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SQLite database with one user and a `*` key made by the admin commands; returns its URL
/// and the key.
fn seeded(dir: &Path, email: &str) -> (String, String) {
    let url = format!("sqlite://{}", dir.join("hoglet.db").display());
    stdout_json(&run(hoglet().env("HOGLET_DATABASE_URL", &url).args([
        "user",
        "create",
        "--email",
        email,
        "--password",
        crate::helpers::PASSWORD,
    ])));
    let key = stdout_json(&run(hoglet().env("HOGLET_DATABASE_URL", &url).args([
        "key", "create", "--email", email, "--label", "ci", "--scopes", "*",
    ])));
    (url, key["value"].as_str().unwrap().to_string())
}

#[test]
fn log_format_json_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hoglet.db").display());
    for format in ["JSON", "json", "Json"] {
        let mut server = Server::start(&url, &[("HOGLET_LOG_FORMAT", format)]);
        let mut line = String::new();
        BufReader::new(server.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let parsed: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("HOGLET_LOG_FORMAT={format}: {e}: {line:?}"));
        assert_eq!(parsed["level"], "INFO", "{line}");
        assert!(parsed["fields"]["message"].is_string(), "{line}");
        // The database URL is logged redacted as ever.
        assert!(line.contains("sqlite://"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_bytes_is_settable() {
    let dir = tempfile::tempdir().unwrap();
    let (url, key) = seeded(dir.path(), "big@example.com");
    let server = Server::start(&url, &[("HOGLET_MAX_BODY_BYTES", "1024")]);
    let client = reqwest::Client::new();
    let patch = |body: Value| {
        client
            .patch(format!("{}/api/users/@me/", server.base))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    let reply = patch(json!({"first_name": "x".repeat(2000)}))
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 413);
    let envelope: Value = reply.json().await.unwrap();
    assert_eq!(envelope["type"], "invalid_request");
    assert_eq!(envelope["code"], "request_too_large");
    let reply = patch(json!({"first_name": "Small"})).await.unwrap();
    assert_eq!(reply.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_from_is_settable() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = seeded(dir.path(), "reset@example.com");
    let mail = dir.path().join("mail");
    let delivery = format!("file:{}", mail.display());
    let server = Server::start(
        &url,
        &[
            ("HOGLET_EMAIL", &delivery),
            ("HOGLET_EMAIL_FROM", "Hoglet Ops <ops@example.com>"),
        ],
    );
    let reply = reqwest::Client::new()
        .post(format!("{}/api/reset/", server.base))
        .json(&json!({"email": "reset@example.com"}))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{}", reply.status());
    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        let found = std::fs::read_dir(&mail).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "eml"))
        });
        if let Some(path) = found {
            break std::fs::read_to_string(path).unwrap();
        }
        assert!(Instant::now() < deadline, "no mail in {}", mail.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let from = message
        .lines()
        .find(|l| l.starts_with("From:"))
        .unwrap_or_else(|| panic!("no From: in {message}"));
    assert_eq!(from.trim_end(), r#"From: "Hoglet Ops" <ops@example.com>"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failure_limit_is_settable() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = seeded(dir.path(), "lock@example.com");
    let server = Server::start(&url, &[("HOGLET_LOGIN_FAILURE_LIMIT", "2")]);
    let client = reqwest::Client::new();
    let login = |password: &str| {
        client
            .post(format!("{}/api/login/", server.base))
            .json(&json!({"email": "lock@example.com", "password": password}))
            .send()
    };
    for _ in 0..2 {
        let reply = login("wrong-password").await.unwrap();
        assert_eq!(reply.status().as_u16(), 400);
    }
    // Locked after two failures (PostHog's default is 30), even with the right password.
    let reply = login(crate::helpers::PASSWORD).await.unwrap();
    assert_eq!(reply.status().as_u16(), 403);
    let envelope: Value = reply.json().await.unwrap();
    assert_eq!(envelope["code"], "too_many_failed_attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_throttles_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let (url, key) = seeded(dir.path(), "busy@example.com");
    // 480 a minute per key on the key endpoints; the 481st is throttled unless turned off.
    for (setting, throttled) in [("true", true), ("FALSE", false)] {
        let server = Server::start(&url, &[("HOGLET_RATE_LIMIT_KEYS", setting)]);
        let client = reqwest::Client::new();
        let mut statuses = BTreeSet::new();
        for _ in 0..481 {
            let reply = client
                .get(format!("{}/api/personal_api_keys/", server.base))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            statuses.insert(reply.status().as_u16());
        }
        assert_eq!(
            statuses.contains(&429),
            throttled,
            "HOGLET_RATE_LIMIT_KEYS={setting}: {statuses:?}"
        );
    }
}
