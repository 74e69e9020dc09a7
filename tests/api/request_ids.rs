//! Request ids (`X-Request-Id`): taken from the client when well formed, generated otherwise,
//! echoed on every answer and carried by every log line of the request. Also the cookies a
//! login writes, attribute by attribute.

use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{BinaryServer, Db, PASSWORD, spawn_app, spawn_app_with};

const HEADER: &str = "x-request-id";

fn generated(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok_and(|u| u.get_version_num() == 7) && id.len() == 36
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_id_is_echoed_on_every_kind_of_answer() {
    let app = spawn_app_with(Db::Sqlite, |c| c.max_body_bytes = 1024).await;
    app.create_user("ids@example.com", false).await;
    let key = app.create_key("ids@example.com", &["user:read"]).await;

    let id = "trace-0af7651916cd43dd.8448_eb211c80319c";
    let with_id = |method: Method, path: &str| app.request(method, path).header(HEADER, id);

    let ok = app
        .send(with_id(Method::GET, "/api/users/@me/").bearer_auth(&key))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header(HEADER), Some(id));

    let unauthenticated = app.send(with_id(Method::GET, "/api/users/@me/")).await;
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(unauthenticated.header(HEADER), Some(id));

    let no_route = app.send(with_id(Method::GET, "/api/nothing-here")).await;
    assert_eq!(no_route.status, 404);
    assert_eq!(no_route.header(HEADER), Some(id));

    let too_large = app
        .send(
            with_id(Method::PATCH, "/api/users/@me/")
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(format!("{{\"first_name\": \"{}\"}}", "x".repeat(4096))),
        )
        .await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.header(HEADER), Some(id));

    let no_method = app.send(with_id(Method::DELETE, "/api/schema/")).await;
    assert_eq!(no_method.status, 405);
    assert_eq!(no_method.header(HEADER), Some(id));

    // The longest accepted.
    let longest = "a".repeat(64);
    let reply = app
        .send(
            app.request(Method::GET, "/_health")
                .header(HEADER, &longest),
        )
        .await;
    assert_eq!(reply.header(HEADER), Some(longest.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_id_is_replaced_and_a_missing_one_generated() {
    let app = spawn_app(Db::Sqlite).await;
    for bad in [
        "has space".to_string(),
        "quote\"d".to_string(),
        "semi;colon".to_string(),
        "x".repeat(65),
        "y".repeat(200),
        String::new(),
    ] {
        let reply = app
            .send(app.request(Method::GET, "/_health").header(HEADER, &bad))
            .await;
        let echoed = reply.header(HEADER).expect("an id");
        assert_ne!(echoed, bad);
        assert!(generated(echoed), "{bad:?} was replaced by {echoed}");
    }

    // Sent twice: neither is trusted.
    let reply = app
        .send(
            app.request(Method::GET, "/_health")
                .header(HEADER, "first")
                .header(HEADER, "second"),
        )
        .await;
    assert!(generated(reply.header(HEADER).unwrap()));

    // None sent: a fresh id for each request.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..5 {
        let reply = app.call(Method::GET, "/api/users/@me/", None, None).await;
        let id = reply.header(HEADER).expect("an id").to_string();
        assert!(generated(&id), "{id}");
        assert!(seen.insert(id), "ids repeat");
    }
}

/// The real binary, JSON logs on stderr: each line the request logs carries its id in the span.
#[test]
fn the_log_lines_of_a_request_carry_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ids.db").display());
    let hoglet = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hoglet"));
        command
            .env("HOGLET_DATABASE_URL", &url)
            .env("HOGLET_LOG_FORMAT", "json")
            .env("HOGLET_LOG", "warn,hoglet::access=info")
            .env_remove("HOGLET_REDIS_URL")
            .env_remove("HOGLET_BIND")
            .env_remove("HOGLET_SITE_URL");
        command
    };
    let migrated = hoglet().arg("migrate").output().unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let server = BinaryServer::start(hoglet());
    let base = server.base.clone();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sent, generated_id) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let sent = "log-me-42";
        let reply = client
            .get(format!("{base}/api/users/@me/"))
            .header(HEADER, sent)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 401);
        let reply = client
            .get(format!("{base}/api/users/@me/"))
            .header(HEADER, "not a good id")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 401);
        let generated_id = reply.headers()[HEADER].to_str().unwrap().to_string();
        (sent, generated_id)
    });

    // SIGTERM: the server stops gracefully and flushes its log.
    let stderr = server.stop();

    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for id in [sent, generated_id.as_str()] {
        let access: Vec<&Value> = lines
            .iter()
            .filter(|l| l["target"] == "hoglet::access" && l["request_id"] == id)
            .collect();
        assert_eq!(access.len(), 1, "one access line carries {id}: {stderr}");
        assert_eq!(access[0]["fields"]["status"], json!(401));
    }
    assert!(
        !stderr.contains("not a good id"),
        "a malformed id is never logged"
    );
}

/// Each `Set-Cookie` of a login, as a sorted list of lower-cased attributes (their order carries
/// no meaning), with the value of the cookie replaced by `*`.
async fn login_cookies(site_url: Option<&str>) -> Vec<Vec<String>> {
    let site_url = site_url.map(str::to_string);
    let app = spawn_app_with(Db::Sqlite, move |c| c.site_url = site_url).await;
    app.create_user("cookies@example.com", false).await;
    let response = reqwest::Client::new()
        .post(app.url("/api/login/"))
        .json(&json!({"email": "cookies@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut cookies: Vec<Vec<String>> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let mut parts: Vec<String> = v
                .to_str()
                .unwrap()
                .split("; ")
                .enumerate()
                .map(|(i, part)| match (i, part.split_once('=')) {
                    (0, Some((name, _))) => format!("{name}=*"),
                    _ => part.to_ascii_lowercase(),
                })
                .collect();
            parts.sort();
            parts
        })
        .collect();
    cookies.sort();
    cookies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookies_keep_their_attributes() {
    let strings = |rows: &[&[&str]]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    };
    assert_eq!(
        login_cookies(None).await,
        strings(&[
            &[
                "httponly",
                "max-age=1209600",
                "path=/",
                "samesite=lax",
                "sessionid=*"
            ],
            &[
                "max-age=31449600",
                "path=/",
                "posthog_csrftoken=*",
                "samesite=lax"
            ],
        ])
    );
    assert_eq!(
        login_cookies(Some("https://hoglet.example")).await,
        strings(&[
            &[
                "httponly",
                "max-age=1209600",
                "path=/",
                "samesite=lax",
                "secure",
                "sessionid=*"
            ],
            &[
                "max-age=31449600",
                "path=/",
                "posthog_csrftoken=*",
                "samesite=lax",
                "secure"
            ],
        ])
    );
}
