//! The mail outbox. Requests never talk to the mail server: they write the message to the
//! `outbox` table (in the transaction that mints the link it carries, where there is one) and wake
//! this process's worker, which delivers it. A failed attempt is retried with exponential backoff,
//! up to [`MAX_ATTEMPTS`]; then the message is given up ("dead"). Messages survive a restart and
//! any replica's worker may deliver them: a claim leases its rows, so two workers never deliver
//! one message at the same time.
//!
//! Bodies carry one-time links: they are sealed with a key derived from `HOGLET_SECRET_KEY` and
//! deleted with the row once delivered; a dead row keeps only recipient, subject and last error.

use std::time::Duration;

use tokio::sync::watch;

use crate::crypto::sealed;
use crate::mail::Email;
use crate::state::AppState;
use crate::store::{ClaimedMail, MailFailure, NewMail, StoreResult};
use crate::time::{Micros, SECOND};

/// Attempts per message before it is given up.
pub const MAX_ATTEMPTS: i64 = 8;
/// The wait after the first failed attempt; each further failure doubles it (30 s … 32 min: the
/// last attempt comes about an hour after the first).
pub const FIRST_RETRY_DELAY: Micros = 30 * SECOND;
/// How often the worker looks for retries that came due and for mail other replicas queued.
/// How long a message given up stays in the outbox (without its body) for the operator to see.
pub const DEAD_MAIL_KEPT: Micros = 30 * 24 * 3600 * SECOND;
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Messages claimed, and delivered concurrently, at once.
const BATCH: usize = 8;
/// A claim's lease, well beyond [`crate::mail::DELIVERY_TIMEOUT`]. A worker stopped mid-attempt
/// leaves its messages to be retried when the lease ends.
const LEASE: Micros = 120 * SECOND;
/// `last_error` is kept short.
const ERROR_CHARS: usize = 300;
const SEAL_PURPOSE: &str = "outbox";

/// The outbox row for `email`, its body sealed.
pub fn seal(state: &AppState, email: &Email) -> anyhow::Result<NewMail> {
    Ok(NewMail {
        recipient: email.to.clone(),
        subject: email.subject.clone(),
        sealed_body: sealed::seal(&state.derived_key(SEAL_PURPOSE), email.body.as_bytes())?,
        created_at: state.clock.now(),
    })
}

/// The message a claimed row holds.
fn open(state: &AppState, mail: &ClaimedMail) -> anyhow::Result<Email> {
    let body = sealed::open(&state.derived_key(SEAL_PURPOSE), &mail.sealed_body)?;
    Ok(Email {
        to: mail.recipient.clone(),
        subject: mail.subject.clone(),
        body: String::from_utf8(body)?,
    })
}

/// The wait before the next attempt, after `attempts` failed ones.
pub fn retry_delay(attempts: i64) -> Micros {
    FIRST_RETRY_DELAY << (attempts - 1).clamp(0, 20)
}

/// Delivers queued mail until `shutdown` changes: at once when woken, else every few seconds.
pub async fn run_worker(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut outbox_was_down = false;
    loop {
        tokio::select! {
            drained = drain(&state) => match drained {
                Ok(()) => outbox_was_down = false,
                Err(e) => {
                    if !outbox_was_down {
                        tracing::warn!(error = %e, "cannot read the mail outbox");
                    }
                    outbox_was_down = true;
                }
            },
            _ = shutdown.changed() => break,
        }
        tokio::select! {
            _ = state.outbox.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// Delivers everything due now, a batch at a time.
async fn drain(state: &AppState) -> StoreResult<()> {
    loop {
        let now = state.clock.now();
        if state.store.outbox_status(now).await?.due == 0 {
            return Ok(());
        }
        let claimed = state.store.claim_mail(now, now + LEASE, BATCH).await?;
        if claimed.is_empty() {
            // Another replica claimed them first.
            return Ok(());
        }
        futures_util::future::join_all(claimed.into_iter().map(|mail| attempt(state, mail))).await;
    }
}

/// Sets `hoglet_mail_outbox_depth` from the database, for a scrape: the worker cannot keep it
/// current while a slow relay holds its batch. Keeps the last value when the database does not
/// answer within `limit`.
pub async fn refresh_depth(state: &AppState, limit: Duration) {
    let status = tokio::time::timeout(limit, state.store.outbox_status(state.clock.now())).await;
    if let Ok(Ok(status)) = status {
        state.metrics.mail.outbox_depth.set(status.pending);
    }
}

/// One delivery attempt, and its outcome recorded.
async fn attempt(state: &AppState, mail: ClaimedMail) {
    let delivered = match open(state, &mail) {
        Ok(email) => state.mailer.deliver(&email).await,
        Err(e) => Err(e.context("opening the sealed body (was HOGLET_SECRET_KEY changed?)")),
    };
    let mail_metrics = &state.metrics.mail;
    let recorded = match delivered {
        Ok(()) => {
            mail_metrics.delivered.inc();
            tracing::debug!(id = mail.id, to = %mail.recipient, subject = %mail.subject, attempts = mail.attempts, "mail delivered");
            state.store.mail_delivered(mail.id, mail.locked_until).await
        }
        Err(e) => {
            mail_metrics.failures.inc();
            let error: String = format!("{e:#}").chars().take(ERROR_CHARS).collect();
            let now = state.clock.now();
            let failure = if mail.attempts >= MAX_ATTEMPTS {
                mail_metrics.dead.inc();
                tracing::error!(id = mail.id, to = %mail.recipient, subject = %mail.subject, attempts = mail.attempts, error = %error, "mail given up after the last attempt");
                MailFailure::GiveUp(now)
            } else {
                let delay = retry_delay(mail.attempts);
                tracing::warn!(id = mail.id, to = %mail.recipient, subject = %mail.subject, attempts = mail.attempts, retry_in_seconds = delay / SECOND, error = %error, "mail delivery failed");
                MailFailure::RetryAt(now + delay)
            };
            state
                .store
                .mail_failed(mail.id, mail.locked_until, &error, failure)
                .await
        }
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                id = mail.id,
                "mail outcome not recorded: the claim's lease had ended"
            );
        }
        Err(e) => {
            tracing::warn!(id = mail.id, error = %e, "cannot record the mail outcome: it is retried when the lease ends");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_thirty_seconds() {
        let delays: Vec<i64> = (1..MAX_ATTEMPTS).map(|n| retry_delay(n) / SECOND).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920]);
    }
}
