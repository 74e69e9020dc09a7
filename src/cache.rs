//! In-memory caches for the hot path and the invalidation that keeps them honest.
//!
//! * `keys`: verified personal API keys by the SHA-256 of the presented value (no negative entries:
//!   an unknown key always reaches the database, so keys created elsewhere work at once).
//! * `sessions`: logged-in browser sessions by id.
//! * `me`: the rendered `GET /api/users/@me/` body for key-authenticated callers, by user id.
//!
//! Every store write that changes what these show records an invalidation in the database; this
//! process applies its own at once and a poller applies everyone's (other replicas, admin commands)
//! within [`POLL_INTERVAL`]. Invalidating bumps a *stamp* (for a user, a key, a session, or
//! everything) instead of scanning the caches: each entry remembers the sequence number current
//! when its data was loaded and is served only while no stamp that covers it moved past that. This
//! also makes a load that raced with an invalidation harmless. Entries expire after a TTL as a
//! backstop.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::domain::scope::{ScopeDenied, ScopeNeed, check_key_scopes};
use crate::metrics::CacheCounters;
use crate::store::{ApiKeyRecord, DynStore, InvalidationRecord};
use crate::time::{Micros, SECOND, system_now};

/// Backstop lifetime of a cached credential: the bound on a revocation's reach if every
/// invalidation were lost.
pub const TTL: Duration = Duration::from_secs(5);
/// Backstop lifetime of a rendered response (it is only served after its key was checked).
pub const RENDER_TTL: Duration = Duration::from_secs(30);
/// How often the invalidation feed is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Re-read window of the feed, covering transactions that commit out of order.
const FEED_OVERLAP: Micros = 5 * SECOND;
/// Rows read per poll; a full batch means invalidations may have been skipped, so all is dropped.
const FEED_BATCH: usize = 10_000;
/// `last_used_at` is written at most this often per key, as PostHog does.
const LAST_USED_GRANULARITY: Micros = 3600 * SECOND;
/// A session's `last_activity_at` is written at most this often.
pub const LAST_ACTIVITY_GRANULARITY: Micros = 60 * SECOND;
const MAX_KEYS: usize = 100_000;
const MAX_RENDER_BYTES: usize = 64 * 1024 * 1024;
const SHARDS: usize = 16;
const STRIPES: usize = 4096;

/// A verified key as the authenticator needs it.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: String,
    /// Names the key as an actor in the activity log.
    pub label: String,
    pub user_id: i64,
    pub scopes: Vec<String>,
    pub expires_at: Option<Micros>,
    /// The answer for the `user` object (every hoglet endpoint's), decided once per key.
    user_scope: [Result<(), ScopeDenied>; 3],
    last_used_at: AtomicI64,
}

impl KeyEntry {
    pub fn from_record(record: &ApiKeyRecord) -> Self {
        let check = |need| check_key_scopes(&record.scopes, need);
        Self {
            id: record.id.clone(),
            label: record.label.clone(),
            user_id: record.user_id,
            scopes: record.scopes.clone(),
            expires_at: record.expires_at,
            user_scope: [
                check(ScopeNeed::Read("user")),
                check(ScopeNeed::Write("user")),
                check(ScopeNeed::NoKeyAccess),
            ],
            last_used_at: AtomicI64::new(record.last_used_at.unwrap_or(0)),
        }
    }

    /// Whether the key's scopes allow an action that needs `need`.
    pub fn allows(&self, need: ScopeNeed) -> Result<(), ScopeDenied> {
        match need {
            ScopeNeed::Read("user") => self.user_scope[0].clone(),
            ScopeNeed::Write("user") => self.user_scope[1].clone(),
            ScopeNeed::NoKeyAccess => self.user_scope[2].clone(),
            other => check_key_scopes(&self.scopes, other),
        }
    }
}

/// An authenticated browser session as the authenticator needs it.
#[derive(Debug)]
pub struct SessionEntry {
    pub id: String,
    pub user_id: i64,
    pub created_at: Micros,
    pub login_at: Option<Micros>,
    pub expires_at: Micros,
    pub csrf_token: String,
    /// What organization-enforced 2FA asks of this session (users.md §2.8), decided at load; a
    /// change to the organization, the user or their device invalidates the entry.
    pub two_factor: TwoFactorGate,
    /// When the session was last marked as used (0: never), see [`Caches::note_session_used`].
    pub last_activity_at: AtomicI64,
}

/// Organization-enforced 2FA as it applies to one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwoFactorGate {
    /// The user's current organization does not enforce 2FA.
    NotEnforced,
    /// Enforced, and the user has no TOTP device.
    SetupRequired,
    /// Enforced, the user has a device, and this session passed (`true`) or never passed the
    /// second factor.
    Enforced { verified: bool },
}

/// The feed position when a load started; taken before reading what will be cached.
#[derive(Clone, Copy, Debug)]
pub struct Generation(u64);

/// Invalidation stamps: a global sequence, the last "everything" bump, and striped bumps for
/// users, keys and sessions (a bump of a stripe shared by accident only costs a reload).
struct Stamps {
    seq: AtomicU64,
    all: AtomicU64,
    stripes: Box<[AtomicU64]>,
}

impl Stamps {
    fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            all: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now(&self) -> Generation {
        Generation(self.seq.load(Ordering::SeqCst))
    }

    fn bump(&self, stripe: usize) {
        let next = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.stripes[stripe].fetch_max(next, Ordering::SeqCst);
    }

    fn bump_all(&self) {
        let next = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.all.fetch_max(next, Ordering::SeqCst);
    }

    fn fresh(&self, loaded: Generation, stripes: &[usize]) -> bool {
        self.all.load(Ordering::SeqCst) <= loaded.0
            && stripes
                .iter()
                .all(|s| self.stripes[*s].load(Ordering::SeqCst) <= loaded.0)
    }
}

fn user_stripe(user_id: i64) -> usize {
    (user_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as usize % STRIPES
}

fn bytes_stripe(bytes: &[u8]) -> usize {
    let mut head = [0u8; 8];
    let n = bytes.len().min(8);
    head[..n].copy_from_slice(&bytes[..n]);
    // Offset so a key's stripe and a user's stripe of the same number differ.
    (u64::from_le_bytes(head) as usize).wrapping_add(STRIPES / 2) % STRIPES
}

struct Slot<V> {
    value: V,
    loaded: Generation,
    stripes: [usize; 2],
    expires: Instant,
    weight: usize,
}

/// FxHash-style mixing. Only verified credentials and user ids are ever inserted (keys are
/// SHA-256 digests an attacker cannot choose), so the flooding resistance of SipHash is not
/// needed, and its cost showed in the hot path's profile.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_i64(&mut self, word: i64) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastState = std::hash::BuildHasherDefault<FastHasher>;
type Shard<K, V> = RwLock<HashMap<K, Slot<V>, FastState>>;

/// A sharded map with a TTL and a weight budget; reads take a shard's read lock only.
struct StampedMap<K, V> {
    shards: Box<[Shard<K, V>]>,
    weights: Box<[AtomicUsize]>,
    hasher: FastState,
    ttl: Duration,
    max_weight_per_shard: usize,
}

impl<K: Hash + Eq, V: Clone> StampedMap<K, V> {
    fn new(ttl: Duration, max_weight: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            weights: (0..SHARDS).map(|_| AtomicUsize::new(0)).collect(),
            hasher: FastState::default(),
            ttl,
            max_weight_per_shard: (max_weight / SHARDS).max(1),
        }
    }

    fn shard(&self, key: &K) -> usize {
        // High bits: the map inside the shard uses the low ones.
        (self.hasher.hash_one(key) >> 56) as usize % SHARDS
    }

    fn get(&self, key: &K, stamps: &Stamps) -> Option<V> {
        let shard = self.shards[self.shard(key)].read();
        let slot = shard.get(key)?;
        (slot.expires > Instant::now() && stamps.fresh(slot.loaded, &slot.stripes))
            .then(|| slot.value.clone())
    }

    fn insert(&self, key: K, value: V, loaded: Generation, stripes: [usize; 2], weight: usize) {
        let index = self.shard(&key);
        let mut shard = self.shards[index].write();
        let now = Instant::now();
        if self.weights[index].load(Ordering::Relaxed) + weight > self.max_weight_per_shard {
            // Over budget: drop expired entries, then everything else in the shard if needed.
            shard.retain(|_, s| s.expires > now);
            if shard.values().map(|s| s.weight).sum::<usize>() + weight > self.max_weight_per_shard
            {
                shard.clear();
            }
            let total = shard.values().map(|s| s.weight).sum();
            self.weights[index].store(total, Ordering::Relaxed);
        }
        // Each entry lives a random 75–100 % of the TTL: entries loaded together (a burst of new
        // connections, a restart) would otherwise all expire together and reload in a herd, one
        // cause of a 22–29 ms p99 on cached `@me` over PostgreSQL.
        let lifetime = self.ttl.mul_f64(rand::random_range(0.75..=1.0));
        let slot = Slot {
            value,
            loaded,
            stripes,
            expires: now + lifetime,
            weight,
        };
        if let Some(old) = shard.insert(key, slot) {
            self.weights[index].fetch_sub(old.weight, Ordering::Relaxed);
        }
        self.weights[index].fetch_add(weight, Ordering::Relaxed);
    }

    fn remove(&self, key: &K) {
        let index = self.shard(key);
        if let Some(old) = self.shards[index].write().remove(key) {
            self.weights[index].fetch_sub(old.weight, Ordering::Relaxed);
        }
    }
}

pub struct Caches {
    stamps: Stamps,
    counts: CacheCounts,
    keys: StampedMap<[u8; 32], Arc<KeyEntry>>,
    sessions: StampedMap<String, Arc<SessionEntry>>,
    me: StampedMap<i64, Bytes>,
    pending_last_used: Mutex<Vec<(String, Micros)>>,
    pending_last_activity: Mutex<Vec<(String, Micros)>>,
}

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

/// Hits and misses of each cache, for `/metrics`.
#[derive(Clone, Default)]
pub struct CacheCounts {
    pub keys: CacheCounters,
    pub sessions: CacheCounters,
    pub me: CacheCounters,
}

impl Caches {
    pub fn new() -> Self {
        Self::counted(CacheCounts::default())
    }

    /// Caches whose lookups are counted in `counts`.
    pub fn counted(counts: CacheCounts) -> Self {
        Self {
            stamps: Stamps::new(),
            counts,
            keys: StampedMap::new(TTL, MAX_KEYS),
            sessions: StampedMap::new(TTL, MAX_KEYS),
            me: StampedMap::new(RENDER_TTL, MAX_RENDER_BYTES),
            pending_last_used: Mutex::new(Vec::new()),
            pending_last_activity: Mutex::new(Vec::new()),
        }
    }

    /// Take this before loading what will be cached.
    pub fn generation(&self) -> Generation {
        self.stamps.now()
    }

    pub fn key(&self, digest: &[u8; 32]) -> Option<Arc<KeyEntry>> {
        self.counts.keys.count(self.keys.get(digest, &self.stamps))
    }

    pub fn put_key(&self, digest: [u8; 32], entry: Arc<KeyEntry>, since: Generation) {
        let stripes = [bytes_stripe(&digest), user_stripe(entry.user_id)];
        self.keys.insert(digest, entry, since, stripes, 1);
    }

    pub fn session(&self, id: &str) -> Option<Arc<SessionEntry>> {
        self.counts
            .sessions
            .count(self.sessions.get(&id.to_string(), &self.stamps))
    }

    pub fn put_session(&self, entry: Arc<SessionEntry>, since: Generation) {
        let stripes = [
            bytes_stripe(entry.id.as_bytes()),
            user_stripe(entry.user_id),
        ];
        self.sessions
            .insert(entry.id.clone(), entry, since, stripes, 1);
    }

    pub fn invalidate_session(&self, id: &str) {
        self.stamps.bump(bytes_stripe(id.as_bytes()));
        self.sessions.remove(&id.to_string());
    }

    pub fn me(&self, user_id: i64) -> Option<Bytes> {
        self.counts.me.count(self.me.get(&user_id, &self.stamps))
    }

    pub fn put_me(&self, user_id: i64, body: Bytes, since: Generation) {
        let weight = body.len();
        let stripe = user_stripe(user_id);
        self.me
            .insert(user_id, body, since, [stripe, stripe], weight);
    }

    /// Drops what a user's change makes stale: their rendered responses, keys and sessions.
    pub fn invalidate_user(&self, user_id: i64) {
        self.stamps.bump(user_stripe(user_id));
        self.me.remove(&user_id);
    }

    /// Drops one credential, named by its stored `sha256$<hex>` value or `session$<id>`.
    pub fn invalidate_key(&self, secure_value: &str) {
        if let Some(session) = secure_value.strip_prefix("session$") {
            self.invalidate_session(session);
            return;
        }
        let digest = secure_value
            .strip_prefix("sha256$")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok());
        match digest {
            Some(digest) => {
                self.stamps.bump(bytes_stripe(&digest));
                self.keys.remove(&digest);
            }
            None => self.invalidate_all(),
        }
    }

    pub fn invalidate_all(&self) {
        self.stamps.bump_all();
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

    /// Notes that a session was used; at most once per [`LAST_ACTIVITY_GRANULARITY`] it queues
    /// a write (the compare-and-swap lets one of many concurrent requests queue it). In the
    /// common case this is one atomic load.
    pub fn note_session_used(&self, entry: &SessionEntry, now: Micros) {
        let last = entry.last_activity_at.load(Ordering::Relaxed);
        if now - last < LAST_ACTIVITY_GRANULARITY {
            return;
        }
        if entry
            .last_activity_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.pending_last_activity
                .lock()
                .push((entry.id.clone(), now));
        }
    }

    fn take_pending_last_used(&self) -> Vec<(String, Micros)> {
        std::mem::take(&mut *self.pending_last_used.lock())
    }

    /// Writes queued `last_used_at` (keys) and `last_activity_at` (sessions) values.
    pub async fn flush_last_used(&self, store: &DynStore) {
        let pending = self.take_pending_last_used();
        if !pending.is_empty()
            && let Err(e) = store.touch_api_keys(&pending).await
        {
            tracing::warn!(error = %e, keys = pending.len(), "could not record key use; will retry");
            self.pending_last_used.lock().extend(pending);
        }
        let sessions = std::mem::take(&mut *self.pending_last_activity.lock());
        if !sessions.is_empty()
            && let Err(e) = store.touch_sessions(&sessions).await
        {
            // The ids are session ids (the cookie's hash): counted, never logged.
            tracing::warn!(error = %e, sessions = sessions.len(), "could not record session activity; will retry");
            self.pending_last_activity.lock().extend(sessions);
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
                if records.len() >= FEED_BATCH {
                    // More changes than one read holds: some may be missing from this batch.
                    caches.invalidate_all();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session(last_activity_at: Micros) -> SessionEntry {
        SessionEntry {
            id: "stored-id".into(),
            user_id: 1,
            created_at: 0,
            login_at: Some(0),
            expires_at: Micros::MAX,
            csrf_token: String::new(),
            two_factor: TwoFactorGate::NotEnforced,
            last_activity_at: AtomicI64::new(last_activity_at),
        }
    }

    #[test]
    fn session_use_is_queued_once_a_minute_however_many_requests_race() {
        let caches = Caches::new();
        let entry = session(0);
        let t0 = 1_700_000_000 * SECOND;
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        caches.note_session_used(&entry, t0);
                    }
                });
            }
        });
        assert_eq!(
            *caches.pending_last_activity.lock(),
            [("stored-id".to_string(), t0)]
        );
        caches.note_session_used(&entry, t0 + LAST_ACTIVITY_GRANULARITY - 1);
        assert_eq!(caches.pending_last_activity.lock().len(), 1);
        caches.note_session_used(&entry, t0 + LAST_ACTIVITY_GRANULARITY);
        assert_eq!(caches.pending_last_activity.lock().len(), 2);
        // A session loaded with a recent stored value is not written again.
        let loaded = session(t0);
        caches.note_session_used(&loaded, t0 + SECOND);
        assert_eq!(caches.pending_last_activity.lock().len(), 2);
    }
}
