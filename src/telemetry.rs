//! Log output: human-readable lines on stderr by default, JSON with `HOGLET_LOG_FORMAT=json`;
//! the filter from `HOGLET_LOG` (or `RUST_LOG`), both read and checked by the command line
//! (`cli.rs`). Stdout is kept for command output.
//!
//! Lines are formatted on the calling thread but written by a background thread, so a slow
//! terminal or disk never stalls a request.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with `filter` (already checked by the command line), one JSON
/// object per line when `json`. Keep the returned guard alive until exit: dropping it flushes
/// what is still queued.
pub fn init(filter: &str, json: bool) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
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
