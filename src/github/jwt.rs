//! The GitHub App's own credential: an RS256 JWT signed with the App's private key.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::GithubError;

pub const CLIENT_ID_MISSING: &str = "GITHUB_APP_CLIENT_ID is not configured";
pub const PRIVATE_KEY_MISSING: &str = "GITHUB_APP_PRIVATE_KEY is not configured";
pub const KEY_UNUSABLE: &str =
    "Failed to create GitHub App JWT token. Please check your GITHUB_APP_PRIVATE_KEY format.";

/// Backdating of `iat` and lifetime after now, as PostHog signs (GitHub allows at most 10 minutes
/// between them and tolerates clocks that run a little ahead).
const SKEW_SECONDS: i64 = 300;
const LIFETIME_SECONDS: i64 = 300;

/// The App's signing key as configured: absent, unusable, or ready.
pub enum AppKey {
    Missing,
    Unusable,
    Ready(EncodingKey),
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AppKey::Missing => "AppKey::Missing",
            AppKey::Unusable => "AppKey::Unusable",
            AppKey::Ready(_) => "AppKey::Ready(<redacted>)",
        })
    }
}

impl AppKey {
    /// `HOGLET_GITHUB_APP_PRIVATE_KEY`: PEM text (literal `\n` sequences allowed, PKCS#1 or
    /// PKCS#8) or the path of a PEM file.
    pub fn load(configured: Option<&SecretString>) -> Self {
        let Some(configured) = configured else {
            return AppKey::Missing;
        };
        let text = configured.expose_secret().replace("\\n", "\n");
        let text = text.trim();
        if text.is_empty() {
            return AppKey::Missing;
        }
        let pem = if text.contains("-----BEGIN") {
            text.to_string()
        } else {
            match std::fs::read_to_string(text) {
                Ok(contents) => contents,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the GitHub App private key file");
                    return AppKey::Unusable;
                }
            }
        };
        match EncodingKey::from_rsa_pem(pem.trim().as_bytes()) {
            Ok(key) => {
                // A key that parses may still fail to sign (a malformed RSA key): try it once.
                if jsonwebtoken::encode(&Header::new(Algorithm::RS256), &probe_claims(), &key)
                    .is_ok()
                {
                    AppKey::Ready(key)
                } else {
                    tracing::warn!("the GitHub App private key cannot sign");
                    AppKey::Unusable
                }
            }
            Err(_) => {
                tracing::warn!("the GitHub App private key is not an RSA PEM key");
                AppKey::Unusable
            }
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a str,
}

fn probe_claims() -> Claims<'static> {
    Claims {
        iat: 0,
        exp: 600,
        iss: "probe",
    }
}

/// A JWT for the App, issued by `issuer` (the client id, else the App id), valid 10 minutes
/// around `now` (Unix seconds).
pub fn app_jwt(key: &AppKey, issuer: Option<&str>, now: i64) -> Result<String, GithubError> {
    let issuer = issuer.ok_or(GithubError::Config(CLIENT_ID_MISSING))?;
    let key = match key {
        AppKey::Missing => return Err(GithubError::Config(PRIVATE_KEY_MISSING)),
        AppKey::Unusable => return Err(GithubError::Config(KEY_UNUSABLE)),
        AppKey::Ready(key) => key,
    };
    let claims = Claims {
        iat: now - SKEW_SECONDS,
        exp: now + LIFETIME_SECONDS,
        iss: issuer,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, key)
        .map_err(|_| GithubError::Config(KEY_UNUSABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_garbage_keys() {
        assert!(matches!(AppKey::load(None), AppKey::Missing));
        let garbage = SecretString::from(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----",
        );
        assert!(matches!(AppKey::load(Some(&garbage)), AppKey::Unusable));
        let missing_file = SecretString::from("/nonexistent/key.pem");
        assert!(matches!(
            AppKey::load(Some(&missing_file)),
            AppKey::Unusable
        ));
        assert!(matches!(
            app_jwt(&AppKey::Missing, Some("Iv1.x"), 0),
            Err(GithubError::Config(PRIVATE_KEY_MISSING))
        ));
        assert!(matches!(
            app_jwt(&AppKey::Unusable, None, 0),
            Err(GithubError::Config(CLIENT_ID_MISSING))
        ));
        assert!(format!("{:?}", AppKey::Missing).contains("Missing"));
    }
}
