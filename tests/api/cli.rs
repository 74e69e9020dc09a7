//! The real `hoglet` binary: admin commands print one JSON object, errors go to stderr.

use std::process::{Command, Output};

use serde_json::Value;

/// Runs the binary on `database_url` (with the default log level), to completion.
pub fn hoglet(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoglet"))
        .args(args)
        .env("HOGLET_DATABASE_URL", database_url)
        .env_remove("HOGLET_LOG")
        .output()
        .expect("hoglet runs")
}

/// The command's JSON answer (it must have succeeded).
pub fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

#[test]
fn admin_commands_print_json_and_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());

    let user = json_of(&hoglet(
        &url,
        &[
            "user",
            "create",
            "--email",
            "a@example.com",
            "--password",
            crate::helpers::PASSWORD,
            "--staff",
        ],
    ));
    assert!(user["id"].is_i64());
    assert!(user["uuid"].is_string());
    assert_eq!(user["is_staff"], true);

    let duplicate = hoglet(
        &url,
        &[
            "user",
            "create",
            "--email",
            "A@example.com",
            "--password",
            "x",
        ],
    );
    assert_eq!(duplicate.status.code(), Some(1));
    assert!(duplicate.stdout.is_empty());
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already an account"));

    let usage = hoglet(&url, &["user", "create", "--email", "b@example.com"]);
    assert_eq!(usage.status.code(), Some(2));

    let org = json_of(&hoglet(
        &url,
        &[
            "org",
            "create",
            "--name",
            "Acme",
            "--owner",
            "a@example.com",
        ],
    ));
    assert_eq!(org["name"], "Acme");
    assert_eq!(org["team"]["name"], "Default project");
    assert!(
        org["team"]["api_token"]
            .as_str()
            .unwrap()
            .starts_with("phc_")
    );
    assert!(org["team"]["id"].is_i64());

    let key = json_of(&hoglet(
        &url,
        &[
            "key",
            "create",
            "--email",
            "a@example.com",
            "--label",
            "ci",
            "--scopes",
            "user:read,user:write",
        ],
    ));
    assert_eq!(
        key["scopes"],
        serde_json::json!(["user:read", "user:write"])
    );
    assert!(key["value"].as_str().unwrap().starts_with("phx_"));

    let bad_scope = hoglet(
        &url,
        &[
            "key",
            "create",
            "--email",
            "a@example.com",
            "--label",
            "x",
            "--scopes",
            "user:delete",
        ],
    );
    assert_eq!(bad_scope.status.code(), Some(2), "bad usage");
    assert!(
        String::from_utf8_lossy(&bad_scope.stderr).contains("\"user:delete\" is not a scope"),
        "{}",
        String::from_utf8_lossy(&bad_scope.stderr)
    );
    // Every kind of bad usage exits 2 and writes nothing.
    for args in [
        vec!["serve", "--signup", "maybe"],
        vec!["migrate", "--database-url", "mysql://x"],
        // The database flags belong to the commands that open a database.
        vec!["openapi", "--database-url", "sqlite://x.db"],
        vec!["healthcheck", "--database-wait-seconds", "1"],
        vec![
            "key",
            "create",
            "--email",
            "a@example.com",
            "--label",
            "x",
            "--scopes",
            "user:read",
            "--expires-at",
            "tomorrow",
        ],
        vec![
            "key",
            "create",
            "--email",
            "a@example.com",
            "--label",
            "x",
            "--scopes",
            " , ",
        ],
    ] {
        let refused = hoglet(&url, &args);
        assert_eq!(refused.status.code(), Some(2), "{args:?}");
        assert!(refused.stdout.is_empty(), "{args:?}");
    }
    // The help lists every scope a key may have.
    let help = hoglet(&url, &["key", "create", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for scope in [
        "*,",
        "user:read",
        "user:write",
        "feature_flag:write",
        "webhook:read",
    ] {
        assert!(help.contains(scope), "{scope} in {help}");
    }

    assert!(hoglet(&url, &["migrate"]).status.success());
    assert!(hoglet(&url, &["migrate"]).status.success());
    // Either side of a group's subcommand.
    for args in [
        ["user", "list", "--database-url", url.as_str()],
        ["user", "--database-url", url.as_str(), "list"],
    ] {
        let listed = json_of(&hoglet("sqlite:///nonexistent-dir/unused.db", &args));
        assert_eq!(listed["results"][0]["email"], "a@example.com", "{args:?}");
    }
    // `openapi` opens no database, so a database setting it cannot use does not stop it.
    let openapi = hoglet("mysql://x", &["openapi"]);
    assert!(openapi.status.success(), "{openapi:?}");
    assert!(String::from_utf8_lossy(&openapi.stdout).contains("\"/api/users/{uuid}/\""));
}

/// Admin commands refuse control characters in names, labels and addresses like the API does
/// (a NUL cannot be in an argument, so these are the other control characters): exit 1, one
/// line on stderr, nothing created.
#[test]
fn admin_commands_refuse_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let user = |email: &str, first: &str| {
        hoglet(
            &url,
            &[
                "user",
                "create",
                "--email",
                email,
                "--password",
                crate::helpers::PASSWORD,
                "--first-name",
                first,
            ],
        )
    };
    for (email, first, message) in [
        (
            "a@example.com",
            "Ada\u{1b}[2J",
            "error: invalid first name: Control characters are not allowed.",
        ),
        (
            "\"a\u{1}\"@example.com",
            "Ada",
            "error: invalid email address: Control characters are not allowed.",
        ),
    ] {
        let refused = user(email, first);
        assert_eq!(refused.status.code(), Some(1));
        assert!(refused.stdout.is_empty());
        assert_eq!(String::from_utf8_lossy(&refused.stderr).trim(), message);
    }
    // Nothing was created: the address is still free.
    json_of(&user("a@example.com", "Ada"));

    for (args, message) in [
        (
            vec![
                "org",
                "create",
                "--name",
                "Acme\nEvil",
                "--owner",
                "a@example.com",
            ],
            "error: invalid organization name: Control characters are not allowed.",
        ),
        (
            vec![
                "key",
                "create",
                "--email",
                "a@example.com",
                "--label",
                "ci\tprod",
                "--scopes",
                "user:read",
            ],
            "error: invalid label: Control characters are not allowed.",
        ),
    ] {
        let refused = hoglet(&url, &args);
        assert_eq!(refused.status.code(), Some(1), "{args:?}");
        assert!(refused.stdout.is_empty());
        assert_eq!(String::from_utf8_lossy(&refused.stderr).trim(), message);
    }
}

#[test]
fn serve_prints_the_real_port_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("serve.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoglet"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("HOGLET_DATABASE_URL", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("hoglet serve starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("hoglet listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(!addr.ends_with(":0"), "the real port is printed: {addr}");

    // The server answers as soon as the line is out.
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // `healthcheck` answers 0 for a ready server, found by URL or by its listen address.
    let ready_url = format!("http://{addr}/_ready/");
    let ready = hoglet(&url, &["healthcheck", "--url", &ready_url]);
    assert_eq!(ready.status.code(), Some(0), "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.stdout).contains("\"status\":\"ok\""));
    let by_bind = Command::new(env!("CARGO_BIN_EXE_hoglet"))
        .args(["healthcheck"])
        .env("HOGLET_BIND", &addr)
        .output()
        .unwrap();
    assert_eq!(by_bind.status.code(), Some(0), "{by_bind:?}");
    assert_eq!(
        hoglet(&url, &["healthcheck", "--url", "ftp://x/"])
            .status
            .code(),
        Some(2)
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    let gone = hoglet(
        &url,
        &["healthcheck", "--url", &ready_url, "--timeout-seconds", "2"],
    );
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("did not answer"),
        "{gone:?}"
    );
}

/// The default log says what a new operator needs: the version, the database (its password
/// hidden), the migrations applied or that none were due, where the secret key came from, and
/// the listening address.
#[test]
fn the_default_log_tells_how_the_server_started() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    let start = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hoglet"));
        command
            .env("HOGLET_DATABASE_URL", &url)
            .env_remove("HOGLET_LOG")
            .env_remove("RUST_LOG")
            .env_remove("HOGLET_SECRET_KEY");
        crate::helpers::BinaryServer::start(command)
    };
    let first = start();
    let base = first.base.clone();
    let log = first.stop();
    for expected in [
        format!("starting hoglet version=\"{}\"", env!("CARGO_PKG_VERSION")),
        format!("database={url}"),
        "applied migrations schema_version=".to_string(),
        "V1__initial".to_string(),
        "generated a secret key".to_string(),
        format!("listening on {base}"),
    ] {
        assert!(log.contains(&expected), "{expected:?} in {log}");
    }
    let again = start().stop();
    assert!(again.contains("database schema is current"), "{again}");
    assert!(again.contains("read the secret key"), "{again}");
    assert!(!again.contains("applied migrations"), "{again}");
}
