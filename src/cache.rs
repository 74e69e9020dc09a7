//! In-memory caches for the hot path and the invalidation that keeps them honest.
//!
//! * `keys`: verified personal API keys by the SHA-256 of the presented value (no negative entries:
//!   an unknown key always reaches the database, so keys created elsewhere work at once).
//! * `me`: the rendered `GET /api/users/@me/` body for key-authenticated callers, by user id.
//!
//! Every store write that changes what these show records an invalidation in the database; this
//! process applies its own at once and a poller applies everyone's (other replicas, admin commands)
//! within [`POLL_INTERVAL`]. Entries also expire after [`TTL`] as a backstop. A generation counter
//! stops a render that raced with an invalidation from being cached.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use moka::sync::Cache;
use parking_lot::Mutex;

use crate::store::{ApiKeyRecord, DynStore, InvalidationRecord};
use crate::time::{Micros, SECOND, system_now};

/// Backstop lifetime of any cached entry: the bound on staleness if every invalidation were lost.
pub const TTL: Duration = Duration::from_secs(5);
/// How often the invalidation feed is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Re-read window of the feed, covering transactions that commit out of order.
const FEED_OVERLAP: Micros = 5 * SECOND;
/// `last_used_at` is written at most this often per key, as PostHog does.
const LAST_USED_GRANULARITY: Micros = 3600 * SECOND;
const MAX_KEYS: u64 = 100_000;
const MAX_RENDER_BYTES: u64 = 64 * 1024 * 1024;

/// A verified key as the authenticator needs it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    pub user_id: i64,
    pub scopes: Vec<String>,
    pub expires_at: Option<Micros>,
    last_used_at: AtomicI64,
}

impl KeyEntry {
    pub fn from_record(record: &ApiKeyRecord) -> Self {
        Self {
            id: record.id.clone(),
            user_id: record.user_id,
            scopes: record.scopes.clone(),
            expires_at: record.expires_at,
            last_used_at: AtomicI64::new(record.last_used_at.unwrap_or(0)),
        }
    }
}

pub struct Caches {
    keys: Cache<[u8; 32], Arc<KeyEntry>>,
    me: Cache<i64, Bytes>,
    generation: AtomicU64,
    pending_last_used: Mutex<Vec<(String, Micros)>>,
}

/// Taken before loading what will be cached; [`Caches::put_me`] refuses it if anything was
/// invalidated in between.
#[derive(Clone, Copy, Debug)]
pub struct Generation(u64);

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

impl Caches {
    pub fn new() -> Self {
        Self {
            keys: Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(TTL)
                .support_invalidation_closures()
                .build(),
            me: Cache::builder()
                .max_capacity(MAX_RENDER_BYTES)
                .weigher(|_, body: &Bytes| u32::try_from(body.len()).unwrap_or(u32::MAX))
                .time_to_live(TTL)
                .build(),
            generation: AtomicU64::new(0),
            pending_last_used: Mutex::new(Vec::new()),
        }
    }

    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    pub fn key(&self, digest: &[u8; 32]) -> Option<Arc<KeyEntry>> {
        self.keys.get(digest)
    }

    pub fn put_key(&self, digest: [u8; 32], entry: Arc<KeyEntry>, since: Generation) {
        if self.generation.load(Ordering::Acquire) == since.0 {
            self.keys.insert(digest, entry);
        }
    }

    pub fn me(&self, user_id: i64) -> Option<Bytes> {
        self.me.get(&user_id)
    }

    pub fn put_me(&self, user_id: i64, body: Bytes, since: Generation) {
        if self.generation.load(Ordering::Acquire) == since.0 {
            self.me.insert(user_id, body);
        }
    }

    /// Drops what a user's change makes stale: their rendered responses and their keys.
    pub fn invalidate_user(&self, user_id: i64) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.me.invalidate(&user_id);
        // Predicates are checked on read, so no stale key is served after this returns.
        let _ = self
            .keys
            .invalidate_entries_if(move |_, entry| entry.user_id == user_id);
    }

    /// Drops one key, named by its stored `sha256$<hex>` value.
    pub fn invalidate_key(&self, secure_value: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let digest = secure_value
            .strip_prefix("sha256$")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok());
        match digest {
            Some(digest) => self.keys.invalidate(&digest),
            None => self.keys.invalidate_all(),
        }
    }

    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.me.invalidate_all();
        self.keys.invalidate_all();
    }

    pub fn apply(&self, record: &InvalidationRecord) {
        match (record.user_id, &record.key_hash) {
            (Some(user), key) => {
                self.invalidate_user(user);
                if let Some(key) = key {
                    self.invalidate_key(key);
                }
            }
            (None, Some(key)) => self.invalidate_key(key),
            (None, None) => self.invalidate_all(),
        }
    }

    /// Notes that a key was used; at most once per [`LAST_USED_GRANULARITY`] it queues a write.
    pub fn note_key_used(&self, entry: &KeyEntry, now: Micros) {
        let last = entry.last_used_at.load(Ordering::Relaxed);
        if now - last < LAST_USED_GRANULARITY {
            return;
        }
        if entry
            .last_used_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.pending_last_used.lock().push((entry.id.clone(), now));
        }
    }

    fn take_pending_last_used(&self) -> Vec<(String, Micros)> {
        std::mem::take(&mut *self.pending_last_used.lock())
    }

    /// Writes queued `last_used_at` values.
    pub async fn flush_last_used(&self, store: &DynStore) {
        let pending = self.take_pending_last_used();
        if pending.is_empty() {
            return;
        }
        if let Err(e) = store.touch_api_keys(&pending).await {
            tracing::warn!(error = %e, keys = pending.len(), "could not record key use; will retry");
            self.pending_last_used.lock().extend(pending);
        }
    }
}

/// Follows the invalidation feed until `shutdown` resolves, and flushes `last_used_at` writes.
pub async fn run_invalidation_poller(
    caches: Arc<Caches>,
    store: DynStore,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut watermark = system_now();
    let mut applied: HashMap<i64, Micros> = HashMap::new();
    let mut ticks: u64 = 0;
    let mut feed_was_down = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
        ticks += 1;
        match store.invalidations_since(watermark - FEED_OVERLAP).await {
            Ok(records) => {
                if feed_was_down {
                    // Invalidations may have been missed while the feed was unreadable.
                    caches.invalidate_all();
                    feed_was_down = false;
                }
                for record in records {
                    if applied.insert(record.seq, record.created_at).is_none() {
                        caches.apply(&record);
                    }
                    watermark = watermark.max(record.created_at);
                }
                applied.retain(|_, at| *at >= watermark - 2 * FEED_OVERLAP);
            }
            Err(e) => {
                if !feed_was_down {
                    tracing::warn!(error = %e, "cannot read the cache invalidation feed");
                }
                feed_was_down = true;
            }
        }
        if ticks.is_multiple_of(4) {
            caches.flush_last_used(&store).await;
        }
        if ticks.is_multiple_of(240) {
            let _ = store.prune_invalidations(system_now() - 600 * SECOND).await;
        }
    }
    caches.flush_last_used(&store).await;
}
