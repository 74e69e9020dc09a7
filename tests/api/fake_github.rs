//! A fake GitHub (web and API host in one) on `127.0.0.1:0`: serves every endpoint hoglet uses
//! with scripted answers, records each request, and checks every App JWT (RS256 against the test
//! key's public half, `iss`, `exp − iat ≤ 600`) and GitHub's request headers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "Iv1.hoglettestclient";
pub const CLIENT_SECRET: &str = "test-client-secret";
pub const APP_SLUG: &str = "hoglet-test";
pub const PRIVATE_KEY_PEM: &str = include_str!("fixtures/github-app-test-key.pem");
const PUBLIC_KEY_PEM: &str = include_str!("fixtures/github-app-test-key.pub.pem");

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    pub api_version: Option<String>,
    pub user_agent: Option<String>,
    pub body: Value,
}

/// A scripted answer: status and body (a string body is sent as is, not as JSON).
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub body: Value,
}

impl Canned {
    pub fn new(status: u16, body: Value) -> Self {
        Self { status, body }
    }
}

#[derive(Default)]
pub struct Script {
    /// `code` → the JSON `POST /login/oauth/access_token` answers for it.
    pub codes: HashMap<String, Value>,
    /// What a refresh answers (by default new tokens are issued).
    pub refresh: Option<Value>,
    /// User token → `(id, login)` for `GET /user`.
    pub users: HashMap<String, (i64, String)>,
    /// `GET /user/installations`.
    pub user_installations: Vec<i64>,
    /// Installation id → status of the ownership probe (200 when absent).
    pub probe_status: HashMap<String, u16>,
    /// `GET /installation/repositories`, paginated.
    pub repositories: Vec<Value>,
    /// `owner/repo` → branch names.
    pub branches: HashMap<String, Vec<String>>,
    /// `owner/repo` → default branch.
    pub default_branches: HashMap<String, String>,
    /// Path prefix → answers given once each, before the normal answer.
    pub once: Vec<(String, Canned)>,
    /// Path prefix → answer given every time.
    pub always: Vec<(String, Canned)>,
}

#[derive(Default)]
pub struct Inner {
    pub script: Script,
    pub requests: Vec<Recorded>,
    pub jwt_errors: Vec<String>,
    pub jwts_checked: usize,
    pub installation_tokens: HashSet<String>,
    pub user_tokens: HashSet<String>,
    minted: usize,
    refreshed: usize,
}

#[derive(Clone)]
pub struct FakeGithub {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    _server: Arc<ServerHandle>,
}

struct ServerHandle(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl FakeGithub {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            url,
            inner,
            _server: Arc::new(ServerHandle(Some(tx))),
        }
    }

    pub fn script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.inner.lock().unwrap().script);
    }

    /// A code that exchanges for `access` (8 h, refresh token 6 months) of GitHub user `login`.
    pub fn add_code(&self, code: &str, access: &str, gh_id: i64, login: &str) {
        self.script(|s| {
            s.codes.insert(
                code.into(),
                json!({"access_token": access, "token_type": "bearer", "scope": "",
                       "refresh_token": format!("ghr_{access}"), "expires_in": 28800,
                       "refresh_token_expires_in": 15_897_600}),
            );
            s.users.insert(access.into(), (gh_id, login.into()));
        });
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn calls(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.calls(prefix).len()
    }

    pub fn minted(&self) -> usize {
        self.inner.lock().unwrap().minted
    }

    pub fn refreshed(&self) -> usize {
        self.inner.lock().unwrap().refreshed
    }

    /// Makes every installation token issued so far invalid (GitHub then answers 401).
    pub fn revoke_installation_tokens(&self) {
        self.inner.lock().unwrap().installation_tokens.clear();
    }

    /// Asserts that every App JWT verified and every API request carried GitHub's headers.
    #[track_caller]
    pub fn assert_clean(&self) {
        let inner = self.inner.lock().unwrap();
        assert!(
            inner.jwt_errors.is_empty(),
            "JWT errors: {:?}",
            inner.jwt_errors
        );
        for r in inner
            .requests
            .iter()
            .filter(|r| r.path != "/login/oauth/access_token")
        {
            assert_eq!(
                r.accept.as_deref(),
                Some("application/vnd.github+json"),
                "{r:?}"
            );
            assert_eq!(r.api_version.as_deref(), Some("2022-11-28"), "{r:?}");
            assert!(
                r.user_agent
                    .as_deref()
                    .is_some_and(|u| u.starts_with("hoglet/")),
                "{r:?}"
            );
        }
        for r in inner
            .requests
            .iter()
            .filter(|r| r.path == "/login/oauth/access_token")
        {
            assert_eq!(r.method, "POST", "{r:?}");
            assert_eq!(r.accept.as_deref(), Some("application/json"), "{r:?}");
            assert_eq!(r.body["client_id"], CLIENT_ID);
            assert_eq!(r.body["client_secret"], CLIENT_SECRET);
        }
    }

    pub fn jwts_checked(&self) -> usize {
        self.inner.lock().unwrap().jwts_checked
    }
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    match body {
        Value::String(text) => (status, text).into_response(),
        other => (status, axum::Json(other)).into_response(),
    }
}

fn check_jwt(inner: &mut Inner, authorization: Option<&str>) -> bool {
    inner.jwts_checked += 1;
    let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        inner.jwt_errors.push("no bearer JWT".into());
        return false;
    };
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY_PEM.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    match jsonwebtoken::decode::<Value>(token, &key, &validation) {
        Ok(data) => {
            let iat = data.claims["iat"].as_i64().unwrap_or(0);
            let exp = data.claims["exp"].as_i64().unwrap_or(i64::MAX);
            if exp - iat > 600 {
                inner.jwt_errors.push(format!("lifetime {} s", exp - iat));
                return false;
            }
            true
        }
        Err(e) => {
            inner.jwt_errors.push(format!("invalid JWT: {e}"));
            false
        }
    }
}

fn scripted(list: &mut Vec<(String, Canned)>, path: &str, once: bool) -> Option<Canned> {
    let at = list
        .iter()
        .position(|(prefix, _)| path.starts_with(prefix.as_str()))?;
    Some(if once {
        list.remove(at).1
    } else {
        list[at].1.clone()
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let mut inner = inner.lock().unwrap();
    let recorded = Recorded {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        authorization: header("authorization"),
        accept: header("accept"),
        api_version: header("x-github-api-version"),
        user_agent: header("user-agent"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    inner.requests.push(recorded.clone());
    let bearer = recorded
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();

    // App-JWT endpoints verify the JWT before anything else.
    if path.starts_with("/app/") && !check_jwt(&mut inner, recorded.authorization.as_deref()) {
        return reply(
            401,
            json!({"message": "A JSON web token could not be decoded"}),
        );
    }
    if let Some(canned) = scripted(&mut inner.script.once, &path, true) {
        return reply(canned.status, canned.body);
    }
    if let Some(canned) = scripted(&mut inner.script.always, &path, false) {
        return reply(canned.status, canned.body);
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["login", "oauth", "access_token"]) => {
            let body = recorded.body.clone();
            if body["grant_type"] == "refresh_token" {
                inner.refreshed += 1;
                if let Some(answer) = inner.script.refresh.clone() {
                    if let Some(token) = answer["access_token"].as_str() {
                        inner.user_tokens.insert(token.to_string());
                        let login = inner.script.users.values().next().cloned();
                        if let Some(login) = login {
                            inner.script.users.insert(token.to_string(), login);
                        }
                    }
                    return reply(200, answer);
                }
                let n = inner.refreshed;
                let token = format!("ghu_refreshed{n}");
                inner.user_tokens.insert(token.clone());
                return reply(
                    200,
                    json!({"access_token": token, "refresh_token": format!("ghr_refreshed{n}"),
                           "expires_in": 28800, "refresh_token_expires_in": 15_897_600,
                           "token_type": "bearer"}),
                );
            }
            let code = body["code"].as_str().unwrap_or("").to_string();
            match inner.script.codes.get(&code).cloned() {
                Some(answer) => {
                    if let Some(token) = answer["access_token"].as_str() {
                        inner.user_tokens.insert(token.to_string());
                    }
                    reply(200, answer)
                }
                None => reply(200, json!({"error": "bad_verification_code"})),
            }
        }
        ("GET", ["user"]) => match inner.script.users.get(&bearer) {
            Some((id, login)) => reply(200, json!({"id": id, "login": login, "type": "User"})),
            None => reply(401, json!({"message": "Bad credentials"})),
        },
        ("GET", ["user", "installations"]) => {
            if !inner.user_tokens.contains(&bearer) {
                return reply(401, json!({"message": "Bad credentials"}));
            }
            let installations: Vec<Value> = inner
                .script
                .user_installations
                .iter()
                .map(|id| json!({"id": id, "account": {"login": format!("acct-{id}"), "type": "Organization"}}))
                .collect();
            reply(
                200,
                json!({"total_count": installations.len(), "installations": installations}),
            )
        }
        ("GET", ["user", "installations", id, "repositories"]) => {
            if !inner.user_tokens.contains(&bearer) {
                return reply(401, json!({"message": "Bad credentials"}));
            }
            let status = inner.script.probe_status.get(*id).copied().unwrap_or(200);
            reply(status, json!({"total_count": 1, "repositories": []}))
        }
        ("GET", ["app", "installations", id]) => reply(
            200,
            json!({"id": id.parse::<i64>().unwrap_or(0),
                   "account": {"login": format!("org-{id}"), "type": "Organization"}}),
        ),
        ("POST", ["app", "installations", _id, "access_tokens"]) => {
            inner.minted += 1;
            let token = format!("ghs_installation{}", inner.minted);
            inner.installation_tokens.insert(token.clone());
            let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            let expires = expires
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap();
            reply(
                201,
                json!({"token": token, "expires_at": expires, "repository_selection": "all",
                       "permissions": {"contents": "read"}}),
            )
        }
        ("GET", ["installation", "repositories"]) => {
            if !inner.installation_tokens.contains(&bearer) {
                return reply(401, json!({"message": "Bad credentials"}));
            }
            let page: usize = query_param(&query, "page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1);
            let per_page: usize = query_param(&query, "per_page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(30);
            let all = &inner.script.repositories;
            let slice: Vec<Value> = all
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .cloned()
                .collect();
            reply(
                200,
                json!({"total_count": all.len(), "repositories": slice}),
            )
        }
        ("GET", ["repos", owner, repo, "branches"]) => {
            if !inner.installation_tokens.contains(&bearer) {
                return reply(401, json!({"message": "Bad credentials"}));
            }
            let full = format!("{owner}/{repo}");
            let Some(all) = inner.script.branches.get(&full).cloned() else {
                return reply(404, json!({"message": "Not Found"}));
            };
            let page: usize = query_param(&query, "page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1);
            let per_page: usize = query_param(&query, "per_page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(30);
            let names: Vec<Value> = all
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|n| json!({"name": n, "protected": false}))
                .collect();
            let mut response = reply(200, Value::Array(names));
            if page * per_page < all.len() {
                let link = format!(
                    "<http://fake/repos/{full}/branches?per_page={per_page}&page={}>; rel=\"next\", \
                     <http://fake/repos/{full}/branches?per_page={per_page}&page=99>; rel=\"last\"",
                    page + 1
                );
                response.headers_mut().insert("link", link.parse().unwrap());
            }
            response
        }
        ("GET", ["repos", owner, repo]) => {
            if !inner.installation_tokens.contains(&bearer) {
                return reply(401, json!({"message": "Bad credentials"}));
            }
            let full = format!("{owner}/{repo}");
            match inner.script.default_branches.get(&full) {
                Some(default) => reply(200, json!({"full_name": full, "default_branch": default})),
                None => reply(200, json!({"full_name": full})),
            }
        }
        _ => reply(404, json!({"message": "Not Found"})),
    }
}

/// `n` repositories `octo-org/repo-<i>` in GitHub's shape.
pub fn repositories(n: usize) -> Vec<Value> {
    (1..=n)
        .map(|i| {
            json!({"id": 1000 + i, "name": format!("repo-{i}"), "full_name": format!("octo-org/repo-{i}"),
                   "private": i % 2 == 0, "default_branch": "main", "language": "Rust",
                   "archived": false, "pushed_at": "2024-05-01T12:00:00Z",
                   "permissions": {"admin": false, "push": true, "pull": true}})
        })
        .collect()
}
