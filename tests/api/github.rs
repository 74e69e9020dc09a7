//! Personal GitHub integrations (auth spec Part B) against a fake GitHub, on both databases:
//! linking (start → browser callback), listing, repositories, branches, deletion, token lifecycle,
//! GitHub failures and `github_login`.

use hoglet::BuildOptions;
use hoglet::config::{Config, GithubConfig};
use hoglet::time::{Clock, SECOND};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::fake_github::{
    self, APP_SLUG, CLIENT_ID, CLIENT_SECRET, Canned, FakeGithub, PRIVATE_KEY_PEM,
};
use crate::helpers::{Db, PASSWORD, Reply, TestApp, TestDatabase, start};

const SITE: &str = "http://hoglet.example";
const START: &str = "/api/users/@me/integrations/github/start/";
const LIST: &str = "/api/users/@me/integrations/";
const WEB_SUCCESS: &str = "/settings/user-personal-integrations?github_link_success=1";
const CODE_SUCCESS: &str = "/account-connected/github-integration?provider=github";
const SERVER_ERROR: &str = "A server error occurred.";
const PKCS8_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/api/fixtures/github-app-test-key.pkcs8.pem"
);

/// A change to the configuration of one app.
type Adjust = Box<dyn FnOnce(&mut Config) + Send>;

fn web_error(reason: &str) -> String {
    format!("/settings/user-personal-integrations?github_link_error={reason}")
}

fn github_config(fake: &FakeGithub, private_key: Option<&str>) -> GithubConfig {
    GithubConfig {
        app_id: Some("424242".into()),
        app_slug: Some(APP_SLUG.into()),
        client_id: Some(CLIENT_ID.into()),
        client_secret: Some(SecretString::from(CLIENT_SECRET)),
        private_key: private_key.map(SecretString::from),
        api_url: fake.url.clone(),
        web_url: fake.url.clone(),
    }
}

/// An app whose GitHub App points at `fake`, on a manual clock.
async fn github_app(database: TestDatabase, fake: &FakeGithub, clock: &Clock) -> TestApp {
    github_app_with(database, fake.clone(), clock, |_| {}).await
}

async fn github_app_with(
    database: TestDatabase,
    fake: FakeGithub,
    clock: &Clock,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    start(
        database,
        move |c| {
            c.site_url = Some(SITE.into());
            c.github = github_config(&fake, Some(PRIVATE_KEY_PEM));
            adjust(c);
        },
        BuildOptions {
            clock: Some(clock.clone()),
        },
    )
    .await
}

/// A user with an organization (so a current team), a key and a logged-in browser.
async fn member(
    app: &TestApp,
    email: &str,
    scopes: &[&str],
) -> (crate::helpers::TestUser, String, Browser) {
    let (user, key) = app.user_with_key(email, false, scopes).await;
    let browser = Browser::new(app);
    browser.login(email, PASSWORD).await.assert_ok();
    (user, key, browser)
}

/// The decoded `state` parameter of an install or authorize URL.
fn state_of(url: &str) -> String {
    let url = reqwest::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.to_string())
        .expect("a state parameter")
}

async fn start_link(app: &TestApp, key: &str, body: Value) -> (Value, String) {
    let reply = app.call(Method::POST, START, Some(key), Some(body)).await;
    let json = reply.assert_ok().clone();
    let state = state_of(json["install_url"].as_str().unwrap());
    (json, state)
}

/// `GET /complete/github-link/` as GitHub sends the browser back; returns the redirect target.
async fn callback(browser: &Browser, params: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(params).unwrap();
    let reply = browser
        .get(&format!("/complete/github-link/?{query}"))
        .await;
    assert_eq!(reply.status, 302, "{}", reply.text);
    reply.header("location").unwrap().to_string()
}

/// Links `installation` for the key's user through the install flow (code `code`, GitHub login
/// `login`); returns the redirect target.
async fn link(
    app: &TestApp,
    fake: &FakeGithub,
    key: &str,
    browser: &Browser,
    code: &str,
    login: &str,
    installation: &str,
) -> String {
    let (_, state) = start_link(app, key, json!({})).await;
    fake.add_code(
        code,
        &format!("ghu_{code}"),
        9000 + code.len() as i64,
        login,
    );
    callback(
        browser,
        &[
            ("code", code),
            ("installation_id", installation),
            ("setup_action", "install"),
            ("state", &state),
        ],
    )
    .await
}

fn repos_path(installation: &str) -> String {
    format!("/api/users/@me/integrations/github/{installation}/repos/")
}

fn branches_path(installation: &str, query: &str) -> String {
    format!("/api/users/@me/integrations/github/{installation}/branches/?{query}")
}

#[track_caller]
fn assert_server_error(reply: &Reply) {
    reply.assert_error(500, "server_error", "error", SERVER_ERROR, None);
}

crate::db_tests!(
    link_list_repositories_branches_delete,
    callback_outcomes,
    start_rules_and_fast_paths,
    github_failures_never_lose_integrations,
    user_token_refresh,
    installation_token_lifecycle_and_app_configuration,
    github_login_resolution,
    authentication_scopes_and_routing,
    the_integrations_page_connects_and_disconnects_github,
    connect_and_disconnect_github_in_the_browser,
);

async fn link_list_repositories_branches_delete(db: Db) {
    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    let app = github_app(TestDatabase::create(db).await, &fake, &clock).await;
    let (user, key, browser) = member(&app, "ada@example.com", &["user:read", "user:write"]).await;
    fake.script(|s| {
        s.repositories = fake_github::repositories(150);
        let mut names: Vec<String> = (1..=250).map(|i| format!("feature-{i:03}")).collect();
        names.insert(137, "develop".into());
        s.branches.insert("octo-org/repo-1".into(), names);
        s.default_branches
            .insert("octo-org/repo-1".into(), "develop".into());
    });

    // start: the App install page, with a one-time state.
    let (started, state) = start_link(&app, &key, json!({})).await;
    assert_eq!(started["connect_flow"], "app_install");
    let install_url = started["install_url"].as_str().unwrap();
    let token = state
        .strip_prefix("token=")
        .and_then(|s| s.strip_suffix("&source=user_integration"))
        .unwrap();
    assert_eq!(token.len(), 48);
    assert!(token.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(
        install_url,
        format!(
            "{}/apps/{APP_SLUG}/installations/new?state=token%3D{token}%26source%3Duser_integration",
            fake.url
        )
    );
    assert!(
        fake.requests().is_empty(),
        "a user without integrations needs no GitHub call"
    );

    // The browser comes back from GitHub.
    fake.add_code("code-1", "ghu_one", 583231, "octocat");
    let params = [
        ("code", "code-1"),
        ("installation_id", "4242"),
        ("setup_action", "install"),
        ("state", state.as_str()),
    ];
    assert_eq!(callback(&browser, &params).await, WEB_SUCCESS);
    let exchange = fake.calls("/login/oauth/access_token");
    assert_eq!(exchange.len(), 1);
    assert_eq!(exchange[0].body["code"], "code-1");
    assert!(
        exchange[0].body.get("redirect_uri").is_none(),
        "the install flow sends no redirect_uri"
    );
    assert_eq!(
        fake.calls("/user")[0].authorization.as_deref(),
        Some("Bearer ghu_one")
    );
    let probe = fake.calls("/user/installations/4242/repositories");
    assert_eq!(probe.len(), 1);
    assert_eq!(probe[0].query, "per_page=1");
    assert_eq!(fake.count("/app/installations/4242"), 2, "info and token");
    assert_eq!(fake.minted(), 1);
    assert_eq!(fake.jwts_checked(), 2);
    // The state works once.
    assert_eq!(
        callback(&browser, &params).await,
        web_error("invalid_state")
    );

    // The list.
    let list = app.get(LIST, &key).await;
    let results = list.assert_ok()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1);
    let row = &results[0];
    assert_eq!(
        row.as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "id",
            "kind",
            "installation_id",
            "repository_selection",
            "account",
            "uses_shared_installation",
            "created_at"
        ]
    );
    assert_eq!(row["kind"], "github");
    assert_eq!(row["installation_id"], "4242");
    assert_eq!(row["repository_selection"], "all");
    assert_eq!(
        row["account"],
        json!({"type": "Organization", "name": "org-4242"})
    );
    assert_eq!(row["uses_shared_installation"], false);
    uuid::Uuid::parse_str(row["id"].as_str().unwrap()).unwrap();
    assert!(!list.text.contains("ghu_") && !list.text.contains("ghs_"));
    // `limit`/`offset` are accepted and ignored.
    let ignored = app.get(&format!("{LIST}?limit=0&offset=9"), &key).await;
    assert_eq!(ignored.assert_ok()["results"].as_array().unwrap().len(), 1);

    // Tokens at rest are sealed.
    let stored = app
        .store
        .user_integration(user.id, "github", "4242")
        .await
        .unwrap()
        .unwrap();
    assert!(stored.sensitive_config.starts_with("v1:"));
    for secret in ["ghu_one", "ghr_ghu_one", "ghs_installation1"] {
        assert!(!stored.sensitive_config.contains(secret));
        assert!(!stored.config.to_string().contains(secret));
        assert!(!format!("{stored:?}").contains(secret));
    }
    assert_eq!(
        stored.config["github_user"],
        json!({"login": "octocat", "id": 583231})
    );
    assert_eq!(stored.config["installation_id"], "4242");

    // The current team registers the same installation: it is shared now.
    let (_, team) = {
        let org = app.store.user_by_id(user.id).await.unwrap().unwrap();
        (org.current_organization_id, org.current_team_id.unwrap())
    };
    hoglet::admin::link_team_github(
        &app.store,
        hoglet::admin::LinkGithubArgs {
            team,
            installation_id: "4242".into(),
            created_by: None,
            github_login: None,
        },
    )
    .await
    .unwrap();
    let shared = app.get(LIST, &key).await;
    assert_eq!(
        shared.assert_ok()["results"][0]["uses_shared_installation"],
        true
    );

    // Repositories: two pages fetched once, then served from the snapshot.
    let page = app
        .get(&format!("{}?limit=2", repos_path("4242")), &key)
        .await;
    assert_eq!(
        page.assert_ok(),
        &json!({"repositories": [
            {"id": 1001, "name": "repo-1", "full_name": "octo-org/repo-1", "default_branch": "main",
             "language": "Rust", "pushed_at": "2024-05-01T12:00:00Z", "private": false,
             "archived": false, "can_push": true},
            {"id": 1002, "name": "repo-2", "full_name": "octo-org/repo-2", "default_branch": "main",
             "language": "Rust", "pushed_at": "2024-05-01T12:00:00Z", "private": true,
             "archived": false, "can_push": true}],
            "has_more": true})
    );
    let pages = fake.calls("/installation/repositories");
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0].query, "page=1&per_page=100");
    assert_eq!(pages[1].query, "page=2&per_page=100");
    assert_eq!(
        pages[0].authorization.as_deref(),
        Some("Bearer ghs_installation1")
    );
    let searched = app
        .get(
            &format!("{}?search=%20REPO-14%20&limit=500", repos_path("4242")),
            &key,
        )
        .await;
    let names: Vec<&str> = searched.assert_ok()["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "repo-14", "repo-140", "repo-141", "repo-142", "repo-143", "repo-144", "repo-145",
            "repo-146", "repo-147", "repo-148", "repo-149"
        ]
    );
    assert_eq!(searched.json["has_more"], false);
    let tail = app
        .get(&format!("{}?offset=148&limit=5", repos_path("4242")), &key)
        .await;
    assert_eq!(
        tail.assert_ok()["repositories"].as_array().unwrap().len(),
        2
    );
    assert_eq!(tail.json["has_more"], false);
    let beyond = app
        .get(&format!("{}?offset=1000", repos_path("4242")), &key)
        .await;
    assert_eq!(
        beyond.assert_ok(),
        &json!({"repositories": [], "has_more": false})
    );
    assert_eq!(fake.count("/installation/repositories"), 2, "cache hits");
    for (query, code, detail, attr) in [
        (
            "limit=501",
            "max_value",
            "Ensure this value is less than or equal to 500.",
            "limit",
        ),
        (
            "limit=0",
            "min_value",
            "Ensure this value is greater than or equal to 1.",
            "limit",
        ),
        (
            "limit=abc",
            "invalid_input",
            "A valid integer is required.",
            "limit",
        ),
        (
            "offset=-1",
            "min_value",
            "Ensure this value is greater than or equal to 0.",
            "offset",
        ),
    ] {
        app.get(&format!("{}?{query}", repos_path("4242")), &key)
            .await
            .assert_error(400, "validation_error", code, detail, Some(attr));
    }
    // Parameters are checked before the installation is looked up.
    app.get(&format!("{}?limit=501", repos_path("777")), &key)
        .await
        .assert_error(
            400,
            "validation_error",
            "max_value",
            "Ensure this value is less than or equal to 500.",
            Some("limit"),
        );

    // Refresh: within 30 s of the sync the stored list is returned without asking GitHub.
    let refresh_path = "/api/users/@me/integrations/github/4242/repos/refresh/";
    let cooled = app.call(Method::POST, refresh_path, Some(&key), None).await;
    assert_eq!(
        cooled.assert_ok()["repositories"].as_array().unwrap().len(),
        150
    );
    assert_eq!(
        cooled.json.as_object().unwrap().len(),
        1,
        "only `repositories`"
    );
    assert_eq!(fake.count("/installation/repositories"), 2);
    fake.script(|s| s.repositories = fake_github::repositories(3));
    clock.advance(31 * SECOND);
    let refreshed = app.call(Method::POST, refresh_path, Some(&key), None).await;
    assert_eq!(
        refreshed.assert_ok()["repositories"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(fake.count("/installation/repositories"), 3);
    let read = app.get(&repos_path("4242"), &key).await;
    assert_eq!(
        read.assert_ok()["repositories"].as_array().unwrap().len(),
        3
    );
    assert_eq!(fake.count("/installation/repositories"), 3);

    // Branches: every page through `Link`, the default first, cached ten minutes.
    let branches = app
        .get(&branches_path("4242", "repo=octo-org/repo-1&limit=3"), &key)
        .await;
    assert_eq!(
        branches.assert_ok(),
        &json!({"branches": ["develop", "feature-001", "feature-002"],
                "default_branch": "develop", "has_more": true})
    );
    let branch_pages = fake.calls("/repos/octo-org/repo-1/branches");
    assert_eq!(
        branch_pages
            .iter()
            .map(|r| r.query.as_str())
            .collect::<Vec<_>>(),
        [
            "per_page=100&page=1",
            "per_page=100&page=2",
            "per_page=100&page=3"
        ]
    );
    assert_eq!(
        fake.calls("/repos/octo-org/repo-1").len(),
        4,
        "three pages and the repository"
    );
    let all = app
        .get(
            &branches_path("4242", "repo=Octo-Org/Repo-1&limit=1000"),
            &key,
        )
        .await;
    let names = all.assert_ok()["branches"].as_array().unwrap();
    assert_eq!(names.len(), 251);
    assert_eq!(names[0], "develop");
    assert_eq!(all.json["has_more"], false);
    let searched = app
        .get(
            &branches_path(
                "4242",
                "repo=octo-org/repo-1&search=FEATURE-24&offset=1&limit=2",
            ),
            &key,
        )
        .await;
    assert_eq!(
        searched.assert_ok(),
        &json!({"branches": ["feature-241", "feature-242"], "default_branch": "develop", "has_more": true})
    );
    assert_eq!(
        fake.count("/repos/octo-org/repo-1"),
        4,
        "served from the cache"
    );
    clock.advance(601 * SECOND);
    app.get(&branches_path("4242", "repo=octo-org/repo-1"), &key)
        .await
        .assert_ok();
    assert_eq!(
        fake.count("/repos/octo-org/repo-1"),
        7,
        "stale after ten minutes: three pages again, the default branch still cached"
    );
    for (query, code, detail, attr) in [
        ("", "required", "This field is required.", Some("repo")),
        (
            "repo=",
            "blank",
            "This field may not be blank.",
            Some("repo"),
        ),
        (
            "repo=octo-org",
            "invalid_input",
            "repo must be in owner/repo format",
            None,
        ),
        (
            "repo=a/b/c",
            "invalid_input",
            "repo must be in owner/repo format",
            None,
        ),
        (
            "repo=../x",
            "invalid_input",
            "repo must be in owner/repo format",
            None,
        ),
        (
            "repo=a/b&limit=1001",
            "max_value",
            "Ensure this value is less than or equal to 1000.",
            Some("limit"),
        ),
        (
            "repo=a/b&offset=x",
            "invalid_input",
            "A valid integer is required.",
            Some("offset"),
        ),
    ] {
        app.get(&branches_path("4242", query), &key)
            .await
            .assert_error(400, "validation_error", code, detail, attr);
    }
    app.get(&branches_path("777", "repo=a/b"), &key)
        .await
        .assert_error(
            404,
            "invalid_request",
            "not_found",
            "No GitHub integration found for this installation.",
            None,
        );

    // Delete.
    let path = "/api/users/@me/integrations/github/4242/";
    let deleted = app.call(Method::DELETE, path, Some(&key), None).await;
    assert_eq!((deleted.status.as_u16(), deleted.text.as_str()), (204, ""));
    assert!(
        app.store
            .user_integration(user.id, "github", "4242")
            .await
            .unwrap()
            .is_none(),
        "the row and its tokens are gone"
    );
    assert_eq!(
        app.get(LIST, &key).await.assert_ok(),
        &json!({"results": []})
    );
    for reply in [
        app.call(Method::DELETE, path, Some(&key), None).await,
        app.get(&repos_path("4242"), &key).await,
        app.call(Method::POST, refresh_path, Some(&key), None).await,
    ] {
        reply.assert_error(
            404,
            "invalid_request",
            "not_found",
            "No GitHub integration found for this installation.",
            None,
        );
    }
    // Linked in the browser, unlinked with the key: both recorded once, with their actor; the
    // second (refused) delete records nothing.
    let log = app
        .store
        .activity(&hoglet::store::ActivityQuery {
            user_id: user.id,
            activity: None,
            before: None,
            after: None,
            limit: 100,
        })
        .await
        .unwrap();
    let github: Vec<_> = log
        .iter()
        .filter(|e| e.activity.starts_with("github_integration_"))
        .map(|e| {
            (
                e.activity.as_str(),
                e.actor.kind.as_str(),
                e.detail["installation_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        github,
        [
            (
                "github_integration_unlinked",
                "personal_api_key",
                json!("4242")
            ),
            ("github_integration_linked", "user", json!("4242")),
        ]
    );
    fake.assert_clean();
}

async fn callback_outcomes(db: Db) {
    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    let app = github_app(TestDatabase::create(db).await, &fake, &clock).await;
    let (_, key, browser) = member(&app, "cb@example.com", &["user:write"]).await;
    let (_, other_key, other_browser) = member(&app, "other@example.com", &["user:write"]).await;

    // Without a session: a bare JSON 401, not the envelope.
    let anonymous = app
        .call(
            Method::GET,
            "/complete/github-link/?code=x&state=y",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.json,
        json!({"detail": "Authentication credentials were not provided."})
    );

    let (_, state) = start_link(&app, &key, json!({})).await;
    assert_eq!(
        callback(&browser, &[("error", "access_denied"), ("state", &state)]).await,
        web_error("access_denied")
    );
    assert_eq!(
        callback(&browser, &[("error", "redirect_uri_mismatch")]).await,
        web_error("github_oauth_error")
    );
    assert_eq!(
        callback(&browser, &[("state", &state)]).await,
        web_error("missing_params")
    );
    assert_eq!(
        callback(&browser, &[("code", "c")]).await,
        web_error("missing_params")
    );
    assert_eq!(
        callback(
            &browser,
            &[
                ("code", "c"),
                ("state", "token=unknown&source=user_integration")
            ]
        )
        .await,
        web_error("invalid_state")
    );
    // Another user's state is refused and stays usable by its owner.
    assert_eq!(
        callback(
            &other_browser,
            &[("code", "c"), ("state", &state), ("installation_id", "1")]
        )
        .await,
        web_error("invalid_state")
    );
    assert_eq!(
        callback(&browser, &[("code", "c"), ("state", &state)]).await,
        web_error("missing_params"),
        "the install flow needs an installation_id"
    );
    // (that attempt consumed the state)
    assert_eq!(
        callback(
            &browser,
            &[("code", "c"), ("state", &state), ("installation_id", "1")]
        )
        .await,
        web_error("invalid_state")
    );

    // States expire after ten minutes.
    let (_, expiring) = start_link(&app, &key, json!({})).await;
    clock.advance(601 * SECOND);
    assert_eq!(
        callback(
            &browser,
            &[
                ("code", "c"),
                ("state", &expiring),
                ("installation_id", "1")
            ]
        )
        .await,
        web_error("invalid_state")
    );

    let attempt = |installation: &'static str, code: &'static str| {
        let app = &app;
        let key = &key;
        let browser = &browser;
        async move {
            let (_, state) = start_link(app, key, json!({})).await;
            callback(
                browser,
                &[
                    ("code", code),
                    ("installation_id", installation),
                    ("state", &state),
                ],
            )
            .await
        }
    };
    assert_eq!(
        attempt("1", "unknown-code").await,
        web_error("exchange_failed")
    );
    fake.script(|s| {
        s.codes
            .insert("no-user".into(), json!({"access_token": "ghu_nobody"}));
    });
    assert_eq!(attempt("1", "no-user").await, web_error("exchange_failed"));
    fake.add_code("good", "ghu_good", 77, "good-user");
    // The id is checked after the code exchange (B.5 step 8).
    assert_eq!(
        attempt("12ab", "good").await,
        web_error("invalid_installation_id")
    );
    assert_eq!(
        attempt("123456789012345678901", "good").await,
        web_error("invalid_installation_id")
    );
    fake.script(|s| {
        s.probe_status.insert("404".into(), 404);
        s.probe_status.insert("500".into(), 500);
    });
    assert_eq!(
        attempt("404", "good").await,
        web_error("installation_not_authorized")
    );
    assert_eq!(
        attempt("500", "good").await,
        web_error("installation_verify_failed")
    );
    fake.script(|s| {
        s.once
            .push(("/app/installations/31".into(), Canned::new(500, json!({}))))
    });
    assert_eq!(
        attempt("31", "good").await,
        web_error("installation_fetch_failed")
    );
    fake.script(|s| {
        s.once.push((
            "/app/installations/32/access_tokens".into(),
            Canned::new(500, json!({"message": "boom"})),
        ))
    });
    assert_eq!(
        attempt("32", "good").await,
        web_error("installation_token_failed")
    );
    fake.script(|s| {
        s.once.push((
            "/app/installations/33/access_tokens".into(),
            Canned::new(201, json!({"expires_at": "2030-01-01T00:00:00Z"})),
        ))
    });
    assert_eq!(
        attempt("33", "good").await,
        web_error("installation_token_failed")
    );
    assert_eq!(
        app.get(LIST, &key).await.assert_ok(),
        &json!({"results": []})
    );

    // The whole state value may be the bare token.
    let (_, state) = start_link(&app, &key, json!({})).await;
    let bare = state
        .strip_prefix("token=")
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        callback(
            &browser,
            &[
                ("code", "good"),
                ("installation_id", "34"),
                ("state", &bare)
            ]
        )
        .await,
        WEB_SUCCESS
    );
    // Reconnecting the same installation refreshes the row instead of duplicating it.
    assert_eq!(attempt("34", "good").await, WEB_SUCCESS);
    let list = app.get(LIST, &key).await;
    assert_eq!(list.assert_ok()["results"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get(LIST, &other_key).await.assert_ok(),
        &json!({"results": []})
    );
    fake.assert_clean();
}

async fn start_rules_and_fast_paths(db: Db) {
    // Without any GitHub App configuration: the spec's 400s, never a 500.
    let bare = crate::helpers::spawn_app(db).await;
    let (_, bare_key) = bare
        .user_with_key("bare@example.com", false, &["user:write"])
        .await;
    bare.call(Method::POST, START, Some(&bare_key), Some(json!({})))
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_input",
            "GitHub App is not configured on this instance (missing GITHUB_APP_SLUG).",
            None,
        );
    bare.call(
        Method::POST,
        START,
        Some(&bare_key),
        Some(json!({"connect_from": "posthog_code"})),
    )
    .await
    .assert_error(
        400,
        "validation_error",
        "invalid_input",
        "GitHub App client ID is not configured (GITHUB_APP_CLIENT_ID missing).",
        None,
    );
    drop(bare);

    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    let app = github_app(TestDatabase::create(db).await, &fake, &clock).await;
    let (user, key, browser) = member(&app, "code@example.com", &["user:write"]).await;
    let record = app.user_record(user.id).await;
    let team = record.current_team_id.unwrap();
    let org = record.current_organization_id.unwrap().to_string();

    for (team_id, detail) in [
        (json!("abc"), "team_id must be an integer"),
        (json!(1.5), "team_id must be an integer"),
        (json!([1]), "team_id must be an integer"),
        (
            json!(999_999),
            "Invalid or inaccessible team_id for this user.",
        ),
    ] {
        app.call(
            Method::POST,
            START,
            Some(&key),
            Some(json!({"team_id": team_id})),
        )
        .await
        .assert_error(400, "validation_error", "invalid_input", detail, None);
    }
    let (plain, _) = start_link(&app, &key, json!({"team_id": "", "connect_from": "web"})).await;
    assert_eq!(plain["connect_flow"], "app_install");
    let (plain, _) = start_link(&app, &key, json!({"team_id": team.to_string()})).await;
    assert_eq!(plain["connect_flow"], "app_install");

    // PostHog Code, the team has an installation the user has not linked: OAuth authorize.
    hoglet::admin::link_team_github(
        &app.store,
        hoglet::admin::LinkGithubArgs {
            team,
            installation_id: "4242".into(),
            created_by: None,
            github_login: None,
        },
    )
    .await
    .unwrap();
    let (authorize, state) = start_link(&app, &key, json!({"connect_from": "posthog_code"})).await;
    assert_eq!(authorize["connect_flow"], "oauth_authorize");
    let token = &state["token=".len()..state.find('&').unwrap()];
    assert_eq!(
        authorize["install_url"],
        format!(
            "{}/login/oauth/authorize?client_id={CLIENT_ID}&redirect_uri=http%3A%2F%2Fhoglet.example%2Fcomplete%2Fgithub-link%2F&state=token%3D{token}%26source%3Duser_integration",
            fake.url
        )
    );
    fake.add_code("code-a", "ghu_a", 1, "coder");
    // The installation id comes from the server-side state, not the query.
    let target = callback(
        &browser,
        &[
            ("code", "code-a"),
            ("state", &state),
            ("installation_id", "999"),
        ],
    )
    .await;
    assert_eq!(target, CODE_SUCCESS);
    let exchange = fake.calls("/login/oauth/access_token");
    assert_eq!(
        exchange[0].body["redirect_uri"],
        "http://hoglet.example/complete/github-link/"
    );
    assert_eq!(fake.count("/user/installations/4242/repositories"), 1);
    let list = app.get(LIST, &key).await;
    assert_eq!(list.assert_ok()["results"][0]["installation_id"], "4242");
    assert_eq!(list.json["results"][0]["uses_shared_installation"], true);

    // Linked already: falls through to the "nothing left to link" check with the user token.
    fake.script(|s| s.user_installations = vec![4242]);
    app.call(
        Method::POST,
        START,
        Some(&key),
        Some(json!({"connect_from": "posthog_code"})),
    )
    .await
    .assert_error(
        400,
        "validation_error",
        "invalid_input",
        "All GitHub App installations accessible to your account are already linked.",
        None,
    );
    let check = fake.calls("/user/installations");
    assert_eq!(check.last().unwrap().query, "per_page=100");
    assert_eq!(
        check.last().unwrap().authorization.as_deref(),
        Some("Bearer ghu_a")
    );
    fake.script(|s| s.user_installations = vec![4242, 5151]);
    let (more, _) = start_link(&app, &key, json!({})).await;
    assert_eq!(more["connect_flow"], "app_install");
    // GitHub failing the check means "unknown": the flow goes on.
    fake.script(|s| {
        s.always
            .push(("/user/installations".into(), Canned::new(502, json!({}))))
    });
    let (unknown, _) = start_link(&app, &key, json!({})).await;
    assert_eq!(unknown["connect_flow"], "app_install");
    fake.script(|s| s.always.clear());

    // PostHog Code on a team without an installation: discover the user's installations.
    let other_team = app.create_team(&org, "Second").await;
    let (discover, state) = start_link(
        &app,
        &key,
        json!({"connect_from": "posthog_code", "team_id": other_team}),
    )
    .await;
    assert_eq!(discover["connect_flow"], "oauth_discover");
    assert!(
        discover["install_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/login/oauth/authorize?client_id=", fake.url))
    );
    fake.add_code("code-b", "ghu_b", 1, "coder");
    fake.script(|s| s.user_installations = vec![5151, 5252]);
    assert_eq!(
        callback(&browser, &[("code", "code-b"), ("state", &state)]).await,
        CODE_SUCCESS
    );
    assert_eq!(
        fake.count("/user/installations/5151"),
        0,
        "discovered: no ownership probe"
    );
    let ids: Vec<String> = app.get(LIST, &key).await.assert_ok()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["installation_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["4242", "5151", "5252"]);

    // Discovery finding nothing sends the browser to the install page with a fresh state.
    let (_, state) = start_link(
        &app,
        &key,
        json!({"connect_from": "posthog_code", "team_id": other_team}),
    )
    .await;
    fake.add_code("code-c", "ghu_c", 1, "coder");
    fake.script(|s| s.user_installations = vec![]);
    let install = callback(&browser, &[("code", "code-c"), ("state", &state)]).await;
    assert!(
        install.starts_with(&format!(
            "{}/apps/{APP_SLUG}/installations/new?state=token%3D",
            fake.url
        )),
        "{install}"
    );
    let fresh = state_of(&install);
    fake.add_code("code-d", "ghu_d", 1, "coder");
    assert_eq!(
        callback(
            &browser,
            &[
                ("code", "code-d"),
                ("state", &fresh),
                ("installation_id", "6161")
            ]
        )
        .await,
        CODE_SUCCESS,
        "the fresh state keeps connect_from"
    );
    // Failures in the PostHog Code flow go to its page.
    let (_, state) = start_link(
        &app,
        &key,
        json!({"connect_from": "posthog_code", "team_id": other_team}),
    )
    .await;
    assert_eq!(
        callback(&browser, &[("error", "access_denied"), ("state", &state)]).await,
        "/account-connected/github-integration?provider=github&error=access_denied"
    );
    assert_eq!(
        callback(&browser, &[("code", "unknown"), ("state", &state)]).await,
        "/account-connected/github-integration?provider=github&error=exchange_failed"
    );
    fake.assert_clean();
}

async fn github_failures_never_lose_integrations(db: Db) {
    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    let app = github_app(TestDatabase::create(db).await, &fake, &clock).await;
    let (_, key, browser) = member(&app, "down@example.com", &["user:read", "user:write"]).await;
    assert_eq!(
        link(&app, &fake, &key, &browser, "c1", "down", "900").await,
        WEB_SUCCESS
    );
    let refresh = "/api/users/@me/integrations/github/900/repos/refresh/";

    // No snapshot yet: a failed sync is an error (PostHog's 500).
    fake.script(|s| {
        s.repositories = fake_github::repositories(2);
        s.always.push((
            "/installation/repositories".into(),
            Canned::new(503, json!({})),
        ));
    });
    assert_server_error(&app.get(&repos_path("900"), &key).await);
    assert_eq!(
        fake.count("/installation/repositories"),
        2,
        "a GET is retried once on 503"
    );
    fake.script(|s| {
        s.always.clear();
        s.always.push((
            "/installation/repositories".into(),
            Canned::new(200, Value::String("<html>not json</html>".into())),
        ));
    });
    assert_server_error(&app.get(&repos_path("900"), &key).await);
    fake.script(|s| {
        s.always.clear();
        s.always.push((
            "/installation/repositories".into(),
            Canned::new(200, json!({"total_count": 0})),
        ));
    });
    assert_server_error(&app.get(&repos_path("900"), &key).await);

    // With a snapshot, reads serve it stale; a forced refresh reports the failure.
    fake.script(|s| s.always.clear());
    let fresh = app.get(&repos_path("900"), &key).await;
    assert_eq!(
        fresh.assert_ok()["repositories"].as_array().unwrap().len(),
        2
    );
    fake.script(|s| {
        s.repositories = fake_github::repositories(5);
        s.always.push((
            "/installation/repositories".into(),
            Canned::new(500, json!({})),
        ));
    });
    clock.advance(3601 * SECOND);
    let before = fake.count("/installation/repositories");
    let stale = app.get(&repos_path("900"), &key).await;
    assert_eq!(
        stale.assert_ok()["repositories"].as_array().unwrap().len(),
        2
    );
    assert!(
        fake.count("/installation/repositories") > before,
        "a sync was attempted"
    );
    assert_server_error(&app.call(Method::POST, refresh, Some(&key), None).await);
    fake.script(|s| {
        s.always.clear();
        s.always.push((
            "/installation/repositories".into(),
            Canned::new(
                403,
                json!({"message": "API rate limit exceeded for installation."}),
            ),
        ));
    });
    assert_server_error(&app.call(Method::POST, refresh, Some(&key), None).await);
    let still = app.get(&repos_path("900"), &key).await;
    assert_eq!(
        still.assert_ok()["repositories"].as_array().unwrap().len(),
        2
    );
    fake.script(|s| s.always.clear());

    // Branches: a failed listing answers an empty list that is not cached.
    fake.script(|s| {
        s.branches
            .insert("octo-org/repo-1".into(), vec!["main".into(), "dev".into()]);
        s.once.push((
            "/repos/octo-org/repo-1/branches".into(),
            Canned::new(500, json!({})),
        ));
    });
    let empty = app
        .get(&branches_path("900", "repo=octo-org/repo-1"), &key)
        .await;
    assert_eq!(
        empty.assert_ok(),
        &json!({"branches": [], "default_branch": "main", "has_more": false})
    );
    let listed = app
        .get(&branches_path("900", "repo=octo-org/repo-1"), &key)
        .await;
    assert_eq!(
        listed.assert_ok(),
        &json!({"branches": ["main", "dev"], "default_branch": "main", "has_more": false})
    );
    // A failing refresh later serves the stale entry instead of an empty one.
    clock.advance(601 * SECOND);
    fake.script(|s| {
        s.always.push((
            "/repos/octo-org/repo-1/branches".into(),
            Canned::new(200, Value::String("garbage".into())),
        ))
    });
    let stale = app
        .get(&branches_path("900", "repo=octo-org/repo-1"), &key)
        .await;
    assert_eq!(stale.assert_ok()["branches"], json!(["main", "dev"]));
    // A rate limit with nothing cached is an error.
    fake.script(|s| {
        s.always.clear();
        s.always.push((
            "/repos/octo-org/other/branches".into(),
            Canned::new(
                429,
                json!({"message": "You have exceeded a secondary rate limit"}),
            ),
        ));
    });
    assert_server_error(
        &app.get(&branches_path("900", "repo=octo-org/other"), &key)
            .await,
    );
    fake.script(|s| s.always.clear());

    // Through all of it the integration stayed.
    let list = app.get(LIST, &key).await;
    assert_eq!(list.assert_ok()["results"].as_array().unwrap().len(), 1);
    fake.assert_clean();
}

async fn user_token_refresh(db: Db) {
    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    let app = github_app(TestDatabase::create(db).await, &fake, &clock).await;
    let (user, key, browser) = member(&app, "tok@example.com", &["user:write"]).await;
    let five_hours = 5 * 3600 * SECOND;
    fake.script(|s| s.user_installations = vec![700]);

    // A refresh GitHub refuses for good deletes the row; the flow goes on.
    assert_eq!(
        link(&app, &fake, &key, &browser, "r1", "tok", "700").await,
        WEB_SUCCESS
    );
    clock.advance(five_hours);
    fake.script(|s| s.refresh = Some(json!({"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired."})));
    let (started, _) = start_link(&app, &key, json!({})).await;
    assert_eq!(started["connect_flow"], "app_install");
    assert_eq!(fake.refreshed(), 1);
    let refresh_call = fake.calls("/login/oauth/access_token").pop().unwrap();
    assert_eq!(refresh_call.body["grant_type"], "refresh_token");
    assert_eq!(refresh_call.body["refresh_token"], "ghr_ghu_r1");
    assert_eq!(
        app.get(LIST, &key).await.assert_ok(),
        &json!({"results": []})
    );

    // Any other refusal keeps it.
    assert_eq!(
        link(&app, &fake, &key, &browser, "r2", "tok", "700").await,
        WEB_SUCCESS
    );
    clock.advance(five_hours);
    fake.script(|s| s.refresh = Some(json!({"error": "temporarily_unavailable"})));
    let (started, _) = start_link(&app, &key, json!({})).await;
    assert_eq!(started["connect_flow"], "app_install");
    fake.script(|s| {
        s.once.push((
            "/login/oauth/access_token".into(),
            Canned::new(500, json!({})),
        ))
    });
    start_link(&app, &key, json!({})).await;
    assert_eq!(
        fake.refreshed(),
        2,
        "the scripted 500 answered the third refresh"
    );
    assert_eq!(
        app.get(LIST, &key).await.assert_ok()["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A successful refresh stores the new tokens, which the check then uses.
    fake.script(|s| s.refresh = None);
    let before = app
        .store
        .user_integration(user.id, "github", "700")
        .await
        .unwrap()
        .unwrap();
    app.call(Method::POST, START, Some(&key), Some(json!({})))
        .await
        .assert_error(
            400,
            "validation_error",
            "invalid_input",
            "All GitHub App installations accessible to your account are already linked.",
            None,
        );
    let check = fake.calls("/user/installations").pop().unwrap();
    assert!(
        check
            .authorization
            .unwrap()
            .starts_with("Bearer ghu_refreshed")
    );
    let after = app
        .store
        .user_integration(user.id, "github", "700")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(before.sensitive_config, after.sensitive_config);
    assert_eq!(
        after.config["user_token_refreshed_at"].as_i64().unwrap(),
        clock.now_secs()
    );
    // Now fresh: the next start needs no refresh.
    let refreshed = fake.refreshed();
    app.call(Method::POST, START, Some(&key), Some(json!({})))
        .await;
    assert_eq!(fake.refreshed(), refreshed);

    // A refresh token past its expiry deletes the row without asking GitHub.
    clock.advance(200 * 86_400 * SECOND);
    let (started, _) = start_link(&app, &key, json!({})).await;
    assert_eq!(started["connect_flow"], "app_install");
    assert_eq!(fake.refreshed(), refreshed);
    assert_eq!(
        app.get(LIST, &key).await.assert_ok(),
        &json!({"results": []})
    );
    fake.assert_clean();
}

async fn installation_token_lifecycle_and_app_configuration(db: Db) {
    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    let database = TestDatabase::create(db).await;
    let shared = [database.shared(), database.shared(), database.shared()];
    // The private key as the path of a PKCS#8 file.
    let app = github_app_with(database, fake.clone(), &clock, |c| {
        c.github.private_key = Some(SecretString::from(PKCS8_PATH));
    })
    .await;
    let (_, key, browser) = member(&app, "inst@example.com", &["user:write"]).await;
    fake.script(|s| s.repositories = fake_github::repositories(1));
    assert_eq!(
        link(&app, &fake, &key, &browser, "i1", "inst", "800").await,
        WEB_SUCCESS
    );
    assert_eq!(fake.minted(), 1);
    let refresh = "/api/users/@me/integrations/github/800/repos/refresh/";

    // A 401 mints a new token and retries once.
    fake.revoke_installation_tokens();
    app.call(Method::POST, refresh, Some(&key), None)
        .await
        .assert_ok();
    assert_eq!(fake.minted(), 2);
    let calls = fake.calls("/installation/repositories");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some("Bearer ghs_installation1")
    );
    assert_eq!(
        calls[1].authorization.as_deref(),
        Some("Bearer ghs_installation2")
    );

    // Past half its life (30 of 60 minutes; the fake counts in real time, so with a margin) the
    // token is replaced before use.
    clock.advance(1900 * SECOND);
    app.call(Method::POST, refresh, Some(&key), None)
        .await
        .assert_ok();
    assert_eq!(fake.minted(), 3);
    assert_eq!(
        fake.calls("/installation/repositories")
            .pop()
            .unwrap()
            .authorization
            .as_deref(),
        Some("Bearer ghs_installation3")
    );
    // A failed proactive refresh is not fatal: the stored token is used.
    clock.advance(1900 * SECOND);
    fake.script(|s| {
        s.once.push((
            "/app/installations/800/access_tokens".into(),
            Canned::new(500, json!({})),
        ))
    });
    app.call(Method::POST, refresh, Some(&key), None)
        .await
        .assert_ok();
    assert_eq!(
        fake.calls("/installation/repositories")
            .pop()
            .unwrap()
            .authorization
            .as_deref(),
        Some("Bearer ghs_installation3")
    );
    // A 401 whose refresh fails is an error.
    clock.advance(31 * SECOND);
    fake.revoke_installation_tokens();
    fake.script(|s| {
        for _ in 0..2 {
            s.once.push((
                "/app/installations/800/access_tokens".into(),
                Canned::new(404, json!({})),
            ));
        }
    });
    assert_server_error(&app.call(Method::POST, refresh, Some(&key), None).await);
    fake.assert_clean();

    // The same database served by instances whose App configuration cannot sign.
    let [no_key, no_issuer, bad_key] = shared;
    let configs: [(TestDatabase, Adjust, &str); 3] = [
        (
            no_key,
            Box::new(|c: &mut Config| c.github.private_key = None),
            "GITHUB_APP_PRIVATE_KEY is not configured",
        ),
        (
            no_issuer,
            Box::new(|c: &mut Config| {
                c.github.client_id = None;
                c.github.app_id = None;
            }),
            "GITHUB_APP_CLIENT_ID is not configured",
        ),
        (
            bad_key,
            Box::new(|c: &mut Config| {
                c.github.private_key = Some(SecretString::from(
                    "-----BEGIN RSA PRIVATE KEY-----\\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\\n-----END RSA PRIVATE KEY-----",
                ))
            }),
            "Failed to create GitHub App JWT token. Please check your GITHUB_APP_PRIVATE_KEY format.",
        ),
    ];
    for (database, adjust, detail) in configs {
        clock.advance(31 * SECOND);
        let other = github_app_with(database, fake.clone(), &clock, adjust).await;
        fake.revoke_installation_tokens();
        other
            .call(Method::POST, refresh, Some(&key), None)
            .await
            .assert_error(400, "validation_error", "invalid_input", detail, None);
        // The integration is kept.
        assert_eq!(
            other.get(LIST, &key).await.assert_ok()["results"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}

async fn github_login_resolution(db: Db) {
    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    // The private key with literal `\n` sequences, as env files often carry it.
    let escaped = PRIVATE_KEY_PEM.trim().replace('\n', "\\n");
    let app = github_app_with(
        TestDatabase::create(db).await,
        fake.clone(),
        &clock,
        move |c| {
            c.github.private_key = Some(SecretString::from(escaped));
        },
    )
    .await;
    let (user, key, browser) =
        member(&app, "login@example.com", &["user:read", "user:write"]).await;
    let (_, staff_key) = app
        .user_with_key("root@example.com", true, &["user:read"])
        .await;
    let (_, other_key) = app
        .user_with_key("else@example.com", false, &["user:read"])
        .await;
    let path = "/api/users/@me/github_login/";
    assert_eq!(
        app.get(path, &key).await.assert_ok(),
        &json!({"github_login": null})
    );

    // A project integration the user connected.
    let team = app.user_record(user.id).await.current_team_id.unwrap();
    hoglet::admin::link_team_github(
        &app.store,
        hoglet::admin::LinkGithubArgs {
            team,
            installation_id: "55".into(),
            created_by: Some("login@example.com".into()),
            github_login: Some("Team-Login".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        app.get(path, &key).await.assert_ok(),
        &json!({"github_login": "Team-Login"})
    );

    // A personal integration wins; the newest one first.
    assert_eq!(
        link(&app, &fake, &key, &browser, "l1", "First-Login", "61").await,
        WEB_SUCCESS
    );
    assert_eq!(
        app.get(path, &key).await.assert_ok()["github_login"],
        "First-Login"
    );
    clock.advance(SECOND);
    assert_eq!(
        link(&app, &fake, &key, &browser, "l2", "second-login", "62").await,
        WEB_SUCCESS
    );
    assert_eq!(
        app.get(path, &key).await.assert_ok()["github_login"],
        "second-login"
    );

    // Staff may ask about anyone by uuid; others only about themselves.
    let by_uuid = format!("/api/users/{}/github_login/", user.uuid);
    assert_eq!(
        app.get(&by_uuid, &staff_key).await.assert_ok()["github_login"],
        "second-login"
    );
    app.get(&by_uuid, &other_key).await.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        "As a non-staff user you're only allowed to access the `@me` user instance.",
        None,
    );
    let anonymous = app.call(Method::GET, path, None, None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Session"));

    let deleted = app
        .call(
            Method::DELETE,
            "/api/users/@me/integrations/github/62/",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        app.get(path, &key).await.assert_ok()["github_login"],
        "First-Login"
    );
    fake.assert_clean();
}

async fn authentication_scopes_and_routing(db: Db) {
    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    let app = github_app(TestDatabase::create(db).await, &fake, &clock).await;
    let (user, key, browser) = member(&app, "auth@example.com", &["user:write"]).await;
    let (_, read_key) = app
        .user_with_key("reader@example.com", false, &["user:read"])
        .await;
    let (_, staff_key) = app.user_with_key("boss@example.com", true, &["*"]).await;
    assert_eq!(
        link(&app, &fake, &key, &browser, "a1", "auth", "1234").await,
        WEB_SUCCESS
    );

    let anonymous = app.call(Method::GET, LIST, None, None).await;
    anonymous.assert_error(
        401,
        "authentication_error",
        "not_authenticated",
        "Authentication credentials were not provided.",
        None,
    );
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let oauth = app.get(LIST, "pha_abc").await;
    assert_eq!(oauth.json["detail"], "Invalid access token.");
    assert_eq!(oauth.header("www-authenticate"), Some("Bearer"));

    let missing = |r: Reply| {
        r.assert_error(
            403,
            "authentication_error",
            "permission_denied",
            "API key missing required scope 'user:write'",
            None,
        )
    };
    missing(
        app.call(Method::POST, START, Some(&read_key), Some(json!({})))
            .await,
    );
    missing(
        app.call(
            Method::DELETE,
            "/api/users/@me/integrations/github/1234/",
            Some(&read_key),
            None,
        )
        .await,
    );
    missing(
        app.call(
            Method::POST,
            "/api/users/@me/integrations/github/1/repos/refresh/",
            Some(&read_key),
            None,
        )
        .await,
    );
    assert_eq!(
        app.get(LIST, &read_key).await.assert_ok(),
        &json!({"results": []})
    );
    app.get(&repos_path("1234"), &read_key).await.assert_error(
        404,
        "invalid_request",
        "not_found",
        "No GitHub integration found for this installation.",
        None,
    );

    // Another user's integrations: staff by uuid, nobody else.
    let theirs = format!("/api/users/{}/integrations/", user.uuid);
    read_key_forbidden(&app, &theirs, &read_key).await;
    let seen = app.get(&theirs, &staff_key).await;
    assert_eq!(seen.assert_ok()["results"][0]["installation_id"], "1234");
    app.get(
        &format!("/api/users/{}/integrations/", uuid::Uuid::new_v4()),
        &staff_key,
    )
    .await
    .assert_error(404, "invalid_request", "not_found", "Not found.", None);

    // The session works too (CSRF on writes).
    assert_eq!(
        browser.get(LIST).await.assert_ok()["results"][0]["installation_id"],
        "1234"
    );
    let no_csrf = browser
        .call_without_csrf(Method::POST, START, Some(json!({})))
        .await;
    assert_eq!(no_csrf.status, 403);
    assert_eq!(
        browser.post(START, json!({})).await.assert_ok()["connect_flow"],
        "app_install"
    );

    // `installation_id` must be digits: anything else matches no route.
    for path in [
        "/api/users/@me/integrations/github/abc/",
        "/api/users/@me/integrations/github/12a/repos/",
        "/api/users/@me/integrations/github/-1/branches/?repo=a/b",
    ] {
        let method = if path.ends_with("github/abc/") {
            Method::DELETE
        } else {
            Method::GET
        };
        app.call(method, path, Some(&key), None).await.assert_error(
            404,
            "invalid_request",
            "not_found",
            "Endpoint not found.",
            None,
        );
    }
    // Routes answer without the trailing slash too.
    let no_slash = app.get("/api/users/@me/integrations", &key).await;
    assert_eq!(no_slash.assert_ok()["results"].as_array().unwrap().len(), 1);
    let wrong_method = app
        .call(
            Method::GET,
            "/api/users/@me/integrations/github/start/",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(wrong_method.status, 405);
}

async fn read_key_forbidden(app: &TestApp, path: &str, key: &str) {
    app.get(path, key).await.assert_error(
        403,
        "authentication_error",
        "permission_denied",
        "As a non-staff user you're only allowed to access the `@me` user instance.",
        None,
    );
}

#[test]
fn team_link_github_command() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hoglet"))
            .args(args)
            .env("HOGLET_DATABASE_URL", &url)
            .env_remove("HOGLET_LOG")
            .output()
            .unwrap()
    };
    let json = |o: &std::process::Output| -> Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    json(&run(&[
        "user",
        "create",
        "--email",
        "gh@example.com",
        "--password",
        crate::helpers::PASSWORD,
    ]));
    let org = json(&run(&[
        "org",
        "create",
        "--name",
        "GH",
        "--owner",
        "gh@example.com",
    ]));
    let team = org["team"]["id"].as_i64().unwrap().to_string();
    let linked = json(&run(&[
        "team",
        "link-github",
        "--team",
        &team,
        "--installation-id",
        "98765",
        "--created-by",
        "gh@example.com",
        "--github-login",
        "gh-user",
    ]));
    assert_eq!(linked["team_id"].to_string(), team);
    assert_eq!(linked["kind"], "github");
    assert_eq!(linked["installation_id"], "98765");
    assert_eq!(
        linked["config"],
        json!({"installation_id": "98765", "connecting_user_github_login": "gh-user"})
    );
    assert!(linked["created_by"].is_i64());
    // Linking again updates the same link.
    let again = json(&run(&[
        "team",
        "link-github",
        "--team",
        &team,
        "--installation-id",
        "98765",
    ]));
    assert_eq!(again["id"], linked["id"]);
    assert_eq!(again["created_by"], linked["created_by"]);

    for (args, message) in [
        (
            vec!["--team", team.as_str(), "--installation-id", "12ab"],
            "is not a GitHub installation id",
        ),
        (
            vec!["--team", "999999", "--installation-id", "1"],
            "no team 999999",
        ),
    ] {
        let mut full = vec!["team", "link-github"];
        full.extend(args);
        let out = run(&full);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        run(&["team", "link-github", "--team", &team]).status.code(),
        Some(2)
    );
}

/// Two replicas sharing Postgres and Redis: a link started on one completes on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(hoglet_test_postgres),
    ignore = "HOGLET_TEST_POSTGRES_URL is not set"
)]
async fn link_state_is_shared_through_redis() {
    let redis =
        std::env::var("HOGLET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let fake = FakeGithub::start().await;
    let clock = Clock::system();
    let database = TestDatabase::create(Db::Postgres).await;
    let second = database.shared();
    let redis_a = redis.clone();
    let a = github_app_with(database, fake.clone(), &clock, move |c| {
        c.redis_url = Some(redis_a.into())
    })
    .await;
    let b = github_app_with(second, fake.clone(), &clock, move |c| {
        c.redis_url = Some(redis.into())
    })
    .await;
    assert!(
        a.state.limiter.uses_redis() && b.state.limiter.uses_redis(),
        "Redis is reachable"
    );
    let (_, key, _) = member(&a, "redis@example.com", &["user:write"]).await;
    let browser_b = Browser::new(&b);
    browser_b
        .login("redis@example.com", PASSWORD)
        .await
        .assert_ok();
    let (_, state) = start_link(&a, &key, json!({})).await;
    fake.add_code("rc", "ghu_rc", 5, "redis-user");
    assert_eq!(
        callback(
            &browser_b,
            &[
                ("code", "rc"),
                ("installation_id", "31337"),
                ("state", &state)
            ]
        )
        .await,
        WEB_SUCCESS
    );
    assert_eq!(
        a.get(LIST, &key).await.assert_ok()["results"][0]["installation_id"],
        "31337"
    );
    fake.assert_clean();
}

/// The web page: "Connect GitHub" goes to the App's install page, GitHub's answer lands back on
/// the page with the outcome in words, and "Disconnect" removes the integration.
async fn the_integrations_page_connects_and_disconnects_github(db: Db) {
    let fake = FakeGithub::start().await;
    let clock = Clock::manual();
    let app = github_app(TestDatabase::create(db).await, &fake, &clock).await;
    let (user, _key, browser) = member(&app, "pages@example.com", &["user:read"]).await;

    let empty = browser.get("/settings/user-personal-integrations").await;
    assert_eq!(empty.status, 200, "{}", empty.text);
    assert_eq!(empty.header("cache-control"), Some("no-store"));
    assert!(empty.text.contains("id=\"no-integrations\""));

    let connect = browser
        .submit("/settings/user-personal-integrations/github", &[])
        .await;
    assert_eq!(connect.status, 303, "{}", connect.text);
    let install_url = connect.header("location").unwrap().to_string();
    assert!(
        install_url.starts_with(&format!(
            "{}/apps/{APP_SLUG}/installations/new?state=",
            fake.url
        )),
        "{install_url}"
    );
    let state = state_of(&install_url);
    fake.add_code("page-code", "ghu_page", 77, "pagecat");
    let back = callback(
        &browser,
        &[
            ("code", "page-code"),
            ("installation_id", "5151"),
            ("setup_action", "install"),
            ("state", state.as_str()),
        ],
    )
    .await;
    assert_eq!(back, WEB_SUCCESS);
    let linked = browser.get(&back).await;
    assert_eq!(linked.status, 200, "{}", linked.text);
    assert!(linked.text.contains("GitHub is connected."));
    assert!(linked.text.contains("<code>5151</code>"));
    assert_eq!(
        app.store
            .user_integrations(user.id, "github")
            .await
            .unwrap()
            .len(),
        1
    );

    // GitHub's refusals are shown in words, never as the raw reason.
    for (reason, words) in [
        ("access_denied", "You cancelled the connection on GitHub."),
        (
            "invalid_state",
            "This connection attempt expired or was already used.",
        ),
        ("<script>", "GitHub could not be connected."),
    ] {
        let query = serde_urlencoded::to_string([("github_link_error", reason)]).unwrap();
        let page = browser
            .get(&format!("/settings/user-personal-integrations?{query}"))
            .await;
        assert!(page.text.contains(words), "{reason}: {}", page.text);
        assert!(!page.text.contains("<script>"));
    }

    // Without the form's token nothing is removed; with it, the integration goes.
    let forged = browser
        .submit_exactly(
            "/settings/user-personal-integrations/github/5151/delete",
            &[],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.text);
    let removed = browser
        .submit(
            "/settings/user-personal-integrations/github/5151/delete",
            &[],
        )
        .await;
    assert_eq!(removed.status, 303, "{}", removed.text);
    assert_eq!(
        removed.header("location"),
        Some("/settings/user-personal-integrations?notice=github_disconnected")
    );
    assert!(
        app.store
            .user_integrations(user.id, "github")
            .await
            .unwrap()
            .is_empty()
    );
    let again = browser
        .submit(
            "/settings/user-personal-integrations/github/5151/delete",
            &[],
        )
        .await;
    assert_eq!(again.status, 404, "{}", again.text);

    // PostHog Code's landing page.
    let done = browser
        .get("/account-connected/github-integration?provider=github")
        .await;
    assert_eq!(done.status, 200);
    assert!(done.text.contains("GitHub is connected"));
    let failed = browser
        .get("/account-connected/github-integration?provider=github&error=access_denied")
        .await;
    assert!(
        failed
            .text
            .contains("You cancelled the connection on GitHub.")
    );
}

/// The same in headless Chromium: "Connect GitHub" leaves for the App's install page (the fake
/// GitHub), GitHub's redirect back lands on the page with the outcome, "Disconnect" removes it.
async fn connect_and_disconnect_github_in_the_browser(db: Db) {
    crate::web_browser::in_browser("github", db, |page| async move {
        use crate::web_browser::{element, open, press, wait_for_path, wait_for_text};
        use crate::web_browser_flows::{assert_accessible, log_in};
        let fake = FakeGithub::start().await;
        let clock = Clock::manual();
        let app = github_app(TestDatabase::create(db).await, &fake, &clock).await;
        let user = app.create_user("octo@example.com", false).await;
        log_in(&page, &app, "octo@example.com", PASSWORD).await;
        wait_for_path(&page, &app, "/settings/user").await;
        open(&page, &app, "/settings/user-personal-integrations").await;
        wait_for_text(&page, "#no-integrations", "No GitHub account").await;
        assert_accessible(&page, "integrations").await;

        press(&page, "Connect GitHub").await;
        let install = format!("{}/apps/{APP_SLUG}/installations/new?state=", fake.url);
        let at_github = crate::helpers::eventually(
            "the browser at GitHub's install page",
            std::time::Duration::from_secs(15),
            || {
                let (page, install) = (page.clone(), install.clone());
                async move {
                    let url = page.url().await.ok().flatten()?;
                    url.starts_with(&install).then_some(url)
                }
            },
        )
        .await;
        // GitHub sends the browser back after the installation.
        fake.add_code("browser-code", "ghu_browser", 99, "octocat");
        let back = serde_urlencoded::to_string([
            ("code", "browser-code"),
            ("installation_id", "6161"),
            ("setup_action", "install"),
            ("state", state_of(&at_github).as_str()),
        ])
        .unwrap();
        page.goto(app.url(&format!("/complete/github-link/?{back}")))
            .await
            .expect("navigates");
        wait_for_path(&page, &app, WEB_SUCCESS).await;
        wait_for_text(&page, "#github-link-success", "GitHub is connected.").await;
        wait_for_text(&page, "#integrations", "6161").await;
        assert_accessible(&page, "integration listed").await;

        element(
            &page,
            "button[aria-label='Disconnect the installation 6161']",
        )
        .await
        .click()
        .await
        .expect("clicked");
        wait_for_text(&page, "#no-integrations", "No GitHub account").await;
        assert!(
            app.store
                .user_integrations(user.id, "github")
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}
