//! Rate limits and failure counters. In-process by default; shared by every replica through Redis
//! when `HOGLET_REDIS_URL` is set. Redis trouble never fails a request: the limiter falls back to
//! its local state and logs the outage (once a minute).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::ConnectionManager;

use crate::time::{Micros, SECOND, system_now};

/// How long one Redis round trip may take before the local fallback answers.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// A named limit: at most `limit` events per `window`.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub scope: &'static str,
    pub limit: usize,
    pub window: Duration,
}

impl Rate {
    pub const fn per_minute(scope: &'static str, limit: usize) -> Self {
        Self {
            scope,
            limit,
            window: Duration::from_secs(60),
        }
    }
    pub const fn per_hour(scope: &'static str, limit: usize) -> Self {
        Self {
            scope,
            limit,
            window: Duration::from_secs(3600),
        }
    }
    pub const fn per_day(scope: &'static str, limit: usize) -> Self {
        Self {
            scope,
            limit,
            window: Duration::from_secs(86_400),
        }
    }
}

#[derive(Default)]
struct Local {
    windows: HashMap<String, VecDeque<Micros>>,
    counters: HashMap<String, (u64, Micros)>,
}

pub struct Limiter {
    local: Mutex<Local>,
    redis: Option<ConnectionManager>,
    last_outage_log: AtomicI64,
}

/// Records an event if `limit` allows it (DRF's sliding history): returns the seconds to wait
/// when it does not.
const SLIDING_WINDOW: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now
";

impl Limiter {
    /// A limiter; with a Redis URL it shares state through Redis (connecting lazily).
    pub async fn new(redis_url: Option<&str>) -> Self {
        let redis = match redis_url {
            None => None,
            Some(url) => match redis::Client::open(url) {
                Ok(client) => {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(REDIS_TIMEOUT)
                        .set_response_timeout(REDIS_TIMEOUT)
                        .set_number_of_retries(1);
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        ConnectionManager::new_with_config(client, config),
                    )
                    .await
                    {
                        Ok(Ok(manager)) => Some(manager),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "Redis unreachable at start: rate limits are local until it answers");
                            None
                        }
                        Err(_) => {
                            tracing::warn!("Redis did not answer at start: rate limits are local");
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "invalid HOGLET_REDIS_URL: rate limits are local");
                    None
                }
            },
        };
        Self {
            local: Mutex::new(Local::default()),
            redis,
            last_outage_log: AtomicI64::new(0),
        }
    }

    pub fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// The shared Redis connection, for other short-lived shared state ([`crate::kv`]).
    pub fn redis_connection(&self) -> Option<ConnectionManager> {
        self.redis.clone()
    }

    fn outage(&self, error: &dyn std::fmt::Display) {
        let now = system_now();
        let last = self.last_outage_log.load(Ordering::Relaxed);
        if now - last > 60 * SECOND
            && self
                .last_outage_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %error, "Redis unavailable: using local rate limits");
        }
    }

    /// Counts one event against `rate` for `ident`; `Err(seconds)` when the limit is reached
    /// (the refused event is not counted).
    pub async fn check(&self, rate: Rate, ident: &str) -> Result<(), u64> {
        let key = format!("hoglet:throttle:{}:{ident}", rate.scope);
        let now = system_now();
        let window = rate.window.as_micros() as i64;
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let member = format!("{now}-{}", crate::crypto::random_alphanumeric(6));
            let script = redis::Script::new(SLIDING_WINDOW);
            let mut invocation = script.key(&key);
            invocation
                .arg(now / 1000)
                .arg(window / 1000)
                .arg(rate.limit)
                .arg(member);
            let call = invocation.invoke_async::<i64>(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(wait_ms)) => return Err((wait_ms.max(1) as u64).div_ceil(1000)),
                Ok(Err(e)) => self.outage(&e),
                Err(_) => self.outage(&"timed out"),
            }
        }
        self.check_local(&key, rate, now)
    }

    fn check_local(&self, key: &str, rate: Rate, now: Micros) -> Result<(), u64> {
        let window = rate.window.as_micros() as i64;
        let mut local = self.local.lock();
        let history = local.windows.entry(key.to_string()).or_default();
        while history.front().is_some_and(|t| *t <= now - window) {
            history.pop_front();
        }
        if history.len() < rate.limit {
            history.push_back(now);
            return Ok(());
        }
        let oldest = history.front().copied().unwrap_or(now);
        let wait = (oldest + window - now).max(1);
        Err((wait as u64).div_ceil(SECOND as u64))
    }

    /// Adds one failure to a counter that forgets everything `cool_off` after its last failure;
    /// returns the new count.
    pub async fn add_failure(&self, scope: &str, ident: &str, cool_off: Duration) -> u64 {
        let key = format!("hoglet:failures:{scope}:{ident}");
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let mut pipe = redis::pipe();
            pipe.atomic()
                .incr(&key, 1)
                .pexpire(&key, cool_off.as_millis() as i64)
                .ignore();
            match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<(u64,)>(&mut conn)).await {
                Ok(Ok((count,))) => return count,
                Ok(Err(e)) => self.outage(&e),
                Err(_) => self.outage(&"timed out"),
            }
        }
        let now = system_now();
        let mut local = self.local.lock();
        let entry = local.counters.entry(key).or_insert((0, now));
        if entry.1 <= now {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now + cool_off.as_micros() as i64;
        entry.0
    }

    /// The current failure count.
    pub async fn failures(&self, scope: &str, ident: &str) -> u64 {
        let key = format!("hoglet:failures:{scope}:{ident}");
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let mut get = redis::cmd("GET");
            get.arg(&key);
            let call = get.query_async::<Option<u64>>(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok(count)) => return count.unwrap_or(0),
                Ok(Err(e)) => self.outage(&e),
                Err(_) => self.outage(&"timed out"),
            }
        }
        let now = system_now();
        let local = self.local.lock();
        match local.counters.get(&key) {
            Some((count, until)) if *until > now => *count,
            _ => 0,
        }
    }

    /// Forgets old local entries (called periodically).
    pub fn prune(&self) {
        let now = system_now();
        let mut local = self.local.lock();
        local.counters.retain(|_, (_, until)| *until > now);
        local
            .windows
            .retain(|_, history| history.back().is_some_and(|t| *t > now - 86_400 * SECOND));
    }
}

pub type SharedLimiter = Arc<Limiter>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_sliding_window_and_failures() {
        let limiter = Limiter::new(None).await;
        let rate = Rate::per_minute("test", 2);
        assert!(limiter.check(rate, "a").await.is_ok());
        assert!(limiter.check(rate, "a").await.is_ok());
        let wait = limiter.check(rate, "a").await.unwrap_err();
        assert!((59..=60).contains(&wait), "{wait}");
        assert!(
            limiter.check(rate, "b").await.is_ok(),
            "other identities are separate"
        );
        assert_eq!(
            limiter
                .add_failure("login", "ip", Duration::from_secs(600))
                .await,
            1
        );
        assert_eq!(
            limiter
                .add_failure("login", "ip", Duration::from_secs(600))
                .await,
            2
        );
        assert_eq!(limiter.failures("login", "ip").await, 2);
        assert_eq!(limiter.failures("login", "other").await, 0);
    }
}
