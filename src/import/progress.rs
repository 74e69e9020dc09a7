//! How far the import is, on stderr: a bar per table on a terminal, otherwise a plain line per
//! table every few seconds and when it is done (stdout is the JSON summary).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

/// How often a plain progress line is written while a table is read.
const LINE_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    /// `None`: plain lines.
    bars: Option<MultiProgress>,
    quiet: bool,
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn for_stderr() -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { bars, quiet: false }
    }

    /// Reports nothing (tests, library use).
    pub fn quiet() -> Self {
        Progress {
            bars: None,
            quiet: true,
        }
    }

    pub fn table(&self, name: &'static str, total: u64) -> TableProgress {
        let bar = self.bars.as_ref().map(|bars| {
            let bar = bars.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:32} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(name);
            bar
        });
        TableProgress {
            name,
            total,
            bar,
            quiet: self.quiet,
            counts: Mutex::new(Counts {
                last_line: Some(Instant::now()),
                ..Counts::default()
            }),
        }
    }
}

#[derive(Default)]
struct Counts {
    read: u64,
    written: u64,
    skipped: u64,
    last_line: Option<Instant>,
}

pub struct TableProgress {
    name: &'static str,
    total: u64,
    bar: Option<ProgressBar>,
    quiet: bool,
    counts: Mutex<Counts>,
}

impl TableProgress {
    /// One more batch: rows read, written and skipped.
    pub fn advance(&self, read: u64, written: u64, skipped: u64) {
        let mut counts = self.counts.lock();
        counts.read += read;
        counts.written += written;
        counts.skipped += skipped;
        if let Some(bar) = &self.bar {
            bar.inc(read);
            bar.set_message(format!(
                "written {written} skipped {skipped}",
                written = counts.written,
                skipped = counts.skipped
            ));
        } else if counts.last_line.is_none_or(|at| at.elapsed() >= LINE_EVERY) {
            counts.last_line = Some(Instant::now());
            self.line(&counts, "");
        }
    }

    pub fn finish(&self) {
        let counts = self.counts.lock();
        match &self.bar {
            Some(bar) => bar.finish(),
            None => self.line(&counts, " done"),
        }
    }

    fn line(&self, counts: &Counts, suffix: &str) {
        if !self.quiet {
            eprintln!(
                "import: {} {}/{} read, {} written, {} skipped{suffix}",
                self.name, counts.read, self.total, counts.written, counts.skipped
            );
        }
    }
}
