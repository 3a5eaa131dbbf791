//! The progress line of a run on a terminal: once a second on stderr,
//! rewritten in place (elapsed and remaining time, verified activations and
//! their rate, errors, and in a boot storm the machines started), cleared
//! when the run ends. Drawn by `indicatif`; [`super::run`] turns it on only
//! when stderr is a terminal and the report is not JSON, and harnesses and
//! tests never do.

use super::args::Scenario;
use super::engine::Shared;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The line, and the task that refreshes it.
pub(super) struct ProgressLine {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl ProgressLine {
    /// Shows the line for a run of `planned` sharing `s`.
    pub(super) fn start(s: Arc<Shared>, planned: Duration) -> Self {
        let target = ProgressDrawTarget::term_like(Box::new(Stderr(console::Term::stderr())));
        let bar = ProgressBar::with_draw_target(None, target);
        // "{msg}" is a valid template; the fallback only satisfies the type.
        bar.set_style(
            ProgressStyle::with_template("{msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let ticker = tokio::spawn(tick(s, planned, bar.clone()));
        Self { bar, ticker }
    }

    /// Stops refreshing and clears the line, for the summary.
    pub(super) async fn finish(self) {
        self.ticker.abort();
        let _ = self.ticker.await;
        self.bar.finish_and_clear();
    }
}

/// Once a second: the figures since the start, the rate since the last line.
async fn tick(s: Arc<Shared>, planned: Duration, bar: ProgressBar) {
    let mut tick =
        tokio::time::interval_at(s.start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = (s.start, 0u64);
    loop {
        let now = tick.tick().await;
        let (ok, errors) = s.series.totals();
        let rate = (ok - last.1.min(ok)) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, ok);
        bar.set_message(progress_line(&ProgressFigures {
            elapsed: now - s.start,
            planned,
            activations: ok,
            rate,
            errors,
            machines: (s.opts.scenario == Scenario::BootStorm).then(|| s.machines_started()),
        }));
    }
}

/// stderr as `indicatif` draws on it, except that a line is cleared with
/// `\r\x1b[K` (back to its start, erase to its end), as the progress line
/// always has been, rather than `console`'s `\r\x1b[2K`.
#[derive(Debug)]
struct Stderr(console::Term);

impl TermLike for Stderr {
    fn width(&self) -> u16 {
        self.0.size().1
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> io::Result<()> {
        self.0.write_str("\r\x1b[K")
    }
    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}

/// What the progress line shows.
struct ProgressFigures {
    elapsed: Duration,
    planned: Duration,
    activations: u64,
    /// Verified activations per second since the last line.
    rate: f64,
    errors: u64,
    /// Boot storm: machines started, of all.
    machines: Option<(u64, u64)>,
}

fn progress_line(p: &ProgressFigures) -> String {
    let elapsed = p.elapsed.as_secs();
    let left = p.planned.saturating_sub(p.elapsed).as_secs();
    let mut line = format!(
        "{elapsed} s / {} s, {left} s left | {} verified, {:.0}/s | {} errors",
        p.planned.as_secs(),
        p.activations,
        p.rate,
        p.errors
    );
    if let Some((started, all)) = p.machines {
        line.push_str(&format!(" | {started}/{all} machines started"));
    }
    line
}
