//! The account use cases around the Users API: sign-up, login (and its second factor), password
//! reset and email verification, with the rules they share (passwords, the second factor,
//! remember-device tokens, the per-address limits). They take typed input and return typed
//! outcomes; the HTTP layer only parses, calls one of them and renders.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::SignupPolicy;
use crate::crypto;
use crate::domain::fields::{self, Chars};
use crate::domain::password::{self, Verified};
use crate::domain::totp;
use crate::error::{ApiError, ApiResult};
use crate::ratelimit::{Backoff, Rate};
use crate::service::activity::{self, Activity, Context, Origin};
use crate::service::emails::{self, Outgoing};
use crate::service::sessions::{self, LoginMethod, NewSession, StartedSession};
use crate::state::AppState;
use crate::store::{
    DynStore, NewSignup, NewUser, PasswordHash, SessionRecord, StoreError, TotpDeviceRecord,
    Unique, UserChanges, UserRecord, UserWrite,
};
use crate::time::{Micros, SECOND};

/// How long a password login may wait for its second factor.
pub const PENDING_LOGIN_AGE: Micros = 600 * SECOND;
/// How long a started TOTP setup stays valid.
pub const TOTP_SETUP_AGE: Micros = 600 * SECOND;
/// How long a remembered device skips the second factor.
pub const REMEMBER_AGE_SECONDS: i64 = 30 * 86_400;
/// The team every new organization starts with.
pub const DEFAULT_TEAM_NAME: &str = "Default project";

const NO_NEW_ORGANIZATIONS: &str = "New organizations cannot be created in this instance. Contact your administrator if you think this is a mistake.";
pub const EMAIL_TAKEN: &str = "There is already an account with this email address.";
const LOCKOUT_SCOPE: &str = "login";
const LOCKOUT_COOL_OFF: std::time::Duration = std::time::Duration::from_secs(600);
/// Failed logins per account, from any address: the per-IP limit alone lets a botnet guess one
/// account's password without end. Keyed by the address typed, known or not, so the answer never
/// tells whether the account exists.
const ACCOUNT_LOCKOUT: Backoff = Backoff {
    scope: "login_account",
    threshold: 10,
    window: std::time::Duration::from_secs(600),
    base: std::time::Duration::from_secs(30),
    cap: std::time::Duration::from_secs(300),
};
const EMAIL_VERIFICATION_RATE: Rate = Rate::per_day("user_email_verification", 6);
const PASSWORD_RESET_RATE: Rate = Rate::per_day("password_reset_email", 6);

/// Runs Django's password validators. Sign-up keeps their codes; other flows report every
/// failure as `invalid_input`, as DRF does when it re-raises Django's errors.
pub fn check_new_password(
    candidate: &str,
    user: Option<&UserRecord>,
    keep_codes: bool,
) -> ApiResult<()> {
    let inputs: Vec<&str> = user
        .map(|u| {
            vec![
                u.email.as_str(),
                u.first_name.as_str(),
                u.last_name.as_str(),
            ]
        })
        .unwrap_or_default();
    password::validate_strength(candidate, &inputs).map_err(|weakness| {
        let code = if keep_codes {
            weakness.code
        } else {
            "invalid_input"
        };
        ApiError::field("password", code, weakness.message)
    })
}

/// The stored form of a new password (Argon2id, off the async runtime).
pub async fn hash_password(state: &AppState, new: &str) -> ApiResult<PasswordHash> {
    let hash = state.hasher.hash(new).await.map_err(ApiError::internal)?;
    Ok(PasswordHash(hash))
}

/// A JSON value as text, as a `CharField` reads it (`None` for objects, arrays, booleans, null).
pub fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What the per-address limits (mail throttles, the per-account login lock) count by: the
/// address as mail servers treat it (trimmed, case folded), hashed. Keyed by what the client
/// typed, `" bob@a.test"` and `BOB@a.test` each got their own six mails a day.
fn address_ident(address: &str) -> String {
    crypto::sha256_hex(address.trim().to_lowercase().as_bytes())
}

/// A 429 for a throttled request.
async fn throttle(state: &AppState, rate: Rate, ident: &str) -> ApiResult<()> {
    state
        .limiter
        .check(rate, ident)
        .await
        .map_err(ApiError::Throttled)
}

/// The answer when a new email address turned out taken at the write.
fn email_taken() -> ApiError {
    ApiError::field("email", "unique", EMAIL_TAKEN)
}

/// Applies `write` to the user and sends its mail once it committed.
pub async fn commit(
    state: &AppState,
    user_id: i64,
    write: &UserWrite,
    mail: Outgoing,
) -> ApiResult<UserRecord> {
    commit_or(state, user_id, write, mail, email_taken).await
}

/// [`commit`], answering `taken()` when the new email address is taken.
async fn commit_or(
    state: &AppState,
    user_id: i64,
    write: &UserWrite,
    mail: Outgoing,
    taken: fn() -> ApiError,
) -> ApiResult<UserRecord> {
    let user = state
        .store
        .write_user(user_id, write)
        .await
        .map_err(|e| match e {
            StoreError::Unique(Unique::Email) => taken(),
            other => other.into(),
        })?;
    state.caches.invalidate_user(user_id);
    if let Some(Some(keep)) = &write.end_sessions {
        state.caches.invalidate_session(keep);
    }
    activity::committed(state, &write.activity);
    mail.sent(state).await;
    Ok(user)
}

// --- sign-up ---

/// What sign-up needs, parsed and type-checked.
#[derive(Debug)]
pub struct SignupInput {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    /// `None` signs up without a usable password.
    pub password: Option<SecretString>,
    /// Empty for "<first name>'s Organization".
    pub organization_name: String,
    pub role_at_organization: Option<String>,
    pub email_opt_in: Option<bool>,
}

/// What sign-up did beside creating the user.
pub enum SignedUp {
    /// Email is configured: a verification link went out; no session yet.
    VerificationSent,
    /// Logged in at once.
    LoggedIn(Box<StartedSession>),
}

/// Refuses sign-up unless `HOGLET_SIGNUP` allows a new user now (checked before the body).
pub async fn ensure_signup_open(state: &AppState) -> ApiResult<()> {
    let allowed = match state.config.signup {
        SignupPolicy::Closed => false,
        SignupPolicy::Open => true,
        SignupPolicy::FirstUser => state.store.count_users().await? == 0,
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(NO_NEW_ORGANIZATIONS))
    }
}

/// Sign-up's rule for the address: no other account has it (in any case). The form checks it in
/// field order, before the password; [`signup`] checks it again (and the store a third time).
pub async fn check_signup_email(state: &AppState, email: &str) -> ApiResult<()> {
    match state.store.user_by_email(&email.to_lowercase()).await? {
        Some(_) => Err(email_taken()),
        None => Ok(()),
    }
}

/// Creates the user with their organization and first project; logs them in, or (with email
/// configured) sends the verification link first. `previous` is the browser's session, ended by
/// the new one.
pub async fn signup(
    state: &AppState,
    origin: Origin,
    input: SignupInput,
    previous: Option<&str>,
) -> ApiResult<(UserRecord, SignedUp)> {
    ensure_signup_open(state).await?;
    let email = input.email.to_lowercase();
    check_signup_email(state, &email).await?;
    if let Some(password) = &input.password {
        check_new_password(password.expose_secret(), None, true)?;
    }
    let organization_name = if input.organization_name.is_empty() {
        format!("{}'s Organization", input.first_name)
    } else {
        input.organization_name
    };
    let password_hash = match &input.password {
        Some(p) => hash_password(state, p.expose_secret()).await?,
        None => PasswordHash(format!("!{}", crypto::random_token(30))),
    };
    let (user, _, _) = state
        .store
        .signup(NewSignup {
            user: NewUser {
                uuid: Uuid::now_v7(),
                email,
                password: password_hash,
                first_name: input.first_name,
                last_name: input.last_name,
                distinct_id: crypto::random_token(32),
                is_staff: false,
                is_email_verified: Some(false),
                role_at_organization: input.role_at_organization,
                email_opt_in: input.email_opt_in,
                date_joined: state.clock.now(),
            },
            organization_name,
            team_name: DEFAULT_TEAM_NAME.into(),
            only_first_user: state.config.signup == SignupPolicy::FirstUser,
        })
        .await
        .map_err(|e| match e {
            StoreError::Unique(Unique::FirstUser) => ApiError::forbidden(NO_NEW_ORGANIZATIONS),
            StoreError::Unique(Unique::Email) => ApiError::field("email", "unique", EMAIL_TAKEN),
            other => other.into(),
        })?;
    if state.mailer.is_configured() {
        emails::send_verification(state, &user).await?;
        return Ok((user, SignedUp::VerificationSent));
    }
    let ctx = Context::anonymous(origin).as_user(user.id);
    let (user, session) = start_login(state, &ctx, &user, previous, LoginMethod::Password).await?;
    Ok((user, SignedUp::LoggedIn(Box::new(session))))
}

// --- accounts an operator creates ---

/// A user an operator creates (`hoglet user create`): no organization, a usable password,
/// `is_email_verified` null (PostHog's admin-created state).
pub struct NewAccount {
    pub email: String,
    pub password: SecretString,
    pub first_name: String,
    pub last_name: String,
    pub staff: bool,
}

/// Checks a field as sign-up's body does, with its messages; `attr` names it in the error.
fn signup_text(attr: &'static str, text: &str, chars: Chars) -> ApiResult<String> {
    fields::char_field(&Value::String(text.to_string()), chars)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::field(attr, e.code, e.detail))
}

/// Creates a user by the rules sign-up applies to the same fields (address, name lengths and
/// characters, a taken address), so the CLI and the API answer alike.
pub async fn create_account(store: &DynStore, account: NewAccount) -> ApiResult<UserRecord> {
    let email = fields::email_field(&Value::String(account.email))
        .map_err(|e| ApiError::field("email", e.code, e.detail))?;
    let password = account.password.expose_secret();
    fields::char_field(
        &Value::String(password.to_string()),
        Chars::new().controls_ok(),
    )
    .map_err(|e| ApiError::field("password", e.code, e.detail))?;
    let first_name = signup_text(
        "first_name",
        &account.first_name,
        Chars::new().max(128).blank_ok(),
    )?;
    let last_name = signup_text(
        "last_name",
        &account.last_name,
        Chars::new().max(128).blank_ok(),
    )?;
    let plain = password.to_string();
    let hash = tokio::task::spawn_blocking(move || password::hash(&plain))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    store
        .insert_user(NewUser {
            uuid: Uuid::now_v7(),
            email,
            password: PasswordHash(hash),
            first_name,
            last_name,
            distinct_id: crypto::random_token(32),
            is_staff: account.staff,
            is_email_verified: None,
            role_at_organization: None,
            email_opt_in: None,
            date_joined: crate::time::system_now(),
        })
        .await
        .map_err(|e| match e {
            StoreError::Unique(Unique::Email) => email_taken(),
            other => other.into(),
        })
}

// --- login ---

/// A password login.
pub struct LoginInput<'a> {
    pub email: String,
    pub password: SecretString,
    /// Where the login comes from (the per-IP lock, the session and the activity log).
    pub origin: Origin,
    /// The browser's session, ended by the new one.
    pub previous_session: Option<&'a str>,
    /// The remember-device tokens the browser presented.
    pub remembered: Vec<&'a str>,
}

pub enum LoggedIn {
    /// Logged in.
    Done(StartedSession),
    /// The password was right; the session waits for the second factor.
    SecondFactorNeeded(StartedSession),
}

/// Records a failed login (attached to the account the address names, if any).
async fn login_failed(
    state: &AppState,
    ctx: &Context,
    user_id: Option<i64>,
    reason: &str,
) -> ApiResult<()> {
    let entry = [ctx.entry(
        state,
        user_id,
        Activity::LoginFailed,
        json!({ "reason": reason }),
    )];
    state.store.record_activity(&entry).await?;
    activity::committed(state, &entry);
    Ok(())
}

/// Checks the password (behind the per-IP and per-account locks) and starts the session, or the
/// wait for the second factor.
pub async fn login(state: &AppState, input: LoginInput<'_>) -> ApiResult<LoggedIn> {
    let ctx = Context::anonymous(input.origin);
    let ip = ctx.origin.ip_text().unwrap_or_default();
    if state.limiter.failures(LOCKOUT_SCOPE, &ip).await >= state.config.login_failure_limit {
        activity::locked_out(state, &ctx, "client_address");
        return Err(ApiError::PermissionDenied {
            code: "too_many_failed_attempts",
            detail: "Too many failed login attempts. Please try again in 10 minutes.".into(),
        });
    }
    let account = address_ident(&input.email);
    if let Some(wait) = state.limiter.backoff_wait(ACCOUNT_LOCKOUT, &account).await {
        activity::locked_out(state, &ctx, "account");
        return Err(ApiError::Throttled(wait));
    }
    let named = state.store.user_by_email(&input.email).await?;
    let user = named.clone().filter(|u| u.is_active);
    let stored = user
        .as_ref()
        .filter(|u| u.password.is_usable())
        .map(|u| u.password.0.as_str());
    let password = input.password.expose_secret();
    let verified = state
        .hasher
        .verify(password, stored)
        .await
        .map_err(ApiError::internal)?;
    let mut user = match (user, verified) {
        (Some(user), Verified::Yes | Verified::YesButUpgrade) => user,
        _ => {
            state
                .limiter
                .add_failure(LOCKOUT_SCOPE, &ip, LOCKOUT_COOL_OFF)
                .await;
            state
                .limiter
                .backoff_failure(ACCOUNT_LOCKOUT, &account)
                .await;
            let reason = match &named {
                None => "unknown_email",
                Some(u) if !u.is_active => "inactive",
                Some(_) => "invalid_password",
            };
            login_failed(state, &ctx, named.map(|u| u.id), reason).await?;
            return Err(ApiError::non_field(
                "invalid_credentials",
                "Invalid email or password.",
            ));
        }
    };
    state.limiter.backoff_clear(ACCOUNT_LOCKOUT, &account).await;
    if verified == Verified::YesButUpgrade {
        // A Django PBKDF2 hash: store Argon2id from now on, unless the password was changed
        // since it was read (that change wins).
        let upgraded = hash_password(state, password).await?;
        if state
            .store
            .upgrade_password_hash(user.id, &user.password, &upgraded)
            .await?
        {
            user.password = upgraded;
        }
    }
    if state.mailer.is_configured() && user.is_email_verified != Some(true) {
        emails::send_verification(state, &user).await?;
        if user.is_email_verified == Some(false) {
            return Err(ApiError::non_field(
                "not_verified",
                "Your account is awaiting verification. Please check your email for a verification link.",
            ));
        }
    }
    let ctx = ctx.as_user(user.id);
    let device = state.store.totp_device(user.id).await?;
    if let Some(device) = &device
        && !remembered(state, &input.remembered, &user, device)
    {
        let session = sessions::start(
            state,
            NewSession::PendingTwoFactor { user_id: user.id },
            sessions::client(&ctx.origin, None),
            input.previous_session,
        )
        .await?;
        return Ok(LoggedIn::SecondFactorNeeded(session));
    }
    // A remembered device counts as the second factor, as django-two-factor's cookie does.
    let method = match device {
        Some(_) => LoginMethod::RememberedDevice,
        None => LoginMethod::Password,
    };
    let (_, session) = start_login(state, &ctx, &user, input.previous_session, method).await?;
    Ok(LoggedIn::Done(session))
}

/// Starts the logged-in session, records the login (`last_login` only) and its `logged_in`
/// entry, in one transaction. `method` says whether the login passed a second factor
/// (organization-enforced 2FA asks).
async fn start_login(
    state: &AppState,
    ctx: &Context,
    user: &UserRecord,
    previous: Option<&str>,
    method: LoginMethod,
) -> ApiResult<(UserRecord, StartedSession)> {
    if let Some(previous) = previous {
        sessions::end(state, previous, &[]).await?;
    }
    let second_factor = matches!(
        method,
        LoginMethod::Totp | LoginMethod::BackupCode | LoginMethod::RememberedDevice
    );
    let session = sessions::new_session(
        state,
        NewSession::LoggedIn {
            user_id: user.id,
            second_factor,
        },
        sessions::client(&ctx.origin, Some(method)),
    );
    let write = UserWrite {
        changes: UserChanges {
            last_login: Some(Some(state.clock.now())),
            ..UserChanges::default()
        },
        session: Some(session.record.clone()),
        activity: vec![ctx.entry(
            state,
            Some(user.id),
            Activity::LoggedIn,
            json!({ "method": method.as_str() }),
        )],
        ..UserWrite::default()
    };
    let user = commit(state, user.id, &write, Outgoing::default()).await?;
    Ok((user, session))
}

fn login_expired() -> ApiError {
    ApiError::non_field(
        "2fa_expired",
        "Login attempt has expired. Re-enter username/password.",
    )
}

/// The login a session waits to complete with a second factor, if it is still fresh.
pub fn pending_login(state: &AppState, session: Option<SessionRecord>) -> ApiResult<SessionRecord> {
    let pending = session
        .filter(|s| s.pending_user_id.is_some())
        .ok_or_else(login_expired)?;
    let now = state.clock.now();
    if pending
        .pending_at
        .is_none_or(|at| now - at > PENDING_LOGIN_AGE)
    {
        return Err(login_expired());
    }
    Ok(pending)
}

/// A remember-device token to hand to the browser: the cookie name's suffix and its value.
pub struct RememberToken {
    pub id: String,
    pub value: String,
}

/// Completes a login waiting in `pending` (see [`pending_login`]) with a TOTP or backup code;
/// returns the new session and a token that lets this device skip the second factor.
pub async fn login_second_factor(
    state: &AppState,
    origin: Origin,
    pending: &SessionRecord,
    token: Option<String>,
) -> ApiResult<(StartedSession, Option<RememberToken>)> {
    let invalid = || ApiError::non_field("2fa_invalid", "Invalid authentication code");
    let token = token.ok_or_else(invalid)?;
    let user = match pending.pending_user_id {
        Some(id) => state.store.user_by_id(id).await?.filter(|u| u.is_active),
        None => None,
    }
    .ok_or_else(login_expired)?;
    let ctx = Context::anonymous(origin).as_user(user.id);
    let method = match check_second_factor(state, &ctx, &user, &token).await? {
        SecondFactor::Accepted(method) => method,
        SecondFactor::Throttled => {
            activity::locked_out(state, &ctx, "second_factor");
            return Err(ApiError::non_field(
                "2fa_too_many_attempts",
                "Too many attempts.",
            ));
        }
        SecondFactor::Rejected => {
            login_failed(state, &ctx, Some(user.id), "invalid_second_factor").await?;
            return Err(invalid());
        }
    };
    let (user, session) = start_login(state, &ctx, &user, Some(&pending.id), method).await?;
    let remember = state
        .store
        .totp_device(user.id)
        .await?
        .map(|device| remember_token(state, &user, &device));
    Ok((session, remember))
}

/// Ends the browser session of `caller`, if any.
pub async fn logout(
    state: &AppState,
    ctx: &Context,
    session: Option<(&str, i64)>,
) -> ApiResult<()> {
    if let Some((id, user_id)) = session {
        let entry = ctx.entry(state, Some(user_id), Activity::LoggedOut, Value::Null);
        sessions::end(state, id, &[entry]).await?;
    }
    Ok(())
}

// --- password reset ---

/// Emails a reset link when the address belongs to an active account; the same answer either way.
pub async fn request_reset(state: &AppState, origin: Origin, email: &str) -> ApiResult<()> {
    throttle(state, PASSWORD_RESET_RATE, &address_ident(email)).await?;
    if !state.mailer.is_configured() {
        return Err(ApiError::non_field(
            "email_not_available",
            "Cannot reset passwords because email is not configured for your instance. Please contact your administrator.",
        ));
    }
    if let Some(user) = state
        .store
        .user_by_email(email)
        .await?
        .filter(|u| u.is_active)
    {
        let ctx = Context::anonymous(origin);
        let entry = ctx.entry(
            state,
            Some(user.id),
            Activity::PasswordResetRequested,
            Value::Null,
        );
        emails::send_password_reset(state, &user, entry).await?;
    }
    Ok(())
}

fn invalid_reset_token() -> ApiError {
    ApiError::field(
        "token",
        "invalid_token",
        "This reset token is invalid or has expired.",
    )
}

/// The user a reset link names, if the token is valid for them.
pub async fn check_reset(state: &AppState, uuid: &str, token: &str) -> ApiResult<UserRecord> {
    let uuid = Uuid::parse_str(uuid).map_err(|_| invalid_reset_token())?;
    let user = state
        .store
        .user_by_uuid(uuid)
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(invalid_reset_token)?;
    if emails::reset_token_is_valid(state, &user, token) {
        Ok(user)
    } else {
        Err(invalid_reset_token())
    }
}

/// Sets the new password from a valid reset link. The password, the end of every session (whoever
/// held the old password may hold one too) and the notice commit together.
pub async fn complete_reset(
    state: &AppState,
    origin: Origin,
    uuid: &str,
    token: &str,
    password: &SecretString,
) -> ApiResult<UserRecord> {
    let user = check_reset(state, uuid, token).await?;
    check_new_password(password.expose_secret(), Some(&user), false)?;
    let mut write = UserWrite {
        changes: UserChanges {
            password: Some(hash_password(state, password.expose_secret()).await?),
            requested_password_reset_at: Some(None),
            ..UserChanges::default()
        },
        end_sessions: Some(None),
        activity: vec![Context::anonymous(origin).as_user(user.id).entry(
            state,
            Some(user.id),
            Activity::PasswordReset,
            Value::Null,
        )],
        ..UserWrite::default()
    };
    let mut mail = Outgoing::default();
    mail.add(
        state,
        &mut write,
        emails::notice(
            &user.email,
            &user,
            "Your password has been changed",
            "The password of your account was just reset.",
        ),
    )?;
    commit(state, user.id, &write, mail).await
}

// --- email verification ---

/// Sends a verification link to the user named by `uuid` (to their staged address, else their
/// login email); a uuid that names nobody gets the same answer.
pub async fn request_email_verification(state: &AppState, uuid: &str) -> ApiResult<()> {
    let user = match Uuid::parse_str(uuid) {
        Ok(uuid) => state
            .store
            .user_by_uuid(uuid)
            .await?
            .filter(|u| u.is_active),
        Err(_) => None,
    };
    // Counted by the address the link goes to; a uuid that names nobody gets no mail and is
    // counted by itself, so both answer alike.
    let ident = match &user {
        Some(user) => address_ident(user.pending_email.as_deref().unwrap_or(&user.email)),
        None => address_ident(uuid),
    };
    throttle(state, EMAIL_VERIFICATION_RATE, &ident).await?;
    if !state.mailer.is_configured() {
        return Err(ApiError::non_field(
            "email_not_available",
            "Cannot verify email address because email is not configured for your instance. Please contact your administrator.",
        ));
    }
    if let Some(user) = user {
        emails::send_verification(state, &user).await?;
    }
    Ok(())
}

/// What verifying an address did.
pub enum EmailVerified {
    /// The browser is logged in with this new session.
    LoggedIn(Box<StartedSession>),
    /// The user has 2FA: they still log in with it.
    SecondFactorNeeded,
}

/// Applies a staged email change (or marks the login email verified) from a valid link, and logs
/// the browser in unless the user has 2FA. The change and its notices commit together.
pub async fn verify_email(
    state: &AppState,
    origin: Origin,
    uuid: Option<&str>,
    token: &str,
    previous: Option<&str>,
) -> ApiResult<EmailVerified> {
    let invalid = || {
        ApiError::field(
            "token",
            "invalid_token",
            "This verification token is invalid or has expired.",
        )
    };
    fn taken() -> ApiError {
        ApiError::field(
            "email",
            "email_taken",
            "Another account now uses this email address. Start the change again with a different address.",
        )
    }
    let uuid = uuid
        .and_then(|u| Uuid::parse_str(u).ok())
        .ok_or_else(invalid)?;
    let user = state
        .store
        .user_by_uuid(uuid)
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(invalid)?;
    if !emails::verification_token_is_valid(state, &user, token) {
        return Err(invalid());
    }
    let ctx = Context::anonymous(origin).as_user(user.id);
    let mut write = UserWrite::default();
    let mut mail = Outgoing::default();
    write.changes.is_email_verified = Some(Some(true));
    let verified = match &user.pending_email {
        Some(new_email) => ctx.entry(
            state,
            Some(user.id),
            Activity::EmailChanged,
            json!({ "previous_email": user.email, "email": new_email }),
        ),
        None => ctx.entry(
            state,
            Some(user.id),
            Activity::EmailVerified,
            json!({ "email": user.email }),
        ),
    };
    write.activity.push(verified);
    if let Some(new_email) = &user.pending_email {
        if let Some(other) = state.store.user_by_email(new_email).await?
            && other.id != user.id
        {
            return Err(taken());
        }
        write.changes.email = Some(new_email.clone());
        write.changes.pending_email = Some(None);
        let what = format!(
            "The email address of your account was changed from {} to {new_email}.",
            user.email
        );
        for to in [user.email.as_str(), new_email.as_str()] {
            let notice = emails::notice(to, &user, "Your email address has been changed", &what);
            mail.add(state, &mut write, notice)?;
        }
    }
    let two_factor = state.store.totp_device(user.id).await?.is_some();
    let user = commit_or(state, user.id, &write, mail, taken).await?;
    if two_factor {
        return Ok(EmailVerified::SecondFactorNeeded);
    }
    let (_, session) = start_login(state, &ctx, &user, previous, LoginMethod::EmailLink).await?;
    Ok(EmailVerified::LoggedIn(Box::new(session)))
}

/// Drops the caller's staged email change.
pub async fn cancel_email_change(state: &AppState, user: &UserRecord) -> ApiResult<UserRecord> {
    if user.pending_email.is_none() {
        return Err(ApiError::non_field(
            "email_change_request_not_found",
            "No active email change requests found.",
        ));
    }
    let write = UserWrite {
        changes: UserChanges {
            pending_email: Some(None),
            ..UserChanges::default()
        },
        ..UserWrite::default()
    };
    commit(state, user.id, &write, Outgoing::default()).await
}

// --- the second factor ---

fn totp_key(state: &AppState) -> [u8; 32] {
    state.derived_key("totp-secrets")
}

pub fn seal_totp_secret(state: &AppState, secret: &[u8]) -> ApiResult<String> {
    crypto::sealed::seal(&totp_key(state), secret).map_err(ApiError::internal)
}

pub fn open_totp_secret(state: &AppState, sealed: &str) -> ApiResult<Vec<u8>> {
    crypto::sealed::open(&totp_key(state), sealed).map_err(ApiError::internal)
}

/// The keyed hash a backup code is stored as (so a database copy alone cannot be brute-forced).
pub fn backup_code_hash(state: &AppState, user_id: i64, code: &str) -> String {
    let key = state.derived_key("backup-codes");
    hex::encode(crypto::hmac_sha256(
        &key,
        format!("{user_id}:{}", code.trim()).as_bytes(),
    ))
}

/// Ten fresh backup codes for the user, in clear (shown once) and as stored (hashed).
pub fn new_backup_codes(state: &AppState, user_id: i64) -> (Vec<String>, Vec<String>) {
    let codes: Vec<String> = (0..totp::BACKUP_CODE_COUNT)
        .map(|_| totp::new_backup_code())
        .collect();
    let hashes = codes
        .iter()
        .map(|c| backup_code_hash(state, user_id, c))
        .collect();
    (codes, hashes)
}

/// Result of checking a second-factor code at login.
#[derive(Debug, PartialEq, Eq)]
pub enum SecondFactor {
    /// A TOTP code or a backup code (`backup_code_used` is recorded with its use).
    Accepted(LoginMethod),
    Rejected,
    Throttled,
}

/// Checks a TOTP code (each time step at most once) and then the backup codes. Each attempt is
/// counted as failed and throttles the device for 2^(n−1) s before the code is looked at (PostHog
/// counts a miss twice); an accepted code clears the count. Counting first, in one atomic step,
/// means parallel guesses within one backoff window get one evaluation between them.
pub async fn check_second_factor(
    state: &AppState,
    ctx: &Context,
    user: &UserRecord,
    token: &str,
) -> ApiResult<SecondFactor> {
    let now = state.clock.now();
    match state.store.claim_totp_attempt(user.id, now).await? {
        Some(device) => {
            let secret = open_totp_secret(state, &device.secret)?;
            let step = totp::matching_step(&secret, token, state.clock.now_secs());
            if let Some(step) = step.filter(|s| *s > device.last_step)
                && state.store.advance_totp_step(user.id, step).await?
            {
                return Ok(SecondFactor::Accepted(LoginMethod::Totp));
            }
        }
        None if state.store.totp_device(user.id).await?.is_some() => {
            return Ok(SecondFactor::Throttled);
        }
        None => {}
    }
    let hash = backup_code_hash(state, user.id, token);
    let used = [ctx.entry(state, Some(user.id), Activity::BackupCodeUsed, Value::Null)];
    if state
        .store
        .consume_backup_code(user.id, &hash, &used)
        .await?
    {
        activity::committed(state, &used);
        state.store.clear_totp_throttle(user.id).await?;
        emails::send_notice(
            state,
            &user.email,
            user,
            "A backup code was used to log in",
            "One of your two-factor backup codes was just used to log in to your account.",
        )
        .await;
        return Ok(SecondFactor::Accepted(LoginMethod::BackupCode));
    }
    Ok(SecondFactor::Rejected)
}

// --- remember this device ---

/// The remember-device signature covers the user's current password hash and TOTP device (as
/// django-two-factor's does): a password change or reset, or 2FA turned off and on again, voids
/// every remembered device.
fn remember_signature(
    state: &AppState,
    user: &UserRecord,
    device: &TotpDeviceRecord,
    expires: i64,
) -> String {
    let key = state.derived_key("remember-device");
    let signed = format!(
        "{}:{}:{expires}\0{}\0{}",
        user.id, device.created_at, user.password.0, device.secret
    );
    hex::encode(&crypto::hmac_sha256(&key, signed.as_bytes())[..20])
}

/// A token that lets this browser skip the second factor for 30 days.
pub fn remember_token(
    state: &AppState,
    user: &UserRecord,
    device: &TotpDeviceRecord,
) -> RememberToken {
    let expires = state.clock.now_secs() + REMEMBER_AGE_SECONDS;
    let signature = remember_signature(state, user, device, expires);
    RememberToken {
        id: uuid::Uuid::new_v4().simple().to_string(),
        value: format!(
            "{}:{}:{}:{signature}",
            device.user_id, device.created_at, expires
        ),
    }
}

/// Whether one of the presented remember-device tokens is valid for the user's current device
/// and password.
pub fn remembered(
    state: &AppState,
    tokens: &[&str],
    user: &UserRecord,
    device: &TotpDeviceRecord,
) -> bool {
    let now = state.clock.now_secs();
    tokens.iter().any(|value| {
        let parts: Vec<&str> = value.split(':').collect();
        let [user_id, created, expires, signature] = parts.as_slice() else {
            return false;
        };
        let (Ok(user_id), Ok(created), Ok(expires)) = (
            user_id.parse::<i64>(),
            created.parse::<i64>(),
            expires.parse::<i64>(),
        ) else {
            return false;
        };
        user_id == user.id
            && user_id == device.user_id
            && created == device.created_at
            && expires > now
            && crypto::constant_time_eq(
                remember_signature(state, user, device, expires).as_bytes(),
                signature.as_bytes(),
            )
    })
}

/// The reduced hedgehog config "user basic" objects embed: null unless the stored config is a
/// non-empty object; otherwise its profile keys (from `actor_options` for version 2 configs).
pub fn hedgehog_basic(config: Option<&Value>) -> Value {
    let Some(Value::Object(map)) = config else {
        return Value::Null;
    };
    if map.is_empty() {
        return Value::Null;
    }
    let actor = match (map.get("version"), map.get("actor_options")) {
        (Some(v), Some(Value::Object(actor))) if v == &json!(2) => actor,
        _ => map,
    };
    let pick = |key: &str| {
        map.get(key)
            .filter(|_| key == "use_as_profile")
            .or_else(|| actor.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    json!({
        "use_as_profile": pick("use_as_profile"),
        "color": pick("color"),
        "accessories": pick("accessories"),
        "skin": pick("skin"),
    })
}

/// Everything a valid PATCH/PUT will change, computed before anything is written.
#[derive(Debug, Default)]
pub struct IdentityRequest {
    pub new_email: Option<String>,
    pub new_password: Option<String>,
    pub current_password: Option<String>,
}

/// What a user update did to the login identity, for the effects after it is saved.
#[derive(Debug, Default)]
pub struct IdentityChanges {
    pub password_changed: bool,
    pub email_staged: bool,
    pub email_replaced_from: Option<String>,
}

/// Applies an email change and a password change validated by `apply_update` (session callers
/// only: keys were refused by the identity guard). With email configured, a new address is staged
/// as `pending_email` until verified; otherwise it replaces the login email at once.
pub async fn apply_identity_changes(
    state: &AppState,
    target: &UserRecord,
    user: &mut UserRecord,
    changes: IdentityRequest,
) -> ApiResult<IdentityChanges> {
    let mut done = IdentityChanges::default();
    if let Some(password) = changes.new_password.filter(|p| !p.is_empty()) {
        if target.password.is_usable() {
            let current = changes.current_password.ok_or_else(|| {
                ApiError::field(
                    "current_password",
                    "required",
                    "This field is required when updating your password.",
                )
            })?;
            let verified = state
                .hasher
                .verify(&current, Some(&target.password.0))
                .await
                .map_err(ApiError::internal)?;
            if verified == password::Verified::No {
                return Err(ApiError::field(
                    "current_password",
                    "incorrect_password",
                    "Your current password is incorrect.",
                ));
            }
        }
        check_new_password(&password, Some(target), false)?;
        user.password = hash_password(state, &password).await?;
        done.password_changed = true;
    }
    if let Some(email) = changes.new_email {
        if state.mailer.is_configured() {
            user.pending_email = Some(email);
            done.email_staged = true;
        } else {
            done.email_replaced_from = Some(user.email.clone());
            user.email = email;
        }
    }
    Ok(done)
}
