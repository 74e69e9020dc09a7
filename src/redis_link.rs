//! The one Redis connection the rate limiter and the short-lived values ([`crate::kv`]) share.
//!
//! Redis is optional and never required for correctness: while it is unreachable, callers get
//! `None` at once and use their local state. A background task reconnects with backoff (0.5 s
//! doubling to 30 s), so a Redis that was down at start, or went away later, is used again as soon
//! as it answers. Each transition is logged once: "Redis unavailable…" when the link goes down,
//! "Redis connected again…" when it comes back.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use crate::time::{SECOND, system_now};

/// How long one Redis round trip may take before the caller falls back to local state.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// A handle on the shared Redis connection; cheap to clone. `RedisLink::disabled()` when no Redis
/// is configured.
#[derive(Clone)]
pub struct RedisLink(Option<Arc<Shared>>);

struct Shared {
    client: redis::Client,
    /// The live connection and its generation; `None` while Redis is down.
    current: RwLock<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    /// Wakes the reconnect task: the link went down, or the link is being dropped.
    wake: Arc<Notify>,
    /// When a command error (Redis answering, but refusing) was last logged.
    last_command_error_log: AtomicI64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The reconnect task holds only a weak reference; wake it so it sees the link is gone.
        self.wake.notify_one();
    }
}

impl RedisLink {
    /// No Redis: every call answers `None`.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// Connects to `url` (waiting at most a couple of seconds) and keeps reconnecting in the
    /// background whenever the connection is lost. An invalid URL disables Redis (logged).
    pub async fn connect(url: &str) -> Self {
        let client = match redis::Client::open(url) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "invalid HOGLET_REDIS_URL: rate limits and short-lived values are local");
                return Self::disabled();
            }
        };
        let shared = Arc::new(Shared {
            client,
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            last_command_error_log: AtomicI64::new(0),
        });
        if let Err(e) = shared.try_connect().await {
            tracing::warn!(error = %e, "Redis unavailable at start: rate limits and short-lived values are local until it answers; reconnecting in the background");
        }
        tokio::spawn(reconnect(Arc::downgrade(&shared), shared.wake.clone()));
        Self(Some(shared))
    }

    pub fn is_configured(&self) -> bool {
        self.0.is_some()
    }

    /// Whether Redis is connected now (calls go to Redis rather than straight to the fallback).
    pub fn is_up(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.current.read().is_some())
    }

    /// Runs one Redis round trip; `None` when Redis is not configured, known to be down, or
    /// fails now (then the caller uses its local state). A connection failure or a timeout marks
    /// the link down until the background task reconnects.
    pub async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let shared = self.0.as_ref()?;
        let (generation, connection) = shared.current.read().clone()?;
        match tokio::time::timeout(CALL_TIMEOUT, f(connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) if e.is_io_error() || e.is_unrecoverable_error() => {
                shared.mark_down(generation, &e);
                None
            }
            Ok(Err(e)) => {
                shared.command_failed(&e);
                None
            }
            Err(_) => {
                shared.mark_down(generation, &"no answer within 250 ms");
                None
            }
        }
    }

    /// Deletes `key` in Redis, if Redis is up (the caller forgets its local copy itself).
    pub async fn delete(&self, key: &str) {
        self.call(|mut connection| async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<()>(&mut connection)
                .await
        })
        .await;
    }
}

impl Shared {
    async fn try_connect(&self) -> anyhow::Result<()> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT);
        let attempt = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))??;
        // A connection may open before the server is ready to serve (loading its data set).
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current.write() = Some((generation, connection));
        Ok(())
    }

    /// Drops the connection of `generation` (not a newer one made since) and wakes the
    /// reconnect task; logs only the transition.
    fn mark_down(&self, generation: u64, error: &dyn std::fmt::Display) {
        let mut current = self.current.write();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
            drop(current);
            tracing::warn!(error = %error, "Redis unavailable: rate limits and short-lived values are local until it answers again");
            self.wake.notify_one();
        }
    }

    /// Redis answered with an error (read-only replica, out of memory…): this call falls back,
    /// the link stays up. Logged at most once a minute.
    fn command_failed(&self, error: &redis::RedisError) {
        let now = system_now();
        let last = self.last_command_error_log.load(Ordering::Relaxed);
        if now - last > 60 * SECOND
            && self
                .last_command_error_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %error, "Redis refused a command: using local state for it");
        }
    }
}

/// Reconnects whenever the link is down, with backoff; ends when the link is dropped.
async fn reconnect(link: Weak<Shared>, wake: Arc<Notify>) {
    let mut delay = FIRST_RETRY;
    loop {
        let Some(shared) = link.upgrade() else { return };
        if shared.current.read().is_some() {
            delay = FIRST_RETRY;
            drop(shared);
            wake.notified().await;
            continue;
        }
        let reconnected = shared.try_connect().await;
        drop(shared);
        match reconnected {
            Ok(()) => {
                tracing::info!(
                    "Redis connected again: rate limits and short-lived values are shared"
                );
                continue;
            }
            Err(e) => tracing::debug!(error = %e, retry_in = ?delay, "Redis still unavailable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}
