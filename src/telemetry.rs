//! Log output: human-readable lines on stderr by default, JSON with `HOGLET_LOG_FORMAT=json`;
//! the level from `HOGLET_LOG` (or `RUST_LOG`). Stdout is kept for command output.
//!
//! Lines are formatted on the calling thread but written by a background thread, so a slow
//! terminal or disk never stalls a request.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Servers log at `info`; admin commands only warn. Keep the
/// returned guard alive until exit: dropping it flushes what is still queued.
pub fn init(server: bool) -> Option<WorkerGuard> {
    let default = if server { "info" } else { "warn" };
    let filter = std::env::var("HOGLET_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("HOGLET_LOG_FORMAT").is_ok_and(|f| f == "json");
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // Buffered: the writer thread drains everything queued, then flushes once.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    installed.ok().map(|_| guard)
}
