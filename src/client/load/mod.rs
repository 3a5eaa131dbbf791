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
//! operator says, with `--allow-remote`, that they own the target.
//!
//! Two scenarios: `classic` keeps `--concurrency` clients busy for
//! `--duration` (or `--requests`); `boot-storm` is N machines (`--clients
//! N`) that each activate once, their starts spread evenly over `--over`
//! seconds, like a VDI pool booting (`--over 0` is a burst).
//!
//! Besides the totals, a run keeps one bucket per second ([`series`]) for
//! the charts of `--report FILE.html` ([`html`]) and the progress line on a
//! terminal; `--metrics URL` adds the host's own figures ([`scrape`]).
//!
//! [`run_with`] is the same generator for harnesses (`examples/floor.rs`
//! measures kmsd and the floor server with it, side by side). Its
//! [`Pinned`] mode sends the same request every time so that a server that
//! does no KMS work can answer with canned bytes that still verify; the
//! client does the same work per activation either way.

use crate::client::exchange::{ClientError, Link, Stage, filetime_now};
use crate::client::target::{self, ResolveError};
use crate::protocol::client::{Binding, Offer};
use crate::protocol::guid::Guid;
use crate::protocol::kms::{self, RequestBase, Version, Workstation, products};
use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use crate::protocol::client::BIND_CALL_ID;
pub use scrape::{MetricsUrl, ServerFigures};
pub use series::SecondSample;

pub mod html;
pub mod scrape;
pub mod series;

/// The longest run the CLI accepts (seconds).
pub const MAX_DURATION_SECS: u64 = 3600;
/// Latencies above this are clamped into the histogram's top bucket (µs).
const MAX_LATENCY_US: u64 = 600_000_000;
/// Pause after a failed connect, so a dead target is not hammered in a loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// kmsd's default `max_requests_per_connection`.
pub const DEFAULT_REQUESTS_PER_CONNECTION: u32 = 64;

/// Which client machine IDs the simulated clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// A fresh random CMID per activation: every request is a new machine.
    Distinct,
    /// One CMID for the whole run: the same machine renewing over and over.
    Fixed,
    /// A pool of N CMIDs used round-robin.
    Pool(usize),
}

impl std::str::FromStr for Clients {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "distinct" => Ok(Self::Distinct),
            "fixed" => Ok(Self::Fixed),
            _ => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
                .map(Self::Pool)
                .ok_or_else(|| {
                    format!(
                        "--clients {s:?}: expected `distinct`, `fixed` or a pool size 1..=10000000"
                    )
                }),
        }
    }
}

impl fmt::Display for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Distinct => f.write_str("distinct"),
            Self::Fixed => f.write_str("fixed"),
            Self::Pool(n) => write!(f, "{n}"),
        }
    }
}

/// The shape of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `--concurrency` clients, each starting its next activation as soon
    /// as the last one ends, for `--duration` or `--requests`.
    Classic,
    /// `--clients N` distinct machines, each activating once, their starts
    /// spread evenly over `--over` seconds (a VDI pool booting; 0: all at
    /// once). At most `--concurrency` are in flight.
    BootStorm,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Classic => "classic",
            Self::BootStorm => "boot-storm",
        })
    }
}

/// The window of a boot storm when `--over` is left out (seconds).
pub const DEFAULT_OVER_SECS: u64 = 60;

/// How activations use TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// Connect, bind, one request, close: what Windows clients do.
    PerActivation,
    /// Bind once and send requests on the connection (reconnecting after
    /// `requests_per_connection`, kmsd's per-connection limit).
    KeepAlive,
}

impl fmt::Display for ConnectionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PerActivation => "per-activation",
            Self::KeepAlive => "keep-alive",
        })
    }
}

/// `kmsd load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Host to load, HOST:PORT (port 1688 when left out). Loopback only,
    /// unless --allow-remote.
    #[arg(default_value = "127.0.0.1:1688")]
    pub target: String,
    /// Find the host by DNS instead: the first host of the
    /// _vlmcs._tcp.DOMAIN SRV records (RFC 2782 order) that accepts a
    /// connection.
    #[arg(long, value_name = "DOMAIN", conflicts_with = "target")]
    pub discover: Option<String>,
    /// DNS server for --discover (default: the first nameserver of
    /// /etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT", requires = "discover", value_parser = crate::dns::parse_server)]
    pub dns_server: Option<SocketAddr>,
    /// `classic` (steady clients for --duration) or `boot-storm` (--clients
    /// N machines activating once each, spread over --over seconds).
    #[arg(long, value_enum, default_value = "classic")]
    pub scenario: Scenario,
    /// Boot storm: seconds the machines' starts are spread over (0: all at
    /// once) [default: 60].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=MAX_DURATION_SECS))]
    pub over: Option<u64>,
    /// Clients running at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Seconds to run (classic; the run stops by itself).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_DURATION_SECS))]
    pub duration: u64,
    /// Stop after this many activations (answered or failed), if sooner
    /// (classic).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,
    /// KMS protocol version.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(4..=6))]
    pub protocol: u16,
    /// Product (SKU name or GUID; see `kmsd products`).
    #[arg(long, default_value = "Windows 10/11 Enterprise")]
    pub product: String,
    /// Client machine IDs: `distinct` (new per activation), `fixed` (one) or
    /// N (a pool of N used round-robin; in a boot storm, the N machines).
    #[arg(long, default_value = "distinct")]
    pub clients: Clients,
    /// `per-activation` (a new TCP connection each time, as Windows does) or
    /// `keep-alive`.
    #[arg(long, value_enum, default_value = "per-activation")]
    pub connection: ConnectionMode,
    /// Keep-alive: requests per connection before reconnecting (kmsd closes
    /// a connection after 64 by default).
    #[arg(long, default_value_t = DEFAULT_REQUESTS_PER_CONNECTION, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests_per_connection: u32,
    /// Seconds allowed for each step of an exchange.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout: u64,
    /// Against 127.0.0.1: loopback source addresses to spread connections
    /// over (127.0.0.2 ..); 1 sends everything from one address, like a lab
    /// behind one NAT gateway.
    #[arg(long, default_value_t = SOURCES as u8, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub sources: u8,
    /// The target is not on loopback and you operate it: load it anyway.
    #[arg(long)]
    pub allow_remote: bool,
    /// Print the report as JSON (and no progress line).
    #[arg(long)]
    pub json: bool,
    /// Also write the report as one self-contained HTML file, with charts.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// The host's Prometheus metrics (kmsd's `--http` listener), read
    /// before and after the run, e.g. http://127.0.0.1:9688/metrics.
    /// Loopback only, unless --allow-remote.
    #[arg(long, value_name = "URL")]
    pub metrics: Option<String>,
}

/// The fixed inputs of [`LoadOptions::pinned`] requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    pub cmid: Guid,
    /// FILETIME sent as the client time.
    pub client_time: u64,
    /// The request IV (v5/v6).
    pub iv: [u8; 16],
}

impl Pinned {
    /// The constants `examples/floor.rs` uses on both sides.
    pub const FLOOR: Self = Self {
        cmid: Guid::from_u128(0x6c6f6f72_0000_4000_8000_000000000001),
        // 2025-01-01T00:00:00Z
        client_time: 133_801_632_000_000_000,
        iv: *b"kmsd-floor-iv-16",
    };
}

/// Everything a run does, for harnesses; [`run`] builds it from [`LoadArgs`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub concurrency: usize,
    pub duration: Duration,
    /// Stop after this many activations (answered or failed).
    pub requests: Option<u64>,
    pub scenario: Scenario,
    /// Boot storm: the window the machines' starts are spread over.
    pub over: Duration,
    /// Print a progress line on stderr once a second.
    pub progress: bool,
    pub version: Version,
    pub sku: &'static products::Sku,
    /// N_Policy sent (the SKU's group threshold by default).
    pub n_policy: u32,
    pub clients: Clients,
    pub connection: ConnectionMode,
    pub requests_per_connection: u32,
    /// Per step of an exchange (connect, bind, alter_context, request).
    pub timeout: Duration,
    /// Send this exact request every time (CMID, client time, IV); `clients`
    /// is then ignored. For servers that answer with canned bytes.
    pub pinned: Option<Pinned>,
    pub workstation: String,
    /// Against IPv4 loopback: how many source addresses (127.0.0.2 ..) the
    /// connections are spread over, 1..=250.
    pub sources: usize,
}

impl LoadOptions {
    /// Defaults of `kmsd load` for `version` and `sku`.
    pub fn new(version: Version, sku: &'static products::Sku) -> Self {
        let n_policy = products::kms_group(&sku.kms_id).map_or(25, |g| g.n_policy);
        Self {
            concurrency: 64,
            duration: Duration::from_secs(10),
            requests: None,
            scenario: Scenario::Classic,
            over: Duration::from_secs(DEFAULT_OVER_SECS),
            progress: false,
            version,
            sku,
            n_policy,
            clients: Clients::Distinct,
            connection: ConnectionMode::PerActivation,
            requests_per_connection: DEFAULT_REQUESTS_PER_CONNECTION,
            timeout: Duration::from_secs(10),
            pinned: None,
            workstation: "kmsd-load".into(),
            sources: SOURCES,
        }
    }

    fn base(&self) -> anyhow::Result<RequestBase> {
        Ok(RequestBase {
            version: self.version,
            vm_info: 0,
            license_status: 2,
            binding_expiration: 43200,
            app_id: self.sku.app_id,
            sku_id: self.sku.id,
            kms_id: self.sku.kms_id,
            cmid: Guid::NIL,
            n_policy: self.n_policy,
            client_time: 0,
            previous_cmid: Guid::NIL,
            workstation: Workstation::new(&self.workstation)
                .map_err(|e| anyhow::anyhow!("workstation name: {e}"))?,
        })
    }
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
    fn of(h: &Histogram<u64>) -> Self {
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

fn per_sec(n: u64, secs: f64) -> f64 {
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

/// Whether `addr` is on this machine's loopback (127.0.0.0/8, ::1, or an
/// IPv4-mapped loopback address).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Why `kmsd load` will not run against a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(
        "refusing to load {target} ({addr}): it is not a loopback address. `kmsd load` sends \
         thousands of requests a second; pass --allow-remote only for a host you operate"
    )]
    NotLoopback { target: String, addr: SocketAddr },
}

/// Resolves `target` ([`target::resolve_all`]) and applies the loopback
/// rule: every address it resolves to must be loopback unless
/// `allow_remote`. The first address is the one loaded.
pub async fn resolve_target(target: &str, allow_remote: bool) -> Result<SocketAddr, TargetError> {
    let addrs = target::resolve_all(target).await?;
    if !allow_remote && let Some(&addr) = addrs.iter().find(|a| !is_loopback(a)) {
        return Err(TargetError::NotLoopback {
            target: target.to_owned(),
            addr,
        });
    }
    addrs.first().copied().ok_or_else(|| {
        ResolveError::NoAddress {
            target: target.to_owned(),
        }
        .into()
    })
}

/// `kmsd load`: resolves and checks the target (and the metrics URL),
/// then runs, reading the host's metrics before and after.
pub async fn run(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    use std::io::IsTerminal;
    match args.scenario {
        Scenario::Classic => {
            if args.over.is_some() {
                bail!("--over is for --scenario boot-storm");
            }
        }
        Scenario::BootStorm => {
            if !matches!(args.clients, Clients::Pool(_)) {
                bail!("--scenario boot-storm needs --clients N: the number of machines that boot");
            }
            if args.requests.is_some() {
                bail!(
                    "--requests is for the classic scenario; a boot storm is --clients N machines"
                );
            }
        }
    }
    let (target, addr) = match &args.discover {
        Some(domain) => {
            let (host, addr) = discovered(domain, args.dns_server, args.timeout).await?;
            eprintln!("KMS host {host} at {addr} answered (found under _vlmcs._tcp.{domain})");
            let addr = resolve_target(&addr.to_string(), args.allow_remote).await?;
            (
                format!(
                    "{}:{}",
                    host.srv.target.trim_end_matches('.'),
                    host.srv.port
                ),
                addr,
            )
        }
        None => (
            args.target.clone(),
            resolve_target(&args.target, args.allow_remote).await?,
        ),
    };
    let metrics = match &args.metrics {
        Some(url) => Some(MetricsUrl::resolve(url, args.allow_remote).await?),
        None => None,
    };
    let sku = products::find_sku(&args.product).map_err(anyhow::Error::msg)?;
    let version = Version::from_wire(args.protocol, 0).context("protocol must be 4, 5 or 6")?;
    let mut opts = LoadOptions::new(version, sku);
    opts.concurrency = args.concurrency as usize;
    opts.duration = Duration::from_secs(args.duration.clamp(1, MAX_DURATION_SECS));
    opts.requests = args.requests;
    opts.clients = args.clients;
    opts.connection = args.connection;
    opts.requests_per_connection = args.requests_per_connection.max(1);
    opts.timeout = Duration::from_secs(args.timeout.clamp(1, 60));
    opts.sources = usize::from(args.sources);
    opts.scenario = args.scenario;
    opts.over = Duration::from_secs(args.over.unwrap_or(DEFAULT_OVER_SECS));
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

/// The first host of `domain`'s SRV records (RFC 2782 order) that accepts a
/// TCP connection within `timeout_secs`.
async fn discovered(
    domain: &str,
    server: Option<SocketAddr>,
    timeout_secs: u64,
) -> anyhow::Result<(crate::dns::discover::FoundHost, SocketAddr)> {
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let hosts = crate::dns::discover::hosts(domain, server, &mut rng).await?;
    let mut tried = Vec::new();
    for h in hosts {
        for &addr in &h.addrs {
            let connect = tokio::time::timeout(
                Duration::from_secs(timeout_secs.clamp(1, 60)),
                TcpStream::connect(addr),
            );
            match connect.await {
                Ok(Ok(_)) => return Ok((h, addr)),
                Ok(Err(e)) => tried.push(format!("{h} at {addr}: {e}")),
                Err(_) => tried.push(format!("{h} at {addr}: no answer")),
            }
        }
        if h.addrs.is_empty() {
            tried.push(format!("{h}: no address"));
        }
    }
    if tried.is_empty() {
        bail!("no KMS host is published under _vlmcs._tcp.{domain}");
    }
    bail!(
        "no KMS host under _vlmcs._tcp.{domain} answered: {}",
        tried.join("; ")
    )
}

/// The KMS request bytes a pinned run sends (what a canned server answers).
pub fn pinned_request(opts: &LoadOptions, pinned: &Pinned) -> anyhow::Result<Vec<u8>> {
    let mut base = opts.base()?;
    base.cmid = pinned.cmid;
    base.client_time = pinned.client_time;
    Ok(kms::encode_request(&base, pinned.iv).0)
}

/// The bind and alter_context PDUs every connection of the generator sends
/// ([`Offer::WINDOWS`]): NDR32 (context 0), NDR64 (1) and bind-time feature
/// negotiation (2), as Windows 8 and later do; then NDR32 alone when NDR64
/// was preferred.
pub fn bind_pdus() -> (Vec<u8>, Vec<u8>) {
    let binding = Binding::new(Offer::WINDOWS, BIND_CALL_ID);
    let mut b = Vec::new();
    let mut a = Vec::new();
    binding.encode(&mut b);
    binding.encode_alter_context(&mut a);
    (b, a)
}

/// The report's name for a failure: `connect`, `timeout: ...`,
/// `closed: ...`, `io`, `rpc`, `bind: ...`, `fault 0x...`, `hresult 0x...`,
/// `verify: ...`.
fn failure_kind(e: &ClientError) -> String {
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

/// What every worker shares.
struct Shared {
    addr: SocketAddr,
    opts: LoadOptions,
    base: RequestBase,
    pool: Vec<Guid>,
    next: AtomicUsize,
    issued: AtomicU64,
    connections: AtomicU64,
    next_source: AtomicUsize,
    start: Instant,
    stop_at: Instant,
    series: series::Series,
}

/// One activation to make.
struct Job {
    cmid: Guid,
    /// Not before this (boot storm).
    at: Option<Instant>,
}

impl Shared {
    /// The next activation, or None once the run is over.
    fn job(&self, rng: &mut impl Rng) -> Option<Job> {
        match self.opts.scenario {
            Scenario::Classic => self.claim().then(|| Job {
                cmid: self.cmid(rng),
                at: None,
            }),
            Scenario::BootStorm => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                let n = self.pool.len();
                let cmid = *self.pool.get(i)?;
                let offset = self.opts.over.mul_f64(i as f64 / n as f64);
                Some(Job {
                    cmid,
                    at: Some(self.start + offset),
                })
            }
        }
    }

    /// Claims the next activation; false once the run is over.
    fn claim(&self) -> bool {
        if Instant::now() >= self.stop_at {
            return false;
        }
        match self.opts.requests {
            Some(cap) => self.issued.fetch_add(1, Ordering::Relaxed) < cap,
            None => true,
        }
    }

    fn cmid(&self, rng: &mut impl Rng) -> Guid {
        if let Some(p) = &self.opts.pinned {
            return p.cmid;
        }
        match self.opts.clients {
            Clients::Distinct => Guid::random_v4(rng),
            Clients::Fixed | Clients::Pool(_) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                self.pool
                    .get(i % self.pool.len().max(1))
                    .copied()
                    .unwrap_or(Guid::NIL)
            }
        }
    }
}

/// Source addresses a load against 127.0.0.1 spreads over, so the host's
/// per-address connection limit (default 64) sees many clients, as it
/// would on a real network: 127.0.0.2 .. 127.0.0.(1 + SOURCES).
const SOURCES: usize = 64;

/// Connects to the target; against IPv4 loopback, from the next of
/// `sources` loopback source addresses ([`SOURCES`] by default).
async fn connect(s: &Shared) -> std::io::Result<TcpStream> {
    match s.addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_loopback() => {
            let n = s.next_source.fetch_add(1, Ordering::Relaxed) % s.opts.sources.clamp(1, 250);
            let src = std::net::Ipv4Addr::new(127, 0, 0, 2 + n as u8);
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(src.into(), 0))?;
            sock.connect(s.addr).await
        }
        _ => TcpStream::connect(s.addr).await,
    }
}

/// Connects and binds (and alters context to NDR32 when NDR64 was
/// preferred) through the client core.
async fn open(s: &Shared) -> Result<Link, ClientError> {
    let t = s.opts.timeout;
    let stream = tokio::time::timeout(t, connect(s))
        .await
        .map_err(|_| ClientError::Timeout(Stage::Connecting))?
        .map_err(|err| ClientError::Connect { addr: s.addr, err })?;
    s.connections.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    Link::bind(stream, Binding::new(Offer::WINDOWS, BIND_CALL_ID), t).await
}

/// One activation request for `cmid` on `link`, its response verified;
/// returns the count the host answered.
async fn activate(
    link: &mut Link,
    s: &Shared,
    cmid: Guid,
    rng: &mut impl Rng,
) -> Result<u32, ClientError> {
    let mut base = s.base;
    base.cmid = cmid;
    // Pinned or not, the request is built and encrypted here every time,
    // so the client spends the same work per activation against any host.
    let iv = match &s.opts.pinned {
        Some(p) => {
            base.client_time = p.client_time;
            p.iv
        }
        None => {
            base.client_time = filetime_now();
            let mut iv = [0u8; 16];
            rng.fill_bytes(&mut iv);
            iv
        }
    };
    let x = link.request(&base, iv).await?;
    Ok(x.response.count)
}

/// What one worker saw.
struct Tally {
    ok: u64,
    below: u64,
    errors: BTreeMap<String, u64>,
    hist: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

async fn worker(s: Arc<Shared>, seed: u64) -> Tally {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = Tally {
        ok: 0,
        below: 0,
        errors: BTreeMap::new(),
        hist: histogram(),
    };
    let mut conn: Option<Link> = None;
    let mut rec = series::Recorder::default();
    while let Some(Job { cmid, at }) = s.job(&mut rng) {
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
        let t0 = Instant::now();
        let result = async {
            let mut c = match conn.take() {
                Some(c) => c,
                None => open(&s).await?,
            };
            let count = activate(&mut c, &s, cmid, &mut rng).await?;
            if s.opts.connection == ConnectionMode::KeepAlive
                && c.requests_sent() < s.opts.requests_per_connection
            {
                conn = Some(c);
            }
            Ok::<u32, ClientError>(count)
        }
        .await;
        let t1 = Instant::now();
        match result {
            Ok(count) => {
                t.ok += 1;
                let below = count < s.opts.n_policy;
                t.below += u64::from(below);
                let us = u64::try_from((t1 - t0).as_micros())
                    .unwrap_or(u64::MAX)
                    .clamp(1, MAX_LATENCY_US);
                t.hist.saturating_record(us);
                rec.ok(&s.series, t1, us, below);
            }
            Err(e) => {
                rec.error(&s.series, t1);
                *t.errors.entry(failure_kind(&e)).or_default() += 1;
                if matches!(e, ClientError::Connect { .. }) {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
        }
    }
    rec.flush(&s.series);
    t
}

/// Runs the generator against `addr` (no loopback check here: harnesses pass
/// their own loopback listeners; `kmsd load` checks in [`run`]).
pub async fn run_with(addr: SocketAddr, opts: LoadOptions) -> anyhow::Result<LoadReport> {
    if opts.concurrency == 0 {
        bail!("concurrency must be at least 1");
    }
    let boot_storm = opts.scenario == Scenario::BootStorm;
    if boot_storm && !matches!(opts.clients, Clients::Pool(_)) {
        bail!("a boot storm needs a number of machines (Clients::Pool)");
    }
    let duration = match opts.scenario {
        Scenario::Classic => opts.duration,
        Scenario::BootStorm => opts.over,
    }
    .min(Duration::from_secs(MAX_DURATION_SECS));
    let base = opts.base()?;
    let mut seed_rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let pool = match opts.clients {
        Clients::Distinct => Vec::new(),
        Clients::Fixed => vec![Guid::random_v4(&mut seed_rng)],
        Clients::Pool(n) => (0..n).map(|_| Guid::random_v4(&mut seed_rng)).collect(),
    };
    let started_unix_ms = crate::store::unix_ms_now();
    let start = Instant::now();
    // In-flight exchanges get a few step timeouts past the duration; then
    // they are abandoned.
    let hard_deadline = start + duration + opts.timeout * 4 + Duration::from_secs(1);
    let clients = match (&opts.pinned, opts.clients) {
        (Some(_), _) => "pinned".to_owned(),
        (None, c) => c.to_string(),
    };
    let s = Arc::new(Shared {
        addr,
        base,
        pool,
        next: AtomicUsize::new(0),
        issued: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        next_source: AtomicUsize::new(0),
        start,
        stop_at: start + duration,
        series: series::Series::new(start),
        opts,
    });
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..s.opts.concurrency {
        set.spawn(worker(s.clone(), seed_rng.next_u64()));
    }
    let progress = s
        .opts
        .progress
        .then(|| tokio::spawn(progress(s.clone(), duration)));
    let mut hist = histogram();
    let mut errors = BTreeMap::new();
    let mut ok = 0u64;
    let mut below = 0u64;
    let mut deadline_hit = false;
    loop {
        match tokio::time::timeout_at(hard_deadline, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(t))) => {
                ok += t.ok;
                below += t.below;
                let _ = hist.add(&t.hist);
                for (k, v) in t.errors {
                    *errors.entry(k).or_default() += v;
                }
            }
            Ok(Some(Err(e))) => {
                *errors.entry(format!("worker: {e}")).or_default() += 1;
            }
            Err(_) => {
                set.abort_all();
                deadline_hit = true;
                break;
            }
        }
    }
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        eprint!("\r\x1b[K");
    }
    let cap_reached = s
        .opts
        .requests
        .is_some_and(|cap| s.issued.load(Ordering::Relaxed) >= cap);
    let stopped_by = if deadline_hit {
        StoppedBy::Deadline
    } else if cap_reached || boot_storm {
        StoppedBy::Requests
    } else {
        StoppedBy::Duration
    };
    let elapsed = start.elapsed().as_secs_f64();
    let error_total = errors.values().sum();
    Ok(LoadReport {
        target: addr.to_string(),
        scenario: s.opts.scenario,
        protocol: s.opts.version.major(),
        product: s.opts.sku.name.to_owned(),
        n_policy: s.opts.n_policy,
        concurrency: s.opts.concurrency,
        connection: s.opts.connection,
        clients,
        planned_secs: duration.as_secs_f64(),
        requests_limit: if boot_storm {
            Some(s.pool.len() as u64)
        } else {
            s.opts.requests
        },
        timeout_secs: s.opts.timeout.as_secs_f64(),
        started_unix_ms,
        activations: ok,
        below_threshold: below,
        activated: ok - below,
        errors,
        error_total,
        connections: s.connections.load(Ordering::Relaxed),
        elapsed_secs: elapsed,
        activations_per_sec: per_sec(ok, elapsed),
        latency_us: Latency::of(&hist),
        stopped_by,
        series: s.series.samples(elapsed),
        server: None,
        histogram: hist,
    })
}

/// The progress line: once a second on stderr (a terminal), overwritten
/// in place; the caller clears it when the run ends.
async fn progress(s: Arc<Shared>, planned: Duration) {
    use std::io::Write;
    let mut tick =
        tokio::time::interval_at(s.start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = (s.start, 0u64);
    loop {
        let now = tick.tick().await;
        let (ok, errors) = s.series.totals();
        let rate = (ok - last.1.min(ok)) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, ok);
        let line = progress_line(&ProgressFigures {
            elapsed: now - s.start,
            planned,
            activations: ok,
            rate,
            errors,
            machines: (s.opts.scenario == Scenario::BootStorm).then(|| {
                let started = s.next.load(Ordering::Relaxed).min(s.pool.len());
                (started as u64, s.pool.len() as u64)
            }),
        });
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[K{line}");
        let _ = e.flush();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_parse() {
        assert_eq!("distinct".parse(), Ok(Clients::Distinct));
        assert_eq!("fixed".parse(), Ok(Clients::Fixed));
        assert_eq!("500".parse(), Ok(Clients::Pool(500)));
        assert!("0".parse::<Clients>().is_err());
        assert!("many".parse::<Clients>().is_err());
    }

    #[tokio::test]
    async fn only_loopback_without_the_flag() {
        for ok in [
            "127.0.0.1:1688",
            "127.3.4.5:99",
            "[::1]:1688",
            "::1",
            "127.0.0.1",
        ] {
            assert!(resolve_target(ok, false).await.is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1:1688",
            "192.168.1.1",
            "[2001:db8::1]:1688",
            "0.0.0.0:1688",
        ] {
            let e = resolve_target(bad, false).await.unwrap_err();
            assert!(matches!(e, TargetError::NotLoopback { .. }), "{bad}: {e}");
            assert!(resolve_target(bad, true).await.is_ok(), "{bad}");
        }
        assert!(is_loopback(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_dead_target_is_counted_and_the_run_stops_by_itself() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let sku = products::find_sku("Windows 10/11 Enterprise").unwrap();
        let mut o = LoadOptions::new(Version::V6, sku);
        o.concurrency = 2;
        o.duration = Duration::from_millis(200);
        let r = run_with(addr, o).await.unwrap();
        assert_eq!(r.activations, 0);
        assert!(r.errors.get("connect").copied().unwrap_or(0) > 0, "{r}");
        assert!(r.elapsed_secs < 5.0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_response_of_a_real_host_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::ServeConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let app = crate::app::App::start(cfg, Default::default())
            .await
            .unwrap();
        let addr = app.kms_addrs()[0];
        for (version, connection, clients) in [
            (
                Version::V6,
                ConnectionMode::PerActivation,
                Clients::Distinct,
            ),
            (Version::V5, ConnectionMode::KeepAlive, Clients::Pool(3)),
            (Version::V4, ConnectionMode::KeepAlive, Clients::Fixed),
        ] {
            let sku = products::find_sku("Windows 10/11 Enterprise").unwrap();
            let mut o = LoadOptions::new(version, sku);
            o.concurrency = 4;
            o.requests = Some(40);
            o.connection = connection;
            o.clients = clients;
            o.requests_per_connection = 7;
            let r = run_with(addr, o).await.unwrap();
            assert_eq!((r.activations, r.error_total), (40, 0), "{r}");
            assert_eq!(r.stopped_by, StoppedBy::Requests);
            // Keep-alive reuses connections (7 requests each): however the 40
            // requests fall over the 4 workers, 6 to 13 connections, far from 40.
            let expect_conns = if connection == ConnectionMode::KeepAlive {
                6..=13
            } else {
                40..=40
            };
            assert!(expect_conns.contains(&r.connections), "{r}");
            assert!(r.latency_us.p50 > 0 && r.latency_us.max >= r.latency_us.p99);
        }
        app.stop().await.unwrap();
    }
}
