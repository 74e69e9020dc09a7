//! Short-lived shared values (GitHub link states, branch lists, default branches): in Redis when
//! `HOGLET_REDIS_URL` is set, so every replica sees them; otherwise, and while Redis is unreachable
//! (see [`crate::redis_link`]), in this process (a moka cache).
//!
//! Expiry follows the app's [`Clock`] (so tests can move time): every value is stored with its
//! deadline and checked on read; the Redis TTL and the local cache's lifetime are only backstops
//! that free the memory.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use crate::redis_link::RedisLink;
use crate::time::{Clock, Micros};

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
    redis: RedisLink,
    clock: Clock,
}

impl Kv {
    pub fn new(redis: RedisLink, clock: Clock) -> Self {
        Self {
            local: Cache::builder()
                .max_capacity(MAX_LOCAL_ENTRIES)
                .time_to_live(MAX_TTL)
                .build(),
            redis,
            clock,
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
        let full = format!("{PREFIX}{key}");
        let shared = self
            .redis
            .call(|mut connection| async move {
                redis::cmd("GET")
                    .arg(full)
                    .query_async::<Option<String>>(&mut connection)
                    .await
            })
            .await;
        if let Some(stored) = shared {
            return stored.and_then(|s| self.decode(&s));
        }
        let entry = self.local.get(key)?;
        (entry.expires_at > self.clock.now()).then(|| entry.value.to_string())
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) {
        let (expires_at, stored) = self.encode(value, ttl);
        let full = format!("{PREFIX}{key}");
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let shared = self
            .redis
            .call(|mut connection| async move {
                redis::cmd("SET")
                    .arg(full)
                    .arg(stored)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await;
        if shared.is_some() {
            return;
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
        let full = format!("{PREFIX}{key}");
        let shared = self
            .redis
            .call(|mut connection| async move {
                redis::pipe()
                    .atomic()
                    .get(&full)
                    .del(&full)
                    .ignore()
                    .query_async::<(Option<String>,)>(&mut connection)
                    .await
            })
            .await;
        if let Some((stored,)) = shared {
            return stored.and_then(|s| self.decode(&s));
        }
        let entry = self.local.remove(key)?;
        (entry.expires_at > self.clock.now()).then(|| entry.value.to_string())
    }

    pub async fn delete(&self, key: &str) {
        self.redis.delete(&format!("{PREFIX}{key}")).await;
        self.local.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::SECOND;

    #[tokio::test]
    async fn local_values_expire_with_the_clock_and_take_once() {
        let clock = Clock::manual();
        let kv = Kv::new(RedisLink::disabled(), clock.clone());
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
