//! `kmsd load`: a bounded load generator that behaves like many Windows
//! clients at once. Each activation is, by default, a new TCP connection:
//! bind (and alter_context when the host prefers NDR64, as Windows does),
//! one request, close. Every connection is driven by the same client core
//! as `kmsd activate` ([`crate::protocol::client`] through
//! [`crate::client::Link`]), so every response gets the same checks (the
//! RPC reply, then [`kms::verify_response`]); a failure is counted by kind
//! and never stops the run.
//!
//! The run always ends by itself: at `--duration` (or after `--requests`),
//! with a hard deadline a few exchange timeouts later that abandons whatever
//! is still in flight. Targets outside loopback are refused unless the
//! operator says, with `--allow-remote`, that they operate the target
//! ([`target`], the same rule as `kmsd probe`).
//!
//! Two scenarios: `classic` keeps `--concurrency` clients busy for
//! `--duration` (or `--requests`); `boot-storm` is N machines (`--clients
//! N`) that each activate once, their starts spread evenly over `--over`
//! seconds, like a VDI pool booting (`--over 0` is a burst).
//!
//! The parts: the arguments ([`args`]), the generator ([`engine`]), what a
//! run found ([`report`]), the progress line on a terminal ([`progress`])
//! and which host is loaded ([`target`]). Besides the totals, a run keeps
//! one bucket per second ([`series`]) for the charts of `--report
//! FILE.html` ([`html`]) and the progress line; `--metrics URL` adds the
//! host's own figures ([`scrape`]).
//!
//! [`run_with`] is the same generator for harnesses (`examples/floor.rs`
//! measures kmsd and the floor server with it, side by side). Its
//! [`Pinned`] mode sends the same request every time so that a server that
//! does no KMS work can answer with canned bytes that still verify; the
//! client does the same work per activation either way.

pub use crate::protocol::client::BIND_CALL_ID;
pub use args::{
    Clients, ConnectionMode, DEFAULT_OVER_SECS, DEFAULT_REQUESTS_PER_CONNECTION, LoadArgs,
    MAX_DURATION_SECS, Scenario,
};
pub use engine::{LoadOptions, Pinned, bind_pdus, pinned_request, run_with};
pub use report::{Latency, LoadReport, StoppedBy};
pub use scrape::{MetricsUrl, ServerFigures};
pub use series::SecondSample;
pub use target::{TargetError, is_loopback, resolve_target};

pub mod args;
pub mod engine;
pub mod html;
mod progress;
pub mod report;
pub mod scrape;
pub mod series;
pub mod target;

/// `kmsd load`: checks the arguments, resolves and checks the target (and
/// the metrics URL), then runs, reading the host's metrics before and after.
pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    use std::io::IsTerminal;
    args.check_scenario()?;
    let (target, addr) = target::chosen(args).await?;
    let metrics = match &args.metrics {
        Some(url) => Some(MetricsUrl::resolve(url, args.allow_remote).await?),
        None => None,
    };
    let mut opts = args.options()?;
    opts.progress = !args.json && std::io::stderr().is_terminal();
    let before = match &metrics {
        Some(m) => Some(m.scrape().await?),
        None => None,
    };
    let mut report = run_with(addr, opts).await?;
    report.target = target;
    if let (Some(m), Some(before)) = (&metrics, before) {
        report.server = Some(ServerFigures::new(&m.url, &before, m.scrape().await));
    }
    Ok(report)
}
