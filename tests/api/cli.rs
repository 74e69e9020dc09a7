//! The real `hoglet` binary: admin commands print one JSON object, errors go to stderr.

use std::process::{Command, Output};

use serde_json::Value;

fn hoglet(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoglet"))
        .args(args)
        .env("HOGLET_DATABASE_URL", database_url)
        .env_remove("HOGLET_LOG")
        .output()
        .expect("hoglet runs")
}

fn json_of(output: &Output) -> Value {
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
            "pw-123456",
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
    assert_eq!(bad_scope.status.code(), Some(1));

    assert!(hoglet(&url, &["migrate"]).status.success());
    assert!(hoglet(&url, &["migrate"]).status.success());
}
