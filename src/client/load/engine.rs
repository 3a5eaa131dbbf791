//! The generator: `concurrency` workers share one [`Shared`] state, each
//! taking the next activation ([`Shared::job`]) until the run is over,
//! opening (and in keep-alive mode reusing) connections through the client
//! core, and counting what it saw ([`Tally`]); [`run_with`] starts them,
//! collects their tallies under a hard deadline and writes the report.

use super::args::{
    Clients, ConnectionMode, DEFAULT_OVER_SECS, DEFAULT_REQUESTS_PER_CONNECTION, MAX_DURATION_SECS,
    Scenario,
};
use super::progress::ProgressLine;
use super::report::{
    Latency, LoadReport, MAX_LATENCY_US, StoppedBy, failure_kind, histogram, per_sec,
};
use super::series;
use crate::client::exchange::{ClientError, Link, Stage, filetime_now};
use crate::client::request::ProductRequest;
use crate::protocol::client::{BIND_CALL_ID, Binding, Offer};
use crate::protocol::guid::Guid;
use crate::protocol::kms::{self, Version, products};
use anyhow::bail;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Pause after a failed connect, so a dead target is not hammered in a loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Source addresses a load against 127.0.0.1 spreads over, so the host's
/// per-address connection limit (default 64) sees many clients, as it
/// would on a real network: 127.0.0.2 .. 127.0.0.(1 + SOURCES).
pub const SOURCES: usize = 64;

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
        let n_policy = ProductRequest::new(sku).n_policy;
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

    /// The request every activation of the run sends, before its machine
    /// ID, time and IV ([`ProductRequest`] with these options' version,
    /// threshold and workstation).
    fn request(&self) -> anyhow::Result<ProductRequest> {
        Ok(ProductRequest::new(self.sku)
            .version(self.version)
            .n_policy(self.n_policy)
            .workstation(&self.workstation)?)
    }
}

/// The KMS request bytes a pinned run sends (what a canned server answers).
pub fn pinned_request(opts: &LoadOptions, pinned: &Pinned) -> anyhow::Result<Vec<u8>> {
    let base = opts.request()?.base(pinned.cmid, pinned.client_time);
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

/// What every worker shares.
pub(super) struct Shared {
    addr: SocketAddr,
    pub(super) opts: LoadOptions,
    request: ProductRequest,
    /// The machines of a fixed, pooled or boot-storm run.
    pool: Vec<Guid>,
    next: AtomicUsize,
    issued: AtomicU64,
    connections: AtomicU64,
    next_source: AtomicUsize,
    pub(super) start: Instant,
    stop_at: Instant,
    pub(super) series: series::Series,
}

/// One activation to make.
struct Job {
    cmid: Guid,
    /// Not before this (boot storm).
    at: Option<Instant>,
}

impl Shared {
    /// The state of a run of `opts` against `addr` lasting `planned`, its
    /// machines drawn from `rng`.
    fn new(
        addr: SocketAddr,
        opts: LoadOptions,
        planned: Duration,
        rng: &mut impl Rng,
    ) -> anyhow::Result<Self> {
        let pool = match opts.clients {
            Clients::Distinct => Vec::new(),
            Clients::Fixed => vec![Guid::random_v4(rng)],
            Clients::Pool(n) => (0..n).map(|_| Guid::random_v4(rng)).collect(),
        };
        let start = Instant::now();
        Ok(Self {
            addr,
            request: opts.request()?,
            pool,
            next: AtomicUsize::new(0),
            issued: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            next_source: AtomicUsize::new(0),
            start,
            stop_at: start + planned,
            series: series::Series::new(start),
            opts,
        })
    }

    /// Boot storm: the machines started so far, of all.
    pub(super) fn machines_started(&self) -> (u64, u64) {
        let started = self.next.load(Ordering::Relaxed).min(self.pool.len());
        (started as u64, self.pool.len() as u64)
    }

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
    // Pinned or not, the request is built and encrypted here every time,
    // so the client spends the same work per activation against any host.
    let (client_time, iv) = match &s.opts.pinned {
        Some(p) => (p.client_time, p.iv),
        None => {
            let mut iv = [0u8; 16];
            rng.fill_bytes(&mut iv);
            (filetime_now(), iv)
        }
    };
    let x = link.request(&s.request.base(cmid, client_time), iv).await?;
    Ok(x.response.count)
}

/// What one worker saw (or, added up, the whole run).
struct Tally {
    ok: u64,
    below: u64,
    errors: BTreeMap<String, u64>,
    hist: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            below: 0,
            errors: BTreeMap::new(),
            hist: histogram(),
        }
    }

    /// A verified answer with `count`, `us` after the activation started.
    fn answered(
        &mut self,
        s: &Shared,
        rec: &mut series::Recorder,
        at: Instant,
        us: u64,
        count: u32,
    ) {
        let below = count < s.opts.n_policy;
        self.ok += 1;
        self.below += u64::from(below);
        self.hist.saturating_record(us);
        rec.ok(&s.series, at, us, below);
    }

    fn failed(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.below += other.below;
        let _ = self.hist.add(&other.hist);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// One activation of `job`'s machine: on the connection kept from the last
/// one (keep-alive) or a new one; the connection is kept for the next
/// while it has requests left.
async fn attempt(
    s: &Shared,
    conn: &mut Option<Link>,
    cmid: Guid,
    rng: &mut impl Rng,
) -> Result<u32, ClientError> {
    let mut link = match conn.take() {
        Some(link) => link,
        None => open(s).await?,
    };
    let count = activate(&mut link, s, cmid, rng).await?;
    if s.opts.connection == ConnectionMode::KeepAlive
        && link.requests_sent() < s.opts.requests_per_connection
    {
        *conn = Some(link);
    }
    Ok(count)
}

async fn worker(s: Arc<Shared>, seed: u64) -> Tally {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = Tally::new();
    let mut conn: Option<Link> = None;
    let mut rec = series::Recorder::default();
    while let Some(Job { cmid, at }) = s.job(&mut rng) {
        if let Some(at) = at {
            tokio::time::sleep_until(at).await;
        }
        let t0 = Instant::now();
        let result = attempt(&s, &mut conn, cmid, &mut rng).await;
        let t1 = Instant::now();
        match result {
            Ok(count) => {
                let us = u64::try_from((t1 - t0).as_micros())
                    .unwrap_or(u64::MAX)
                    .clamp(1, MAX_LATENCY_US);
                t.answered(&s, &mut rec, t1, us, count);
            }
            Err(e) => {
                rec.error(&s.series, t1);
                t.failed(failure_kind(&e));
                if matches!(e, ClientError::Connect { .. }) {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
        }
    }
    rec.flush(&s.series);
    t
}

/// How long the run is planned for: `--duration` (classic) or the window
/// of the boot storm, at most [`MAX_DURATION_SECS`]; Err for options no
/// run can follow.
fn planned(opts: &LoadOptions) -> anyhow::Result<Duration> {
    if opts.concurrency == 0 {
        bail!("concurrency must be at least 1");
    }
    let planned = match opts.scenario {
        Scenario::Classic => opts.duration,
        Scenario::BootStorm if !matches!(opts.clients, Clients::Pool(_)) => {
            bail!("a boot storm needs a number of machines (Clients::Pool)")
        }
        Scenario::BootStorm => opts.over,
    };
    Ok(planned.min(Duration::from_secs(MAX_DURATION_SECS)))
}

/// Runs the generator against `addr` (no loopback check here: harnesses pass
/// their own loopback listeners; `kmsd load` checks in [`super::run`]).
pub async fn run_with(addr: SocketAddr, opts: LoadOptions) -> anyhow::Result<LoadReport> {
    let planned = planned(&opts)?;
    let mut seed_rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let started_unix_ms = crate::store::unix_ms_now();
    let s = Arc::new(Shared::new(addr, opts, planned, &mut seed_rng)?);
    // In-flight exchanges get a few step timeouts past the duration; then
    // they are abandoned.
    let hard_deadline = s.start + planned + s.opts.timeout * 4 + Duration::from_secs(1);
    let mut workers = JoinSet::new();
    for _ in 0..s.opts.concurrency {
        workers.spawn(worker(s.clone(), seed_rng.next_u64()));
    }
    let progress = s
        .opts
        .progress
        .then(|| ProgressLine::start(s.clone(), planned));
    let (total, deadline_hit) = collect(workers, hard_deadline).await;
    if let Some(p) = progress {
        p.finish().await;
    }
    let stopped_by = stopped_by(&s, deadline_hit);
    Ok(report(&s, total, planned, started_unix_ms, stopped_by))
}

/// The workers' tallies added up as they end; at `hard_deadline` those
/// still running are abandoned (true).
async fn collect(mut workers: JoinSet<Tally>, hard_deadline: Instant) -> (Tally, bool) {
    let mut total = Tally::new();
    loop {
        match tokio::time::timeout_at(hard_deadline, workers.join_next()).await {
            Ok(None) => return (total, false),
            Ok(Some(Ok(t))) => total.add(t),
            Ok(Some(Err(e))) => total.failed(format!("worker: {e}")),
            Err(_) => {
                workers.abort_all();
                return (total, true);
            }
        }
    }
}

/// Why the run ended: the hard deadline, the request cap (or the boot
/// storm's last machine), else the duration.
fn stopped_by(s: &Shared, deadline_hit: bool) -> StoppedBy {
    let cap_reached = s
        .opts
        .requests
        .is_some_and(|cap| s.issued.load(Ordering::Relaxed) >= cap);
    if deadline_hit {
        StoppedBy::Deadline
    } else if cap_reached || s.opts.scenario == Scenario::BootStorm {
        StoppedBy::Requests
    } else {
        StoppedBy::Duration
    }
}

/// The report of the run `s` that tallied `t`.
fn report(
    s: &Shared,
    t: Tally,
    planned: Duration,
    started_unix_ms: i64,
    stopped_by: StoppedBy,
) -> LoadReport {
    let elapsed = s.start.elapsed().as_secs_f64();
    let o = &s.opts;
    let clients = match (&o.pinned, o.clients) {
        (Some(_), _) => "pinned".to_owned(),
        (None, c) => c.to_string(),
    };
    LoadReport {
        target: s.addr.to_string(),
        scenario: o.scenario,
        protocol: o.version.major(),
        product: o.sku.name.to_owned(),
        n_policy: o.n_policy,
        concurrency: o.concurrency,
        connection: o.connection,
        clients,
        planned_secs: planned.as_secs_f64(),
        requests_limit: match o.scenario {
            Scenario::BootStorm => Some(s.pool.len() as u64),
            Scenario::Classic => o.requests,
        },
        timeout_secs: o.timeout.as_secs_f64(),
        started_unix_ms,
        activations: t.ok,
        below_threshold: t.below,
        activated: t.ok - t.below,
        error_total: t.errors.values().sum(),
        errors: t.errors,
        connections: s.connections.load(Ordering::Relaxed),
        elapsed_secs: elapsed,
        activations_per_sec: per_sec(t.ok, elapsed),
        latency_us: Latency::of(&t.hist),
        stopped_by,
        series: s.series.samples(elapsed),
        server: None,
        histogram: t.hist,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
