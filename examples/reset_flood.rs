//! A flood of `POST /api/reset/` with distinct unknown addresses, for `bench/reset_flood`: every
//! request names an address never used before, so every one is a new rate-limit identity.
//! Prints one line `sent=N status_204=… other=…` when done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "POST /api/reset/ with N distinct unknown emails")]
struct Args {
    /// Base URL of the server, e.g. http://127.0.0.1:8000
    #[arg(long)]
    url: String,
    /// How many requests (one distinct address each).
    #[arg(long, default_value_t = 50_000)]
    requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Prefix of the generated addresses (use a different one per batch).
    #[arg(long, default_value = "flood")]
    prefix: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let endpoint = format!("{}/api/reset/", args.url.trim_end_matches('/'));
    let next = Arc::new(AtomicU64::new(0));
    let no_content = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, endpoint, prefix) =
                (client.clone(), endpoint.clone(), args.prefix.clone());
            let (next, no_content, other) = (next.clone(), no_content.clone(), other.clone());
            let total = args.requests;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let email = format!("{prefix}-{i}@example.invalid");
                    let sent = client
                        .post(&endpoint)
                        .json(&serde_json::json!({ "email": email }))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 204 => {
                            no_content.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    println!(
        "sent={} status_204={} other={}",
        args.requests,
        no_content.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    Ok(())
}
