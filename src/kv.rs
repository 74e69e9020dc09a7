//! Short-lived shared values (GitHub link states, branch lists, default branches): in Redis when
//! `HOGLET_REDIS_URL` is set, so every replica sees them; otherwise, and whenever Redis does not
//! answer, in this process (a moka cache).
//!
//! Expiry follows the app's [`Clock`] (so tests can move time): every value is stored with its
//! deadline and checked on read; the Redis TTL and the local cache's lifetime are only backstops
//! that free the memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use moka::sync::Cache;
use redis::aio::ConnectionManager;

use crate::time::{Clock, Micros, SECOND, system_now};

/// How long one Redis round trip may take before the local fallback answers.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
const PREFIX: &str = "hoglet:kv:";
const MAX_LOCAL_ENTRIES: u64 = 100_000;
/// The longest lifetime any caller asks for (the branch cache's day).
const MAX_TTL: Duration = Duration::from_secs(86_400);

#[derive(Clone)]
struct Entry {
    value: Arc<str>,
    expires_at: Micros,
}

pub struct Kv {
    local: Cache<String, Entry>,
    redis: Option<ConnectionManager>,
    clock: Clock,
    last_outage_log: AtomicI64,
}

impl Kv {
    pub fn new(redis: Option<ConnectionManager>, clock: Clock) -> Self {
        Self {
            local: Cache::builder()
                .max_capacity(MAX_LOCAL_ENTRIES)
                .time_to_live(MAX_TTL)
                .build(),
            redis,
            clock,
            last_outage_log: AtomicI64::new(0),
        }
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
            tracing::warn!(error = %error, "Redis unavailable: short-lived cache is local");
        }
    }

    /// `<deadline>:<value>`, as stored in Redis.
    fn encode(&self, value: &str, ttl: Duration) -> (Micros, String) {
        let expires_at = self.clock.now() + i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        (expires_at, format!("{expires_at}:{value}"))
    }

    fn decode(&self, stored: &str) -> Option<String> {
        let (deadline, value) = stored.split_once(':')?;
        let deadline: Micros = deadline.parse().ok()?;
        (deadline > self.clock.now()).then(|| value.to_string())
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let mut get = redis::cmd("GET");
            get.arg(format!("{PREFIX}{key}"));
            let call = get.query_async::<Option<String>>(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok(stored)) => return stored.and_then(|s| self.decode(&s)),
                Ok(Err(e)) => self.outage(&e),
                Err(_) => self.outage(&"timed out"),
            }
        }
        let entry = self.local.get(key)?;
        (entry.expires_at > self.clock.now()).then(|| entry.value.to_string())
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) {
        let (expires_at, stored) = self.encode(value, ttl);
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let mut set = redis::cmd("SET");
            set.arg(format!("{PREFIX}{key}"))
                .arg(stored)
                .arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            let call = set.query_async::<()>(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => self.outage(&e),
                Err(_) => self.outage(&"timed out"),
            }
        }
        self.local.insert(
            key.to_string(),
            Entry {
                value: Arc::from(value),
                expires_at,
            },
        );
    }

    /// Reads and deletes the value at once, so it can be used only once (one-time states).
    pub async fn take(&self, key: &str) -> Option<String> {
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let full = format!("{PREFIX}{key}");
            let mut pipe = redis::pipe();
            pipe.atomic().get(&full).del(&full).ignore();
            let call = pipe.query_async::<(Option<String>,)>(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok((stored,))) => return stored.and_then(|s| self.decode(&s)),
                Ok(Err(e)) => self.outage(&e),
                Err(_) => self.outage(&"timed out"),
            }
        }
        let entry = self.local.remove(key)?;
        (entry.expires_at > self.clock.now()).then(|| entry.value.to_string())
    }

    pub async fn delete(&self, key: &str) {
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let mut del = redis::cmd("DEL");
            del.arg(format!("{PREFIX}{key}"));
            let call = del.query_async::<()>(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, call).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.outage(&e),
                Err(_) => self.outage(&"timed out"),
            }
        }
        self.local.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_values_expire_with_the_clock_and_take_once() {
        let clock = Clock::manual();
        let kv = Kv::new(None, clock.clone());
        kv.set("a", "1:with:colons", Duration::from_secs(10)).await;
        assert_eq!(kv.get("a").await.as_deref(), Some("1:with:colons"));
        clock.advance(11 * SECOND);
        assert_eq!(kv.get("a").await, None);
        kv.set("b", "x", Duration::from_secs(10)).await;
        assert_eq!(kv.take("b").await.as_deref(), Some("x"));
        assert_eq!(kv.take("b").await, None);
        kv.set("c", "y", Duration::from_secs(10)).await;
        kv.delete("c").await;
        assert_eq!(kv.get("c").await, None);
        assert_eq!(kv.decode("garbage"), None);
    }
}
