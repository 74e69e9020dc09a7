//! Password hashing off the async runtime: a few dedicated threads at a lowered scheduling
//! priority (nice 10), fed through a bounded queue, so a burst of logins uses spare CPU and never
//! stalls API reads.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, oneshot};

use crate::domain::password::{self, Verified};

/// Jobs allowed to wait for a hashing thread; more wait asynchronously for a slot.
const QUEUE_DEPTH: usize = 256;
/// `thread-priority`'s cross-platform value mapping to nice 10 on Linux.
const LOW_PRIORITY: u8 = 22;

enum Job {
    Hash(SecretString, oneshot::Sender<anyhow::Result<String>>),
    Verify(SecretString, String, oneshot::Sender<Verified>),
}

#[derive(Clone)]
pub struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
    slots: Arc<Semaphore>,
}

impl PasswordHasher {
    /// Starts one hashing thread per available core.
    pub fn start() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hoglet-hash-{i}"))
                .spawn(move || {
                    lower_priority();
                    let mut workspace = password::Workspace::new();
                    loop {
                        let job = match rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(Job::Hash(password, reply)) => {
                                let _ = reply.send(workspace.hash(password.expose_secret()));
                            }
                            Ok(Job::Verify(password, stored, reply)) => {
                                let _ =
                                    reply.send(workspace.verify(password.expose_secret(), &stored));
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self {
            jobs: tx,
            slots: Arc::new(Semaphore::new(QUEUE_DEPTH)),
        }
    }

    /// Hashes and verifications waiting for a thread or running.
    pub fn queue_depth(&self) -> usize {
        QUEUE_DEPTH - self.slots.available_permits()
    }

    async fn run<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Job) -> anyhow::Result<T> {
        let _slot = self.slots.acquire().await?;
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(make(tx))
            .map_err(|_| anyhow::anyhow!("password hashing threads are gone"))?;
        Ok(rx.await?)
    }

    /// An Argon2id hash of `password`.
    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let password = SecretString::from(password.to_string());
        self.run(|reply| Job::Hash(password, reply)).await?
    }

    /// Checks `password` against `stored`; an unknown user passes `None` and is checked against
    /// a dummy hash, so both answers take the same time.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> anyhow::Result<Verified> {
        let password = SecretString::from(password.to_string());
        let (stored, real) = match stored {
            Some(s) => (s.to_string(), true),
            None => (password::dummy_hash().to_string(), false),
        };
        let verified = self
            .run(|reply| Job::Verify(password, stored, reply))
            .await?;
        Ok(if real { verified } else { Verified::No })
    }
}

fn lower_priority() {
    use thread_priority::{ThreadPriority, ThreadPriorityValue, set_current_thread_priority};
    if let Ok(value) = ThreadPriorityValue::try_from(LOW_PRIORITY)
        && let Err(e) = set_current_thread_priority(ThreadPriority::Crossplatform(value))
    {
        tracing::debug!(error = ?e, "could not lower the hashing thread's priority");
    }
}
