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
                .finish(std::io::BufWriter::with_capacity(
                    64 * 1024,
                    std::io::stderr(),
                ));
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
