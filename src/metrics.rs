//! Prometheus metrics: request counts and latency by method, route and status, the mail
//! outbox (depth, deliveries, failed attempts, messages given up) and the activity log's events.
//!
//! The handles of each (route, method, status) are created once and cached, so recording a
//! request costs two atomic updates and a read-locked lookup, without allocating.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::Method;
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
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
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hoglet");
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
        Self {
            registry: Arc::new(registry),
            requests,
            durations,
            handles: Arc::default(),
            mail,
            security_events,
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
