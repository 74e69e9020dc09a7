//! Log output: human-readable lines on stderr by default, JSON with `HOGLET_LOG_FORMAT=json`;
//! the level from `HOGLET_LOG` (or `RUST_LOG`). Stdout is kept for command output.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Servers log at `info`; admin commands only warn.
pub fn init(server: bool) {
    let default = if server { "info" } else { "warn" };
    let filter = std::env::var("HOGLET_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("HOGLET_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
