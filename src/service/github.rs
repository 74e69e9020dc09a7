//! Personal GitHub integrations (auth spec Part B): the tokens of a row and their lifecycle (B.7),
//! the repository and branch caches (B.8), the linking flow (B.4, B.5) and `github_login` (B.12).
//!
//! Tokens live only in `sensitive_config`, sealed with a key derived from `HOGLET_SECRET_KEY`;
//! they are opened here, sent to GitHub, and never logged, rendered or put in an error.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::crypto::sealed;
use crate::error::{ApiError, ApiResult};
use crate::github::{GithubError, Reply};
use crate::service::activity::{self, Activity, Context};
use crate::state::AppState;
use crate::store::{NewUserIntegration, UserIntegrationRecord, UserRecord};
use crate::time::{Micros, SECOND};

pub const KIND: &str = "github";
pub const NOT_FOUND: &str = "No GitHub integration found for this installation.";
pub const CLIENT_ID_MISSING: &str =
    "GitHub App client ID is not configured (GITHUB_APP_CLIENT_ID missing).";
pub const SLUG_MISSING: &str =
    "GitHub App is not configured on this instance (missing GITHUB_APP_SLUG).";
const ALL_LINKED: &str =
    "All GitHub App installations accessible to your account are already linked.";

const SECRETS_PURPOSE: &str = "github-tokens";
const STATE_PREFIX: &str = "github_user_install_state:";
pub const STATE_TTL: Duration = Duration::from_secs(600);
const REPOSITORY_CACHE_AGE: Micros = 3600 * SECOND;
const REPOSITORY_REFRESH_COOLDOWN: Micros = 30 * SECOND;
const BRANCHES_STALE_SECONDS: f64 = 600.0;
const BRANCHES_TTL: Duration = Duration::from_secs(86_400);
const DEFAULT_BRANCH_TTL: Duration = Duration::from_secs(86_400);
const PAGE_SIZE: usize = 100;
/// A bound on pages fetched in one sync (10 000 repositories or 100 000 branches).
const MAX_REPOSITORY_PAGES: usize = 100;
const MAX_BRANCH_PAGES: usize = 1000;
/// GitHub's answers to a refresh that prove the user tokens unusable (the row is deleted).
const DEAD_REFRESH_ERRORS: &[&str] = &[
    "bad_refresh_token",
    "refresh_token_expired",
    "unauthorized_client",
];

impl From<GithubError> for ApiError {
    fn from(e: GithubError) -> Self {
        match e {
            GithubError::Config(message) => ApiError::non_field("invalid_input", message),
            other => ApiError::Internal(anyhow::Error::new(other).context("calling GitHub")),
        }
    }
}

/// The tokens of a personal integration.
#[derive(Default)]
struct Secrets {
    access_token: Option<SecretString>,
    user_access_token: Option<SecretString>,
    user_refresh_token: Option<SecretString>,
}

#[derive(Serialize, Deserialize, Default)]
struct SecretsJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_refresh_token: Option<String>,
}

impl Secrets {
    fn is_empty(&self) -> bool {
        self.access_token.is_none()
            && self.user_access_token.is_none()
            && self.user_refresh_token.is_none()
    }

    fn seal(&self, state: &AppState) -> ApiResult<String> {
        if self.is_empty() {
            return Ok(String::new());
        }
        let plain = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_string());
        let json = serde_json::to_vec(&SecretsJson {
            access_token: plain(&self.access_token),
            user_access_token: plain(&self.user_access_token),
            user_refresh_token: plain(&self.user_refresh_token),
        })
        .map_err(ApiError::internal)?;
        sealed::seal(&state.derived_key(SECRETS_PURPOSE), &json).map_err(ApiError::internal)
    }

    fn open(state: &AppState, stored: &str) -> Self {
        if stored.is_empty() {
            return Self::default();
        }
        let opened = sealed::open(&state.derived_key(SECRETS_PURPOSE), stored)
            .and_then(|bytes| Ok(serde_json::from_slice::<SecretsJson>(&bytes)?));
        match opened {
            Ok(json) => {
                let secret =
                    |s: Option<String>| s.filter(|s| !s.is_empty()).map(SecretString::from);
                Self {
                    access_token: secret(json.access_token),
                    user_access_token: secret(json.user_access_token),
                    user_refresh_token: secret(json.user_refresh_token),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the tokens of a GitHub integration");
                Self::default()
            }
        }
    }
}

/// A personal integration with its config and opened secrets.
pub struct Integration {
    pub record: UserIntegrationRecord,
    config: Map<String, Value>,
    secrets: Secrets,
}

impl std::fmt::Debug for Integration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integration")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

fn int(config: &Map<String, Value>, key: &str) -> Option<i64> {
    let value = config.get(key)?;
    value.as_i64().or_else(|| value.as_f64().map(|f| f as i64))
}

impl Integration {
    pub fn load(state: &AppState, record: UserIntegrationRecord) -> Self {
        let config = match &record.config {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        let secrets = Secrets::open(state, &record.sensitive_config);
        Self {
            record,
            config,
            secrets,
        }
    }

    pub fn installation_id(&self) -> &str {
        &self.record.integration_id
    }

    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    pub fn config(&self) -> &Map<String, Value> {
        &self.config
    }

    /// `config.github_user.login`.
    pub fn github_login(&self) -> Option<&str> {
        self.config
            .get("github_user")?
            .get("login")?
            .as_str()
            .filter(|l| !l.is_empty())
    }

    /// Writes config and secrets back; false when the row was deleted meanwhile.
    async fn save(&self, state: &AppState) -> ApiResult<bool> {
        let sealed = self.secrets.seal(state)?;
        Ok(state
            .store
            .update_user_integration_secrets(
                self.record.id,
                &Value::Object(self.config.clone()),
                &sealed,
                state.clock.now(),
            )
            .await?)
    }

    /// Past its half-life: `now > refreshed_at + expires_in − max(1, expires_in / 2)`.
    fn installation_token_expired(&self, now: i64) -> bool {
        match (
            int(&self.config, "refreshed_at"),
            int(&self.config, "expires_in"),
        ) {
            (Some(refreshed_at), Some(expires_in)) => {
                now > refreshed_at + expires_in - (expires_in / 2).max(1)
            }
            _ => false,
        }
    }

    fn user_token_expired(&self, now: i64) -> bool {
        let Some(expires_at) = int(&self.config, "user_access_token_expires_at") else {
            return false;
        };
        let refreshed_at = int(&self.config, "user_token_refreshed_at")
            .unwrap_or(self.record.created_at.div_euclid(SECOND));
        now > expires_at - ((expires_at - refreshed_at) / 2).max(1)
    }

    fn refresh_token_expired(&self, now: i64) -> bool {
        int(&self.config, "user_refresh_token_expires_at").is_some_and(|at| now > at)
    }
}

/// Loads the user's integration for an installation (404 with PostHog's detail when none).
pub async fn find(state: &AppState, user_id: i64, installation_id: &str) -> ApiResult<Integration> {
    state
        .store
        .user_integration(user_id, KIND, installation_id)
        .await?
        .map(|record| Integration::load(state, record))
        .ok_or_else(|| ApiError::NotFound(NOT_FOUND.into()))
}

// --- installation token (B.7) ---

/// Mints a new installation token and stores it.
async fn refresh_installation_token(
    state: &AppState,
    integration: &mut Integration,
) -> Result<(), GithubError> {
    let minted = state
        .github
        .mint_installation_token(integration.installation_id())
        .await?;
    let now = state.clock.now_secs();
    let expires_in = minted.expires_at.map_or(3600, |at| at - now);
    integration
        .config
        .insert("expires_in".into(), json!(expires_in));
    integration.config.insert("refreshed_at".into(), json!(now));
    integration.secrets.access_token = Some(minted.token);
    if let Err(e) = integration.save(state).await {
        tracing::warn!(error = %e, "could not store a refreshed installation token");
    }
    Ok(())
}

/// One GET, retried once on a network error or a 502/503/504.
async fn get_with_retry(
    state: &AppState,
    token: &SecretString,
    path: &str,
) -> Result<Reply, GithubError> {
    let retryable = |r: &Result<Reply, GithubError>| match r {
        Err(GithubError::Network(_)) => true,
        Ok(reply) => matches!(reply.status, 502..=504),
        Err(_) => false,
    };
    let first = state.github.installation_get(token, path).await;
    if retryable(&first) {
        return state.github.installation_get(token, path).await;
    }
    first
}

/// An installation-authenticated GET: refresh first if the token is past its half-life (failure
/// there is not fatal), refresh and retry once on 401, never retry a rate limit.
async fn installation_get(
    state: &AppState,
    integration: &mut Integration,
    path: &str,
) -> Result<Reply, GithubError> {
    let now = state.clock.now_secs();
    if integration.secrets.access_token.is_none() {
        refresh_installation_token(state, integration).await?;
    } else if integration.installation_token_expired(now)
        && let Err(e) = refresh_installation_token(state, integration).await
    {
        tracing::warn!(error = %e, "proactive installation token refresh failed; using the stored token");
    }
    let token = integration
        .secrets
        .access_token
        .clone()
        .ok_or(GithubError::BadResponse("no installation token"))?;
    let mut reply = get_with_retry(state, &token, path).await?;
    if reply.status == 401 {
        refresh_installation_token(state, integration).await?;
        let token = integration
            .secrets
            .access_token
            .clone()
            .ok_or(GithubError::BadResponse("no installation token"))?;
        reply = get_with_retry(state, &token, path).await?;
    }
    if reply.is_rate_limited() {
        return Err(GithubError::RateLimited);
    }
    Ok(reply)
}

// --- user-to-server token (B.7) ---

/// Why no usable user token could be had.
#[derive(Debug)]
pub enum UserTokenError {
    /// The tokens are unusable; the row was deleted and the user must connect again.
    ReauthorizationRequired,
    /// GitHub could not be asked, or refused for another reason; the row is kept.
    Failed,
}

/// A usable user-to-server token: refreshed when past its half-life; the row is deleted when its
/// tokens are proven unusable.
async fn usable_user_token(
    state: &AppState,
    integration: &mut Integration,
) -> Result<SecretString, UserTokenError> {
    let now = state.clock.now_secs();
    let drop_row = async |integration: &Integration| {
        let log = [Context::system().entry(
            state,
            Some(integration.record.user_id),
            Activity::GithubIntegrationUnlinked,
            json!({ "installation_id": integration.installation_id(), "reason": "tokens_unusable" }),
        )];
        match state
            .store
            .delete_user_integration(integration.record.id, &log)
            .await
        {
            Ok(true) => activity::committed(state, &log),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not delete a GitHub integration with dead tokens")
            }
        }
        UserTokenError::ReauthorizationRequired
    };
    let Some(access) = integration.secrets.user_access_token.clone() else {
        return Err(drop_row(integration).await);
    };
    if integration.refresh_token_expired(now) {
        return Err(drop_row(integration).await);
    }
    if !integration.user_token_expired(now) {
        return Ok(access);
    }
    let Some(refresh) = integration.secrets.user_refresh_token.clone() else {
        return Err(UserTokenError::Failed);
    };
    let reply = match state.github.refresh_user_token(&refresh).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::warn!(error = %e, "GitHub user token refresh failed");
            return Err(UserTokenError::Failed);
        }
    };
    let Some(new_access) = reply.access_token else {
        if reply
            .error
            .as_deref()
            .is_some_and(|e| DEAD_REFRESH_ERRORS.contains(&e))
        {
            return Err(drop_row(integration).await);
        }
        return Err(UserTokenError::Failed);
    };
    integration.secrets.user_access_token = Some(new_access.clone());
    if let Some(new_refresh) = reply.refresh_token {
        integration.secrets.user_refresh_token = Some(new_refresh);
    }
    set_user_token_expiry(
        &mut integration.config,
        now,
        reply.expires_in,
        reply.refresh_token_expires_in,
    );
    match integration.save(state).await {
        Ok(_) => Ok(new_access),
        Err(e) => {
            tracing::warn!(error = %e, "could not store a refreshed GitHub user token");
            Ok(new_access)
        }
    }
}

/// `user_token_refreshed_at` and the expiries GitHub sent (absent ones are removed).
fn set_user_token_expiry(
    config: &mut Map<String, Value>,
    now: i64,
    expires_in: Option<i64>,
    refresh_expires_in: Option<i64>,
) {
    config.insert("user_token_refreshed_at".into(), json!(now));
    match expires_in {
        Some(seconds) => {
            config.insert("user_access_token_expires_at".into(), json!(now + seconds));
        }
        None => {
            config.remove("user_access_token_expires_at");
        }
    }
    match refresh_expires_in {
        Some(seconds) => {
            config.insert("user_refresh_token_expires_at".into(), json!(now + seconds));
        }
        None => {
            config.remove("user_refresh_token_expires_at");
        }
    }
}

// --- repositories (B.3.3, B.3.4, B.8) ---

/// A repository as the API shows it: the three base keys, plus the optional ones GitHub sent
/// with the right type.
fn project_repository(repo: &Value) -> Option<Value> {
    let id = repo.get("id")?.as_i64()?;
    let name = repo.get("name")?.as_str()?;
    let full_name = repo.get("full_name")?.as_str()?;
    let mut out = Map::new();
    out.insert("id".into(), json!(id));
    out.insert("name".into(), json!(name));
    out.insert("full_name".into(), json!(full_name));
    for key in ["default_branch", "language", "pushed_at"] {
        if let Some(Value::String(s)) = repo.get(key) {
            out.insert(key.into(), json!(s));
        }
    }
    for key in ["private", "archived"] {
        if let Some(Value::Bool(b)) = repo.get(key) {
            out.insert(key.into(), json!(b));
        }
    }
    if let Some(Value::Bool(push)) = repo.get("permissions").and_then(|p| p.get("push")) {
        out.insert("can_push".into(), json!(push));
    }
    Some(Value::Object(out))
}

/// Fetches every repository of the installation.
async fn fetch_repositories(
    state: &AppState,
    integration: &mut Integration,
) -> Result<Vec<Value>, GithubError> {
    let mut repositories = Vec::new();
    for page in 1..=MAX_REPOSITORY_PAGES {
        let path = format!("/installation/repositories?page={page}&per_page={PAGE_SIZE}");
        let reply = installation_get(state, integration, &path).await?;
        if reply.status != 200 {
            return Err(GithubError::Status(reply.status));
        }
        let listed = reply
            .json
            .as_ref()
            .and_then(|j| j.get("repositories"))
            .and_then(Value::as_array)
            .ok_or(GithubError::BadResponse("no repositories list"))?;
        repositories.extend(listed.iter().filter_map(project_repository));
        if listed.len() < PAGE_SIZE {
            break;
        }
    }
    Ok(repositories)
}

fn cached_repositories(integration: &Integration) -> Vec<Value> {
    integration
        .record
        .repository_cache
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A full sync, stored with its time.
async fn sync_repositories(
    state: &AppState,
    integration: &mut Integration,
) -> Result<Vec<Value>, ApiError> {
    let repositories = fetch_repositories(state, integration).await?;
    let now = state.clock.now();
    state
        .store
        .set_repository_cache(
            integration.record.id,
            &Value::Array(repositories.clone()),
            now,
        )
        .await?;
    integration.record.repository_cache_updated_at = Some(now);
    Ok(repositories)
}

/// The repository list for reading: the stored snapshot while under an hour old, else a sync;
/// a failed sync serves the old snapshot when there is one.
pub async fn repositories(
    state: &AppState,
    integration: &mut Integration,
) -> ApiResult<Vec<Value>> {
    let now = state.clock.now();
    let synced_at = integration.record.repository_cache_updated_at;
    if synced_at.is_some_and(|at| now - at < REPOSITORY_CACHE_AGE) {
        return Ok(cached_repositories(integration));
    }
    match sync_repositories(state, integration).await {
        Ok(repositories) => Ok(repositories),
        Err(e) if synced_at.is_some() => {
            tracing::warn!(error = %e, "repository sync failed; serving the stored list");
            Ok(cached_repositories(integration))
        }
        Err(e) => Err(e),
    }
}

/// A forced sync, skipped while the snapshot is under 30 seconds old.
pub async fn refresh_repositories(
    state: &AppState,
    integration: &mut Integration,
) -> ApiResult<Vec<Value>> {
    let now = state.clock.now();
    if integration
        .record
        .repository_cache_updated_at
        .is_some_and(|at| now - at < REPOSITORY_REFRESH_COOLDOWN)
    {
        return Ok(cached_repositories(integration));
    }
    sync_repositories(state, integration).await
}

// --- branches (B.3.5, B.8) ---

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BranchEntry {
    pub branches: Vec<String>,
    pub default_branch: Option<String>,
    pub updated_at: f64,
}

/// Every branch name, following `Link: rel="next"`; `complete` is false when a page failed
/// (the list is then empty or truncated). Rate limits and configuration errors are raised.
async fn fetch_branches(
    state: &AppState,
    integration: &mut Integration,
    repo: &str,
) -> Result<(Vec<String>, bool), GithubError> {
    let mut branches = Vec::new();
    for page in 1..=MAX_BRANCH_PAGES {
        let path = format!("/repos/{repo}/branches?per_page={PAGE_SIZE}&page={page}");
        let reply = match installation_get(state, integration, &path).await {
            Ok(reply) => reply,
            Err(e @ (GithubError::RateLimited | GithubError::Config(_))) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, page, "branch listing failed");
                return Ok((branches, false));
            }
        };
        let Some(listed) = reply
            .json
            .as_ref()
            .and_then(Value::as_array)
            .filter(|_| reply.status == 200)
        else {
            tracing::warn!(status = reply.status, page, "branch listing failed");
            return Ok((branches, false));
        };
        branches.extend(
            listed
                .iter()
                .filter_map(|b| b.get("name").and_then(Value::as_str))
                .map(str::to_string),
        );
        if !reply.has_next_page() {
            return Ok((branches, true));
        }
    }
    Ok((branches, true))
}

/// The repository's default branch (cached a day); `None` with `false` when GitHub did not say.
async fn default_branch(
    state: &AppState,
    integration: &mut Integration,
    repo: &str,
) -> Result<(Option<String>, bool), GithubError> {
    let key = format!(
        "github_integration:default_branch:{}:{repo}",
        integration.record.id
    );
    if let Some(cached) = state.kv.get(&key).await {
        return Ok((Some(cached), true));
    }
    match installation_get(state, integration, &format!("/repos/{repo}")).await {
        Ok(reply) if reply.status == 200 && reply.json.as_ref().is_some_and(Value::is_object) => {
            let name = reply
                .json
                .as_ref()
                .and_then(|j| j.get("default_branch"))
                .and_then(Value::as_str)
                .unwrap_or("main")
                .to_string();
            state.kv.set(&key, &name, DEFAULT_BRANCH_TTL).await;
            Ok((Some(name), true))
        }
        Ok(reply) => {
            tracing::warn!(status = reply.status, "default branch lookup failed");
            Ok((None, false))
        }
        Err(e @ (GithubError::RateLimited | GithubError::Config(_))) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "default branch lookup failed");
            Ok((None, false))
        }
    }
}

/// The branch list of `repo` (`owner/repo`), default branch first: cached for ten minutes,
/// refreshed after; an incomplete refresh is served but not cached (a stale entry, when there
/// is one, is served instead), and a raised error falls back to the stale entry.
pub async fn branches(
    state: &AppState,
    integration: &mut Integration,
    repo: &str,
) -> ApiResult<BranchEntry> {
    let key = format!(
        "github_integration:branches:{}:{}",
        integration.record.id,
        repo.to_lowercase()
    );
    let now = state.clock.now() as f64 / SECOND as f64;
    let previous = state
        .kv
        .get(&key)
        .await
        .and_then(|s| serde_json::from_str::<BranchEntry>(&s).ok());
    if let Some(entry) = &previous
        && now - entry.updated_at < BRANCHES_STALE_SECONDS
    {
        return Ok(entry.clone());
    }
    let fetched = async {
        let (mut branches, listed) = fetch_branches(state, integration, repo).await?;
        let (mut default, found) = default_branch(state, integration, repo).await?;
        if !found {
            // Fall back to the previous default, if the branch still exists.
            default = previous
                .as_ref()
                .and_then(|p| p.default_branch.clone())
                .filter(|d| branches.contains(d));
        }
        if let Some(name) = &default
            && let Some(at) = branches.iter().position(|b| b == name)
        {
            let name = branches.remove(at);
            branches.insert(0, name);
        }
        Ok::<_, GithubError>((
            BranchEntry {
                branches,
                default_branch: default,
                updated_at: now,
            },
            listed && found,
        ))
    };
    match fetched.await {
        Ok((entry, true)) => {
            if let Ok(text) = serde_json::to_string(&entry) {
                state.kv.set(&key, &text, BRANCHES_TTL).await;
            }
            Ok(entry)
        }
        Ok((entry, false)) => Ok(previous.unwrap_or(entry)),
        Err(e) => match previous {
            Some(stale) => {
                tracing::warn!(error = %e, "branch refresh failed; serving the stale list");
                Ok(stale)
            }
            None => Err(e.into()),
        },
    }
}

// --- linking (B.4, B.5) ---

/// What `github_user_install_state:<token>` holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkState {
    pub user_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_from: Option<String>,
}

pub const FLOW_OAUTH_AUTHORIZE: &str = "oauth_authorize";
pub const FLOW_OAUTH_DISCOVER: &str = "oauth_discover";
pub const FLOW_APP_INSTALL: &str = "app_install";
pub const POSTHOG_CODE: &str = "posthog_code";

/// Python's `urllib.parse.quote` with `safe=""` (what `urlencode` does to a value, with `%20`).
pub fn url_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(char::from(byte))
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Stores a one-time state for `token` and returns the `state` parameter GitHub carries.
async fn store_state(state: &AppState, token: &str, link: &LinkState) -> ApiResult<String> {
    let value = serde_json::to_string(link).map_err(ApiError::internal)?;
    state
        .kv
        .set(&format!("{STATE_PREFIX}{token}"), &value, STATE_TTL)
        .await;
    Ok(url_quote(&format!("token={token}&source=user_integration")))
}

fn new_token() -> String {
    crate::crypto::random_alphanumeric(48)
}

pub fn redirect_uri(state: &AppState) -> String {
    format!("{}/complete/github-link/", state.site_url)
}

fn authorize_url(state: &AppState, encoded_state: &str) -> ApiResult<String> {
    let client_id = state
        .config
        .github
        .client_id
        .as_deref()
        .ok_or_else(|| ApiError::non_field("invalid_input", CLIENT_ID_MISSING))?;
    Ok(format!(
        "{}/login/oauth/authorize?client_id={}&redirect_uri={}&state={encoded_state}",
        state.config.github.web_url,
        url_quote(client_id),
        url_quote(&redirect_uri(state)),
    ))
}

fn app_slug(state: &AppState) -> ApiResult<&str> {
    state
        .config
        .github
        .app_slug
        .as_deref()
        .ok_or_else(|| ApiError::non_field("invalid_input", SLUG_MISSING))
}

fn install_url(state: &AppState, encoded_state: &str) -> ApiResult<String> {
    Ok(format!(
        "{}/apps/{}/installations/new?state={encoded_state}",
        state.config.github.web_url,
        app_slug(state)?
    ))
}

/// Ids of every team the user can reach (teams of their organizations).
pub async fn accessible_team_ids(state: &AppState, user_id: i64) -> ApiResult<Vec<i64>> {
    let organizations: Vec<uuid::Uuid> = state
        .store
        .memberships_of(&[user_id])
        .await?
        .iter()
        .map(|m| m.organization.id)
        .collect();
    if organizations.is_empty() {
        return Ok(Vec::new());
    }
    Ok(state
        .store
        .teams_of(&organizations)
        .await?
        .iter()
        .map(|t| t.id)
        .collect())
}

/// `team_id` of the start body: absent, null or `""` mean "the current team".
fn requested_team(body: &Map<String, Value>) -> ApiResult<Option<i64>> {
    let invalid = || ApiError::non_field("invalid_input", "team_id must be an integer");
    match body.get("team_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.trim().parse::<i64>().map(Some).map_err(|_| invalid()),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(invalid),
        Some(Value::Bool(b)) => Ok(Some(i64::from(*b))),
        Some(_) => Err(invalid()),
    }
}

/// The answer of `POST …/integrations/github/start/`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StartLink {
    pub install_url: String,
    pub connect_flow: String,
}

/// `POST …/integrations/github/start/` for `user` (B.4).
pub async fn start(
    state: &AppState,
    user: &UserRecord,
    body: &Map<String, Value>,
) -> ApiResult<StartLink> {
    let token = new_token();
    let connect_from = match body.get("connect_from") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(crate::domain::python::py_str(other)),
    };
    let team = match requested_team(body)? {
        Some(id) => {
            if !accessible_team_ids(state, user.id).await?.contains(&id) {
                return Err(ApiError::non_field(
                    "invalid_input",
                    "Invalid or inaccessible team_id for this user.",
                ));
            }
            Some(id)
        }
        None => user.current_team_id,
    };
    let team_installation = match team {
        Some(team) => state
            .store
            .team_integrations_of(&[team], KIND)
            .await?
            .into_iter()
            .find(|i| !i.integration_id.is_empty())
            .map(|i| i.integration_id),
        None => None,
    };
    let personal = state.store.user_integrations(user.id, KIND).await?;

    if connect_from.as_deref() == Some(POSTHOG_CODE) {
        match &team_installation {
            Some(installation) if !personal.iter().any(|p| &p.integration_id == installation) => {
                let link = LinkState {
                    user_id: user.id,
                    installation_id: Some(installation.clone()),
                    flow: Some(FLOW_OAUTH_AUTHORIZE.into()),
                    connect_from: connect_from.clone(),
                };
                authorize_url(state, "")?;
                let encoded = store_state(state, &token, &link).await?;
                return Ok(StartLink {
                    install_url: authorize_url(state, &encoded)?,
                    connect_flow: FLOW_OAUTH_AUTHORIZE.into(),
                });
            }
            None => {
                let link = LinkState {
                    user_id: user.id,
                    flow: Some(FLOW_OAUTH_DISCOVER.into()),
                    connect_from: connect_from.clone(),
                    ..LinkState::default()
                };
                authorize_url(state, "")?;
                let encoded = store_state(state, &token, &link).await?;
                return Ok(StartLink {
                    install_url: authorize_url(state, &encoded)?,
                    connect_flow: FLOW_OAUTH_DISCOVER.into(),
                });
            }
            Some(_) => {}
        }
    }

    app_slug(state)?;
    let linked: Vec<Integration> = personal
        .into_iter()
        .map(|record| Integration::load(state, record))
        .collect();
    if nothing_left_to_link(state, linked).await {
        return Err(ApiError::non_field("invalid_input", ALL_LINKED));
    }
    let link = LinkState {
        user_id: user.id,
        connect_from,
        ..LinkState::default()
    };
    let encoded = store_state(state, &token, &link).await?;
    Ok(StartLink {
        install_url: install_url(state, &encoded)?,
        connect_flow: FLOW_APP_INSTALL.into(),
    })
}

/// Whether every installation the user's GitHub account can see is linked already. Anything that
/// stops the check (no token, a failed refresh, GitHub down, garbage) means "unknown": false.
async fn nothing_left_to_link(state: &AppState, mut linked: Vec<Integration>) -> bool {
    let linked_ids: Vec<String> = linked
        .iter()
        .map(|i| i.installation_id().to_string())
        .collect();
    // The newest row with secrets provides the user token.
    linked.sort_by_key(|i| std::cmp::Reverse(i.record.created_at));
    let Some(integration) = linked.iter_mut().find(|i| i.has_secrets()) else {
        return false;
    };
    let Ok(token) = usable_user_token(state, integration).await else {
        return false;
    };
    let Ok(installations) = state.github.user_installations(&token).await else {
        return false;
    };
    let visible: Vec<String> = installations
        .iter()
        .filter_map(|i| i.get("id"))
        .map(|id| match id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    !visible.is_empty() && visible.iter().all(|id| linked_ids.contains(id))
}

/// Where the callback sends the browser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Web,
    PosthogCode,
}

impl Client {
    fn of(link: Option<&LinkState>) -> Self {
        match link.and_then(|l| l.connect_from.as_deref()) {
            Some(POSTHOG_CODE) => Client::PosthogCode,
            _ => Client::Web,
        }
    }

    pub fn success(self) -> String {
        match self {
            Client::Web => "/settings/user-personal-integrations?github_link_success=1".into(),
            Client::PosthogCode => "/account-connected/github-integration?provider=github".into(),
        }
    }

    pub fn failure(self, reason: &str) -> String {
        match self {
            Client::Web => {
                format!("/settings/user-personal-integrations?github_link_error={reason}")
            }
            Client::PosthogCode => {
                format!("/account-connected/github-integration?provider=github&error={reason}")
            }
        }
    }
}

/// The query GitHub sends back to `/complete/github-link/`.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub installation_id: Option<String>,
    pub setup_action: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// The token inside a `state` value: `token=<t>&source=…`, or the whole value.
fn state_token(raw: &str) -> String {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
        .ok()
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| raw.to_string())
}

async fn peek_state(state: &AppState, raw: Option<&str>) -> Option<LinkState> {
    let token = state_token(raw?);
    let stored = state.kv.get(&format!("{STATE_PREFIX}{token}")).await?;
    serde_json::from_str(&stored).ok()
}

fn valid_installation_id(id: &str) -> bool {
    (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// `GET /complete/github-link/` for the logged-in `user`: the redirect target (B.5).
pub async fn complete(
    state: &AppState,
    ctx: &Context,
    user: &UserRecord,
    query: CallbackQuery,
) -> String {
    if let Some(error) = query.error.as_deref() {
        let client = Client::of(peek_state(state, query.state.as_deref()).await.as_ref());
        let reason = if error == "access_denied" {
            "access_denied"
        } else {
            "github_oauth_error"
        };
        return client.failure(reason);
    }
    let (Some(code), Some(raw_state)) = (
        query.code.as_deref().filter(|c| !c.is_empty()),
        query.state.as_deref().filter(|s| !s.is_empty()),
    ) else {
        let client = Client::of(peek_state(state, query.state.as_deref()).await.as_ref());
        return client.failure("missing_params");
    };
    let key = format!("{STATE_PREFIX}{}", state_token(raw_state));
    let link = state
        .kv
        .get(&key)
        .await
        .and_then(|s| serde_json::from_str::<LinkState>(&s).ok())
        .filter(|l| l.user_id == user.id);
    // Consume it; if another request consumed it first, this one is too late.
    let Some(link) = (match link {
        Some(link) => state.kv.take(&key).await.map(|_| link),
        None => None,
    }) else {
        return Client::Web.failure("invalid_state");
    };
    let client = Client::of(Some(&link));
    match link_installations(
        state,
        ctx,
        user,
        &link,
        code,
        query.installation_id.as_deref(),
    )
    .await
    {
        Ok(Linked::Done) => client.success(),
        Ok(Linked::Install(url)) => url,
        Err(reason) => client.failure(reason),
    }
}

enum Linked {
    Done,
    /// No installation yet: send the browser to the App's install page.
    Install(String),
}

/// Steps 5–11 of B.5; `Err` carries the reason code.
async fn link_installations(
    state: &AppState,
    ctx: &Context,
    user: &UserRecord,
    link: &LinkState,
    code: &str,
    query_installation: Option<&str>,
) -> Result<Linked, &'static str> {
    let flow = link.flow.as_deref();
    let mut installation_ids: Vec<String> = match flow {
        Some(FLOW_OAUTH_AUTHORIZE) => {
            let installation = link.installation_id.clone().ok_or("invalid_installation")?;
            let teams = accessible_team_ids(state, user.id)
                .await
                .map_err(|_| "invalid_installation")?;
            let known = state
                .store
                .team_integrations_of(&teams, KIND)
                .await
                .map_err(|_| "invalid_installation")?
                .iter()
                .any(|i| i.integration_id == installation);
            if !known {
                return Err("invalid_installation");
            }
            vec![installation]
        }
        Some(FLOW_OAUTH_DISCOVER) => Vec::new(),
        None => vec![
            query_installation
                .filter(|i| !i.is_empty())
                .ok_or("missing_params")?
                .to_string(),
        ],
        Some(_) => return Err("invalid_state"),
    };
    let oauth_redirect = matches!(flow, Some(FLOW_OAUTH_AUTHORIZE | FLOW_OAUTH_DISCOVER));

    let redirect = redirect_uri(state);
    let tokens = state
        .github
        .exchange_code(code, oauth_redirect.then_some(redirect.as_str()))
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "GitHub code exchange failed");
            "exchange_failed"
        })?;
    let user_token = tokens.access_token.clone().ok_or("exchange_failed")?;
    let (gh_id, gh_login) = state.github.user(&user_token).await.map_err(|e| {
        tracing::warn!(error = %e, "GitHub /user failed");
        "exchange_failed"
    })?;

    if flow == Some(FLOW_OAUTH_DISCOVER) {
        let installations = state
            .github
            .user_installations(&user_token)
            .await
            .map_err(|_| "installation_fetch_failed")?;
        if installations.is_empty() {
            let token = new_token();
            let plain = LinkState {
                user_id: user.id,
                connect_from: link.connect_from.clone(),
                ..LinkState::default()
            };
            let encoded = store_state(state, &token, &plain)
                .await
                .map_err(|_| "installation_fetch_failed")?;
            return install_url(state, &encoded)
                .map(Linked::Install)
                .map_err(|_| "installation_fetch_failed");
        }
        installation_ids = installations
            .iter()
            .filter_map(|i| i.get("id"))
            .map(|id| match id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
    }
    if installation_ids.iter().any(|id| !valid_installation_id(id)) {
        return Err("invalid_installation_id");
    }
    if flow != Some(FLOW_OAUTH_DISCOVER) {
        for id in &installation_ids {
            match state.github.user_installation_status(&user_token, id).await {
                Ok(200) => {}
                Ok(404) => return Err("installation_not_authorized"),
                Ok(_) | Err(_) => return Err("installation_verify_failed"),
            }
        }
    }
    for id in &installation_ids {
        let (account_login, account_type) = state.github.installation(id).await.map_err(|e| {
            tracing::warn!(error = %e, "GitHub installation lookup failed");
            "installation_fetch_failed"
        })?;
        let minted = state
            .github
            .mint_installation_token(id)
            .await
            .map_err(|e| match e {
                GithubError::Network(_) | GithubError::Config(_) => "installation_fetch_failed",
                _ => "installation_token_failed",
            })?;
        let now = state.clock.now_secs();
        let mut config = Map::new();
        config.insert("installation_id".into(), json!(id));
        config.insert(
            "expires_in".into(),
            json!(minted.expires_at.map_or(3600, |at| at - now)),
        );
        config.insert("refreshed_at".into(), json!(now));
        config.insert(
            "repository_selection".into(),
            json!(
                minted
                    .repository_selection
                    .clone()
                    .unwrap_or_else(|| "selected".into())
            ),
        );
        config.insert(
            "account".into(),
            json!({"type": account_type, "name": account_login.unwrap_or_else(|| id.clone())}),
        );
        config.insert(
            "github_user".into(),
            json!({"login": gh_login, "id": gh_id}),
        );
        set_user_token_expiry(
            &mut config,
            now,
            tokens.expires_in,
            tokens.refresh_token_expires_in,
        );
        let secrets = Secrets {
            access_token: Some(minted.token),
            user_access_token: Some(user_token.clone()),
            user_refresh_token: tokens.refresh_token.clone(),
        };
        let sealed = secrets
            .seal(state)
            .map_err(|_| "integration_create_failed")?;
        let log = [ctx.entry(
            state,
            Some(user.id),
            Activity::GithubIntegrationLinked,
            json!({ "installation_id": id, "account": config.get("account"), "github_user": gh_login }),
        )];
        state
            .store
            .upsert_user_integration(
                NewUserIntegration {
                    user_id: user.id,
                    kind: KIND.into(),
                    integration_id: id.clone(),
                    config: Value::Object(config),
                    sensitive_config: sealed,
                    now: state.clock.now(),
                },
                &log,
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "storing a GitHub integration failed");
                "integration_create_failed"
            })?;
        activity::committed(state, &log);
    }
    Ok(Linked::Done)
}

// --- github_login (B.12) ---

/// The user's GitHub login: a personal integration's (newest with tokens first), else that of a
/// project integration they connected; `None` when neither says.
pub async fn github_login(state: &AppState, user_id: i64) -> ApiResult<Option<String>> {
    let mut personal: Vec<Integration> = state
        .store
        .user_integrations(user_id, KIND)
        .await?
        .into_iter()
        .map(|r| Integration::load(state, r))
        .collect();
    personal.sort_by_key(|i| std::cmp::Reverse((i.has_secrets(), i.record.created_at)));
    if let Some(login) = personal.iter().find_map(Integration::github_login) {
        return Ok(Some(login.to_string()));
    }
    Ok(state
        .store
        .team_integrations_created_by(user_id, KIND)
        .await?
        .iter()
        .find_map(|i| {
            i.config
                .get("connecting_user_github_login")
                .and_then(Value::as_str)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
        }))
}

/// Whether the installation is also a project integration of the user's current team.
pub async fn shared_installations(state: &AppState, user: &UserRecord) -> ApiResult<Vec<String>> {
    let Some(team) = user.current_team_id else {
        return Ok(Vec::new());
    };
    Ok(state
        .store
        .team_integrations_of(&[team], KIND)
        .await?
        .into_iter()
        .map(|i| i.integration_id)
        .collect())
}

/// The user's personal GitHub integrations, oldest first.
pub async fn personal_integrations(
    state: &AppState,
    user: &UserRecord,
) -> ApiResult<Vec<UserIntegrationRecord>> {
    Ok(state.store.user_integrations(user.id, KIND).await?)
}

/// Removes a personal integration (and its tokens); not found when it is already gone.
pub async fn unlink(state: &AppState, ctx: &Context, integration: &Integration) -> ApiResult<()> {
    let log = [ctx.entry(
        state,
        Some(integration.record.user_id),
        Activity::GithubIntegrationUnlinked,
        json!({
            "installation_id": integration.installation_id(),
            "account": integration.config().get("account"),
        }),
    )];
    if state
        .store
        .delete_user_integration(integration.record.id, &log)
        .await?
    {
        activity::committed(state, &log);
        Ok(())
    } else {
        Err(ApiError::NotFound(NOT_FOUND.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_ids() {
        assert_eq!(state_token("token=abc&source=user_integration"), "abc");
        assert_eq!(state_token("plain"), "plain");
        assert_eq!(
            url_quote("token=ab&source=user_integration"),
            "token%3Dab%26source%3Duser_integration"
        );
        assert!(valid_installation_id("12345"));
        assert!(!valid_installation_id("12a"));
        assert!(!valid_installation_id(""));
        assert!(!valid_installation_id("123456789012345678901"));
    }

    #[test]
    fn repositories_keep_only_well_typed_keys() {
        let repo = json!({"id": 1, "name": "a", "full_name": "o/a", "private": "yes",
                          "language": "Rust", "permissions": {"push": true}});
        assert_eq!(
            project_repository(&repo).unwrap(),
            json!({"id": 1, "name": "a", "full_name": "o/a", "language": "Rust", "can_push": true})
        );
        assert!(project_repository(&json!({"id": "1", "name": "a", "full_name": "o/a"})).is_none());
    }
}
