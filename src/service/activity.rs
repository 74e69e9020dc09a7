//! The activity log: what happened to an account, who did it and from where. Use cases build
//! entries with [`Context::entry`] and hand them to the store with the write they record (one
//! transaction); once it committed, [`committed`] writes the security log line and counts it.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::state::AppState;
use crate::store::{ActorRecord, NewActivity};
use crate::time::Micros;

use super::caller::{Caller, Credential};

/// The longest `User-Agent` kept (the rest is cut).
pub const MAX_USER_AGENT_CHARS: usize = 512;

macro_rules! activities {
    ($($variant:ident => $name:literal, security: $security:literal;)*) => {
        /// Every kind of entry the log records.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Activity {
            $($variant,)*
        }

        impl Activity {
            pub const ALL: &[Activity] = &[$(Activity::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Activity::$variant => $name,)*
                }
            }

            /// Whether the entry is also a line on the `hoglet::security` log target.
            pub fn is_security(self) -> bool {
                match self {
                    $(Activity::$variant => $security,)*
                }
            }
        }
    };
}

activities! {
    LoggedIn => "logged_in", security: true;
    LoginFailed => "login_failed", security: true;
    LoggedOut => "logged_out", security: true;
    SessionRevoked => "session_revoked", security: true;
    PasswordChanged => "password_changed", security: true;
    PasswordResetRequested => "password_reset_requested", security: true;
    PasswordReset => "password_reset", security: true;
    EmailChangeRequested => "email_change_requested", security: true;
    EmailChanged => "email_changed", security: true;
    EmailVerified => "email_verified", security: false;
    TwoFactorEnabled => "two_factor_enabled", security: true;
    TwoFactorDisabled => "two_factor_disabled", security: true;
    BackupCodesRegenerated => "backup_codes_regenerated", security: true;
    BackupCodeUsed => "backup_code_used", security: true;
    PersonalApiKeyCreated => "personal_api_key_created", security: true;
    PersonalApiKeyUpdated => "personal_api_key_updated", security: true;
    PersonalApiKeyRolled => "personal_api_key_rolled", security: true;
    PersonalApiKeyDeleted => "personal_api_key_deleted", security: true;
    GithubIntegrationLinked => "github_integration_linked", security: false;
    GithubIntegrationUnlinked => "github_integration_unlinked", security: false;
    UserUpdated => "user_updated", security: false;
    UserDeactivated => "user_deactivated", security: true;
    UserActivated => "user_activated", security: true;
    UserDataExported => "user_data_exported", security: true;
}

impl Activity {
    pub fn parse(name: &str) -> Option<Activity> {
        Activity::ALL.iter().copied().find(|a| a.as_str() == name)
    }
}

impl std::fmt::Display for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a request came from: the client address hoglet trusts (see `http::client`) and its
/// `User-Agent`, cut to [`MAX_USER_AGENT_CHARS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl Origin {
    pub fn new(ip: Option<IpAddr>, user_agent: Option<&str>) -> Self {
        let user_agent = user_agent
            .map(str::trim)
            .filter(|ua| !ua.is_empty())
            .map(|ua| ua.chars().take(MAX_USER_AGENT_CHARS).collect());
        Origin { ip, user_agent }
    }

    pub fn ip_text(&self) -> Option<String> {
        self.ip.map(|ip| ip.to_string())
    }
}

/// Who performs an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in user (by session), or someone proving who they are (a login).
    User(i64),
    /// A request authenticated with a personal API key.
    ApiKey { id: String, label: String },
    /// An operator's `hoglet` command.
    Cli,
    /// hoglet itself (retention, for example).
    System,
    /// Nobody known yet (a login before the password was checked).
    Anonymous,
}

/// Who acts and from where: what every recorded use case is given.
#[derive(Clone, Debug)]
pub struct Context {
    pub actor: Actor,
    pub origin: Origin,
}

impl Context {
    /// An authenticated request.
    pub fn caller(caller: &Caller, origin: Origin) -> Self {
        let actor = match &caller.credential {
            Credential::Session(_) => Actor::User(caller.user_id),
            Credential::ApiKey(key) => Actor::ApiKey {
                id: key.id.clone(),
                label: key.label.clone(),
            },
        };
        Context { actor, origin }
    }

    /// A request nobody has proven to be yet (login, password reset).
    pub fn anonymous(origin: Origin) -> Self {
        Context {
            actor: Actor::Anonymous,
            origin,
        }
    }

    /// An operator's command.
    pub fn cli() -> Self {
        Context {
            actor: Actor::Cli,
            origin: Origin::default(),
        }
    }

    pub fn system() -> Self {
        Context {
            actor: Actor::System,
            origin: Origin::default(),
        }
    }

    /// The same origin, acting as `user_id` (who just proved who they are).
    pub fn as_user(&self, user_id: i64) -> Self {
        Context {
            actor: Actor::User(user_id),
            origin: self.origin.clone(),
        }
    }

    /// An entry about the user `user_id` (`None`: a failed login naming no account).
    pub fn entry(
        &self,
        state: &AppState,
        user_id: Option<i64>,
        activity: Activity,
        detail: Value,
    ) -> NewActivity {
        self.entry_at(state.clock.now(), user_id, activity, detail)
    }

    /// [`Context::entry`] at `now`.
    pub fn entry_at(
        &self,
        now: Micros,
        user_id: Option<i64>,
        activity: Activity,
        detail: Value,
    ) -> NewActivity {
        let actor = match &self.actor {
            // Labelled when read (the user's current email), so the log keeps no stale copy.
            Actor::User(id) => ActorRecord {
                kind: "user".into(),
                id: Some(id.to_string()),
                label: None,
            },
            Actor::ApiKey { id, label } => ActorRecord {
                kind: "personal_api_key".into(),
                id: Some(id.clone()),
                label: Some(label.clone()),
            },
            Actor::Cli => ActorRecord {
                kind: "cli".into(),
                id: None,
                label: Some("hoglet CLI".into()),
            },
            Actor::System | Actor::Anonymous => ActorRecord {
                kind: "system".into(),
                id: None,
                label: None,
            },
        };
        NewActivity {
            user_id,
            activity: activity.as_str().into(),
            created_at: now,
            ip: self.origin.ip_text(),
            user_agent: self.origin.user_agent.clone(),
            actor,
            detail: if detail.is_null() { json!({}) } else { detail },
        }
    }
}

/// A login refused by a lock (`what`: `client_address`, `account`, `second_factor`): a security
/// log line and the counter, but no entry (a locked-out client's attempts are cheap; writing a
/// row for each would let it fill the database).
pub fn locked_out(state: &AppState, ctx: &Context, what: &str) {
    state
        .metrics
        .security_events
        .get_or_create(&crate::metrics::ActivityLabels {
            activity: "login_locked_out".into(),
        })
        .inc();
    let user_id = match ctx.actor {
        Actor::User(id) => id.to_string(),
        _ => "-".into(),
    };
    tracing::info!(
        target: "hoglet::security",
        activity = "login_locked_out",
        ip = ctx.origin.ip_text().as_deref().unwrap_or("-"),
        user_id = %user_id,
        lock = what,
        "login_locked_out",
    );
}

/// After the entries' write committed: one `hoglet::security` log line per security event (the
/// client address and user id, for fail2ban and the like) and the events counter.
pub fn committed(state: &AppState, entries: &[NewActivity]) {
    for entry in entries {
        state
            .metrics
            .security_events
            .get_or_create(&crate::metrics::ActivityLabels {
                activity: entry.activity.clone(),
            })
            .inc();
        let security = Activity::parse(&entry.activity).is_some_and(Activity::is_security);
        if security {
            tracing::info!(
                target: "hoglet::security",
                activity = %entry.activity,
                ip = entry.ip.as_deref().unwrap_or("-"),
                user_id = entry.user_id.map_or_else(|| "-".to_string(), |id| id.to_string()),
                actor = %entry.actor.kind,
                "{}",
                entry.activity,
            );
        }
    }
}
