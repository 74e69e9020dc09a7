//! Personal API key authentication (PostHog's `PersonalAPIKeyAuthentication`).

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::header;
use axum::http::request::Parts;

use super::BodyCredentials;
use super::{Caller, Credential};
use crate::cache::KeyEntry;
use crate::crypto;
use crate::domain::api_key;
use crate::error::{ApiError, ApiResult, Challenge};
use crate::state::AppState;

/// Where the key was found; named in the 401 detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    Header,
    Body,
    Query,
}

impl KeySource {
    fn describe(self) -> &'static str {
        match self {
            KeySource::Header => "Authorization header",
            KeySource::Body => "body",
            KeySource::Query => "query string",
        }
    }
}

/// The token of `Authorization: Bearer <token>` ("Bearer" is case-sensitive, as PostHog's regex).
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let rest = value.strip_prefix("Bearer")?;
    if !rest.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

/// The first candidate key: the bearer token, else `personal_api_key` in the body, else in the
/// query string. A `pha_` bearer token belongs to the OAuth authenticator.
fn find_key(parts: &Parts) -> Option<(Cow<'_, str>, KeySource)> {
    if let Some(token) = bearer_token(parts) {
        return (!token.starts_with("pha_")).then_some((Cow::Borrowed(token), KeySource::Header));
    }
    if let Some(key) = parts
        .extensions
        .get::<BodyCredentials>()
        .and_then(|body| body.personal_api_key.as_deref())
    {
        return Some((Cow::Borrowed(key), KeySource::Body));
    }
    let query = parts.uri.query()?;
    form_urlencoded_get(query, "personal_api_key").map(|k| (Cow::Owned(k), KeySource::Query))
}

fn form_urlencoded_get(query: &str, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

pub async fn authenticate(
    parts: &Parts,
    state: &AppState,
    challenge: Challenge,
) -> ApiResult<Option<Caller>> {
    let Some((key, source)) = find_key(parts) else {
        return Ok(None);
    };
    let invalid = || ApiError::AuthenticationFailed {
        detail: format!(
            "Personal API key found in request {} is invalid.",
            source.describe()
        )
        .into(),
        challenge,
    };
    let entry = lookup(state, &key).await?.ok_or_else(invalid)?;
    let now = state.clock.now();
    if entry.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::AuthenticationFailed {
            detail: "Personal API key has expired.".into(),
            challenge,
        });
    }
    state.caches.note_key_used(&entry, now);
    Ok(Some(Caller {
        user_id: entry.user_id,
        credential: Credential::ApiKey(entry),
    }))
}

/// Finds the key by its SHA-256 (cache, then database), then by PostHog's legacy PBKDF2 hashes
/// when any are stored, upgrading a legacy hit to SHA-256.
async fn lookup(state: &AppState, key: &str) -> ApiResult<Option<Arc<KeyEntry>>> {
    let digest = crypto::sha256(key.as_bytes());
    if let Some(entry) = state.caches.key(&digest) {
        return Ok(Some(entry));
    }
    let generation = state.caches.generation();
    let secure_value = format!("sha256${}", hex::encode(digest));
    let mut record = state.store.api_key_by_secure_value(&secure_value).await?;
    if record.is_none() && state.store.has_legacy_api_keys().await? {
        record = legacy_lookup(state, key, &secure_value).await?;
    }
    Ok(record.map(|record| {
        let entry = Arc::new(KeyEntry::from_record(&record));
        state.caches.put_key(digest, entry.clone(), generation);
        entry
    }))
}

async fn legacy_lookup(
    state: &AppState,
    key: &str,
    secure_value: &str,
) -> ApiResult<Option<crate::store::ApiKeyRecord>> {
    for iterations in api_key::LEGACY_ITERATIONS {
        let prefix = api_key::legacy_prefix(iterations);
        let candidates = state.store.legacy_api_keys(&prefix).await?;
        if candidates.is_empty() {
            continue;
        }
        let owned_key = key.to_string();
        let legacy = tokio::task::spawn_blocking(move || {
            api_key::legacy_secure_value(&owned_key, iterations)
        })
        .await
        .map_err(ApiError::internal)?;
        if let Some(mut record) = candidates.into_iter().find(|c| c.secure_value == legacy) {
            state
                .store
                .upgrade_api_key_hash(&record.id, secure_value)
                .await?;
            record.secure_value = secure_value.to_string();
            return Ok(Some(record));
        }
    }
    Ok(None)
}
