//! The command line: `hoglet serve | migrate | user | org | team | key | dashboard | openapi`.
//! Every setting is a flag and a `HOGLET_*` variable; flags win.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

use crate::admin::{self, AdminError};
use crate::config::{Config, DatabaseUrl, EmailDelivery, SignupPolicy, normalize_site_url};
use crate::serve::{App, shutdown_signal};
use crate::store::MembershipLevel;

#[derive(Debug, Parser)]
#[command(
    name = "hoglet",
    version,
    about = "A fast, self-hostable server for PostHog's Users API"
)]
pub struct Cli {
    /// Database URL: sqlite://FILE (created if missing) or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        env = "HOGLET_DATABASE_URL",
        default_value = "sqlite://hoglet.db",
        global = true
    )]
    pub database_url: String,

    /// Seconds to keep retrying a PostgreSQL that does not answer at start (0: try once).
    #[arg(
        long,
        env = "HOGLET_DATABASE_WAIT_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub database_wait_seconds: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve HTTP until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Apply pending migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage organizations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Manage teams (projects).
    #[command(subcommand)]
    Team(TeamCommand),
    /// Manage personal API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage dashboards (what scene personalisation points at).
    #[command(subcommand)]
    Dashboard(DashboardCommand),
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen address; port 0 picks a free port.
    #[arg(long, env = "HOGLET_BIND", default_value = "127.0.0.1:8000")]
    pub bind: String,
    /// Redis URL for shared caches and rate limits across replicas.
    #[arg(long, env = "HOGLET_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Who may sign up: first-user, open or closed.
    #[arg(long, env = "HOGLET_SIGNUP", default_value = "first-user")]
    pub signup: String,
    /// Mail delivery: log, file:DIR or smtp://USER:PASS@HOST:PORT.
    #[arg(
        long,
        env = "HOGLET_EMAIL",
        default_value = "log",
        hide_env_values = true
    )]
    pub email: String,
    /// Public base URL (default http://<bind>).
    #[arg(long, env = "HOGLET_SITE_URL")]
    pub site_url: Option<String>,
    /// Comma-separated CIDRs of proxies whose X-Forwarded-For is believed (default: none).
    #[arg(long, env = "HOGLET_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
    /// `organization.metadata.instance_tag`.
    #[arg(long, env = "HOGLET_INSTANCE_TAG", default_value = "none")]
    pub instance_tag: String,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user with a password.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        #[arg(long, default_value = "")]
        first_name: String,
        #[arg(long, default_value = "")]
        last_name: String,
        /// Make the user an instance admin.
        #[arg(long)]
        staff: bool,
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
        #[arg(long)]
        email: String,
        #[arg(long, value_enum, default_value = "member")]
        level: Level,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Create a team (project) in an organization.
    Create {
        /// Organization id (uuid).
        #[arg(long)]
        org: String,
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
        #[arg(long)]
        label: String,
        /// Comma-separated scopes, e.g. `user:read,user:write`, or `*`.
        #[arg(long)]
        scopes: String,
        /// Optional expiry (RFC 3339), after which the key is refused.
        #[arg(long)]
        expires_at: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DashboardCommand {
    /// Create a dashboard in a team.
    Create {
        #[arg(long)]
        team: i64,
        #[arg(long)]
        name: String,
    },
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match execute(cli).await {
        Ok(()) => 0,
        Err(e) => {
            let message = match e.downcast_ref::<AdminError>() {
                Some(AdminError::Invalid(m)) => m.clone(),
                _ => format!("{e:#}"),
            };
            eprintln!("error: {}", message.replace('\n', " "));
            1
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let database_url = DatabaseUrl::parse(&cli.database_url)?;
    let wait = Duration::from_secs(cli.database_wait_seconds);
    let connect = || crate::store::connect_within(&database_url, wait);
    match cli.command {
        Command::Serve(args) => {
            let mut config = serve_config(database_url.clone(), &args)?;
            config.database_wait = wait;
            serve(config).await
        }
        Command::Migrate => {
            connect().await?;
            print_json(&serde_json::json!({"migrated": true}))
        }
        Command::Openapi => {
            print!("{}", crate::http::openapi::to_json());
            Ok(())
        }
        Command::User(UserCommand::Create {
            email,
            password,
            first_name,
            last_name,
            staff,
        }) => {
            let store = connect().await?;
            let args = admin::NewUserArgs {
                email,
                password,
                first_name,
                last_name,
                staff,
            };
            print_json(&admin::create_user(&store, args).await?)
        }
        Command::Org(OrgCommand::Create { name, owner }) => {
            let store = connect().await?;
            print_json(&admin::create_organization(&store, &name, &owner).await?)
        }
        Command::Org(OrgCommand::Update {
            org,
            name,
            enforce_2fa,
        }) => {
            let store = crate::store::connect(&database_url).await?;
            print_json(
                &admin::update_organization(&store, &org, name.as_deref(), enforce_2fa).await?,
            )
        }
        Command::Org(OrgCommand::AddMember { org, email, level }) => {
            let store = connect().await?;
            print_json(&admin::add_member(&store, &org, &email, level.into()).await?)
        }
        Command::Team(TeamCommand::Create { org, name }) => {
            let store = connect().await?;
            print_json(&admin::create_team(&store, &org, &name).await?)
        }
        Command::Team(TeamCommand::LinkGithub {
            team,
            installation_id,
            created_by,
            github_login,
        }) => {
            let store = connect().await?;
            let args = admin::LinkGithubArgs {
                team,
                installation_id,
                created_by,
                github_login,
            };
            print_json(&admin::link_team_github(&store, args).await?)
        }
        Command::Dashboard(DashboardCommand::Create { team, name }) => {
            let store = connect().await?;
            print_json(&admin::create_dashboard(&store, team, &name).await?)
        }
        Command::Key(KeyCommand::Create {
            email,
            label,
            scopes,
            expires_at,
        }) => {
            let scopes: Vec<String> = scopes
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let expires_at = expires_at
                .map(|t| {
                    crate::time::parse_rfc3339(&t).ok_or_else(|| {
                        AdminError::Invalid(format!("{t:?} is not an RFC 3339 time"))
                    })
                })
                .transpose()?;
            let store = connect().await?;
            let args = admin::NewKeyArgs {
                email,
                label,
                scopes,
                expires_at,
            };
            print_json(&admin::create_key(&store, args).await?)
        }
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Reads the serve flags and the env-only settings into a [`Config`].
pub fn serve_config(database_url: DatabaseUrl, args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = Config::new(database_url);
    config.bind = args.bind.clone();
    config.redis_url = args
        .redis_url
        .clone()
        .filter(|u| !u.is_empty())
        .map(SecretString::from);
    config.signup = SignupPolicy::parse(&args.signup)?;
    config.email = EmailDelivery::parse(&args.email)?;
    config.site_url = args
        .site_url
        .as_deref()
        .filter(|u| !u.is_empty())
        .map(normalize_site_url);
    config.instance_tag = args.instance_tag.clone();
    config.trusted_proxies = crate::config::parse_trusted_proxies(&args.trusted_proxies)?;
    config.secret_key = env_secret("HOGLET_SECRET_KEY");
    config.secret_key_file = env_value("HOGLET_SECRET_KEY_FILE").map(PathBuf::from);
    let github = &mut config.github;
    github.app_id = env_value("HOGLET_GITHUB_APP_ID");
    github.app_slug = env_value("HOGLET_GITHUB_APP_SLUG");
    github.client_id = env_value("HOGLET_GITHUB_APP_CLIENT_ID");
    github.client_secret = env_secret("HOGLET_GITHUB_APP_CLIENT_SECRET");
    github.private_key = env_secret("HOGLET_GITHUB_APP_PRIVATE_KEY");
    if let Some(url) = env_value("HOGLET_GITHUB_API_URL") {
        github.api_url = normalize_site_url(&url);
    }
    if let Some(url) = env_value("HOGLET_GITHUB_WEB_URL") {
        github.web_url = normalize_site_url(&url);
    }
    Ok(config)
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_secret(name: &str) -> Option<SecretString> {
    env_value(name).map(SecretString::from)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(database = ?config.database_url, bind = %config.bind, "starting hoglet");
    let app = App::build(config).await.context("starting the server")?;
    app.serve(shutdown_signal(), |addr| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "hoglet listening on http://{addr}");
        let _ = out.flush();
    })
    .await
}
