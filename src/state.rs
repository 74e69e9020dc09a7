//! The shared state every request handler, use case and background task reaches: a leaf above
//! the infrastructure (store, caches, limiter, mail) and below everything that uses it.

use std::ops::Deref;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::cache::Caches;
use crate::config::Config;
use crate::github::GithubClient;
use crate::kv::Kv;
use crate::mail::{MailWake, Mailer};
use crate::metrics::Metrics;
use crate::passwords::PasswordHasher;
use crate::ratelimit::Limiter;
use crate::store::DynStore;
use crate::time::Clock;

/// Everything a request handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: DynStore,
    pub caches: Arc<Caches>,
    pub clock: Clock,
    pub metrics: Metrics,
    /// Base of every absolute URL hoglet makes, without a trailing slash.
    pub site_url: String,
    pub secret_key: SecretString,
    pub mailer: Mailer,
    /// Wakes this process's mail worker.
    pub outbox: MailWake,
    pub limiter: Arc<Limiter>,
    pub hasher: PasswordHasher,
    /// Short-lived shared values (Redis when configured).
    pub kv: Arc<Kv>,
    pub github: Arc<GithubClient>,
    /// Places addresses (login sessions' locations), when a database is configured.
    pub geoip: Option<Arc<crate::geoip::GeoIp>>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Derives a purpose-bound key from `HOGLET_SECRET_KEY` (HMAC-SHA256 of the purpose).
    pub fn derived_key(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Mac, SimpleHmac};
        let mut mac =
            SimpleHmac::<sha2::Sha256>::new_from_slice(self.secret_key.expose_secret().as_bytes())
                .expect("HMAC takes keys of any length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}
