//! A browser for session tests (its own cookie jar; sends the CSRF token like the web app does)
//! and a reader for the `.eml` files of `HOGLET_EMAIL=file:DIR`. Mail is delivered by the outbox
//! worker after the request answered: tests wait for it with `wait_for_mails`/`wait_for_mail`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::Method;
use reqwest::cookie::{CookieStore, Jar};
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, Reply, TestApp, TestUser, eventually};

/// How long a test waits for the outbox worker to deliver a message.
const MAIL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Browser {
    pub client: reqwest::Client,
    jar: Arc<Jar>,
    base: reqwest::Url,
}

/// A new user with an organization of their own ("Org of <email>"), logged in in a new browser.
pub async fn logged_in_member(app: &TestApp, email: &str) -> (TestUser, Browser) {
    let user = app.create_user(email, false).await;
    app.create_org(&format!("Org of {email}"), email).await;
    let browser = Browser::new(app);
    browser.login(email, PASSWORD).await.assert_ok();
    (user, browser)
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        Self::with_user_agent(app, None)
    }

    /// A browser that sends `user_agent` (none: reqwest sends no `User-Agent`).
    pub fn with_user_agent(app: &TestApp, user_agent: Option<&str>) -> Self {
        let jar = Arc::new(Jar::default());
        let mut builder = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none());
        if let Some(user_agent) = user_agent {
            builder = builder.user_agent(user_agent);
        }
        let client = builder.build().expect("client");
        Self {
            client,
            jar,
            base: app.base.parse().expect("base url"),
        }
    }

    /// The value of a cookie the server set.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let header = self.jar.cookies(&self.base)?;
        header
            .to_str()
            .ok()?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    pub fn cookie_names(&self) -> Vec<String> {
        self.jar
            .cookies(&self.base)
            .and_then(|h| h.to_str().ok().map(str::to_string))
            .unwrap_or_default()
            .split(';')
            .filter_map(|pair| pair.trim().split_once('=').map(|(k, _)| k.to_string()))
            .collect()
    }

    /// Sends a request with the session cookie and the CSRF header.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.send(method, path, body, true).await
    }

    /// Sends a request without the CSRF header.
    pub async fn call_without_csrf(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        self.send(method, path, body, false).await
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>, csrf: bool) -> Reply {
        let mut request = self
            .client
            .request(method, self.base.join(path).expect("url"));
        if csrf && let Some(token) = self.cookie("posthog_csrftoken") {
            request = request.header("X-CSRFToken", token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::read(request.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// Sends `body` as is with the given `Content-Type`, with the session cookie and CSRF header.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, self.base.join(path).expect("url"))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(token) = self.cookie("posthog_csrftoken") {
            request = request.header("X-CSRFToken", token);
        }
        Reply::read(request.send().await.expect("request sent")).await
    }

    /// Submits an HTML form as a browser does: form-encoded `fields` plus the
    /// `csrfmiddlewaretoken` field from the `posthog_csrftoken` cookie (no header).
    pub async fn submit(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let token = self.cookie("posthog_csrftoken").unwrap_or_default();
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("csrfmiddlewaretoken", &token));
        self.submit_exactly(path, &all).await
    }

    /// Submits exactly these form fields (no CSRF token unless listed).
    pub async fn submit_exactly(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let request = self
            .client
            .post(self.base.join(path).expect("url"))
            .form(fields);
        Reply::read(request.send().await.expect("request sent")).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post("/api/login/", json!({"email": email, "password": password}))
            .await
    }
}

/// One message written by `HOGLET_EMAIL=file:DIR`.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

impl Mail {
    /// The first URL in the body that starts with `prefix`.
    pub fn link(&self, prefix: &str) -> Option<String> {
        self.body
            .split_whitespace()
            .find(|w| w.contains(prefix))
            .map(str::to_string)
    }
}

/// Every message in the directory, oldest first.
pub fn read_mails(dir: &Path) -> Vec<Mail> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .map(|p| parse_mail(&std::fs::read_to_string(p).expect("readable mail")))
        .collect()
}

/// Every message in the directory, oldest first, once there are at least `count`.
pub async fn wait_for_mails(dir: &Path, count: usize) -> Vec<Mail> {
    eventually(
        &format!("{count} mails in {}", dir.display()),
        MAIL_DEADLINE,
        || async {
            let mails = read_mails(dir);
            (mails.len() >= count).then_some(mails)
        },
    )
    .await
}

/// The first message matching `wanted`, once delivered.
pub async fn wait_for_mail(dir: &Path, what: &str, wanted: impl Fn(&Mail) -> bool) -> Mail {
    eventually(what, MAIL_DEADLINE, || async {
        read_mails(dir).into_iter().find(|m| wanted(m))
    })
    .await
}

fn parse_mail(raw: &str) -> Mail {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .expect("headers and body");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    Mail {
        to: header("To"),
        subject: header("Subject"),
        body: body.replace("\r\n", "\n"),
    }
}
