//! Raw Argon2id throughput of one core with hoglet's parameters (m=19456 KiB, t=2, p=1): the
//! ceiling for login throughput. Runs single-threaded (pin it with `taskset`), verifying a
//! password against a stored hash exactly as login does, and prints one JSON object.

use std::time::{Duration, Instant};

use clap::Parser;
use hoglet::domain::password;

#[derive(Debug, Parser)]
#[command(about = "Measure Argon2id verifications per second on this thread")]
struct Args {
    /// How long to measure.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stored = password::hash("bench-password-1")?;
    anyhow::ensure!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "unexpected Argon2 parameters: {stored}"
    );
    // One untimed run warms the allocator and caches.
    anyhow::ensure!(password::verify("bench-password-1", &stored) == password::Verified::Yes);
    let budget = Duration::from_secs_f64(args.seconds.max(0.1));
    let started = Instant::now();
    let mut count: u64 = 0;
    while started.elapsed() < budget {
        if password::verify("bench-password-1", &stored) != password::Verified::Yes {
            anyhow::bail!("verification failed");
        }
        count += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "params": "argon2id m=19456 t=2 p=1",
            "verifications": count,
            "seconds": elapsed,
            "hashes_per_sec": count as f64 / elapsed,
            "ms_per_hash": elapsed * 1000.0 / count as f64,
        })
    );
    Ok(())
}
