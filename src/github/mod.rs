//! A thin client for the GitHub endpoints hoglet uses (auth spec §B.9): OAuth code exchange and
//! refresh on the web host, user-token calls, App-JWT calls and installation-token calls on the API
//! host. Base URLs come from the configuration so tests point them at a local fake. No token is
//! ever logged: requests are traced by method and path only.

pub mod jwt;

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::config::GithubConfig;
use jwt::AppKey;

pub const API_VERSION: &str = "2022-11-28";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a GitHub call did not give what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// The App is not (or not usably) configured; the message is the 400 PostHog answers.
    #[error("{0}")]
    Config(&'static str),
    /// GitHub could not be reached, or the exchange broke off.
    #[error("GitHub unreachable: {0}")]
    Network(String),
    /// GitHub refused the request with its rate limit.
    #[error("GitHub rate limit reached")]
    RateLimited,
    /// GitHub answered with a status the operation does not accept.
    #[error("GitHub answered {0}")]
    Status(u16),
    /// GitHub answered something that is not what the endpoint documents.
    #[error("unexpected GitHub answer: {0}")]
    BadResponse(&'static str),
}

/// An answer from GitHub: its status, the `Link` header, and the body if it was JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub link: Option<String>,
    pub json: Option<Value>,
    rate_limited: bool,
}

impl Reply {
    pub fn is_rate_limited(&self) -> bool {
        self.rate_limited
    }

    /// Whether `Link` names a next page.
    pub fn has_next_page(&self) -> bool {
        self.link.as_deref().is_some_and(|link| {
            link.split(',')
                .any(|part| part.contains("rel=\"next\"") || part.contains("rel=next"))
        })
    }

    fn str_field(&self, name: &str) -> Option<String> {
        self.json.as_ref()?.get(name)?.as_str().map(str::to_string)
    }

    fn int_field(&self, name: &str) -> Option<i64> {
        self.json.as_ref()?.get(name)?.as_i64()
    }
}

/// What `POST /login/oauth/access_token` answered (an exchange or a refresh).
pub struct OAuthReply {
    pub access_token: Option<SecretString>,
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<i64>,
    pub refresh_token_expires_in: Option<i64>,
    pub error: Option<String>,
}

impl std::fmt::Debug for OAuthReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthReply")
            .field("has_access_token", &self.access_token.is_some())
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("expires_in", &self.expires_in)
            .field("refresh_token_expires_in", &self.refresh_token_expires_in)
            .field("error", &self.error)
            .finish()
    }
}

/// A freshly minted installation token.
pub struct MintedToken {
    pub token: SecretString,
    /// `expires_at` in Unix seconds, when GitHub sent a parsable one.
    pub expires_at: Option<i64>,
    pub repository_selection: Option<String>,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("expires_at", &self.expires_at)
            .field("repository_selection", &self.repository_selection)
            .finish_non_exhaustive()
    }
}

pub struct GithubClient {
    config: GithubConfig,
    key: AppKey,
    http: reqwest::Client,
}

impl std::fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubClient")
            .field("config", &self.config)
            .field("key", &self.key)
            .finish()
    }
}

impl GithubClient {
    pub fn new(config: &GithubConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("hoglet/", env!("CARGO_PKG_VERSION")))
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            key: AppKey::load(config.private_key.as_ref()),
            config: config.clone(),
            http,
        })
    }

    pub fn config(&self) -> &GithubConfig {
        &self.config
    }

    /// Whether the private key is set but cannot sign (reported once at start).
    pub fn key_is_unusable(&self) -> bool {
        matches!(self.key, AppKey::Unusable)
    }

    fn app_jwt(&self) -> Result<String, GithubError> {
        let issuer = self
            .config
            .client_id
            .as_deref()
            .or(self.config.app_id.as_deref());
        jwt::app_jwt(&self.key, issuer, crate::time::system_now() / 1_000_000)
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.config.api_url)
    }

    /// Sends one request to the API host with GitHub's headers and a bearer credential.
    async fn send(
        &self,
        method: Method,
        url: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> Result<Reply, GithubError> {
        let mut request = self
            .http
            .request(method.clone(), url)
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .header(AUTHORIZATION, format!("Bearer {bearer}"));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(network)?;
        read_reply(response).await.inspect(|reply| {
            tracing::debug!(%method, path = url_path(url), status = reply.status, "GitHub call");
        })
    }

    // --- OAuth (web host) ---

    async fn oauth_token(&self, mut body: Value) -> Result<OAuthReply, GithubError> {
        let client_id = self
            .config
            .client_id
            .as_deref()
            .ok_or(GithubError::Config(jwt::CLIENT_ID_MISSING))?;
        body["client_id"] = json!(client_id);
        body["client_secret"] = json!(
            self.config
                .client_secret
                .as_ref()
                .map(|s| s.expose_secret().to_string())
                .unwrap_or_default()
        );
        let response = self
            .http
            .post(format!("{}/login/oauth/access_token", self.config.web_url))
            .header(ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(network)?;
        let reply = read_reply(response).await?;
        let secret = |name: &str| reply.str_field(name).map(SecretString::from);
        Ok(OAuthReply {
            access_token: secret("access_token").filter(|t| !t.expose_secret().is_empty()),
            refresh_token: secret("refresh_token").filter(|t| !t.expose_secret().is_empty()),
            expires_in: reply.int_field("expires_in"),
            refresh_token_expires_in: reply.int_field("refresh_token_expires_in"),
            error: reply.str_field("error"),
        })
    }

    /// Exchanges an authorization code; `redirect_uri` only for the OAuth-redirect flows.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: Option<&str>,
    ) -> Result<OAuthReply, GithubError> {
        let mut body = json!({"code": code});
        if let Some(uri) = redirect_uri {
            body["redirect_uri"] = json!(uri);
        }
        self.oauth_token(body).await
    }

    pub async fn refresh_user_token(
        &self,
        refresh_token: &SecretString,
    ) -> Result<OAuthReply, GithubError> {
        self.oauth_token(json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose_secret(),
        }))
        .await
    }

    // --- user-to-server token ---

    /// `GET /user`: the GitHub account's numeric id and login.
    pub async fn user(&self, token: &SecretString) -> Result<(i64, String), GithubError> {
        let reply = self
            .send(Method::GET, &self.api("/user"), token.expose_secret(), None)
            .await?;
        if reply.status != 200 {
            return Err(GithubError::Status(reply.status));
        }
        match (reply.int_field("id"), reply.str_field("login")) {
            (Some(id), Some(login)) if !login.is_empty() => Ok((id, login)),
            _ => Err(GithubError::BadResponse("user without id or login")),
        }
    }

    /// `GET /user/installations?per_page=100`: the installations the user can see.
    pub async fn user_installations(
        &self,
        token: &SecretString,
    ) -> Result<Vec<Value>, GithubError> {
        let reply = self
            .send(
                Method::GET,
                &self.api("/user/installations?per_page=100"),
                token.expose_secret(),
                None,
            )
            .await?;
        if reply.status != 200 {
            return Err(GithubError::Status(reply.status));
        }
        reply
            .json
            .as_ref()
            .and_then(|j| j.get("installations"))
            .and_then(Value::as_array)
            .cloned()
            .ok_or(GithubError::BadResponse("no installations list"))
    }

    /// `GET /user/installations/{id}/repositories?per_page=1`: the status proves (200) or
    /// disproves (404) that the user can reach the installation.
    pub async fn user_installation_status(
        &self,
        token: &SecretString,
        installation_id: &str,
    ) -> Result<u16, GithubError> {
        let url = self.api(&format!(
            "/user/installations/{installation_id}/repositories?per_page=1"
        ));
        Ok(self
            .send(Method::GET, &url, token.expose_secret(), None)
            .await?
            .status)
    }

    // --- App JWT ---

    /// `GET /app/installations/{id}`: `(account.login, account.type)`.
    pub async fn installation(
        &self,
        installation_id: &str,
    ) -> Result<(Option<String>, Option<String>), GithubError> {
        let jwt = self.app_jwt()?;
        let url = self.api(&format!("/app/installations/{installation_id}"));
        let reply = self.send(Method::GET, &url, &jwt, None).await?;
        if reply.status != 200 {
            return Err(GithubError::Status(reply.status));
        }
        let account = reply.json.as_ref().and_then(|j| j.get("account"));
        let text = |name: &str| {
            account
                .and_then(|a| a.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Ok((text("login"), text("type")))
    }

    /// `POST /app/installations/{id}/access_tokens`: a new installation token (201 only).
    pub async fn mint_installation_token(
        &self,
        installation_id: &str,
    ) -> Result<MintedToken, GithubError> {
        let jwt = self.app_jwt()?;
        let url = self.api(&format!(
            "/app/installations/{installation_id}/access_tokens"
        ));
        let reply = self.send(Method::POST, &url, &jwt, None).await?;
        if reply.is_rate_limited() {
            return Err(GithubError::RateLimited);
        }
        if reply.status != 201 {
            return Err(GithubError::Status(reply.status));
        }
        let token = reply
            .str_field("token")
            .filter(|t| !t.is_empty())
            .ok_or(GithubError::BadResponse("no token"))?;
        let expires_at = reply
            .str_field("expires_at")
            .ok_or(GithubError::BadResponse("no expires_at"))?;
        Ok(MintedToken {
            token: SecretString::from(token),
            expires_at: crate::time::parse_rfc3339(&expires_at).map(|m| m.div_euclid(1_000_000)),
            repository_selection: reply.str_field("repository_selection"),
        })
    }

    // --- installation token ---

    /// `GET <path>` on the API host with an installation token (no retry; see the service).
    pub async fn installation_get(
        &self,
        token: &SecretString,
        path: &str,
    ) -> Result<Reply, GithubError> {
        self.send(Method::GET, &self.api(path), token.expose_secret(), None)
            .await
    }
}

fn network(e: reqwest::Error) -> GithubError {
    // reqwest's message names the URL but never headers or bodies, so no token leaks into it.
    GithubError::Network(e.without_url().to_string())
}

fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    path.split('?').next().unwrap_or(path)
}

async fn read_reply(response: reqwest::Response) -> Result<Reply, GithubError> {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.map_err(network)?;
    let json = serde_json::from_slice::<Value>(&bytes).ok();
    let rate_limited = is_rate_limited(status, &headers, json.as_ref());
    Ok(Reply {
        status: status.as_u16(),
        link: headers
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        json,
        rate_limited,
    })
}

/// GitHub's primary (403/429 with no requests remaining) and secondary (a "rate limit" message)
/// limits.
fn is_rate_limited(status: StatusCode, headers: &HeaderMap, json: Option<&Value>) -> bool {
    if status == StatusCode::TOO_MANY_REQUESTS {
        return true;
    }
    if status != StatusCode::FORBIDDEN {
        return false;
    }
    let exhausted = headers
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0");
    let message = json
        .and_then(|j| j.get("message"))
        .and_then(Value::as_str)
        .is_some_and(|m| m.to_ascii_lowercase().contains("rate limit"));
    exhausted || message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_and_paths() {
        let reply = Reply {
            status: 200,
            link: Some(
                "<https://api.github.com/x?page=2>; rel=\"next\", <https://api.github.com/x?page=5>; rel=\"last\""
                    .into(),
            ),
            json: None,
            rate_limited: false,
        };
        assert!(reply.has_next_page());
        assert_eq!(url_path("http://h:1/repos/a/b?page=2"), "/repos/a/b");
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        assert!(is_rate_limited(StatusCode::FORBIDDEN, &headers, None));
        assert!(!is_rate_limited(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            None
        ));
    }
}
