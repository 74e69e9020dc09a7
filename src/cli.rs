//! The command line: `hoglet serve | migrate | user | org | team | key | dashboard | openapi`.
//! Every setting is a flag and a `HOGLET_*` variable (flags win), parsed and checked here before
//! anything starts: a bad value stops the process with clap's usage error (exit code 2) naming
//! the flag and the variable. Secret values are never repeated in errors, `--help` or `Debug`.

use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

use crate::admin::{self, AdminError};
use crate::config::{self, Config, DatabaseUrl, EmailDelivery, LogFormat, SignupPolicy};
use crate::domain::scope;
use crate::serve::{App, command_state, shutdown_signal};
use crate::store::MembershipLevel;

/// `Option<T>` spelled so that clap takes the field as one value whose parser decides: an empty
/// value (`HOGLET_REDIS_URL=`) means unset, as it always has, instead of being an error.
type OrUnset<T> = Option<T>;
/// A comma-separated list parsed as one value (clap would otherwise expect one flag per item).
type List<T> = Vec<T>;

#[derive(Debug, Parser)]
#[command(
    name = "hoglet",
    version,
    about = "A fast, self-hostable server for PostHog's Users API"
)]
pub struct Cli {
    /// Log filter, e.g. debug or info,hoglet::access=debug [default: info for serve, warn for
    /// admin commands; RUST_LOG when this is unset].
    #[arg(
        long,
        env = "HOGLET_LOG",
        value_name = "FILTER",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(optional(config::parse_log_filter)),
        global = true
    )]
    pub log: OrUnset<String>,

    /// `RUST_LOG`, the fallback for `HOGLET_LOG`.
    #[arg(
        long = "rust-log",
        env = "RUST_LOG",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(optional(config::parse_log_filter)),
        global = true,
        hide = true
    )]
    pub rust_log: OrUnset<String>,

    /// Log line format on stderr: text or json (any case).
    #[arg(
        long,
        env = "HOGLET_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text",
        value_parser = setting(LogFormat::parse),
        global = true
    )]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter: `--log`/`HOGLET_LOG`, else `RUST_LOG`, else `info` for the server and
    /// `warn` for admin commands (whose stdout is their JSON answer).
    pub fn log_filter(&self) -> String {
        let default = match self.command {
            Command::Serve(_) => "info",
            _ => "warn",
        };
        self.log
            .clone()
            .or_else(|| self.rust_log.clone())
            .unwrap_or_else(|| default.to_string())
    }
}

/// Where the database is: taken by every command that opens one (not by `openapi` or
/// `healthcheck`), before or after its subcommand (`hoglet user --database-url … list`).
#[derive(Clone, Debug, Args)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://FILE (created if missing), sqlite:///ABSOLUTE/PATH, sqlite:FILE or
    /// postgres://USER[:PASSWORD]@HOST:PORT/DB.
    #[arg(
        long,
        env = "HOGLET_DATABASE_URL",
        value_name = "URL",
        default_value = config::DEFAULT_DATABASE_URL,
        value_parser = secret_setting(DatabaseUrl::parse),
        hide_env_values = true,
        global = true
    )]
    pub database_url: DatabaseUrl,

    /// Seconds to keep retrying a PostgreSQL that does not answer at start (0: try once).
    #[arg(
        long,
        env = "HOGLET_DATABASE_WAIT_SECONDS",
        value_name = "SECONDS",
        default_value_t = config::DEFAULT_DATABASE_WAIT.as_secs(),
        value_parser = setting(config::parse_count),
        global = true
    )]
    pub database_wait_seconds: u64,
}

impl DatabaseArgs {
    fn wait(&self) -> Duration {
        Duration::from_secs(self.database_wait_seconds)
    }

    /// Opens and migrates the database (waiting for a PostgreSQL that starts with hoglet).
    async fn store(&self) -> anyhow::Result<crate::store::DynStore> {
        crate::store::connect_within(&self.database_url, self.wait()).await
    }

    /// What the use cases need, built without a listener (see [`command_state`]).
    async fn state(&self) -> anyhow::Result<crate::state::AppState> {
        command_state(self.database_url.clone(), self.wait()).await
    }
}

/// A group of commands that share the database arguments.
#[derive(Debug, Args)]
pub struct WithDatabase<C: Subcommand> {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(subcommand)]
    pub command: C,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve HTTP until SIGTERM or Ctrl-C.
    Serve(Box<ServeArgs>),
    /// Apply pending migrations and exit.
    Migrate(DatabaseArgs),
    /// Copy the SQLite database, consistently, while a server may be writing it.
    Backup(BackupArgs),
    /// Put a backup in place of the SQLite database (which no running server may have open).
    Restore(RestoreArgs),
    /// Manage users.
    User(WithDatabase<UserCommand>),
    /// Manage organizations.
    Org(WithDatabase<OrgCommand>),
    /// Manage teams (projects).
    Team(WithDatabase<TeamCommand>),
    /// Manage personal API keys.
    Key(WithDatabase<KeyCommand>),
    /// Manage dashboards (what scene personalisation points at).
    Dashboard(WithDatabase<DashboardCommand>),
    /// Import accounts from another server.
    Import(WithDatabase<ImportCommand>),
    /// Exit 0 when the server answers ready (GET /_ready/: the database answers and is
    /// migrated), 1 otherwise; for supervisors and container health checks.
    Healthcheck(HealthcheckArgs),
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The readiness URL to ask [default: /_ready/ on the port of HOGLET_BIND, on loopback].
    #[arg(long, value_name = "URL", value_parser = setting(parse_http_url))]
    pub url: Option<String>,
    /// The server's listen address, to find its port when --url is not given.
    #[arg(
        long,
        env = "HOGLET_BIND",
        value_name = "ADDR",
        default_value = config::DEFAULT_BIND,
        value_parser = setting(config::parse_bind)
    )]
    pub bind: String,
    /// Seconds to wait for the answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_seconds: u64,
}

/// `healthcheck --url`: an http(s) URL.
fn parse_http_url(value: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(value)?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https"),
        "use an http:// or https:// URL"
    );
    Ok(value.to_string())
}

/// `/_ready/` on the loopback address of `bind` (a server bound to every address answers there).
fn readiness_url(bind: &str) -> String {
    let (host, port) = bind.rsplit_once(':').unwrap_or((bind, "8000"));
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        host => host,
    };
    format!("http://{host}:{port}/_ready/")
}

/// Asks the readiness URL; `Ok` with the answer only for a 200.
async fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<String> {
    let url = args.url.unwrap_or_else(|| readiness_url(&args.bind));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_seconds))
        .build()?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::ensure!(
        status.is_success(),
        "{url} answered {status}: {}",
        body.trim()
    );
    Ok(body)
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Copy organizations, teams, users (with their password hashes), memberships, personal API
    /// keys and 2FA devices from a PostHog database, keeping their ids. Reads PostHog in one
    /// read-only snapshot and never writes to it; rows already imported are left as they are.
    /// Prints a JSON summary.
    Posthog(Box<ImportPosthogArgs>),
}

#[derive(Debug, Args)]
pub struct ImportPosthogArgs {
    /// PostHog's PostgreSQL database, e.g. postgres://USER@HOST:5432/posthog (read only).
    #[arg(
        long,
        value_name = "URL",
        value_parser = secret_setting(parse_posthog_url),
        hide_env_values = true
    )]
    pub from: SecretString,
    /// Check everything and print the summary, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Import only this organization (its teams, members and their keys and devices);
    /// repeatable. Default: every organization.
    #[arg(long = "org", value_name = "ORG_UUID")]
    pub organizations: Vec<uuid::Uuid>,
    /// Rows read and written per transaction.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    #[command(flatten)]
    pub secret: SecretKeyArgs,
}

/// `--from`: a PostgreSQL URL (PostHog runs on nothing else).
fn parse_posthog_url(value: &str) -> anyhow::Result<SecretString> {
    match DatabaseUrl::parse(value)? {
        DatabaseUrl::Postgres(url) => Ok(SecretString::from(url)),
        DatabaseUrl::Sqlite(_) => {
            anyhow::bail!("PostHog's database is PostgreSQL: give a postgres:// URL")
        }
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Listen address HOST:PORT, or :PORT for loopback; port 0 picks a free port.
    #[arg(
        long,
        env = "HOGLET_BIND",
        value_name = "ADDR",
        default_value = config::DEFAULT_BIND,
        value_parser = setting(config::parse_bind)
    )]
    pub bind: String,
    /// Public base URL, http(s) without a trailing slash: the base of every link hoglet makes
    /// [default: http://<the bound address>].
    #[arg(
        long,
        env = "HOGLET_SITE_URL",
        value_name = "URL",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(optional(config::parse_base_url))
    )]
    pub site_url: OrUnset<String>,
    /// Comma-separated CIDRs or addresses of proxies whose X-Forwarded-For is believed
    /// [default: none].
    #[arg(
        long,
        env = "HOGLET_TRUSTED_PROXIES",
        value_name = "CIDRS",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(config::parse_trusted_proxies)
    )]
    pub trusted_proxies: List<ipnet::IpNet>,
    /// Redis URL for caches and rate limits shared across replicas [default: none, in-process].
    #[arg(
        long,
        env = "HOGLET_REDIS_URL",
        value_name = "URL",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true,
        value_parser = secret_setting(optional(parse_redis_url))
    )]
    pub redis_url: OrUnset<SecretString>,
    /// Who may sign up: first-user (only while no user exists), open or closed.
    #[arg(
        long,
        env = "HOGLET_SIGNUP",
        value_name = "POLICY",
        default_value = "first-user",
        value_parser = setting(SignupPolicy::parse)
    )]
    pub signup: SignupPolicy,
    /// Mail delivery: log, file:DIR (one .eml per message) or smtp://USER:PASS@HOST:PORT
    /// (smtps:// for implicit TLS).
    #[arg(
        long,
        env = "HOGLET_EMAIL",
        value_name = "DELIVERY",
        default_value = "log",
        hide_env_values = true,
        value_parser = secret_setting(EmailDelivery::parse)
    )]
    pub email: EmailDelivery,
    /// The From: of outgoing mail (Name <user@domain> or user@domain).
    #[arg(
        long,
        env = "HOGLET_EMAIL_FROM",
        value_name = "MAILBOX",
        default_value = config::DEFAULT_EMAIL_FROM,
        value_parser = setting(config::parse_mailbox)
    )]
    pub email_from: String,
    #[command(flatten)]
    pub secret: SecretKeyArgs,
    /// Largest accepted request body in bytes; a larger one answers 413.
    #[arg(
        long,
        env = "HOGLET_MAX_BODY_BYTES",
        value_name = "BYTES",
        default_value_t = config::DEFAULT_MAX_BODY_BYTES,
        value_parser = setting(|v| Ok(usize::try_from(config::parse_positive(v)?)?))
    )]
    pub max_body_bytes: usize,
    /// Failed logins one client IP may make before it is locked out for ten minutes.
    #[arg(
        long,
        env = "HOGLET_LOGIN_FAILURE_LIMIT",
        value_name = "COUNT",
        default_value_t = config::DEFAULT_LOGIN_FAILURE_LIMIT,
        value_parser = setting(config::parse_positive)
    )]
    pub login_failure_limit: u64,
    /// Whether PostHog's per-key throttles (480/min, 4800/h) apply: true or false.
    #[arg(
        long,
        env = "HOGLET_RATE_LIMIT_KEYS",
        value_name = "BOOL",
        default_value = "true",
        action = clap::ArgAction::Set,
        value_parser = setting(config::parse_bool)
    )]
    pub rate_limit_keys: bool,
    /// Seconds between deletions of expired sessions, abandoned logins and old dead mail.
    #[arg(
        long,
        env = "HOGLET_JANITOR_INTERVAL_SECONDS",
        value_name = "SECONDS",
        default_value_t = config::DEFAULT_JANITOR_INTERVAL.as_secs(),
        value_parser = setting(config::parse_positive)
    )]
    pub janitor_interval_seconds: u64,
    /// Days an entry of the activity log is kept before the janitor deletes it.
    #[arg(
        long,
        env = "HOGLET_ACTIVITY_RETENTION_DAYS",
        value_name = "DAYS",
        default_value_t = config::DEFAULT_ACTIVITY_RETENTION_DAYS,
        value_parser = setting(config::parse_positive)
    )]
    pub activity_retention_days: u64,
    /// A MaxMind DB file (GeoLite2/GeoIP2 or DB-IP lite, City or Country) that gives login
    /// sessions a location; unset, sessions show none.
    #[arg(long, env = "HOGLET_GEOIP_DATABASE", value_name = "PATH")]
    pub geoip_database: Option<std::path::PathBuf>,
    /// Serve /metrics on this address (HOST:PORT, or :PORT for loopback) instead of the public
    /// port, which then answers 404 there [default: /metrics on the public port].
    #[arg(
        long,
        env = "HOGLET_METRICS_BIND",
        value_name = "ADDR",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(optional(config::parse_bind))
    )]
    pub metrics_bind: OrUnset<String>,
    /// The organization.metadata.instance_tag of every organization (PostHog's INSTANCE_TAG).
    #[arg(
        long,
        env = "HOGLET_INSTANCE_TAG",
        value_name = "TAG",
        default_value = config::DEFAULT_INSTANCE_TAG
    )]
    pub instance_tag: String,
    #[command(flatten)]
    pub github: GithubArgs,
}

/// The GitHub App hoglet acts as; unset, GitHub features answer "not configured".
#[derive(Debug, Args)]
#[command(next_help_heading = "GitHub App")]
pub struct GithubArgs {
    /// The GitHub App's id.
    #[arg(
        long,
        env = "HOGLET_GITHUB_APP_ID",
        value_name = "ID",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(optional(|v| Ok(v.to_string())))
    )]
    pub github_app_id: OrUnset<String>,
    /// The GitHub App's slug (its install page is <web url>/apps/SLUG/installations/new).
    #[arg(
        long,
        env = "HOGLET_GITHUB_APP_SLUG",
        value_name = "SLUG",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(optional(|v| Ok(v.to_string())))
    )]
    pub github_app_slug: OrUnset<String>,
    /// The GitHub App's OAuth client id.
    #[arg(
        long,
        env = "HOGLET_GITHUB_APP_CLIENT_ID",
        value_name = "ID",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(optional(|v| Ok(v.to_string())))
    )]
    pub github_app_client_id: OrUnset<String>,
    /// The GitHub App's OAuth client secret.
    #[arg(
        long,
        env = "HOGLET_GITHUB_APP_CLIENT_SECRET",
        value_name = "SECRET",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true,
        value_parser = secret_setting(optional(|v| Ok(SecretString::from(v.to_string()))))
    )]
    pub github_app_client_secret: OrUnset<SecretString>,
    /// The GitHub App's private key: PEM text (PKCS#1 or PKCS#8, literal \n allowed) or the
    /// path of a PEM file.
    #[arg(
        long,
        env = "HOGLET_GITHUB_APP_PRIVATE_KEY",
        value_name = "PEM_OR_PATH",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true,
        value_parser = secret_setting(optional(|v| Ok(SecretString::from(v.to_string()))))
    )]
    pub github_app_private_key: OrUnset<SecretString>,
    /// Base URL of GitHub's REST API.
    #[arg(
        long,
        env = "HOGLET_GITHUB_API_URL",
        value_name = "URL",
        default_value = config::DEFAULT_GITHUB_API_URL,
        value_parser = setting(optional(config::parse_base_url))
    )]
    pub github_api_url: OrUnset<String>,
    /// Base URL of GitHub's web pages (install, authorize, token exchange).
    #[arg(
        long,
        env = "HOGLET_GITHUB_WEB_URL",
        value_name = "URL",
        default_value = config::DEFAULT_GITHUB_WEB_URL,
        value_parser = setting(optional(config::parse_base_url))
    )]
    pub github_web_url: OrUnset<String>,
}

/// Where the secret key comes from: the server's and every command's that seals or hashes
/// with it.
#[derive(Debug, Args)]
pub struct SecretKeyArgs {
    /// The secret key (prefer the variable or --secret-key-file: other local users can see
    /// flags) [default: the key file].
    #[arg(
        long,
        env = "HOGLET_SECRET_KEY",
        value_name = "KEY",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true,
        value_parser = secret_setting(optional(|v| Ok(SecretString::from(v.to_string()))))
    )]
    pub secret_key: OrUnset<SecretString>,
    /// File holding the secret key [default: <database path>.secret on SQLite, created on first
    /// start; PostgreSQL needs a key].
    #[arg(
        long,
        env = "HOGLET_SECRET_KEY_FILE",
        value_name = "PATH",
        default_value = "",
        hide_default_value = true,
        value_parser = setting(optional(|v| Ok(PathBuf::from(v))))
    )]
    pub secret_key_file: OrUnset<PathBuf>,
}

impl ServeArgs {
    /// The server's configuration: everything was parsed and checked by clap already.
    pub fn into_config(self) -> Config {
        let github = self.github;
        Config {
            database_wait: self.database.wait(),
            database_url: self.database.database_url,
            bind: self.bind,
            secret_key: self.secret.secret_key,
            secret_key_file: self.secret.secret_key_file,
            redis_url: self.redis_url,
            signup: self.signup,
            email: self.email,
            site_url: self.site_url,
            github: config::GithubConfig {
                app_id: github.github_app_id,
                app_slug: github.github_app_slug,
                client_id: github.github_app_client_id,
                client_secret: github.github_app_client_secret,
                private_key: github.github_app_private_key,
                api_url: github
                    .github_api_url
                    .unwrap_or_else(|| config::DEFAULT_GITHUB_API_URL.into()),
                web_url: github
                    .github_web_url
                    .unwrap_or_else(|| config::DEFAULT_GITHUB_WEB_URL.into()),
            },
            instance_tag: self.instance_tag,
            max_body_bytes: self.max_body_bytes,
            email_from: self.email_from,
            login_failure_limit: self.login_failure_limit,
            rate_limit_keys: self.rate_limit_keys,
            trusted_proxies: self.trusted_proxies,
            janitor_interval: Duration::from_secs(self.janitor_interval_seconds),
            activity_retention: Duration::from_secs(self.activity_retention_days * 86_400),
            geoip_database: self.geoip_database,
            metrics_bind: self.metrics_bind,
        }
    }
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The file to write the copy to; it must not exist unless --force.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// A backup made by `hoglet backup`: checked (integrity, schema version), then put in
    /// place of the database atomically.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

/// `HOGLET_REDIS_URL`: what the Redis client accepts (`redis://`, `rediss://`, `unix://`, …).
fn parse_redis_url(value: &str) -> anyhow::Result<SecretString> {
    redis::IntoConnectionInfo::into_connection_info(value).map_err(|e| {
        // The client's message ends "- KindName"; the kind adds nothing for a person.
        let text = e.to_string();
        let reason = text
            .split_once("- ")
            .map_or(text.as_str(), |(reason, _)| reason);
        anyhow::anyhow!("not a usable Redis URL: {}", reason.trim())
    })?;
    Ok(SecretString::from(value.to_string()))
}

/// Wraps a parser so that an empty (or blank) value means "unset".
fn optional<T>(
    parse: fn(&str) -> anyhow::Result<T>,
) -> impl Fn(&str) -> anyhow::Result<Option<T>> + Clone + Send + Sync + 'static
where
    T: 'static,
{
    move |value: &str| {
        if value.trim().is_empty() {
            Ok(None)
        } else {
            parse(value).map(Some)
        }
    }
}

/// A clap value parser for one setting: runs `parse` and, when it fails, answers a usage error
/// naming the flag and the variable, with the value unless it may be secret.
#[derive(Clone)]
pub struct SettingParser<F> {
    parse: F,
    secret: bool,
}

fn setting<T, F>(parse: F) -> SettingParser<F>
where
    F: Fn(&str) -> anyhow::Result<T> + Clone + Send + Sync + 'static,
{
    SettingParser {
        parse,
        secret: false,
    }
}

fn secret_setting<T, F>(parse: F) -> SettingParser<F>
where
    F: Fn(&str) -> anyhow::Result<T> + Clone + Send + Sync + 'static,
{
    SettingParser {
        parse,
        secret: true,
    }
}

impl<T, F> TypedValueParser for SettingParser<F>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(&str) -> anyhow::Result<T> + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let result = match value.to_str() {
            Some(text) => (self.parse)(text),
            None => Err(anyhow::anyhow!("not valid UTF-8")),
        };
        result.map_err(|reason| {
            let name = arg.map_or_else(|| "a setting".to_string(), setting_name);
            let shown = if self.secret {
                String::new()
            } else {
                format!(" {:?}", value.to_string_lossy())
            };
            cmd.clone().error(
                ErrorKind::ValueValidation,
                format!("invalid value{shown} for {name}: {reason:#}"),
            )
        })
    }
}

/// `--flag (HOGLET_NAME)`.
fn setting_name(arg: &clap::Arg) -> String {
    let flag = arg
        .get_long()
        .map_or_else(|| arg.get_id().to_string(), |long| format!("--{long}"));
    match arg.get_env() {
        Some(env) => format!("{flag} ({})", env.to_string_lossy()),
        None => flag,
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user with a password.
    Create {
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
        /// The password (prefer --password-stdin: other local users can see flags).
        #[arg(
            long,
            required_unless_present = "password_stdin",
            conflicts_with = "password_stdin"
        )]
        password: Option<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Accept a password the API's rules refuse (short, common, like the name).
        #[arg(long)]
        allow_weak_password: bool,
        /// First name shown in the app.
        #[arg(long, default_value = "")]
        first_name: String,
        /// Last name shown in the app.
        #[arg(long, default_value = "")]
        last_name: String,
        /// Make the user an instance admin.
        #[arg(long)]
        staff: bool,
    },
    /// List users, deactivated ones included, in id order.
    List {
        /// Only addresses containing this text (any case).
        #[arg(long)]
        email_contains: Option<String>,
        /// Only instance admins.
        #[arg(long)]
        staff: bool,
        /// At most this many users (1 to 10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// Show a user with their memberships, 2FA status, key and session counts.
    Show {
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
    },
    /// Set a user's password (read from stdin) and end all their sessions.
    SetPassword {
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
        /// Read the password from the first line of stdin (required: never in a flag).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Turn off a user's two-factor authentication (device and backup codes).
    #[command(name = "disable-2fa")]
    Disable2fa {
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
    },
    /// Deactivate a user: their sessions end and their keys stop working at once.
    Deactivate {
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
    },
    /// Reactivate a deactivated user.
    Activate {
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
    },
    /// Delete a user who belongs to no organization, with everything of theirs.
    Delete {
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
        /// Confirm the deletion (required).
        #[arg(long)]
        yes: bool,
    },
    /// Print the user's data export (the document of GET /api/users/@me/export/).
    Export {
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Level {
    Member,
    Admin,
    Owner,
}

impl From<Level> for MembershipLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Member => MembershipLevel::Member,
            Level::Admin => MembershipLevel::Admin,
            Level::Owner => MembershipLevel::Owner,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization (with its default project) owned by an existing user.
    Create {
        /// The name to show (1 to 64 characters).
        #[arg(long)]
        name: String,
        /// Email of the owner.
        #[arg(long)]
        owner: String,
    },
    /// Change an organization's name or whether its members' browser sessions need 2FA.
    Update {
        /// Organization id (uuid).
        #[arg(long)]
        org: String,
        /// New name (1 to 64 characters).
        #[arg(long)]
        name: Option<String>,
        /// Require two-factor authentication for members' browser sessions.
        #[arg(long = "enforce-2fa", value_name = "true|false")]
        enforce_2fa: Option<bool>,
    },
    /// Add an existing user to an organization.
    AddMember {
        /// Organization id (uuid).
        #[arg(long)]
        org: String,
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
        /// The member's level in the organization.
        #[arg(long, value_enum, default_value = "member")]
        level: Level,
    },
    /// Remove a user from an organization (not its only owner).
    RemoveMember {
        /// Organization id (uuid).
        #[arg(long)]
        org: String,
        /// The user's login email (any case).
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Create a team (project) in an organization.
    Create {
        /// Organization id (uuid).
        #[arg(long)]
        org: String,
        /// The name to show (1 to 64 characters).
        #[arg(long)]
        name: String,
    },
    /// Register a GitHub App installation as the team's project-level GitHub integration.
    LinkGithub {
        /// Team (project) id.
        #[arg(long)]
        team: i64,
        /// The GitHub App installation id.
        #[arg(long)]
        installation_id: String,
        /// Email of the user who connected the installation.
        #[arg(long)]
        created_by: Option<String>,
        /// That user's GitHub login.
        #[arg(long)]
        github_login: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a personal API key; the value is printed once.
    Create {
        /// Email of the key's owner.
        #[arg(long)]
        email: String,
        /// A name for the key, to tell it apart (1 to 40 characters).
        #[arg(long)]
        label: String,
        /// Comma-separated scopes, e.g. `user:read,user:write`, or `*` for every scope.
        #[arg(long, value_name = "SCOPES", value_parser = setting(parse_scopes), long_help = scopes_help())]
        scopes: List<String>,
        /// Optional expiry (RFC 3339, e.g. 2027-01-31T00:00:00Z), after which the key is refused.
        #[arg(long, value_name = "TIME", value_parser = setting(parse_time))]
        expires_at: Option<crate::time::Micros>,
    },
    /// List a user's keys (metadata only, never the values).
    List {
        /// Email of the keys' owner.
        #[arg(long)]
        email: String,
    },
    /// Delete a key by id; it stops working at once.
    Revoke {
        /// The key's id (from `key list`).
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DashboardCommand {
    /// Create a dashboard in a team.
    Create {
        /// Team (project) id.
        #[arg(long)]
        team: i64,
        /// The name to show (1 to 64 characters).
        #[arg(long)]
        name: String,
    },
}

/// `--scopes`: a comma-separated list of valid scopes (at least one).
fn parse_scopes(value: &str) -> anyhow::Result<Vec<String>> {
    let scopes: Vec<String> = value
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    anyhow::ensure!(
        !scopes.is_empty(),
        "give at least one scope, e.g. user:read"
    );
    if let Some(bad) = scopes.iter().find(|s| !scope::is_valid_scope(s)) {
        anyhow::bail!("{bad:?} is not a scope; `hoglet key create --help` lists them");
    }
    Ok(scopes)
}

/// `--expires-at`: an RFC 3339 time.
fn parse_time(value: &str) -> anyhow::Result<crate::time::Micros> {
    crate::time::parse_rfc3339(value)
        .ok_or_else(|| anyhow::anyhow!("not an RFC 3339 time, e.g. 2027-01-31T00:00:00Z"))
}

/// `key create --help`: every scope a key may have.
fn scopes_help() -> String {
    let objects = scope::SCOPE_OBJECTS
        .iter()
        .map(|object| format!("{object}:read, {object}:write"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "Comma-separated scopes, e.g. `user:read,user:write`, or `*` for every scope.\n\n\
         Scopes: *, {objects}."
    )
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match execute(cli).await {
        Ok(()) => 0,
        Err(e) => {
            let (message, code) = match e.downcast_ref::<AdminError>() {
                Some(AdminError::Invalid(m)) => (m.clone(), 1),
                Some(AdminError::Usage(m)) => (m.clone(), 2),
                _ => (format!("{e:#}"), 1),
            };
            eprintln!("error: {}", message.replace('\n', " "));
            code
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args.into_config()).await,
        Command::Migrate(database) => {
            database.store().await?;
            print_json(&serde_json::json!({"migrated": true}))
        }
        Command::Backup(args) => {
            let value = tokio::task::spawn_blocking(move || {
                crate::backup::backup(&args.database.database_url, &args.to, args.force)
            })
            .await??;
            print_json(&value)
        }
        Command::Restore(args) => {
            let value = tokio::task::spawn_blocking(move || {
                crate::backup::restore(&args.database.database_url, &args.from)
            })
            .await??;
            print_json(&value)
        }
        Command::Import(group) => import_command(group).await,
        Command::Healthcheck(args) => {
            println!("{}", healthcheck(args).await?.trim());
            Ok(())
        }
        Command::Openapi => {
            print!("{}", crate::http::openapi::to_json());
            Ok(())
        }
        Command::User(group) => print_json(&user_command(group.command, &group.database).await?),
        Command::Org(group) => print_json(&org_command(group.command, &group.database).await?),
        Command::Team(group) => print_json(&team_command(group.command, &group.database).await?),
        Command::Key(group) => print_json(&key_command(group.command, &group.database).await?),
        Command::Dashboard(group) => {
            let DashboardCommand::Create { team, name } = group.command;
            let store = group.database.store().await?;
            print_json(&admin::create_dashboard(&store, team, &name).await?)
        }
    }
}

/// `hoglet import posthog`: runs with the server's secret key, prints the summary.
async fn import_command(group: WithDatabase<ImportCommand>) -> anyhow::Result<()> {
    let ImportCommand::Posthog(args) = group.command;
    let args = *args;
    let config = Config {
        database_wait: group.database.wait(),
        secret_key: args.secret.secret_key,
        secret_key_file: args.secret.secret_key_file,
        ..Config::new(group.database.database_url)
    };
    let state = crate::serve::command_state_with_secret_key(config).await?;
    let options = crate::import::Options {
        from: args.from,
        organizations: args.organizations,
        batch: args.batch as usize,
        dry_run: args.dry_run,
    };
    let progress = crate::import::progress::Progress::for_stderr();
    let summary = crate::import::run(&state, &options, &progress).await?;
    eprintln!("{}", summary.outcome(options.dry_run));
    print_json(&serde_json::to_value(&summary)?)
}

/// `hoglet org …`.
async fn org_command(
    command: OrgCommand,
    database: &DatabaseArgs,
) -> anyhow::Result<serde_json::Value> {
    Ok(match command {
        OrgCommand::Create { name, owner } => {
            admin::create_organization(&database.store().await?, &name, &owner).await?
        }
        OrgCommand::Update {
            org,
            name,
            enforce_2fa,
        } => {
            let store = database.store().await?;
            admin::update_organization(&store, &org, name.as_deref(), enforce_2fa).await?
        }
        OrgCommand::AddMember { org, email, level } => {
            admin::add_member(&database.store().await?, &org, &email, level.into()).await?
        }
        OrgCommand::RemoveMember { org, email } => {
            admin::remove_member(&database.state().await?, &org, &email).await?
        }
    })
}

/// `hoglet team …`.
async fn team_command(
    command: TeamCommand,
    database: &DatabaseArgs,
) -> anyhow::Result<serde_json::Value> {
    let store = database.store().await?;
    Ok(match command {
        TeamCommand::Create { org, name } => admin::create_team(&store, &org, &name).await?,
        TeamCommand::LinkGithub {
            team,
            installation_id,
            created_by,
            github_login,
        } => {
            let args = admin::LinkGithubArgs {
                team,
                installation_id,
                created_by,
                github_login,
            };
            admin::link_team_github(&store, args).await?
        }
    })
}

/// `hoglet key …`.
async fn key_command(
    command: KeyCommand,
    database: &DatabaseArgs,
) -> anyhow::Result<serde_json::Value> {
    Ok(match command {
        KeyCommand::Create {
            email,
            label,
            scopes,
            expires_at,
        } => {
            let args = admin::NewKeyArgs {
                email,
                label,
                scopes,
                expires_at,
            };
            admin::create_key(&database.store().await?, args).await?
        }
        KeyCommand::List { email } => admin::list_keys(&database.store().await?, &email).await?,
        KeyCommand::Revoke { id } => admin::revoke_key(&database.state().await?, &id).await?,
    })
}

/// `hoglet user …`: reads what the command needs, then runs its admin operation.
async fn user_command(
    command: UserCommand,
    database: &DatabaseArgs,
) -> anyhow::Result<serde_json::Value> {
    Ok(match command {
        UserCommand::Create {
            email,
            password,
            password_stdin,
            allow_weak_password,
            first_name,
            last_name,
            staff,
        } => {
            let password = match password {
                Some(password) if !password_stdin => password,
                _ => read_password()?.expose_secret().to_string(),
            };
            let args = admin::NewUserArgs {
                email,
                password,
                first_name,
                last_name,
                staff,
                allow_weak_password,
            };
            admin::create_user(&database.store().await?, args).await?
        }
        UserCommand::List {
            email_contains,
            staff,
            limit,
        } => {
            let args = admin::ListUsersArgs {
                email_contains,
                staff,
                limit,
            };
            admin::list_users(&database.store().await?, args).await?
        }
        UserCommand::Show { email } => admin::show_user(&database.store().await?, &email).await?,
        UserCommand::SetPassword {
            email,
            password_stdin,
        } => {
            if !password_stdin {
                return Err(usage(
                    "set-password reads the new password from stdin: pass --password-stdin",
                ));
            }
            let password = read_password()?;
            admin::set_password(&database.state().await?, &email, &password).await?
        }
        UserCommand::Disable2fa { email } => {
            admin::disable_two_factor(&database.state().await?, &email).await?
        }
        UserCommand::Deactivate { email } => {
            admin::set_active(&database.state().await?, &email, false).await?
        }
        UserCommand::Activate { email } => {
            admin::set_active(&database.state().await?, &email, true).await?
        }
        UserCommand::Delete { email, yes } => {
            if !yes {
                return Err(usage(
                    "user delete deletes the user and everything of theirs: confirm with --yes",
                ));
            }
            admin::delete_user(&database.state().await?, &email).await?
        }
        UserCommand::Export { email } => {
            admin::export_user(&database.state().await?, &email).await?
        }
    })
}

fn usage(message: &str) -> anyhow::Error {
    AdminError::Usage(message.to_string()).into()
}

/// The password on the first line of stdin (without its line end); none is a usage error.
fn read_password() -> anyhow::Result<SecretString> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(usage("no password on stdin"));
    }
    Ok(SecretString::from(password.to_string()))
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        database = ?config.database_url,
        bind = %config.bind,
        "starting hoglet"
    );
    let app = App::build(config).await.context("starting the server")?;
    app.serve(shutdown_signal(), |addr| {
        tracing::info!(address = %addr, "listening on http://{addr}");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "hoglet listening on http://{addr}");
        let _ = out.flush();
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hoglet").chain(args.iter().copied()))
    }

    fn serve_config(args: &[&str]) -> Config {
        match parse(args).unwrap().command {
            Command::Serve(serve) => serve.into_config(),
            other => panic!("not serve: {other:?}"),
        }
    }

    /// Whether a `HOGLET_*` setting (or `RUST_LOG`) is in this process's environment, which
    /// would make clap's defaults differ from `Config::new`'s.
    fn settings_in_environment() -> bool {
        std::env::vars_os().any(|(name, _)| {
            let name = name.to_string_lossy();
            (name.starts_with("HOGLET_") && !name.starts_with("HOGLET_TEST_")) || name == "RUST_LOG"
        })
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_config_new() {
        if settings_in_environment() {
            eprintln!("a HOGLET_ setting is in the environment: defaults not compared");
            return;
        }
        let parsed = serve_config(&["serve"]);
        let defaults = Config::new(DatabaseUrl::parse(config::DEFAULT_DATABASE_URL).unwrap());
        assert_eq!(format!("{parsed:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let config = serve_config(&[
            "serve",
            "--database-url",
            "postgres://bob:hunter2@db:5432/x",
            "--database-wait-seconds",
            "0",
            "--bind",
            ":0",
            "--site-url",
            "https://hoglet.example.com/",
            "--trusted-proxies",
            "10.0.0.0/8, 192.168.1.7",
            "--redis-url",
            "redis://:hunter2@cache:6379/0",
            "--signup",
            "closed",
            "--email",
            "file:/tmp/mail",
            "--email-from",
            "Ops <ops@example.com>",
            "--secret-key",
            "hunter2-key",
            "--secret-key-file",
            "/etc/hoglet.secret",
            "--max-body-bytes",
            "2048",
            "--login-failure-limit",
            "3",
            "--rate-limit-keys",
            "false",
            "--janitor-interval-seconds",
            "7",
            "--instance-tag",
            "eu",
            "--github-app-id",
            "12",
            "--github-app-slug",
            "hog",
            "--github-app-client-id",
            "Iv1.x",
            "--github-app-client-secret",
            "hunter2-client",
            "--github-app-private-key",
            "/etc/app.pem",
            "--github-api-url",
            "http://127.0.0.1:9/api/",
            "--github-web-url",
            "http://127.0.0.1:9/",
        ]);
        assert!(matches!(config.database_url, DatabaseUrl::Postgres(_)));
        assert_eq!(config.database_wait, Duration::ZERO);
        assert_eq!(config.bind, ":0");
        assert_eq!(
            config.site_url.as_deref(),
            Some("https://hoglet.example.com")
        );
        assert_eq!(config.trusted_proxies.len(), 2);
        assert!(config.redis_url.is_some());
        assert_eq!(config.signup, SignupPolicy::Closed);
        assert!(matches!(config.email, EmailDelivery::Directory(_)));
        assert_eq!(config.email_from, "Ops <ops@example.com>");
        assert!(config.secret_key.is_some());
        assert_eq!(
            config.secret_key_file,
            Some(PathBuf::from("/etc/hoglet.secret"))
        );
        assert_eq!(config.max_body_bytes, 2048);
        assert_eq!(config.login_failure_limit, 3);
        assert!(!config.rate_limit_keys);
        assert_eq!(config.janitor_interval, Duration::from_secs(7));
        assert_eq!(config.instance_tag, "eu");
        assert_eq!(config.github.app_id.as_deref(), Some("12"));
        assert_eq!(config.github.app_slug.as_deref(), Some("hog"));
        assert_eq!(config.github.client_id.as_deref(), Some("Iv1.x"));
        assert!(config.github.client_secret.is_some());
        assert!(config.github.private_key.is_some());
        assert_eq!(config.github.api_url, "http://127.0.0.1:9/api");
        assert_eq!(config.github.web_url, "http://127.0.0.1:9");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn empty_values_mean_unset() {
        let config = serve_config(&[
            "serve",
            "--site-url",
            "",
            "--redis-url",
            " ",
            "--secret-key",
            "",
            "--github-app-id",
            "",
            "--github-api-url",
            "",
        ]);
        assert_eq!(config.site_url, None);
        assert!(config.redis_url.is_none());
        assert!(config.secret_key.is_none());
        assert_eq!(config.github.app_id, None);
        assert_eq!(config.github.api_url, config::DEFAULT_GITHUB_API_URL);
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_setting() {
        for (args, names) in [
            (
                vec!["serve", "--site-url", "not a url"],
                "--site-url (HOGLET_SITE_URL)",
            ),
            (
                vec!["serve", "--max-body-bytes", "lots"],
                "--max-body-bytes (HOGLET_MAX_BODY_BYTES)",
            ),
            (
                vec!["serve", "--signup", "sometimes"],
                "--signup (HOGLET_SIGNUP)",
            ),
            (
                vec!["--log", "hoglet=loud", "migrate"],
                "--log (HOGLET_LOG)",
            ),
            (
                vec!["--log-format", "xml", "migrate"],
                "--log-format (HOGLET_LOG_FORMAT)",
            ),
        ] {
            let error = parse(&args).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{args:?}");
            assert_eq!(error.exit_code(), 2);
            let shown = error.to_string();
            assert!(shown.contains(names), "{shown}");
        }
    }

    #[test]
    fn secret_values_stay_out_of_errors() {
        for args in [
            vec![
                "migrate",
                "--database-url",
                "postgres://bob:hunter2@db:port/x",
            ],
            vec!["user", "--database-url", "mysql://bob:hunter2@db/x", "list"],
            vec!["serve", "--redis-url", "redis://:hunter2@[cache"],
            vec!["serve", "--email", "smtp://me:hunter2@"],
            vec!["serve", "--email", "smpt://me:hunter2@mail"],
        ] {
            let shown = parse(&args).unwrap_err().to_string();
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("invalid value for --"), "{shown}");
        }
    }

    #[test]
    fn log_settings() {
        let cli = parse(&["--log-format", "JSON", "serve"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = parse(&["--log", "debug", "migrate"]).unwrap();
        assert_eq!(cli.log_filter(), "debug");
        if !settings_in_environment() {
            assert_eq!(parse(&["serve"]).unwrap().log_filter(), "info");
            assert_eq!(parse(&["migrate"]).unwrap().log_filter(), "warn");
        }
    }
}
