//! Logging set-up: a `tracing` subscriber with a reloadable filter, text or
//! JSON, to stderr directly or through a background writer thread.

use crate::app::LogReload;
use tracing_appender::non_blocking::WorkerGuard;

/// Where log lines go: straight to stderr, or (for the host) through a
/// writer thread, so a line costs a worker thread a formatted copy and a
/// channel send rather than a write syscall, lines are written out in
/// batches, and a stalled log reader (a full pipe, a slow journal) can
/// never hold up an activation: past 128k queued lines, new ones are
/// dropped instead. The guard flushes what is queued when dropped.
pub enum LogSink {
    Stderr,
    Background,
}

/// How long the log thread rests after writing lines out, gathering the
/// lines that arrive meanwhile into the next write.
const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);

/// The inner writer of the background log thread: lines are buffered, and
/// each flush writes them out and then rests for `period`.
///
/// `tracing_appender`'s thread writes every line it receives and flushes
/// when its queue is empty, then blocks on the queue again, so under a
/// steady trickle of activations every line cost a wake-up of that thread
/// (a futex wake on the worker that logged it, a context switch and a
/// `write(2)` on the log thread; the log thread alone took 10-17 µs per
/// activation at one client, more than a tenth of the floor's whole
/// exchange). While the thread rests, a worker's line is
/// only a push onto the queue (no wake-up, since nobody waits on it), and
/// the lines gathered are written out with one `write(2)` after the rest.
/// A line waits at most `period` plus one write; a quiet host's first line
/// is written at once. The queue stays `tracing_appender`'s (bounded, lossy
/// when full), so a stalled reader still cannot hold up an activation.
struct Paced<W: std::io::Write> {
    out: std::io::BufWriter<W>,
    period: std::time::Duration,
}

impl<W: std::io::Write> Paced<W> {
    fn new(out: W, period: std::time::Duration) -> Self {
        Self {
            out: std::io::BufWriter::with_capacity(64 * 1024, out),
            period,
        }
    }
}

impl<W: std::io::Write> std::io::Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let written = self.out.flush();
        std::thread::sleep(self.period);
        written
    }
}

/// Sets up logging; returns the filter reload and the writer guard (which
/// flushes queued lines when dropped); `RUST_LOG` wins over `level`.
pub fn init(level: &str, json: bool, sink: LogSink) -> (LogReload, Option<WorkerGuard>) {
    use tracing_subscriber::{EnvFilter, prelude::*, reload};
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = EnvFilter::try_new(from_env.as_deref().unwrap_or(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let (writer, guard) = match sink {
        LogSink::Stderr => (BoxMakeWriter::new(std::io::stderr), None),
        LogSink::Background => {
            let (w, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .lossy(true)
                .thread_name("kmsd-log")
                .finish(Paced::new(std::io::stderr(), FLUSH_PERIOD));
            (BoxMakeWriter::new(w), Some(guard))
        }
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
    let reload = Box::new(move |new: &str| {
        if from_env.is_some() {
            return Err("RUST_LOG is set; it keeps precedence".into());
        }
        let f = EnvFilter::try_new(new).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    (reload, guard)
}

#[cfg(test)]
mod tests {
    use super::Paced;
    use std::io::Write;
    use std::time::{Duration, Instant};

    #[test]
    fn paced_lines_wait_for_the_flush_which_then_rests() {
        let period = Duration::from_millis(30);
        let mut w = Paced::new(Vec::new(), period);
        w.write_all(b"one\n").unwrap();
        w.write_all(b"two\n").unwrap();
        assert!(
            w.out.get_ref().is_empty(),
            "lines are gathered, not written one by one"
        );
        let t = Instant::now();
        w.flush().unwrap();
        assert!(t.elapsed() >= period, "the flush rests for the period");
        assert_eq!(w.out.get_ref().as_slice(), b"one\ntwo\n");
    }
}
