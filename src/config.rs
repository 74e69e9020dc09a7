//! Runtime configuration. Every setting comes from a flag or a `HOGLET_*` variable, read by clap
//! in `cli.rs` with the parsers here, which check each value into a typed one (errors never repeat
//! a secret) whose `Debug` never shows a secret. [`Config::new`] holds the same defaults for code
//! and tests that build a configuration directly (a test checks the two agree).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// Where the data lives.
#[derive(Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// The full `postgres://` URL as given (may hold a password; tokio-postgres parses it).
    Postgres(String),
}

impl DatabaseUrl {
    /// Accepts `sqlite://relative.db`, `sqlite:///abs/path.db`, `sqlite:path` and
    /// `postgres://…` / `postgresql://…`. Errors never repeat the URL (it may hold a password).
    ///
    /// A PostgreSQL URL is checked with the `url` crate. A SQLite "URL" is a file path behind a
    /// prefix and is taken apart by hand: as a WHATWG URL, `sqlite://data/x.db` would make `data`
    /// a host, and percent-decoding would change paths that contain `%`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Url::parse(url).map_err(|e| anyhow::anyhow!("not a valid PostgreSQL URL: {e}"))?;
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                bail!("the SQLite URL names no file");
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        bail!(
            "use sqlite://FILE, sqlite:///ABSOLUTE/PATH, sqlite:FILE or postgres://USER@HOST:PORT/DB"
        )
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

/// The URL with its password (in the user info, or a `password` query parameter as libpq and
/// tokio-postgres accept) replaced by `***`. A URL that cannot be parsed is not shown at all.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = Url::parse(raw) else {
        return "<unparsable URL>".to_string();
    };
    if url.password().is_some() && url.set_password(Some("***")).is_err() {
        return "<unparsable URL>".to_string();
    }
    if url.query_pairs().any(|(name, _)| name == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if name == "password" {
                    "***".into()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Who may use `POST /api/signup/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignupPolicy {
    /// Only while no user exists; that first user becomes staff.
    FirstUser,
    Open,
    Closed,
}

impl SignupPolicy {
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        match value {
            "first-user" => Ok(Self::FirstUser),
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            _ => bail!("must be first-user, open or closed"),
        }
    }
}

/// How outgoing mail leaves.
#[derive(Clone)]
pub enum EmailDelivery {
    /// Written to the log; counts as "email not configured" for PostHog's rules.
    Log,
    /// One `.eml` file per message in this directory.
    Directory(PathBuf),
    /// An SMTP relay (`smtp://user:pass@host:port`, `smtps://…` for implicit TLS).
    Smtp(SecretString),
}

impl EmailDelivery {
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        if value == "log" {
            return Ok(Self::Log);
        }
        if let Some(dir) = value.strip_prefix("file:") {
            if dir.is_empty() {
                bail!("file:DIR needs a directory");
            }
            return Ok(Self::Directory(PathBuf::from(dir)));
        }
        if value.starts_with("smtp://") || value.starts_with("smtps://") {
            let url =
                Url::parse(value).map_err(|e| anyhow::anyhow!("not a valid SMTP URL: {e}"))?;
            if !url.has_host() || url.host_str() == Some("") {
                bail!("the SMTP URL names no host");
            }
            return Ok(Self::Smtp(SecretString::from(value.to_string())));
        }
        bail!("must be log, file:DIR or smtp://USER:PASS@HOST:PORT (smtps:// for implicit TLS)")
    }

    /// PostHog's `is_email_available()`: real delivery is set up.
    pub fn is_configured(&self) -> bool {
        !matches!(self, Self::Log)
    }
}

impl fmt::Debug for EmailDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Log => f.write_str("log"),
            Self::Directory(dir) => write!(f, "file:{}", dir.display()),
            Self::Smtp(url) => f.write_str(&redact_url(url.expose_secret())),
        }
    }
}

/// The GitHub App hoglet acts as; every field is optional so GitHub features can answer "not
/// configured" instead of refusing to start.
#[derive(Clone, Default)]
pub struct GithubConfig {
    pub app_id: Option<String>,
    pub app_slug: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    pub private_key: Option<SecretString>,
    pub api_url: String,
    pub web_url: String,
}

impl fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubConfig")
            .field("app_id", &self.app_id)
            .field("app_slug", &self.app_slug)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("private_key", &self.private_key.as_ref().map(|_| "***"))
            .field("api_url", &self.api_url)
            .field("web_url", &self.web_url)
            .finish()
    }
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: DatabaseUrl,
    /// How long to keep retrying a PostgreSQL that does not answer at start (0: try once).
    pub database_wait: Duration,
    pub bind: String,
    /// `HOGLET_SECRET_KEY`; when unset, the key file holds the key (see [`crate::secret_key`]).
    pub secret_key: Option<SecretString>,
    /// `HOGLET_SECRET_KEY_FILE`; `None` means `<database path>.secret` on SQLite, none on PostgreSQL.
    pub secret_key_file: Option<PathBuf>,
    pub redis_url: Option<SecretString>,
    pub signup: SignupPolicy,
    pub email: EmailDelivery,
    /// No trailing slash; `None` means `http://<the bound address>`.
    pub site_url: Option<String>,
    pub github: GithubConfig,
    /// `organization.metadata.instance_tag` (PostHog's `INSTANCE_TAG`).
    pub instance_tag: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// The `From:` of outgoing mail.
    pub email_from: String,
    /// Login attempts one client IP may fail before it is locked out for ten minutes.
    pub login_failure_limit: u64,
    /// Whether PostHog's per-key burst/sustained throttles apply.
    pub rate_limit_keys: bool,
    /// Proxies whose `X-Forwarded-For` is believed (none by default).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How often expired sessions, abandoned logins and old dead mail are deleted while serving.
    pub janitor_interval: Duration,
    /// How long the activity log keeps an entry.
    pub activity_retention: Duration,
    /// A MaxMind DB file (City or Country) that places login sessions' addresses; none: no
    /// location is shown.
    pub geoip_database: Option<std::path::PathBuf>,
    /// `HOGLET_METRICS_BIND`: serve `/metrics` on this address only (not on the public port).
    pub metrics_bind: Option<String>,
}

/// `HOGLET_DATABASE_URL`'s default.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://hoglet.db";
/// `HOGLET_DATABASE_WAIT_SECONDS`'s default.
pub const DEFAULT_DATABASE_WAIT: Duration = Duration::from_secs(30);
/// `HOGLET_BIND`'s default.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";
/// `HOGLET_GITHUB_API_URL`'s default.
pub const DEFAULT_GITHUB_API_URL: &str = "https://api.github.com";
/// `HOGLET_GITHUB_WEB_URL`'s default.
pub const DEFAULT_GITHUB_WEB_URL: &str = "https://github.com";
/// `HOGLET_INSTANCE_TAG`'s default.
pub const DEFAULT_INSTANCE_TAG: &str = "none";
/// `HOGLET_MAX_BODY_BYTES`'s default: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// `HOGLET_EMAIL_FROM`'s default.
pub const DEFAULT_EMAIL_FROM: &str = "hoglet <noreply@hoglet.invalid>";
/// `HOGLET_LOGIN_FAILURE_LIMIT`'s default: PostHog's 30 failures per client IP.
pub const DEFAULT_LOGIN_FAILURE_LIMIT: u64 = 30;
/// `HOGLET_JANITOR_INTERVAL_SECONDS`'s default.
pub const DEFAULT_JANITOR_INTERVAL: Duration = Duration::from_secs(300);
/// `HOGLET_ACTIVITY_RETENTION_DAYS`'s default.
pub const DEFAULT_ACTIVITY_RETENTION_DAYS: u64 = 365;

impl Config {
    /// A configuration for the given database with every other setting at its default.
    pub fn new(database_url: DatabaseUrl) -> Self {
        Self {
            database_url,
            database_wait: DEFAULT_DATABASE_WAIT,
            bind: DEFAULT_BIND.into(),
            secret_key: None,
            secret_key_file: None,
            redis_url: None,
            signup: SignupPolicy::FirstUser,
            email: EmailDelivery::Log,
            site_url: None,
            github: GithubConfig {
                api_url: DEFAULT_GITHUB_API_URL.into(),
                web_url: DEFAULT_GITHUB_WEB_URL.into(),
                ..GithubConfig::default()
            },
            instance_tag: DEFAULT_INSTANCE_TAG.into(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            email_from: DEFAULT_EMAIL_FROM.into(),
            login_failure_limit: DEFAULT_LOGIN_FAILURE_LIMIT,
            rate_limit_keys: true,
            trusted_proxies: Vec::new(),
            janitor_interval: DEFAULT_JANITOR_INTERVAL,
            activity_retention: Duration::from_secs(DEFAULT_ACTIVITY_RETENTION_DAYS * 86_400),
            geoip_database: None,
            metrics_bind: None,
        }
    }

    /// Resolves `--bind`: `HOST:PORT`, or `:PORT` for loopback; port 0 picks a free port.
    pub fn bind_addr(&self) -> anyhow::Result<SocketAddr> {
        resolve_bind(&self.bind)
    }

    /// Where `/metrics` is served apart, if it is.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        self.metrics_bind.as_deref().map(resolve_bind).transpose()
    }
}

/// A listen address as `HOGLET_BIND` takes it (`:PORT` is loopback).
fn resolve_bind(bind: &str) -> anyhow::Result<SocketAddr> {
    {
        let address = if bind.starts_with(':') {
            format!("127.0.0.1{bind}")
        } else {
            bind.to_string()
        };
        use std::net::ToSocketAddrs;
        address
            .to_socket_addrs()
            .with_context(|| format!("invalid bind address {bind:?}"))?
            .next()
            .with_context(|| format!("bind address {bind:?} resolves to nothing"))
    }
}

/// `HOGLET_TRUSTED_PROXIES`: comma-separated CIDRs (`10.0.0.0/8`) or single addresses.
pub fn parse_trusted_proxies(value: &str) -> anyhow::Result<Vec<ipnet::IpNet>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!("{item:?} is not an address or CIDR (e.g. 10.0.0.0/8)")
                })
        })
        .collect()
}

/// An absolute `http://` or `https://` URL with a host and no query or fragment, returned in
/// normal form without a trailing slash (`HOGLET_SITE_URL` and the GitHub endpoints are
/// documented without one, and links are made by appending `/path`).
pub fn parse_base_url(value: &str) -> anyhow::Result<String> {
    let url = Url::parse(value.trim()).map_err(|e| anyhow::anyhow!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("must be an http:// or https:// URL");
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("the URL names no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("must not have a query or fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!("must not hold a user name or password");
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// `HOGLET_BIND`: `HOST:PORT` (`[::1]:PORT` for IPv6) or `:PORT` for loopback. The host is
/// resolved when the server binds; here only the shape and the port are checked.
pub fn parse_bind(value: &str) -> anyhow::Result<String> {
    let Some((host, port)) = value.rsplit_once(':') else {
        bail!("must be HOST:PORT or :PORT");
    };
    if port.parse::<u16>().is_err() {
        bail!("{port:?} is not a port number (0 to 65535)");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        bail!("an IPv6 address needs brackets: [ADDRESS]:PORT");
    }
    Ok(value.to_string())
}

/// `HOGLET_EMAIL_FROM`: one mailbox, `address@domain` or `Name <address@domain>`.
pub fn parse_mailbox(value: &str) -> anyhow::Result<String> {
    value.parse::<lettre::message::Mailbox>().map_err(|e| {
        anyhow::anyhow!("not an email address (Name <user@domain> or user@domain): {e}")
    })?;
    Ok(value.to_string())
}

/// A whole number of at least 1.
pub fn parse_positive(value: &str) -> anyhow::Result<u64> {
    match value.trim().parse::<u64>() {
        Ok(0) => bail!("must be at least 1"),
        Ok(n) => Ok(n),
        Err(_) => bail!("not a whole number"),
    }
}

/// A whole number of at least 0.
pub fn parse_count(value: &str) -> anyhow::Result<u64> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| anyhow::anyhow!("not a whole number (0 or more)"))
}

/// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`), any case.
pub fn parse_bool(value: &str) -> anyhow::Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => bail!("must be true or false"),
    }
}

/// `HOGLET_LOG`: a `tracing` filter such as `debug` or `info,hoglet::access=debug`, checked
/// here so a typo stops the start instead of silently logging at the default level.
pub fn parse_log_filter(value: &str) -> anyhow::Result<String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map_err(|e| {
            anyhow::anyhow!("not a log filter (e.g. debug or info,hoglet::access=debug): {e}")
        })?;
    Ok(value.to_string())
}

/// How log lines are written on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json`, any case.
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => bail!("must be text or json"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        let path = |u: &str| match DatabaseUrl::parse(u).unwrap() {
            DatabaseUrl::Sqlite(p) => p.display().to_string(),
            DatabaseUrl::Postgres(_) => panic!("not sqlite"),
        };
        assert_eq!(path("sqlite://hoglet.db"), "hoglet.db");
        assert_eq!(path("sqlite:///abs/path.db"), "/abs/path.db");
        assert_eq!(path("sqlite:data/x.db"), "data/x.db");
        assert!(matches!(
            DatabaseUrl::parse("postgres://postgres@127.0.0.1:5432/x").unwrap(),
            DatabaseUrl::Postgres(_)
        ));
        assert!(DatabaseUrl::parse("mysql://x").is_err());
    }

    #[test]
    fn trusted_proxies() {
        let nets = parse_trusted_proxies(" 10.0.0.0/8, 192.168.1.7 ,::1,").unwrap();
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
        assert!(parse_trusted_proxies("").unwrap().is_empty());
        assert!(parse_trusted_proxies("10.0.0.0/33").is_err());
        assert!(parse_trusted_proxies("proxy.local").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let url = DatabaseUrl::parse("postgres://bob:hunter2@db:5432/x").unwrap();
        assert_eq!(format!("{url:?}"), "postgres://bob:***@db:5432/x");
        let mail = EmailDelivery::parse("smtp://me:pw@mail:25").unwrap();
        assert_eq!(format!("{mail:?}"), "smtp://me:***@mail:25");
        // libpq's password parameter, and a password that needs percent-encoding.
        assert_eq!(
            redact_url("postgresql://bob@db/x?sslmode=disable&password=hunter2"),
            "postgresql://bob@db/x?sslmode=disable&password=***"
        );
        let odd = redact_url("postgres://bob:p%40ss%3Aw@db:5432/x");
        assert_eq!(odd, "postgres://bob:***@db:5432/x");
        // Nothing to hide: shown as given.
        assert_eq!(
            redact_url("postgres://bob@db:5432/x"),
            "postgres://bob@db:5432/x"
        );
        // Not a URL at all: not shown.
        assert!(!redact_url("postgres://bob:hunter2@db:port/x").contains("hunter2"));
    }

    #[test]
    fn database_url_errors_do_not_repeat_the_url() {
        for bad in [
            "postgres://bob:hunter2@db:port/x",
            "mysql://bob:hunter2@db/x",
            "postgres://bob:hunter2@[db/x",
        ] {
            let error = format!("{:#}", DatabaseUrl::parse(bad).unwrap_err());
            assert!(!error.contains("hunter2"), "{error}");
        }
        let error = format!(
            "{:#}",
            EmailDelivery::parse("smtp://me:hunter2@").unwrap_err()
        );
        assert!(!error.contains("hunter2"), "{error}");
        assert!(DatabaseUrl::parse("sqlite:").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
        assert!(DatabaseUrl::parse("hoglet.db").is_err());
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            parse_base_url("https://hoglet.example.com/").unwrap(),
            "https://hoglet.example.com"
        );
        assert_eq!(
            parse_base_url("http://HOST:8080/app/").unwrap(),
            "http://host:8080/app"
        );
        assert_eq!(
            parse_base_url("http://127.0.0.1:9").unwrap(),
            "http://127.0.0.1:9"
        );
        for bad in [
            "not a url",
            "hoglet.example.com",
            "ftp://example.com",
            "javascript:alert(1)",
            "http://",
            "https://example.com/?x=1",
            "https://example.com/#top",
            "https://user:pw@example.com",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn small_settings() {
        assert!(parse_bind("127.0.0.1:0").is_ok());
        assert!(parse_bind(":8000").is_ok());
        assert!(parse_bind("[::1]:8000").is_ok());
        assert!(parse_bind("localhost:8000").is_ok());
        for bad in [
            "127.0.0.1",
            "127.0.0.1:http",
            "127.0.0.1:70000",
            "::1:80",
            "",
        ] {
            assert!(parse_bind(bad).is_err(), "{bad}");
        }
        assert!(parse_mailbox("Ops <ops@example.com>").is_ok());
        assert!(parse_mailbox("ops@example.com").is_ok());
        assert!(parse_mailbox("ops").is_err());
        assert_eq!(parse_positive("5").unwrap(), 5);
        assert!(parse_positive("0").is_err());
        assert!(parse_positive("-1").is_err());
        assert!(parse_positive("1e3").is_err());
        assert_eq!(parse_count("0").unwrap(), 0);
        assert!(parse_bool("TRUE").unwrap());
        assert!(!parse_bool("off").unwrap());
        assert!(parse_bool("maybe").is_err());
        assert_eq!(LogFormat::parse("JSON").unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::parse("Text").unwrap(), LogFormat::Text);
        assert!(LogFormat::parse("xml").is_err());
        assert!(parse_log_filter("info,hoglet::access=debug").is_ok());
        assert!(parse_log_filter("hoglet=loud").is_err());
        assert_eq!(SignupPolicy::parse("open").unwrap(), SignupPolicy::Open);
        assert!(SignupPolicy::parse("Open ").is_err());
    }
}
