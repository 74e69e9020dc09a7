//! Outgoing mail: to the log, to `.eml` files in a directory, or through an SMTP relay.
//! Requests never send mail themselves: they queue it in the outbox ([`crate::outbox`]), whose
//! worker calls [`Mailer::deliver`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Mailbox, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::EmailDelivery;

/// Bound on one delivery, far below lettre's 60 s. lettre's async transport applies its timeout
/// to the TCP connect only: a relay that accepts the connection and never answers would hold the
/// attempt forever without the bound [`Mailer::deliver`] puts around the whole exchange.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// This process's handle on its outbox worker ([`crate::outbox`]).
#[derive(Default)]
pub struct MailWake {
    wake: tokio::sync::Notify,
}

impl MailWake {
    /// Has the worker look at the outbox now (this process just queued a message, or a test
    /// moved a manual clock past a retry).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves at the next [`MailWake::wake`].
    pub async fn notified(&self) {
        self.wake.notified().await;
    }
}

/// One message to send.
#[derive(Clone)]
pub struct Email {
    pub to: String,
    pub subject: String,
    pub body: String,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bodies carry one-time links: keep them out of debug output.
        f.debug_struct("Email")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

enum Transport {
    Log,
    Directory(PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

impl Mailer {
    pub fn new(delivery: &EmailDelivery, from: &str) -> anyhow::Result<Self> {
        let transport = match delivery {
            EmailDelivery::Log => Transport::Log,
            EmailDelivery::Directory(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the mail directory {}", dir.display()))?;
                Transport::Directory(dir.clone())
            }
            EmailDelivery::Smtp(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .context("parsing HOGLET_EMAIL as an SMTP URL")?
                    .timeout(Some(DELIVERY_TIMEOUT))
                    .build(),
            ),
        };
        let from = from
            .parse()
            .with_context(|| format!("invalid sender address {from:?}"))?;
        Ok(Self { transport, from })
    }

    /// Whether mail really leaves (PostHog's `is_email_available`).
    pub fn is_configured(&self) -> bool {
        !matches!(self.transport, Transport::Log)
    }

    /// Hands the message to the transport (with `HOGLET_EMAIL=log`, only logs its recipient and
    /// subject), giving up after [`DELIVERY_TIMEOUT`]. Errors never contain the body.
    pub async fn deliver(&self, email: &Email) -> anyhow::Result<()> {
        tokio::time::timeout(DELIVERY_TIMEOUT, self.deliver_unbounded(email))
            .await
            .unwrap_or_else(|_| anyhow::bail!("no answer within {} s", DELIVERY_TIMEOUT.as_secs()))
    }

    async fn deliver_unbounded(&self, email: &Email) -> anyhow::Result<()> {
        if let Transport::Log = self.transport {
            tracing::info!(to = %email.to, subject = %email.subject, "mail (not delivered: HOGLET_EMAIL=log)");
            return Ok(());
        }
        // 8bit (not quoted-printable) keeps links intact for people and tests reading the `.eml`
        // files. Our templates keep every line far below the 998-character limit of RFC 5322.
        let body = lettre::message::Body::dangerous_pre_encoded(
            email
                .body
                .replace("\r\n", "\n")
                .replace('\n', "\r\n")
                .into_bytes(),
            ContentTransferEncoding::EightBit,
        );
        let message = Message::builder()
            .from(self.from.clone())
            .to(email.to.parse().context("recipient address")?)
            .subject(email.subject.clone())
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(body),
            )
            .context("building the message")?;
        match &self.transport {
            Transport::Log => Ok(()),
            Transport::Directory(dir) => {
                let name = format!(
                    "{}-{}.eml",
                    crate::time::system_now(),
                    uuid::Uuid::new_v4().simple()
                );
                let temporary = dir.join(format!(".{name}.tmp"));
                tokio::fs::write(&temporary, message.formatted())
                    .await
                    .context("writing the message")?;
                tokio::fs::rename(&temporary, dir.join(name))
                    .await
                    .context("publishing the message")?;
                Ok(())
            }
            Transport::Smtp(smtp) => smtp
                .send(message)
                .await
                .map(|_| ())
                .context("SMTP delivery"),
        }
    }
}
