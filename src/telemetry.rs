//! Log output: human-readable lines on stderr by default, JSON with `HOGLET_LOG_FORMAT=json`;
//! the filter from `HOGLET_LOG` (or `RUST_LOG`), both read and checked by the command line
//! (`cli.rs`). Stdout is kept for command output.
//!
//! Lines are formatted on the calling thread but written by a background thread, so a slow
//! terminal or disk never stalls a request.

use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    /// The id of the request this task serves (set by `http::request_id` around each request).
    pub static REQUEST_ID: axum::http::HeaderValue;
}

/// Adds the id of the request being served (see `http::request_id`) to each line:
/// `request_id=…` at the end of a text line, a first `request_id` key in a JSON object. Ids are
/// `[A-Za-z0-9._-]` only, so they need no quoting or escaping.
struct WithRequestId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithRequestId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Ok(id) = REQUEST_ID.try_with(axum::http::HeaderValue::clone) else {
            return self.0.format_event(ctx, writer, event);
        };
        let id = id.to_str().unwrap_or_default();
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        if let Some(object) = line.strip_prefix('{') {
            write!(writer, "{{\"request_id\":\"{id}\",{object}")
        } else {
            let text = line.strip_suffix('\n').unwrap_or(&line);
            writeln!(writer, "{text} request_id={id}")
        }
    }
}

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
        let format = tracing_subscriber::fmt::format().json();
        builder
            .json()
            .event_format(WithRequestId(format))
            .try_init()
    } else {
        let format = tracing_subscriber::fmt::format().with_ansi(ansi);
        builder.event_format(WithRequestId(format)).try_init()
    };
    installed.ok().map(|_| guard)
}
