//! The messages hoglet sends (queued in the outbox, see [`crate::outbox`]) and the one-time
//! tokens their links carry.

use crate::domain::tokens;
use crate::error::{ApiError, ApiResult};
use crate::mail::Email;
use crate::outbox;
use crate::service::activity;
use crate::state::AppState;
use crate::store::{NewActivity, StoreError, UserRecord, UserWrite};

const VERIFY_PURPOSE: &str = "email-verification";
const RESET_PURPOSE: &str = "password-reset";

/// Everything a verification token depends on: once the address is verified, changed or a new
/// change is staged (or the user logs in), older tokens stop working.
fn verification_state(user: &UserRecord) -> String {
    format!(
        "{}|{}|{:?}|{:?}|{:?}",
        user.id, user.email, user.is_email_verified, user.pending_email, user.last_login
    )
}

/// Everything a reset token depends on: a reset, a newer request, any password change or a login
/// since it was sent kill it (Django's token generator binds `last_login` too).
fn reset_state(user: &UserRecord) -> String {
    format!(
        "{}|{}|{:?}|{}|{:?}",
        user.id, user.email, user.requested_password_reset_at, user.password.0, user.last_login
    )
}

pub fn verification_token(state: &AppState, user: &UserRecord) -> String {
    tokens::mint(
        &state.derived_key(VERIFY_PURPOSE),
        VERIFY_PURPOSE,
        &verification_state(user),
        state.clock.now_secs(),
    )
}

pub fn verification_token_is_valid(state: &AppState, user: &UserRecord, token: &str) -> bool {
    tokens::verify(
        &state.derived_key(VERIFY_PURPOSE),
        VERIFY_PURPOSE,
        &verification_state(user),
        token,
        state.clock.now_secs(),
    )
}

pub fn reset_token(state: &AppState, user: &UserRecord) -> String {
    tokens::mint(
        &state.derived_key(RESET_PURPOSE),
        RESET_PURPOSE,
        &reset_state(user),
        state.clock.now_secs(),
    )
}

pub fn reset_token_is_valid(state: &AppState, user: &UserRecord, token: &str) -> bool {
    tokens::verify(
        &state.derived_key(RESET_PURPOSE),
        RESET_PURPOSE,
        &reset_state(user),
        token,
        state.clock.now_secs(),
    )
}

/// Queues `email` in the outbox and wakes the worker. With `HOGLET_EMAIL=log` nothing would leave,
/// so the message is only logged, as before.
async fn enqueue(state: &AppState, email: Email) -> ApiResult<()> {
    if !state.mailer.is_configured() {
        return state
            .mailer
            .deliver(&email)
            .await
            .map_err(ApiError::internal);
    }
    let mail = outbox::seal(state, &email).map_err(ApiError::internal)?;
    state.store.enqueue_mail(mail).await?;
    state.outbox.wake();
    Ok(())
}

/// Queues a verification link for the staged address, or the current one. Fails when the message
/// cannot be stored: the caller must not report a link that will never arrive.
pub async fn send_verification(state: &AppState, user: &UserRecord) -> ApiResult<()> {
    enqueue(state, verification(state, user)).await
}

/// Records the reset request on `user` (as read, before the request) and queues the link, in
/// one transaction: the token is minted from the `requested_password_reset_at` written, so it
/// is valid exactly when the request is stored. A user deleted meanwhile gets nothing, like an
/// unknown address.
pub async fn send_password_reset(
    state: &AppState,
    user: &UserRecord,
    recorded: NewActivity,
) -> ApiResult<()> {
    let requested_at = state.clock.now();
    let mut requested = user.clone();
    requested.requested_password_reset_at = Some(requested_at);
    let link = format!(
        "{}/reset/{}/{}",
        state.site_url,
        user.uuid,
        reset_token(state, &requested)
    );
    let email = Email {
        to: user.email.clone(),
        subject: "Reset your PostHog password".into(),
        body: format!(
            "Hi {},\n\nYou asked to reset your password. Choose a new one here:\n\n{link}\n\n\
             The link is valid for 24 hours and works once. If you did not ask for it, you can \
             ignore this message.\n",
            greeting(user)
        ),
    };
    let mail = outbox::seal(state, &email).map_err(ApiError::internal)?;
    match state
        .store
        .request_password_reset(user.id, requested_at, mail, std::slice::from_ref(&recorded))
        .await
    {
        Ok(()) => {
            activity::committed(state, &[recorded]);
            state.caches.invalidate_user(user.id);
            state.outbox.wake();
            Ok(())
        }
        Err(StoreError::Missing(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Mail that goes out with one user write: sealed into the write, so it is queued in the same
/// transaction as the change it reports (or not at all); with `HOGLET_EMAIL=log` nothing would
/// leave, so it is logged once the write committed.
#[derive(Default)]
pub struct Outgoing {
    logged: Vec<Email>,
    queued: bool,
}

impl Outgoing {
    pub fn add(&mut self, state: &AppState, write: &mut UserWrite, email: Email) -> ApiResult<()> {
        if state.mailer.is_configured() {
            write
                .mail
                .push(outbox::seal(state, &email).map_err(ApiError::internal)?);
            self.queued = true;
        } else {
            self.logged.push(email);
        }
        Ok(())
    }

    /// After the write committed: wakes the mail worker, or logs the messages.
    pub async fn sent(self, state: &AppState) {
        if self.queued {
            state.outbox.wake();
        }
        for email in self.logged {
            if let Err(e) = state.mailer.deliver(&email).await {
                tracing::error!(to = %email.to, subject = %email.subject, error = %e, "could not log a message");
            }
        }
    }
}

/// A short notice about a change to the account.
pub fn notice(to: &str, user: &UserRecord, subject: &str, what: &str) -> Email {
    Email {
        to: to.to_string(),
        subject: subject.to_string(),
        body: format!(
            "Hi {},\n\n{what}\n\nIf this was not you, reset your password and contact your administrator.\n",
            greeting(user)
        ),
    }
}

/// The verification link for `user` as it will be stored (the staged address, else the current
/// one); the token is minted from that state.
pub fn verification(state: &AppState, user: &UserRecord) -> Email {
    let to = user
        .pending_email
        .clone()
        .unwrap_or_else(|| user.email.clone());
    let link = format!(
        "{}/verify_email/{}/{}",
        state.site_url,
        user.uuid,
        verification_token(state, user)
    );
    Email {
        to,
        subject: "Verify your email address".into(),
        body: format!(
            "Hi {},\n\nPlease confirm this email address by opening the link below:\n\n{link}\n\n\
             The link is valid for 24 hours. If you did not ask for it, you can ignore this message.\n",
            greeting(user)
        ),
    }
}

/// Queues a short notice about a change to the account. The change is already saved, so a notice
/// that cannot be stored is logged (without its body) rather than failing the request.
pub async fn send_notice(state: &AppState, to: &str, user: &UserRecord, subject: &str, what: &str) {
    if let Err(e) = enqueue(state, notice(to, user, subject, what)).await {
        tracing::error!(to = %to, subject = %subject, error = %e, "could not queue a notice");
    }
}

fn greeting(user: &UserRecord) -> &str {
    if user.first_name.is_empty() {
        "there"
    } else {
        &user.first_name
    }
}
