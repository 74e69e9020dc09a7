//! Serving: building the state from configuration, binding, and running the server with its
//! background tasks (cache invalidation poller, janitor, mail worker) until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::cache::{self, Caches};
use crate::config::Config;
use crate::github::GithubClient;
use crate::http;
use crate::kv::Kv;
use crate::mail::MailWake;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::outbox;
use crate::passwords::PasswordHasher;
use crate::ratelimit::Limiter;
use crate::redis_link::RedisLink;
use crate::state::{AppState, Inner};
use crate::store::DynStore;
use crate::time::Clock;
use crate::web;

/// A built application bound to its listener, ready to serve.
pub struct App {
    state: AppState,
    listener: TcpListener,
    /// `/metrics` apart from the public port (`HOGLET_METRICS_BIND`).
    metrics_listener: Option<TcpListener>,
}

/// Options tests use to control the app; production uses the defaults.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    pub clock: Option<Clock>,
}

impl App {
    /// Connects to (and migrates) the database, binds the listener and prepares the state.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, BuildOptions::default()).await
    }

    pub async fn build_with(config: Config, options: BuildOptions) -> anyhow::Result<Self> {
        let store = crate::store::connect_within(&config.database_url, config.database_wait)
            .await
            .with_context(|| format!("opening the database {:?}", config.database_url))?;
        let secret_key = crate::secret_key::resolve(&config, &*store).await?;
        let bind = config.bind_addr()?;
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding {bind}"))?;
        let local = listener.local_addr()?;
        let metrics_listener = match config.metrics_addr()? {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding {addr} (HOGLET_METRICS_BIND)"))?,
            ),
            None => None,
        };
        let site_url = config
            .site_url
            .clone()
            .unwrap_or_else(|| format!("http://{local}"));
        let clock = options.clock.unwrap_or_else(Clock::system);
        let parts = StateParts {
            store,
            secret_key,
            site_url,
            clock,
        };
        let state = build_state(config, parts).await?;
        Ok(Self {
            state,
            listener,
            metrics_listener,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Where `/metrics` is served apart, if it is.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        Ok(self
            .metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and flushes pending writes.
    /// `on_ready` runs once the listener accepts connections. The mail worker runs alongside and
    /// stops with the server; mail it did not deliver stays queued for the next start.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        on_ready: impl FnOnce(SocketAddr),
    ) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let poller = tokio::spawn(cache::run_invalidation_poller(
            self.state.caches.clone(),
            self.state.store.clone(),
            stop_rx.clone(),
        ));
        let janitor = tokio::spawn(run_janitor(
            self.state.store.clone(),
            self.state.clock.clone(),
            Janitor {
                every: self.state.config.janitor_interval,
                activity_retention: self.state.config.activity_retention,
            },
            stop_rx.clone(),
        ));
        let mail_worker = tokio::spawn(outbox::run_worker(self.state.clone(), stop_rx.clone()));
        let metrics_server = self.metrics_listener.map(|listener| {
            let mut stop = stop_rx;
            let router = http::health::metrics_router(self.state.clone());
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.changed().await;
                };
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            })
        });
        let service = http::service(self.state.clone(), web::router(), web::not_found);
        let server = axum::serve(self.listener, service).with_graceful_shutdown(shutdown);
        on_ready(addr);
        let served = server.await;
        let _ = stop_tx.send(true);
        let _ = poller.await;
        let _ = mail_worker.await;
        let _ = janitor.await;
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
        served.context("serving HTTP")
    }
}

/// What the state is built from beside the configuration.
pub struct StateParts {
    pub store: DynStore,
    pub secret_key: SecretString,
    /// Base of every absolute URL, without a trailing slash.
    pub site_url: String,
    pub clock: Clock,
}

/// The state every use case reaches, from an opened store; binds nothing and starts no task
/// (the server's background tasks start in [`App::serve`]).
pub async fn build_state(config: Config, parts: StateParts) -> anyhow::Result<AppState> {
    let mailer = Mailer::new(&config.email, &config.email_from)?;
    let redis = match &config.redis_url {
        Some(url) => RedisLink::connect(url.expose_secret()).await,
        None => RedisLink::disabled(),
    };
    let clock = parts.clock;
    let limiter = Arc::new(Limiter::new(redis.clone(), clock.clone()));
    let kv = Arc::new(Kv::new(redis, clock.clone()));
    let github = Arc::new(GithubClient::new(&config.github).context("building the GitHub client")?);
    if github.key_is_unusable() {
        tracing::warn!(
            "HOGLET_GITHUB_APP_PRIVATE_KEY is set but is not a usable RSA key: GitHub App calls will fail"
        );
    }
    let geoip = match &config.geoip_database {
        Some(file) => Some(Arc::new(
            crate::geoip::GeoIp::open(file).context("HOGLET_GEOIP_DATABASE")?,
        )),
        None => None,
    };
    let metrics = Metrics::new(crate::metrics::Sources {
        writer: parts.store.writer_stats(),
        queries: parts.store.query_metrics(),
    });
    let caches = Caches::counted(crate::cache::CacheCounts {
        keys: metrics.cache_counters("keys"),
        sessions: metrics.cache_counters("sessions"),
        me: metrics.cache_counters("me"),
    });
    Ok(AppState(Arc::new(Inner {
        config,
        store: parts.store,
        caches: Arc::new(caches),
        clock,
        metrics,
        site_url: parts.site_url,
        secret_key: parts.secret_key,
        mailer,
        outbox: MailWake::default(),
        limiter,
        hasher: PasswordHasher::start(),
        kv,
        github,
        geoip,
    })))
}

/// The state an admin command runs its use cases with: the database (opened and migrated), mail
/// only logged, no Redis and no GitHub App. It holds a random secret key of
/// its own, so nothing it could sign or seal (emailed links, TOTP secrets, queued mail) would be
/// readable by a server: the commands that use it write none of these. What they write reaches
/// running servers through the invalidation feed, like any other write.
pub async fn command_state(
    database_url: crate::config::DatabaseUrl,
    database_wait: Duration,
) -> anyhow::Result<AppState> {
    let config = Config {
        database_wait,
        ..Config::new(database_url)
    };
    let store = open_command_store(&config).await?;
    let secret_key = SecretString::from(crate::crypto::random_token(48));
    command_state_from(config, store, secret_key).await
}

/// [`command_state`] with the server's own secret key (resolved as `serve` does: the variable or
/// the key file, checked against the database), for a command whose sealed values and keyed
/// hashes a server must read: the import's TOTP secrets and backup codes.
pub async fn command_state_with_secret_key(config: Config) -> anyhow::Result<AppState> {
    let store = open_command_store(&config).await?;
    let secret_key = crate::secret_key::resolve(&config, store.as_ref()).await?;
    command_state_from(config, store, secret_key).await
}

async fn open_command_store(config: &Config) -> anyhow::Result<DynStore> {
    crate::store::connect_within(&config.database_url, config.database_wait)
        .await
        .with_context(|| format!("opening the database {:?}", config.database_url))
}

async fn command_state_from(
    config: Config,
    store: DynStore,
    secret_key: SecretString,
) -> anyhow::Result<AppState> {
    let parts = StateParts {
        store,
        secret_key,
        site_url: "http://localhost".into(),
        clock: Clock::system(),
    };
    build_state(config, parts).await
}

/// How often the janitor runs and what it keeps.
struct Janitor {
    every: Duration,
    activity_retention: Duration,
}

/// Deletes what is over every `every` until `stop`: expired sessions, abandoned second-factor
/// logins, mail given up more than [`outbox::DEAD_MAIL_KEPT`] ago, and activity-log entries
/// older than the retention.
async fn run_janitor(
    store: DynStore,
    clock: Clock,
    janitor: Janitor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Each kind warns once when it starts failing, not at every round.
    let mut failing = [false; 3];
    let retention = janitor.activity_retention.as_micros() as i64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(janitor.every) => {}
            _ = stop.changed() => break,
        }
        let now = clock.now();
        let pending_before = now - crate::service::accounts::PENDING_LOGIN_AGE;
        let rounds = [
            ("sessions", store.prune_sessions(now, pending_before).await),
            (
                "dead mail",
                store.prune_dead_mail(now - outbox::DEAD_MAIL_KEPT).await,
            ),
            (
                "activity-log entries",
                store.prune_activity(now - retention).await,
            ),
        ];
        for ((what, result), failing) in rounds.into_iter().zip(&mut failing) {
            match result {
                Ok(pruned) => {
                    *failing = false;
                    if pruned > 0 {
                        tracing::debug!(pruned, "deleted expired {what}");
                    }
                }
                Err(e) => {
                    if !*failing {
                        tracing::warn!(error = %e, "cannot delete expired {what}; will retry");
                    }
                    *failing = true;
                }
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, before the
/// server announces itself: a signal sent right after the "listening" line must stop the server
/// gracefully, not kill it (axum polls the future only later, on a task of its own).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        match handlers {
            Ok((mut terminate, mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGTERM handler; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: draining in-flight requests");
    }
}
