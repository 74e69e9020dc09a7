//! Runtime configuration. Every setting comes from a flag or a `HOGLET_*` variable (see `cli.rs`);
//! this module parses and validates them into typed values whose `Debug` never shows a secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

/// Where the data lives.
#[derive(Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// The full `postgres://` URL (may hold a password).
    Postgres(String),
}

impl DatabaseUrl {
    /// Accepts `sqlite://relative.db`, `sqlite:///abs/path.db`, `sqlite:path` and `postgres://…`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                bail!("the SQLite URL {url:?} names no file");
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        bail!("unsupported database URL {url:?}: use sqlite://FILE or postgres://USER@HOST:PORT/DB")
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

/// Replaces the password of `scheme://user:password@host…` by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
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
            other => bail!("HOGLET_SIGNUP must be first-user, open or closed (got {other:?})"),
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
                bail!("HOGLET_EMAIL=file:DIR needs a directory");
            }
            return Ok(Self::Directory(PathBuf::from(dir)));
        }
        if value.starts_with("smtp://") || value.starts_with("smtps://") {
            return Ok(Self::Smtp(SecretString::from(value.to_string())));
        }
        bail!("HOGLET_EMAIL must be log, file:DIR or smtp://… (got {value:?})")
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
}

/// `HOGLET_DATABASE_WAIT_SECONDS`'s default.
pub const DEFAULT_DATABASE_WAIT: Duration = Duration::from_secs(30);

impl Config {
    /// A configuration for the given database with every other setting at its default.
    pub fn new(database_url: DatabaseUrl) -> Self {
        Self {
            database_url,
            database_wait: DEFAULT_DATABASE_WAIT,
            bind: "127.0.0.1:8000".into(),
            secret_key: None,
            secret_key_file: None,
            redis_url: None,
            signup: SignupPolicy::FirstUser,
            email: EmailDelivery::Log,
            site_url: None,
            github: GithubConfig {
                api_url: "https://api.github.com".into(),
                web_url: "https://github.com".into(),
                ..GithubConfig::default()
            },
            instance_tag: "none".into(),
            max_body_bytes: 1024 * 1024,
            email_from: "hoglet <noreply@hoglet.invalid>".into(),
            login_failure_limit: 30,
            rate_limit_keys: true,
            trusted_proxies: Vec::new(),
            janitor_interval: Duration::from_secs(300),
        }
    }

    /// Resolves `--bind`: `HOST:PORT`, or `:PORT` for loopback; port 0 picks a free port.
    pub fn bind_addr(&self) -> anyhow::Result<SocketAddr> {
        let bind = if self.bind.starts_with(':') {
            format!("127.0.0.1{}", self.bind)
        } else {
            self.bind.clone()
        };
        use std::net::ToSocketAddrs;
        bind.to_socket_addrs()
            .with_context(|| format!("invalid bind address {:?}", self.bind))?
            .next()
            .with_context(|| format!("bind address {:?} resolves to nothing", self.bind))
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
                    anyhow::anyhow!(
                        "HOGLET_TRUSTED_PROXIES: {item:?} is not an address or CIDR (e.g. 10.0.0.0/8)"
                    )
                })
        })
        .collect()
}

/// Strips one trailing slash, as `HOGLET_SITE_URL` is documented without one.
pub fn normalize_site_url(url: &str) -> String {
    url.trim_end_matches('/').to_string()
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
        assert!(!format!("{mail:?}").contains("pw"));
    }
}
