//! Prometheus metrics: request counts and latency by method, route and status, the mail
//! outbox (depth, deliveries, failed attempts, messages given up), the activity log's events,
//! cache hits and misses, database query time and errors by operation, the SQLite writer's queue
//! and group commits, the password-hash queue, the process (`process_*`, read from `/proc` at
//! each scrape) and the build.
//!
//! The handles of each (route, method, status) are created once and cached, so recording a
//! request costs two atomic updates and a read-locked lookup, without allocating.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::Method;
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// The label of `hoglet_security_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActivityLabels {
    activity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Hits and misses of one in-process cache (kept by [`crate::cache::Caches`]).
#[derive(Clone, Default)]
pub struct CacheCounters {
    pub hits: Counter,
    pub misses: Counter,
}

impl CacheCounters {
    /// Counts a lookup by its outcome and passes it on.
    pub fn count<T>(&self, found: Option<T>) -> Option<T> {
        match found {
            Some(_) => self.hits.inc(),
            None => self.misses.inc(),
        };
        found
    }
}

/// The SQLite writer's queue (writes waiting or in the current group) and the size of each
/// group committed together.
#[derive(Clone)]
pub struct WriterStats {
    pub queue_depth: Gauge,
    pub group_size: Histogram,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            queue_depth: Gauge::default(),
            group_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        }
    }
}

/// Time and failures of the store's operations (one per method of [`crate::store::Store`]),
/// kept by [`crate::store::Metered`]. An operation is its index in the names given to `new`, so
/// timing a call costs no label lookup once its histogram exists.
#[derive(Clone)]
pub struct QueryMetrics {
    names: &'static [&'static str],
    /// The histogram of each operation, taken from `durations` at its first call (so only
    /// operations that ran are exported).
    handles: Arc<[std::sync::OnceLock<Histogram>]>,
    durations: Family<OperationLabels, Histogram>,
    errors: Family<QueryErrorLabels, Counter>,
}

impl QueryMetrics {
    pub fn new(names: &'static [&'static str]) -> Self {
        Self {
            names,
            handles: names.iter().map(|_| std::sync::OnceLock::new()).collect(),
            // 10 µs … ~1.3 s
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_01, 2.0, 18))
            }),
            errors: Family::default(),
        }
    }

    /// Records one call of operation `index`. `failure` names a database failure
    /// (`unavailable`: the database did not answer; `other`: it answered with an error); a
    /// refusal the caller expects (a duplicate, a missing row, a limit) is an answer, not a
    /// failure.
    pub fn observe(&self, index: usize, seconds: f64, failure: Option<&'static str>) {
        let operation = self.names[index];
        self.handles[index]
            .get_or_init(|| {
                self.durations
                    .get_or_create(&OperationLabels { operation })
                    .clone()
            })
            .observe(seconds);
        if let Some(kind) = failure {
            self.errors
                .get_or_create(&QueryErrorLabels { operation, kind })
                .inc();
        }
    }
}

/// What the metrics read from the parts they describe.
#[derive(Default)]
pub struct Sources {
    /// Only SQLite has a writer thread.
    pub writer: Option<WriterStats>,
    /// The store's operations (absent for a store built without [`crate::store::Metered`]).
    pub queries: Option<QueryMetrics>,
}

type Handles = (Counter, Histogram);
/// route → (method, status) → handles.
type HandleCache = HashMap<String, HashMap<(Method, u16), Handles>>;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram>,
    handles: Arc<RwLock<HandleCache>>,
    pub mail: MailMetrics,
    /// Entries of the activity log recorded by this process, by activity.
    security_events: Family<ActivityLabels, Counter>,
    /// Passwords waiting to be hashed or verified, or being so (set at each scrape).
    pub password_hash_queue: Gauge,
    caches: Family<CacheLabels, Counter>,
}

/// Kept by the outbox worker ([`crate::outbox`]); the depth is read at each scrape.
#[derive(Clone, Default)]
pub struct MailMetrics {
    /// Messages neither delivered nor given up, in the whole database (every replica reports it).
    pub outbox_depth: Gauge,
    /// Messages this process delivered.
    pub delivered: Counter,
    /// Delivery attempts of this process that failed.
    pub failures: Counter,
    /// Messages this process gave up on after the last attempt.
    pub dead: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Sources::default())
    }
}

impl Metrics {
    pub fn new(sources: Sources) -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("hoglet");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            // 50 µs … ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by method, route and status",
            durations.clone(),
        );
        let mail = MailMetrics::default();
        registry.register(
            "mail_outbox_depth",
            "Mail messages waiting in the outbox (neither delivered nor given up)",
            mail.outbox_depth.clone(),
        );
        registry.register(
            "mail_delivered",
            "Mail messages delivered",
            mail.delivered.clone(),
        );
        registry.register(
            "mail_failures",
            "Mail delivery attempts that failed",
            mail.failures.clone(),
        );
        registry.register(
            "mail_dead",
            "Mail messages given up after the last attempt",
            mail.dead.clone(),
        );
        let security_events = Family::<ActivityLabels, Counter>::default();
        registry.register(
            "security_events",
            "Entries of the activity log recorded (logins, failures, 2FA and key changes, …), by activity",
            security_events.clone(),
        );
        let caches = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Lookups in hoglet's in-process caches (keys, sessions, me), by cache and result",
            caches.clone(),
        );
        if let Some(writer) = sources.writer {
            registry.register(
                "sqlite_writer_queue_depth",
                "Writes waiting for the SQLite writer thread or in its current group",
                writer.queue_depth,
            );
            registry.register(
                "sqlite_writer_group_size",
                "Writes committed together in one SQLite transaction (group commit)",
                writer.group_size,
            );
        }
        if let Some(queries) = sources.queries {
            registry.register(
                "db_query_duration_seconds",
                "Time of database operations (one per store method, its whole transaction), by operation",
                queries.durations,
            );
            registry.register(
                "db_query_errors",
                "Database operations that failed, by operation and kind (unavailable: no answer; other: an error answer)",
                queries.errors,
            );
        }
        let password_hash_queue = Gauge::default();
        registry.register(
            "password_hash_queue_depth",
            "Password hashes and verifications waiting or running",
            password_hash_queue.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The running hoglet's version (always 1)",
            build,
        );
        Self {
            registry: Arc::new(root),
            requests,
            durations,
            handles: Arc::default(),
            mail,
            security_events,
            password_hash_queue,
            caches,
        }
    }

    /// The hit and miss counters of one cache.
    pub fn cache_counters(&self, cache: &'static str) -> CacheCounters {
        let counter = |result| {
            self.caches
                .get_or_create(&CacheLabels { cache, result })
                .clone()
        };
        CacheCounters {
            hits: counter("hit"),
            misses: counter("miss"),
        }
    }

    pub fn record(&self, method: &Method, route: &str, status: u16, seconds: f64) {
        let key = (method.clone(), status);
        if let Some((count, duration)) = self.handles.read().get(route).and_then(|m| m.get(&key)) {
            count.inc();
            duration.observe(seconds);
            return;
        }
        let labels = RequestLabels {
            method: method.as_str().to_string(),
            route: route.to_string(),
            status,
        };
        let handles = (
            self.requests.get_or_create(&labels).clone(),
            self.durations.get_or_create(&labels).clone(),
        );
        handles.0.inc();
        handles.1.observe(seconds);
        self.handles
            .write()
            .entry(route.to_string())
            .or_default()
            .insert(key, handles);
    }

    /// Counts one entry of the activity log (or a refused login) under its activity.
    pub fn count_security_event(&self, activity: &str) {
        self.security_events
            .get_or_create(&ActivityLabels {
                activity: activity.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's own figures, read from `/proc/self` at each scrape (Linux; elsewhere nothing).
/// Names follow Prometheus's process collector (`process_*`, without hoglet's prefix).
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on every Linux ABI hoglet
/// builds for).
const TICKS_PER_SECOND: f64 = 100.0;

impl ProcessCollector {
    /// (cpu seconds, resident bytes, virtual bytes, threads, start time in Unix seconds).
    fn read() -> Option<(f64, f64, f64, f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        // Numbering of proc(5) minus 3: state is field 3.
        let cpu = (number(11)? + number(12)?) / TICKS_PER_SECOND;
        let threads = number(17)?;
        let started_ticks = number(19)?;
        let virtual_bytes = number(20)?;
        let resident_kib = std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()
            .ok()?;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        Some((
            cpu,
            resident_kib * 1024.0,
            virtual_bytes,
            threads,
            boot + started_ticks / TICKS_PER_SECOND,
        ))
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Some((cpu, resident, virtual_bytes, threads, start)) = Self::read() else {
            return Ok(());
        };
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64;
        ConstCounter::new(cpu).encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                resident,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                open_fds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                threads,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                start,
            ),
        ] {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}
