//! The activity log: what happened to an account, who did it and from where. Use cases build
//! entries with [`Context::entry`] and hand them to the store with the write they record (one
//! transaction); once it committed, [`committed`] writes the security log line and counts it.

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::{ActivityQuery, ActivityRecord, ActorRecord, NewActivity, UserRecord};
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
    OrganizationMemberRemoved => "organization_member_removed", security: true;
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
            Actor::System => ActorRecord {
                kind: "system".into(),
                id: None,
                label: Some("hoglet".into()),
            },
            // Someone who has not proven who they are (a failed login): hoglet records it.
            Actor::Anonymous => ActorRecord {
                kind: "system".into(),
                id: None,
                label: Some("anonymous".into()),
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
    state.metrics.count_security_event("login_locked_out");
    let user_id = match ctx.actor {
        Actor::User(id) => id.to_string(),
        _ => "-".into(),
    };
    tracing::info!(
        target: "hoglet::security",
        ip = %ctx.origin.ip_text().as_deref().unwrap_or("-"),
        user_id = %user_id,
        lock = %what,
        "login_locked_out",
    );
}

/// After the entries' write committed: one `hoglet::security` log line per security event (the
/// client address and user id, for fail2ban and the like) and the events counter.
pub fn committed(state: &AppState, entries: &[NewActivity]) {
    for entry in entries {
        state.metrics.count_security_event(&entry.activity);
        let security = Activity::parse(&entry.activity).is_some_and(Activity::is_security);
        if security {
            tracing::info!(
                target: "hoglet::security",
                ip = %entry.ip.as_deref().unwrap_or("-"),
                user_id = %entry.user_id.map_or_else(|| "-".to_string(), |id| id.to_string()),
                actor = %entry.actor.kind,
                "{}",
                entry.activity,
            );
        }
    }
}

// --- reading the log ---

/// The most entries one page holds, and the default.
pub const MAX_PAGE: usize = 100;
pub const DEFAULT_PAGE: usize = 50;

/// Where a page starts: below an entry (older) or above one (newer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    Before(i64),
    After(i64),
}

impl Cursor {
    /// The opaque text a link carries.
    pub fn encode(self) -> String {
        use base64::Engine;
        let text = match self {
            Cursor::Before(id) => format!("b{id}"),
            Cursor::After(id) => format!("a{id}"),
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// DRF's `CursorPagination` answers 404 `Invalid cursor` for one it did not make.
    pub fn decode(text: &str) -> ApiResult<Cursor> {
        use base64::Engine;
        let invalid = || ApiError::NotFound("Invalid cursor".into());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| invalid())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
        let id = |digits: &str| digits.parse::<i64>().ok().filter(|id| *id >= 0);
        match text.split_at_checked(1) {
            Some(("b", digits)) => id(digits).map(Cursor::Before),
            Some(("a", digits)) => id(digits).map(Cursor::After),
            _ => None,
        }
        .ok_or_else(invalid)
    }
}

/// One page of a user's log, newest first, with the cursors of its neighbours.
pub struct Page {
    pub entries: Vec<ActivityRecord>,
    pub next: Option<Cursor>,
    pub previous: Option<Cursor>,
}

/// What a reader asks for.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    pub activity: Option<Activity>,
    pub cursor: Option<Cursor>,
    pub limit: Option<usize>,
}

/// A page of `user`'s log; one more entry than the page is read to tell whether there is more.
pub async fn page(state: &AppState, user: &UserRecord, request: &PageRequest) -> ApiResult<Page> {
    let limit = request.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let (before, after) = match request.cursor {
        Some(Cursor::Before(id)) => (Some(id), None),
        Some(Cursor::After(id)) => (None, Some(id)),
        None => (None, None),
    };
    let mut entries = state
        .store
        .activity(&ActivityQuery {
            user_id: user.id,
            activity: request.activity.map(|a| a.as_str().to_string()),
            before,
            after,
            limit: limit + 1,
        })
        .await?;
    let more = entries.len() > limit;
    let (next, previous);
    if after.is_some() {
        // Read oldest first above the cursor, then put newest first: the extra entry is the
        // newest one.
        if more {
            entries.remove(0);
        }
        next = entries.last().map(|e| Cursor::Before(e.id));
        previous = more
            .then(|| entries.first().map(|e| Cursor::After(e.id)))
            .flatten();
    } else {
        entries.truncate(limit);
        next = more
            .then(|| entries.last().map(|e| Cursor::Before(e.id)))
            .flatten();
        previous = before.and_then(|_| entries.first().map(|e| Cursor::After(e.id)));
    }
    Ok(Page {
        entries,
        next,
        previous,
    })
}

/// Every entry of the user's log, newest first (the data export).
pub async fn all(state: &AppState, user: &UserRecord) -> ApiResult<Vec<ActivityRecord>> {
    let mut entries = Vec::new();
    let mut request = PageRequest {
        limit: Some(MAX_PAGE),
        ..PageRequest::default()
    };
    loop {
        let page = page(state, user, &request).await?;
        entries.extend(page.entries);
        match page.next {
            Some(next) => request.cursor = Some(next),
            None => return Ok(entries),
        }
    }
}

/// The label a user actor is shown with: their current email (looked up once per actor).
pub async fn actor_labels(
    state: &AppState,
    subject: &UserRecord,
    entries: &[ActivityRecord],
) -> ApiResult<std::collections::HashMap<String, String>> {
    let mut labels = std::collections::HashMap::new();
    labels.insert(subject.id.to_string(), subject.email.clone());
    for entry in entries {
        let Some(id) = entry
            .actor
            .id
            .as_ref()
            .filter(|_| entry.actor.kind == "user")
        else {
            continue;
        };
        if labels.contains_key(id) {
            continue;
        }
        if let Ok(user_id) = id.parse::<i64>()
            && let Some(user) = state.store.user_by_id(user_id).await?
        {
            labels.insert(id.clone(), user.email);
        }
    }
    Ok(labels)
}
