//! Rate limits, failure counters and login backoff. In-process by default; shared by every
//! replica through Redis when `HOGLET_REDIS_URL` is set. Redis trouble never fails a request: the
//! limiter falls back to its local state while the link is down (see [`crate::redis_link`]).
//!
//! Time comes from the app's [`Clock`] (so tests can move it), in Redis too: every script gets
//! "now" from the caller and stores deadlines; Redis TTLs only free the memory. The local state
//! lives in bounded caches whose entries expire once idle for their policy's lifetime, so a flood
//! of distinct identities cannot grow the process without bound.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use parking_lot::Mutex;

use crate::redis_link::RedisLink;
use crate::time::{Clock, Micros, SECOND};

/// Identities tracked locally per kind of state; beyond that the least useful entries go first.
const LOCAL_WINDOWS: u64 = 20_000;
const LOCAL_COUNTERS: u64 = 10_000;
const LOCAL_BACKOFFS: u64 = 10_000;

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

/// A lockout that doubles: once `threshold` failures fall within `window` (each failure keeps
/// the count alive for `window` more), the identity is locked for `base`, then `2·base`, `4·base`…
/// per further failure, never longer than `cap`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub scope: &'static str,
    pub threshold: u64,
    pub window: Duration,
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// Where `ident`'s state lives (the Redis key, and the local map's key).
    fn key(&self, ident: &str) -> String {
        format!("hoglet:backoff:{}:{ident}", self.scope)
    }

    /// How long the `failures`-th failure locks for (zero below the threshold).
    fn lock_for(&self, failures: u64) -> Micros {
        if failures < self.threshold {
            return 0;
        }
        let doublings = (failures - self.threshold).min(64) as u32;
        let lock = micros(self.base).saturating_mul(1u128 << doublings);
        lock.min(micros(self.cap)) as Micros
    }

    /// How long the state must be kept: a count lives `window` after its last failure, a lock
    /// at most `cap` after it.
    fn lifetime(&self) -> Duration {
        self.window.max(self.cap)
    }
}

fn micros(d: Duration) -> u128 {
    d.as_micros().min(i64::MAX as u128)
}

/// Whole seconds to wait, rounded up, at least 1.
fn wait_seconds(micros: Micros) -> u64 {
    (micros.max(1) as u64).div_ceil(SECOND as u64)
}

#[derive(Default)]
struct FailureCount {
    count: u64,
    until: Micros,
}

#[derive(Default)]
struct BackoffState {
    failures: u64,
    last_failure: Micros,
    locked_until: Micros,
}

impl BackoffState {
    /// Counts one failure at `now`; returns the remaining lock, if any.
    fn fail(&mut self, policy: &Backoff, now: Micros) -> Option<Micros> {
        if self.failures > 0 && now - self.last_failure >= micros(policy.window) as Micros {
            self.failures = 0;
        }
        self.failures += 1;
        self.last_failure = now;
        let lock = policy.lock_for(self.failures);
        if lock > 0 {
            self.locked_until = self.locked_until.max(now + lock);
        }
        self.wait(now)
    }

    fn wait(&self, now: Micros) -> Option<Micros> {
        (self.locked_until > now).then(|| self.locked_until - now)
    }
}

/// One identity's local state; it expires once unused for `lifetime`.
struct Slot<T> {
    lifetime: Duration,
    state: Mutex<T>,
}

struct IdleExpiry;

impl<T> moka::Expiry<String, Arc<Slot<T>>> for IdleExpiry {
    fn expire_after_create(&self, _: &String, slot: &Arc<Slot<T>>, _: Instant) -> Option<Duration> {
        Some(slot.lifetime)
    }
    fn expire_after_read(
        &self,
        _: &String,
        slot: &Arc<Slot<T>>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(slot.lifetime)
    }
    fn expire_after_update(
        &self,
        _: &String,
        slot: &Arc<Slot<T>>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.lifetime)
    }
}

/// Bounded local state by identity. The cache's own expiry (real time) only frees memory: every
/// decision compares deadlines from the app's clock, which is also what tests move.
struct LocalMap<T>(Cache<String, Arc<Slot<T>>>);

impl<T: Default + Send + Sync + 'static> LocalMap<T> {
    fn new(capacity: u64) -> Self {
        Self(
            Cache::builder()
                .max_capacity(capacity)
                .expire_after(IdleExpiry)
                .build(),
        )
    }

    fn update<R>(&self, key: &str, lifetime: Duration, f: impl FnOnce(&mut T) -> R) -> R {
        let slot = self.0.get_with_by_ref(key, || {
            Arc::new(Slot {
                lifetime,
                state: Mutex::new(T::default()),
            })
        });
        let mut state = slot.state.lock();
        f(&mut state)
    }

    fn read<R>(&self, key: &str, f: impl FnOnce(&T) -> R) -> Option<R> {
        let slot = self.0.get(key)?;
        let state = slot.state.lock();
        Some(f(&state))
    }

    fn remove(&self, key: &str) {
        self.0.invalidate(key);
    }
}

pub struct Limiter {
    redis: RedisLink,
    clock: Clock,
    windows: LocalMap<VecDeque<Micros>>,
    counters: LocalMap<FailureCount>,
    backoffs: LocalMap<BackoffState>,
}

/// Records an event if `limit` allows it (DRF's sliding history): returns the milliseconds to
/// wait when it does not. Times in milliseconds.
static SLIDING_WINDOW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.max(window, 1))
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(tonumber(oldest[2]) + window - now, 1)
",
    )
});

/// Adds one failure to a count that is forgotten `cool_off` after its last failure; returns the
/// new count. Times in milliseconds.
static ADD_FAILURE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local now = tonumber(ARGV[1])
local cool_off = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'n', 'until')
local n = tonumber(state[1]) or 0
if (tonumber(state[2]) or 0) <= now then n = 0 end
n = n + 1
redis.call('HSET', KEYS[1], 'n', n, 'until', string.format('%d', now + cool_off))
redis.call('PEXPIRE', KEYS[1], math.max(cool_off, 1))
return n
",
    )
});

/// [`BackoffState::fail`] in Redis: returns the remaining lock in milliseconds (0: none).
static BACKOFF_FAILURE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local base = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'n', 'last', 'until')
local n = tonumber(state[1]) or 0
local last = tonumber(state[2]) or 0
local locked_until = tonumber(state[3]) or 0
if n > 0 and now - last >= window then n = 0 end
n = n + 1
if n >= threshold then
  local lock = math.min(base * 2 ^ math.min(n - threshold, 64), cap)
  locked_until = math.max(locked_until, now + lock)
end
redis.call('HSET', KEYS[1], 'n', n, 'last', string.format('%d', now),
  'until', string.format('%d', locked_until))
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(now + window, locked_until) - now + 1))
if locked_until > now then return locked_until - now end
return 0
",
    )
});

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Limiter {
    /// A limiter that shares its state through `redis` while that is up, and keeps it in this
    /// process otherwise; deadlines follow `clock`.
    pub fn new(redis: RedisLink, clock: Clock) -> Self {
        Self {
            redis,
            clock,
            windows: LocalMap::new(LOCAL_WINDOWS),
            counters: LocalMap::new(LOCAL_COUNTERS),
            backoffs: LocalMap::new(LOCAL_BACKOFFS),
        }
    }

    /// Whether counters are shared through Redis right now.
    pub fn uses_redis(&self) -> bool {
        self.redis.is_up()
    }

    /// Counts one event against `rate` for `ident`; `Err(seconds)` when the limit is reached
    /// (the refused event is not counted).
    pub async fn check(&self, rate: Rate, ident: &str) -> Result<(), u64> {
        let key = format!("hoglet:throttle:{}:{ident}", rate.scope);
        let now = self.clock.now();
        let key_ref = &key;
        let shared = self
            .redis
            .call(|mut connection| async move {
                let member = format!("{now}-{}", crate::crypto::random_alphanumeric(6));
                SLIDING_WINDOW
                    .key(key_ref)
                    .arg(now / 1000)
                    .arg(millis(rate.window))
                    .arg(rate.limit)
                    .arg(member)
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await;
        match shared {
            Some(0) => Ok(()),
            Some(wait_ms) => Err(wait_seconds(wait_ms.saturating_mul(1000))),
            None => self.check_local(&key, rate, now),
        }
    }

    fn check_local(&self, key: &str, rate: Rate, now: Micros) -> Result<(), u64> {
        let window = micros(rate.window) as Micros;
        self.windows.update(key, rate.window, |history| {
            while history.front().is_some_and(|t| *t <= now - window) {
                history.pop_front();
            }
            if history.len() < rate.limit {
                history.push_back(now);
                return Ok(());
            }
            let oldest = history.front().copied().unwrap_or(now);
            Err(wait_seconds(oldest + window - now))
        })
    }

    /// Adds one failure to a counter that forgets everything `cool_off` after its last failure;
    /// returns the new count.
    pub async fn add_failure(&self, scope: &str, ident: &str, cool_off: Duration) -> u64 {
        let key = format!("hoglet:failures:{scope}:{ident}");
        let now = self.clock.now();
        let key_ref = &key;
        let shared = self
            .redis
            .call(|mut connection| async move {
                ADD_FAILURE
                    .key(key_ref)
                    .arg(now / 1000)
                    .arg(millis(cool_off))
                    .invoke_async::<u64>(&mut connection)
                    .await
            })
            .await;
        if let Some(count) = shared {
            return count;
        }
        self.counters.update(&key, cool_off, |counter| {
            if counter.until <= now {
                counter.count = 0;
            }
            counter.count += 1;
            counter.until = now + micros(cool_off) as Micros;
            counter.count
        })
    }

    /// The current failure count.
    pub async fn failures(&self, scope: &str, ident: &str) -> u64 {
        let key = format!("hoglet:failures:{scope}:{ident}");
        let now = self.clock.now();
        let key_ref = &key;
        let shared = self
            .redis
            .call(|mut connection| async move {
                redis::cmd("HMGET")
                    .arg(key_ref)
                    .arg("n")
                    .arg("until")
                    .query_async::<(Option<u64>, Option<i64>)>(&mut connection)
                    .await
            })
            .await;
        match shared {
            Some((count, until)) => match until {
                Some(until) if until > now / 1000 => count.unwrap_or(0),
                _ => 0,
            },
            None => self
                .counters
                .read(&key, |c| if c.until > now { c.count } else { 0 })
                .unwrap_or(0),
        }
    }

    /// Seconds to wait if `ident` is locked out now.
    pub async fn backoff_wait(&self, policy: Backoff, ident: &str) -> Option<u64> {
        let key = policy.key(ident);
        let now = self.clock.now();
        let key_ref = &key;
        let shared = self
            .redis
            .call(|mut connection| async move {
                redis::cmd("HGET")
                    .arg(key_ref)
                    .arg("until")
                    .query_async::<Option<i64>>(&mut connection)
                    .await
            })
            .await;
        let remaining = match shared {
            Some(until) => until.map(|until| (until - now / 1000).saturating_mul(1000)),
            None => self.backoffs.read(&key, |state| state.wait(now)).flatten(),
        };
        remaining.filter(|r| *r > 0).map(wait_seconds)
    }

    /// Counts one failure; once `threshold` failures fall within `window`, locks `ident` for
    /// base·2^(failures−threshold), capped at `cap`. Returns the lock's wait in seconds, if any.
    pub async fn backoff_failure(&self, policy: Backoff, ident: &str) -> Option<u64> {
        let key = policy.key(ident);
        let now = self.clock.now();
        let key_ref = &key;
        let shared = self
            .redis
            .call(|mut connection| async move {
                BACKOFF_FAILURE
                    .key(key_ref)
                    .arg(now / 1000)
                    .arg(millis(policy.window))
                    .arg(policy.threshold)
                    .arg(millis(policy.base))
                    .arg(millis(policy.cap))
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await;
        let remaining = match shared {
            Some(wait_ms) => Some(wait_ms.saturating_mul(1000)),
            None => self
                .backoffs
                .update(&key, policy.lifetime(), |state| state.fail(&policy, now)),
        };
        remaining.filter(|r| *r > 0).map(wait_seconds)
    }

    /// Forgets `ident` (a correct login).
    pub async fn backoff_clear(&self, policy: Backoff, ident: &str) {
        let key = policy.key(ident);
        self.redis.delete(&key).await;
        // Failures counted here while Redis was away are forgotten too.
        self.backoffs.remove(&key);
    }
}

pub type SharedLimiter = Arc<Limiter>;

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: Backoff = Backoff {
        scope: "test_login",
        threshold: 10,
        window: Duration::from_secs(900),
        base: Duration::from_secs(30),
        cap: Duration::from_secs(300),
    };

    fn redis_url() -> String {
        std::env::var("HOGLET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    fn local_limiter() -> (Limiter, Clock) {
        let clock = Clock::manual();
        (Limiter::new(RedisLink::disabled(), clock.clone()), clock)
    }

    /// A limiter on the shared test Redis; every test uses identities of its own.
    async fn redis_limiter() -> (Limiter, Clock) {
        let link = RedisLink::connect(&redis_url()).await;
        assert!(
            link.is_up(),
            "these tests need Redis at {} (set HOGLET_TEST_REDIS_URL)",
            redis_url()
        );
        let clock = Clock::manual();
        (Limiter::new(link, clock.clone()), clock)
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
    }

    async fn sliding_window(limiter: &Limiter, clock: &Clock) -> String {
        let rate = Rate::per_minute("test", 2);
        let (a, b) = (unique("a"), unique("b"));
        assert_eq!(limiter.check(rate, &a).await, Ok(()));
        clock.advance(10 * SECOND);
        assert_eq!(limiter.check(rate, &a).await, Ok(()));
        assert_eq!(
            limiter.check(rate, &a).await,
            Err(50),
            "the oldest leaves in 50 s"
        );
        assert_eq!(
            limiter.check(rate, &b).await,
            Ok(()),
            "identities are separate"
        );
        clock.advance(49 * SECOND);
        assert_eq!(limiter.check(rate, &a).await, Err(1));
        clock.advance(SECOND);
        assert_eq!(
            limiter.check(rate, &a).await,
            Ok(()),
            "the clock moved the window"
        );
        assert_eq!(limiter.check(rate, &a).await, Err(10));
        a
    }

    async fn failure_counts(limiter: &Limiter, clock: &Clock) {
        let ip = unique("ip");
        let cool_off = Duration::from_secs(600);
        assert_eq!(limiter.add_failure("test_lockout", &ip, cool_off).await, 1);
        clock.advance(599 * SECOND);
        assert_eq!(limiter.add_failure("test_lockout", &ip, cool_off).await, 2);
        assert_eq!(limiter.failures("test_lockout", &ip).await, 2);
        assert_eq!(limiter.failures("test_lockout", &unique("other")).await, 0);
        clock.advance(600 * SECOND);
        assert_eq!(limiter.failures("test_lockout", &ip).await, 0, "forgotten");
        assert_eq!(limiter.add_failure("test_lockout", &ip, cool_off).await, 1);
    }

    async fn backoff_doubles_up_to_the_cap(limiter: &Limiter, clock: &Clock) {
        let ident = unique("account");
        for i in 1..10 {
            assert_eq!(
                limiter.backoff_failure(LOGIN, &ident).await,
                None,
                "failure {i}"
            );
            assert_eq!(limiter.backoff_wait(LOGIN, &ident).await, None);
        }
        assert_eq!(
            limiter.backoff_failure(LOGIN, &ident).await,
            Some(30),
            "10th"
        );
        assert_eq!(limiter.backoff_wait(LOGIN, &ident).await, Some(30));
        assert_eq!(limiter.backoff_wait(LOGIN, &unique("other")).await, None);
        clock.advance(29 * SECOND + SECOND / 2);
        assert_eq!(
            limiter.backoff_wait(LOGIN, &ident).await,
            Some(1),
            "rounds up"
        );
        clock.advance(SECOND / 2);
        assert_eq!(limiter.backoff_wait(LOGIN, &ident).await, None);
        for expected in [60, 120, 240, 300, 300] {
            assert_eq!(limiter.backoff_failure(LOGIN, &ident).await, Some(expected));
            assert_eq!(limiter.backoff_wait(LOGIN, &ident).await, Some(expected));
            clock.advance(expected as Micros * SECOND);
            assert_eq!(limiter.backoff_wait(LOGIN, &ident).await, None);
        }
        // Failures count while each is within the window of the one before (899 s here)…
        clock.advance(599 * SECOND);
        assert_eq!(limiter.backoff_failure(LOGIN, &ident).await, Some(300));
        // …and are forgotten once the window passes without one.
        clock.advance(300 * SECOND + 900 * SECOND);
        for i in 1..10 {
            assert_eq!(
                limiter.backoff_failure(LOGIN, &ident).await,
                None,
                "again {i}"
            );
        }
        assert_eq!(limiter.backoff_failure(LOGIN, &ident).await, Some(30));
        limiter.backoff_clear(LOGIN, &ident).await;
        assert_eq!(limiter.backoff_wait(LOGIN, &ident).await, None, "cleared");
        assert_eq!(
            limiter.backoff_failure(LOGIN, &ident).await,
            None,
            "count restarted"
        );
    }

    #[tokio::test]
    async fn local_sliding_window_follows_the_clock() {
        let (limiter, clock) = local_limiter();
        sliding_window(&limiter, &clock).await;
    }

    #[tokio::test]
    async fn redis_sliding_window_follows_the_clock_and_lives_a_window() {
        let (limiter, clock) = redis_limiter().await;
        let ident = sliding_window(&limiter, &clock).await;
        let mut redis = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("hoglet:throttle:test:{ident}"))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            ttl > 59_000,
            "the history is kept for the whole window (PTTL {ttl} ms)"
        );
    }

    #[tokio::test]
    async fn local_failure_counts_follow_the_clock() {
        let (limiter, clock) = local_limiter();
        failure_counts(&limiter, &clock).await;
    }

    #[tokio::test]
    async fn redis_failure_counts_follow_the_clock() {
        let (limiter, clock) = redis_limiter().await;
        failure_counts(&limiter, &clock).await;
    }

    #[tokio::test]
    async fn local_backoff_doubles_up_to_the_cap() {
        let (limiter, clock) = local_limiter();
        backoff_doubles_up_to_the_cap(&limiter, &clock).await;
    }

    #[tokio::test]
    async fn redis_backoff_doubles_up_to_the_cap() {
        let (limiter, clock) = redis_limiter().await;
        backoff_doubles_up_to_the_cap(&limiter, &clock).await;
    }

    #[tokio::test]
    async fn local_state_stays_bounded_under_a_flood_of_identities() {
        let (limiter, _clock) = local_limiter();
        let rate = Rate::per_day("test_flood", 6);
        for i in 0..3 * LOCAL_WINDOWS {
            assert_eq!(limiter.check(rate, &format!("flood-{i}")).await, Ok(()));
        }
        limiter.windows.0.run_pending_tasks();
        assert!(
            limiter.windows.0.entry_count() <= LOCAL_WINDOWS,
            "{} entries",
            limiter.windows.0.entry_count()
        );
    }

    #[test]
    fn backoff_lock_lengths() {
        let at = |n| LOGIN.lock_for(n) / SECOND;
        assert_eq!(
            [at(9), at(10), at(11), at(12), at(13), at(14)],
            [0, 30, 60, 120, 240, 300]
        );
        assert_eq!(at(10_000), 300, "no overflow far past the cap");
        assert_eq!(wait_seconds(1), 1);
        assert_eq!(wait_seconds(SECOND), 1);
        assert_eq!(wait_seconds(SECOND + 1), 2);
    }
}
