//! What a run found ([`LoadReport`]): totals, threshold, errors by kind,
//! latency percentiles, the per-second series, the host's own figures; as
//! text for the terminal (its `Display`) and JSON (`--json`), and merged
//! over several runs for harnesses.

use super::args::{ConnectionMode, Scenario};
use super::scrape::ServerFigures;
use super::series::SecondSample;
use crate::client::exchange::ClientError;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

/// Latencies above this are clamped into the histogram's top bucket (µs).
pub(super) const MAX_LATENCY_US: u64 = 600_000_000;

/// The latency histogram of a run (or of one worker's part of it).
pub(super) fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Latency percentiles of the verified activations, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub(super) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoppedBy {
    /// `--duration` elapsed.
    Duration,
    /// `--requests` activations were issued.
    Requests,
    /// The hard deadline passed; in-flight exchanges were abandoned.
    Deadline,
}

impl fmt::Display for StoppedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Duration => "duration",
            Self::Requests => "requests",
            Self::Deadline => "deadline",
        })
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub target: String,
    pub scenario: Scenario,
    pub protocol: u16,
    pub product: String,
    /// The threshold (N_Policy) the clients sent.
    pub n_policy: u32,
    pub concurrency: usize,
    pub connection: ConnectionMode,
    /// `distinct`, `fixed`, N, or `pinned` (the floor's fixed request).
    pub clients: String,
    /// Classic: the planned duration (s). Boot storm: the window (s).
    pub planned_secs: f64,
    /// Classic: the `--requests` cap. Boot storm: the machines.
    pub requests_limit: Option<u64>,
    /// Seconds allowed per step of an exchange.
    pub timeout_secs: f64,
    /// When the run started (milliseconds since the Unix epoch).
    pub started_unix_ms: i64,
    /// Activations whose response passed every check.
    pub activations: u64,
    /// Of those, the answers whose count was below the client's threshold
    /// (the client stays unactivated and retries later).
    pub below_threshold: u64,
    /// The others: the count reached the threshold, the client activates.
    pub activated: u64,
    /// Failures by kind: `connect`, `timeout: ...`, `closed: ...`, `io`,
    /// `rpc`, `bind: ...`, `fault 0x...`, `hresult 0x...`, `verify: ...`.
    pub errors: BTreeMap<String, u64>,
    pub error_total: u64,
    /// TCP connections opened (and bound).
    pub connections: u64,
    pub elapsed_secs: f64,
    /// Verified activations per second of elapsed time.
    pub activations_per_sec: f64,
    /// Time from the start of an activation (its connect, when it needed a
    /// new connection) to its verified response.
    pub latency_us: Latency,
    /// `duration`, `requests` or `deadline` (in-flight exchanges abandoned).
    pub stopped_by: StoppedBy,
    /// One sample per second of the run.
    pub series: Vec<SecondSample>,
    /// The host's figures (`--metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerFigures>,
    /// The latencies behind `latency_us` (µs), for merging runs.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

impl LoadReport {
    /// The runs of `reports` as one (same target and settings assumed):
    /// counts and elapsed times add up, latencies are merged.
    pub fn merge(reports: &[LoadReport]) -> Option<LoadReport> {
        let (first, rest) = reports.split_first()?;
        let mut all = first.clone();
        for r in rest {
            all.activations += r.activations;
            all.below_threshold += r.below_threshold;
            all.activated += r.activated;
            // Second i of each run added up.
            for (i, x) in r.series.iter().enumerate() {
                match all.series.get_mut(i) {
                    Some(a) => {
                        a.activations += x.activations;
                        a.below_threshold += x.below_threshold;
                        a.errors += x.errors;
                        a.p50_us = a.p50_us.max(x.p50_us);
                        a.p99_us = a.p99_us.max(x.p99_us);
                    }
                    None => all.series.push(*x),
                }
            }
            all.error_total += r.error_total;
            all.connections += r.connections;
            all.elapsed_secs += r.elapsed_secs;
            for (k, v) in &r.errors {
                *all.errors.entry(k.clone()).or_default() += v;
            }
            let _ = all.histogram.add(&r.histogram);
            if r.stopped_by == StoppedBy::Deadline {
                all.stopped_by = StoppedBy::Deadline;
            }
        }
        all.activations_per_sec = per_sec(all.activations, all.elapsed_secs);
        all.latency_us = Latency::of(&all.histogram);
        Some(all)
    }
}

pub(super) fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scenario {
            Scenario::Classic => writeln!(
                f,
                "load on {}: KMS {}.0, {}, {} concurrent, {} connections, clients {}",
                self.target,
                self.protocol,
                self.product,
                self.concurrency,
                self.connection,
                self.clients
            )?,
            Scenario::BootStorm => writeln!(
                f,
                "boot storm on {}: {} machines over {} s, KMS {}.0, {}, at most {} in flight",
                self.target,
                self.clients,
                self.planned_secs,
                self.protocol,
                self.product,
                self.concurrency,
            )?,
        }
        writeln!(
            f,
            "  activations  {:>10} verified in {:.2} s = {:.1}/s ({} connections, stopped by {})",
            self.activations,
            self.elapsed_secs,
            self.activations_per_sec,
            self.connections,
            self.stopped_by
        )?;
        writeln!(
            f,
            "  threshold    {:>10} activated, {} below the threshold of {}",
            self.activated, self.below_threshold, self.n_policy
        )?;
        writeln!(f, "  errors       {:>10}", self.error_total)?;
        for (kind, n) in &self.errors {
            writeln!(f, "    {n:>10}  {kind}")?;
        }
        let l = &self.latency_us;
        write!(
            f,
            "  latency µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )?;
        if let Some(s) = &self.server {
            match &s.error {
                Some(e) => write!(f, "\n  host         no figures after the run: {e}")?,
                None => {
                    write!(f, "\n  host         {} requests", s.requests)?;
                    if let Some(m) = s.response_mean_us {
                        write!(f, ", mean response {m:.0} µs")?;
                    }
                    if let Some(b) = s.batch_mean {
                        write!(f, ", {b:.1} records per commit")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The report's name for a failure: `connect`, `timeout: ...`,
/// `closed: ...`, `io`, `rpc`, `bind: ...`, `fault 0x...`, `hresult 0x...`,
/// `verify: ...`.
pub(super) fn failure_kind(e: &ClientError) -> String {
    match e {
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Timeout(stage) => format!("timeout: {stage}"),
        ClientError::Closed(stage) => format!("closed: {stage}"),
        ClientError::Io(_) => "io".into(),
        ClientError::Rpc(_) | ClientError::CallId { .. } => "rpc".into(),
        ClientError::Bind(e) => format!("bind: {e}"),
        ClientError::Fault(s) => format!("fault {s:#010x}"),
        ClientError::Hresult(h) => format!("hresult {h:#010X}"),
        ClientError::Verify(e) => format!("verify: {e}"),
        ClientError::Request(e) => format!("request: {e}"),
    }
}
