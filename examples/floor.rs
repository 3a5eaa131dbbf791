//! The floor: what a KMS exchange costs when the host does no KMS work, and
//! kmsd measured beside it by the same load generator in the same run.
//!
//! The floor server is a tokio listener that frames PDUs with kmsd's own
//! `RpcPduCodec` and answers each by type with canned bytes: a bind_ack, an
//! alter_context_resp, and for a request the response for the request's
//! context, only the call_id patched in. It decrypts nothing, counts
//! nothing, stores nothing, logs nothing.
//!
//! Canned bytes cannot verify against a client that sends a fresh CMID,
//! clock and IV each time, so the floor is loaded in the generator's
//! *pinned* mode: every activation builds and encrypts its request as usual,
//! but from one fixed CMID, client time and IV ([`Pinned::FLOOR`]), and the
//! floor's canned response is the kmsd-built response to exactly that
//! request, computed once at start-up. The client therefore runs the full
//! verification (`kms::verify_response`, every check of `kmsd activate`) on
//! every floor response, and spends the same work per activation against
//! both servers, which matters when client and servers share two cores.
//! kmsd is loaded with distinct CMIDs, the real clock and random IVs.
//!
//! ```text
//! cargo run --release --example floor -- compare --concurrency 64 --duration 10
//! cargo run --release --example floor -- serve --listen 127.0.0.1:16880
//! cargo run --release --example floor -- load 127.0.0.1:16880 --floor
//! cargo run --release --example floor -- load 127.0.0.1:1688      # a `kmsd serve`
//! ```

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use kmsd::app::App;
use kmsd::client::load::{self, Clients, ConnectionMode, LoadOptions, LoadReport, Pinned};
use kmsd::codec::RpcPduCodec;
use kmsd::config::ServeConfig;
use kmsd::protocol::kms::{self, Answer, Epid, ResponseRandom, Version, products};
use kmsd::protocol::rpc::bind::BindPolicy;
use kmsd::protocol::rpc::pdu::{DEFAULT_MAX_PDU_LEN, ptype};
use kmsd::protocol::rpc::request as rpc_request;
use kmsd::protocol::rpc::session::Session;
use kmsd::server;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(about = "The floor server, and kmsd measured beside it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the floor and a kmsd host (durable store on) in this process on
    /// loopback, load them in turn with the same generator, print both and
    /// the ratios.
    Compare(CompareArgs),
    /// Start the floor, `kmsd serve` and (if given) the `vlmcsd` crate's
    /// server as separate processes on loopback, load each in turn with the
    /// same generator at each concurrency, and print server CPU per
    /// activation (from /proc/PID/stat), rate and latency side by side.
    Versus(VersusArgs),
    /// Run the floor server alone (it answers the pinned load of `load --floor`).
    Serve {
        #[arg(long, default_value = "127.0.0.1:16880")]
        listen: SocketAddr,
        #[command(flatten)]
        load: LoadShape,
    },
    /// Load a target on loopback from this process (`--floor` for a floor
    /// started with `serve`).
    Load {
        target: String,
        /// Pinned requests, as the floor needs.
        #[arg(long)]
        floor: bool,
        #[command(flatten)]
        load: LoadShape,
        #[arg(long)]
        json: bool,
    },
}

/// What each run looks like.
#[derive(Debug, Clone, clap::Args)]
struct LoadShape {
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(4..=6))]
    protocol: u16,
    #[arg(long, default_value = "Windows 10/11 Enterprise")]
    product: String,
    #[arg(long, value_enum, default_value = "per-activation")]
    connection: ConnectionMode,
    /// kmsd's CMIDs: distinct, fixed or N (the floor's are always pinned).
    #[arg(long, default_value = "distinct")]
    clients: Clients,
}

impl LoadShape {
    fn options(&self) -> Result<LoadOptions> {
        let sku = products::find_sku(&self.product).map_err(anyhow::Error::msg)?;
        let version = Version::from_wire(self.protocol, 0).context("protocol 4, 5 or 6")?;
        let mut o = LoadOptions::new(version, sku);
        o.concurrency = self.concurrency.clamp(1, 10_000);
        o.duration = Duration::from_secs(self.duration.clamp(1, load::MAX_DURATION_SECS));
        o.connection = self.connection;
        o.clients = self.clients;
        Ok(o)
    }
}

#[derive(Debug, Clone, clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    load: LoadShape,
    /// Rounds of (floor, kmsd); runs alternate to cancel drift.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds of discarded warm-up against each server first.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// kmsd's activation log: `file` (info level to a file, as `kmsd serve`
    /// logs to stderr), `stderr`, or `off`.
    #[arg(long, default_value = "file")]
    log: String,
    /// kmsd's per-address connection limit (kmsd's default is 64: the
    /// generator connects from one address).
    #[arg(long, default_value_t = 4096)]
    max_connections_per_ip: usize,
    /// Load only this server (`floor` or `kmsd`; for profiling one side).
    #[arg(long)]
    only: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A later `--kmsd` or `--vlmcsd` replaces an earlier one (scripts/bench-compare
/// passes defaults before the caller's arguments).
#[derive(Debug, Clone, clap::Args)]
#[command(args_override_self = true)]
struct VersusArgs {
    /// Concurrencies to measure, in this order within each round.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Rounds; within a round the servers alternate at each concurrency.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds of discarded warm-up against each server first.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// The kmsd binary (run as `kmsd serve` with its defaults, on a fresh
    /// data dir).
    #[arg(long, default_value = "target/release/kmsd")]
    kmsd: std::path::PathBuf,
    /// A second kmsd binary, measured beside the first as `kmsd B` (A/B).
    #[arg(long)]
    kmsd_b: Option<std::path::PathBuf>,
    /// Extra arguments for `kmsd serve` (repeat), e.g. `--kmsd-arg=-q`.
    #[arg(long = "kmsd-arg", allow_hyphen_values = true)]
    kmsd_args: Vec<String>,
    /// The `vlmcsd` crate's binary (`cargo install vlmcsd`); left out if absent.
    #[arg(long)]
    vlmcsd: Option<std::path::PathBuf>,
    /// Also load kmsd with distinct CMIDs (a new machine per activation).
    #[arg(long)]
    distinct: bool,
    /// Where the kmsd data dir goes (its file system is where the
    /// fdatasync is timed). Default: a temp dir.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The floor's answers, computed once.
struct Canned {
    bind_ack: Vec<u8>,
    alter_resp: Vec<u8>,
    /// Response PDU per accepted context id.
    responses: Vec<(u16, Vec<u8>)>,
}

impl Canned {
    /// What kmsd's protocol core answers to the generator's bind,
    /// alter_context and pinned request, on `port`.
    fn new(port: u16, opts: &LoadOptions, epid: &Epid) -> Result<Self> {
        let (bind, alter) = load::bind_pdus();
        let mut session = Session::new(BindPolicy::default(), port, 0x464c_4f4f);
        let mut bind_ack = Vec::new();
        session.handle(&bind, &mut bind_ack)?;
        let mut alter_resp = Vec::new();
        session.handle(&alter, &mut alter_resp)?;
        let req = kms::decode_request(&load::pinned_request(opts, &Pinned::FLOOR)?)?;
        let answer = Answer {
            epid,
            hwid: kmsd::config::DEFAULT_HWID,
            count: 50,
            activation_interval: 120,
            renewal_interval: 10080,
        };
        let rnd = ResponseRandom::draw(&mut rand::rng());
        let mut responses = Vec::new();
        for ctx in 0..3u16 {
            if let Some(syntax) = session.context(ctx) {
                let mut out = Vec::new();
                rpc_request::encode_response(load::BIND_CALL_ID + 1, ctx, syntax, &mut out, |o| {
                    kms::encode_response(&req, &answer, &rnd, o)
                });
                responses.push((ctx, out));
            }
        }
        Ok(Self {
            bind_ack,
            alter_resp,
            responses,
        })
    }

    fn reply(&self, pdu: &[u8]) -> Option<&[u8]> {
        match *pdu.get(2)? {
            ptype::BIND => Some(&self.bind_ack),
            ptype::ALTER_CONTEXT => Some(&self.alter_resp),
            ptype::REQUEST => {
                let ctx = u16::from_le_bytes([*pdu.get(20)?, *pdu.get(21)?]);
                self.responses
                    .iter()
                    .find(|(c, _)| *c == ctx)
                    .map(|(_, r)| r.as_slice())
            }
            _ => None,
        }
    }
}

/// One floor connection: frame, pick the canned reply, patch the call id.
async fn floor_conn(stream: TcpStream, canned: Arc<Canned>) {
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, RpcPduCodec::new(DEFAULT_MAX_PDU_LEN));
    let mut out = Vec::with_capacity(512);
    while let Some(Ok(pdu)) = framed.next().await {
        let (Some(reply), Some(call_id)) = (canned.reply(&pdu), pdu.get(12..16)) else {
            break;
        };
        out.clear();
        out.extend_from_slice(reply);
        if let Some(dst) = out.get_mut(12..16) {
            dst.copy_from_slice(call_id);
        }
        if framed.send(out.as_slice()).await.is_err() {
            break;
        }
    }
}

async fn serve_floor(listener: TcpListener, canned: Arc<Canned>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    tokio::spawn(floor_conn(s, canned.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
        }
    }
}

/// CPU seconds (user + system) of this process's threads, by thread name.
fn cpu_by_thread() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in dir.flatten() {
        let p = t.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(p.join("comm")),
            std::fs::read_to_string(p.join("stat")),
        ) else {
            continue;
        };
        // Fields after the ")" that closes the name: 14 utime, 15 stime.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        let name = comm.trim().to_owned();
        *out.entry(name).or_default() += ticks / 100.0;
    }
    out
}

/// One measured run with the CPU its threads used.
#[derive(Debug, Clone, Serialize)]
struct Run {
    server: &'static str,
    report: LoadReport,
    /// CPU µs per verified activation by the server side (runtime threads
    /// plus kmsd's store thread), the store thread alone, and the load
    /// generator.
    server_cpu_us_per_activation: f64,
    store_cpu_us_per_activation: f64,
    client_cpu_us_per_activation: f64,
}

fn cpu_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    prefix: &[&str],
) -> f64 {
    after
        .iter()
        .filter(|(k, _)| prefix.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
        .sum()
}

fn measured(
    rt: &tokio::runtime::Runtime,
    server: &'static str,
    addr: SocketAddr,
    opts: LoadOptions,
) -> Result<Run> {
    let before = cpu_by_thread();
    let report = rt.block_on(load::run_with(addr, opts))?;
    let after = cpu_by_thread();
    let per = |secs: f64| secs * 1e6 / report.activations.max(1) as f64;
    Ok(Run {
        server,
        server_cpu_us_per_activation: per(cpu_delta(&before, &after, &["server", "kmsd-store"])),
        store_cpu_us_per_activation: per(cpu_delta(&before, &after, &["kmsd-store"])),
        client_cpu_us_per_activation: per(cpu_delta(&before, &after, &["load"])),
        report,
    })
}

#[derive(Debug, Serialize)]
struct Comparison {
    machine: String,
    runs: Vec<Run>,
    floor: LoadReport,
    kmsd: LoadReport,
    floor_server_cpu_us_per_activation: f64,
    kmsd_server_cpu_us_per_activation: f64,
    /// kmsd activations/s ÷ floor activations/s (target ≥ 0.8).
    throughput_ratio: f64,
    /// kmsd p99 ÷ floor p99 (target ≤ 1.5).
    p99_ratio: f64,
    p50_ratio: f64,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {n} CPUs")
}

fn init_log(mode: &str, dir: &std::path::Path) -> Result<()> {
    let builder =
        || tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info"));
    match mode {
        "off" => {}
        "stderr" => builder().with_writer(std::io::stderr).init(),
        "file" => {
            let f = std::fs::File::create(dir.join("kmsd.log"))?;
            builder().with_writer(std::sync::Mutex::new(f)).init();
        }
        other => bail!("--log {other:?}: expected file, stderr or off"),
    }
    Ok(())
}

fn runtime(name: &'static str) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()?)
}

fn compare(a: &CompareArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    init_log(&a.log, dir.path())?;
    let server_rt = runtime("server")?;
    let load_rt = runtime("load")?;
    let opts = a.load.options()?;
    // kmsd: the default configuration (durable store on) on a loopback port.
    let cfg = ServeConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        data_dir: dir.path().join("data"),
        max_connections_per_ip: a.max_connections_per_ip,
        ..ServeConfig::default()
    };
    let app = server_rt
        .block_on(App::start(cfg, Default::default()))
        .context("cannot start the kmsd host")?;
    let host = app.host().clone();
    let group = products::kms_group(&opts.sku.kms_id)
        .map(|g| g.epid_group)
        .context("SKU without a group")?;
    let epid = host.epid(group).context("no ePID")?.clone();
    let stop = CancellationToken::new();
    let (kmsd_addr, floor_addr) = {
        let _guard = server_rt.enter();
        let kmsd_addr = *app.kms_addrs().first().context("no listener")?;
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let floor_addr = listener.local_addr()?;
        let canned = Arc::new(Canned::new(floor_addr.port(), &opts, &epid)?);
        server_rt.spawn(serve_floor(listener, canned, stop.clone()));
        (kmsd_addr, floor_addr)
    };
    let floor_opts = LoadOptions {
        pinned: Some(Pinned::FLOOR),
        ..opts.clone()
    };
    if a.warmup > 0 {
        let w = Duration::from_secs(a.warmup);
        for (name, addr, o) in [
            ("floor", floor_addr, &floor_opts),
            ("kmsd", kmsd_addr, &opts),
        ] {
            if a.only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let o = LoadOptions {
                duration: w,
                ..o.clone()
            };
            load_rt.block_on(load::run_with(addr, o))?;
        }
    }
    let mut runs = Vec::new();
    for round in 0..a.rounds.max(1) {
        for (name, addr, o) in [
            ("floor", floor_addr, &floor_opts),
            ("kmsd", kmsd_addr, &opts),
        ] {
            if a.only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let run = measured(&load_rt, name, addr, o.clone())?;
            if !a.json {
                let r = &run.report;
                eprintln!(
                    "round {} {name:<5} {:>9.1}/s  p50 {:>6} µs  p99 {:>6} µs  max {:>7} µs  errors {}  server CPU {:.1} µs/act (store {:.1})  client CPU {:.1} µs/act",
                    round + 1,
                    r.activations_per_sec,
                    r.latency_us.p50,
                    r.latency_us.p99,
                    r.latency_us.max,
                    r.error_total,
                    run.server_cpu_us_per_activation,
                    run.store_cpu_us_per_activation,
                    run.client_cpu_us_per_activation,
                );
            }
            runs.push(run);
        }
    }
    stop.cancel();
    let pick = |name: &str| -> Vec<LoadReport> {
        runs.iter()
            .filter(|r| r.server == name)
            .map(|r| r.report.clone())
            .collect()
    };
    let cpu = |name: &str| {
        let (cpu, n) = runs
            .iter()
            .filter(|r| r.server == name)
            .fold((0.0, 0u64), |(c, n), r| {
                (
                    c + r.server_cpu_us_per_activation * r.report.activations as f64,
                    n + r.report.activations,
                )
            });
        cpu / n.max(1) as f64
    };
    if a.only.is_some() {
        for r in &runs {
            println!("{}", r.report);
        }
        return Ok(());
    }
    let floor = LoadReport::merge(&pick("floor")).context("no floor run")?;
    let kmsd = LoadReport::merge(&pick("kmsd")).context("no kmsd run")?;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let c = Comparison {
        machine: machine(),
        throughput_ratio: ratio(kmsd.activations_per_sec, floor.activations_per_sec),
        p99_ratio: ratio(kmsd.latency_us.p99 as f64, floor.latency_us.p99 as f64),
        p50_ratio: ratio(kmsd.latency_us.p50 as f64, floor.latency_us.p50 as f64),
        floor_server_cpu_us_per_activation: cpu("floor"),
        kmsd_server_cpu_us_per_activation: cpu("kmsd"),
        floor,
        kmsd,
        runs,
    };
    // Let the store finish and the host stop before the temp dir goes.
    stop.cancel();
    drop(host);
    server_rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), app.stop()).await;
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        println!("machine: {}", c.machine);
        println!("== floor (canned bytes, pinned requests) ==\n{}", c.floor);
        println!("== kmsd (durable store, distinct clients) ==\n{}", c.kmsd);
        println!(
            "server CPU per activation: floor {:.1} µs, kmsd {:.1} µs",
            c.floor_server_cpu_us_per_activation, c.kmsd_server_cpu_us_per_activation
        );
        println!(
            "kmsd / floor: throughput {:.3} (target >= 0.8), p99 {:.3} (target <= 1.5), p50 {:.3}",
            c.throughput_ratio, c.p99_ratio, c.p50_ratio
        );
    }
    drop(server_rt);
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Compare(a) => compare(&a),
        Command::Versus(a) => versus::run(&a),
        Command::Serve { listen, load } => {
            if !load::is_loopback(&listen) {
                bail!("the floor listens on loopback only");
            }
            let rt = runtime("server")?;
            let opts = load.options()?;
            rt.block_on(async {
                let listener = server::bind(listen)?;
                let epid = Epid::new("03612-00206-556-123727-03-1033-26100.0000-0012025")?;
                let canned = Arc::new(Canned::new(listen.port(), &opts, &epid)?);
                let stop = CancellationToken::new();
                tokio::spawn(server::signal::cancel_on_signal(stop.clone()));
                eprintln!("floor listening on {listen}; Ctrl-C stops");
                serve_floor(listener, canned, stop).await;
                Ok(())
            })
        }
        Command::Load {
            target,
            floor,
            load: shape,
            json,
        } => {
            let rt = runtime("load")?;
            let mut opts = shape.options()?;
            if floor {
                opts.pinned = Some(Pinned::FLOOR);
            }
            let report = rt.block_on(async {
                let addr = load::resolve_target(&target, false).await?;
                load::run_with(addr, opts).await
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(())
        }
    }
}

/// `versus`: every server a separate process, CPU from /proc/PID/stat.
mod versus {
    use super::*;
    use std::path::Path;
    use std::process::{Child, Command as Proc, Stdio};
    use std::time::Instant;

    struct Server {
        name: &'static str,
        addr: SocketAddr,
        child: Child,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            // SIGTERM first so kmsd stops cleanly, then make sure.
            let _ = Proc::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    fn start(name: &'static str, mut cmd: Proc, addr: SocketAddr, log: &Path) -> Result<Server> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let mut server = Server { name, addr, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(server);
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                bail!("{name} exited at start-up: {st}");
            }
            if Instant::now() > deadline {
                bail!("{name} does not accept connections on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// User + system seconds of a process (all its threads, live or ended).
    fn cpu_of(pid: u32) -> f64 {
        stat_ticks(&format!("/proc/{pid}/stat")) / 100.0
    }

    fn stat_ticks(path: &str) -> f64 {
        let Ok(stat) = std::fs::read_to_string(path) else {
            return 0.0;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return 0.0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// CPU seconds by thread name of a process's live threads.
    fn cpu_by_thread(pid: u32) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return out;
        };
        for t in dir.flatten() {
            let p = t.path();
            let Ok(comm) = std::fs::read_to_string(p.join("comm")) else {
                continue;
            };
            let ticks = stat_ticks(&p.join("stat").to_string_lossy());
            *out.entry(comm.trim().to_owned()).or_default() += ticks / 100.0;
        }
        out
    }

    /// p50 and p99 (µs) of `n` 4 KiB writes each followed by fdatasync, in
    /// a file in `dir`: overwriting one block, and appending (a growing
    /// file, like SQLite's WAL between checkpoints).
    pub fn fdatasync_us(dir: &Path, n: usize) -> Result<[(u64, u64); 2]> {
        use std::os::unix::fs::FileExt;
        let path = dir.join("fdatasync-probe");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let block = [0x5au8; 4096];
        f.write_all_at(&block, 0)?;
        f.sync_all()?;
        let mut out = [(0, 0); 2];
        for (k, append) in [false, true].into_iter().enumerate() {
            let mut t = Vec::with_capacity(n);
            for i in 0..n {
                let off = if append { 4096 * (i as u64 + 1) } else { 0 };
                let s = Instant::now();
                f.write_all_at(&block, off)?;
                f.sync_data()?;
                t.push(s.elapsed().as_micros() as u64);
            }
            t.sort_unstable();
            out[k] = (t[n / 2], t[n * 99 / 100]);
        }
        drop(f);
        std::fs::remove_file(&path)?;
        Ok(out)
    }

    #[derive(Debug, Clone, Serialize)]
    struct Row {
        concurrency: usize,
        server: String,
        activations: u64,
        errors: u64,
        activations_per_sec: f64,
        p50_us: u64,
        p99_us: u64,
        server_cpu_us_per_activation: f64,
        /// The load generator's own CPU (this process) per activation.
        load_cpu_us_per_activation: f64,
        /// Share of the machine's CPU time left idle (or waiting for I/O)
        /// over the run: near 0 means the run was CPU-bound.
        idle_share: f64,
        /// kmsd only: CPU µs per activation by thread name.
        threads: BTreeMap<String, f64>,
    }

    /// (idle + iowait, total) jiffies of all CPUs, from /proc/stat.
    fn machine_ticks() -> (f64, f64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
        (idle, cpu.iter().sum())
    }

    fn thread_group(name: &str) -> String {
        match name {
            n if n.starts_with("tokio-") => "runtime".into(),
            n if n.starts_with("kmsd-store") => "store".into(),
            n if n.starts_with("kmsd-log") => "log".into(),
            n if n.starts_with("kmsd") => "main".into(),
            n => n.to_owned(),
        }
    }

    pub fn run(a: &VersusArgs) -> Result<()> {
        let tmp = match &a.dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let rt = runtime("load")?;
        let sku = products::find_sku("Windows 10/11 Enterprise").map_err(anyhow::Error::msg)?;
        let version = Version::from_wire(6, 0).context("v6")?;
        let base = LoadOptions::new(version, sku);
        let mut syncs = Vec::new();
        let mut servers = Vec::new();
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut floor = Proc::new(std::env::current_exe()?);
        floor.args(["serve", "--listen", &addr.to_string()]);
        servers.push(start("floor", floor, addr, &tmp.path().join("floor.log"))?);
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut kmsd = Proc::new(&a.kmsd);
        kmsd.args(["serve", "--listen", &addr.to_string(), "--data-dir"])
            .arg(tmp.path().join("data"))
            .args(&a.kmsd_args)
            .env_remove("RUST_LOG");
        servers.push(start("kmsd", kmsd, addr, &tmp.path().join("kmsd.log"))?);
        if let Some(b) = &a.kmsd_b {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let mut kmsd = Proc::new(b);
            kmsd.args(["serve", "--listen", &addr.to_string(), "--data-dir"])
                .arg(tmp.path().join("data-b"))
                .args(&a.kmsd_args)
                .env_remove("RUST_LOG");
            servers.push(start("kmsd B", kmsd, addr, &tmp.path().join("kmsd-b.log"))?);
        }
        if let Some(v) = &a.vlmcsd {
            let port = free_port()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut cmd = Proc::new(v);
            cmd.args(["--listen", &addr.to_string(), "--max-connections", "4096"]);
            servers.push(start("vlmcsd", cmd, addr, &tmp.path().join("vlmcsd.log"))?);
        }
        let mut plan: Vec<(usize, &'static str, bool)> = Vec::new();
        for (s, server) in servers.iter().enumerate() {
            plan.push((s, server.name, true));
            if a.distinct && server.name == "kmsd" {
                plan.push((s, "kmsd (distinct CMIDs)", false));
            }
            if a.distinct && server.name == "kmsd B" {
                plan.push((s, "kmsd B (distinct CMIDs)", false));
            }
        }
        let opts = |pinned: bool, c: usize, secs: u64| {
            let mut o = base.clone();
            o.concurrency = c.clamp(1, 10_000);
            o.duration = Duration::from_secs(secs);
            if pinned {
                o.pinned = Some(Pinned::FLOOR);
            }
            o
        };
        if a.warmup > 0 {
            for &(s, _, pinned) in &plan {
                rt.block_on(load::run_with(servers[s].addr, opts(pinned, 16, a.warmup)))?;
            }
        }
        let mut rows: Vec<Row> = Vec::new();
        for round in 0..a.rounds.max(1) {
            // Timed in every round: the disk's latency drifts with what else
            // the machine does.
            syncs.push(fdatasync_us(tmp.path(), 200)?);
            for &c in &a.concurrency {
                for &(s, name, pinned) in &plan {
                    let srv = &servers[s];
                    let pid = srv.child.id();
                    let me = std::process::id();
                    let (t0, c0, l0, m0) =
                        (cpu_by_thread(pid), cpu_of(pid), cpu_of(me), machine_ticks());
                    let report =
                        rt.block_on(load::run_with(srv.addr, opts(pinned, c, a.duration)))?;
                    let (t1, c1, l1, m1) =
                        (cpu_by_thread(pid), cpu_of(pid), cpu_of(me), machine_ticks());
                    let n = report.activations.max(1) as f64;
                    let mut threads = BTreeMap::new();
                    if srv.name.starts_with("kmsd") {
                        for (k, v) in &t1 {
                            let d = v - t0.get(k).copied().unwrap_or(0.0);
                            *threads.entry(thread_group(k)).or_insert(0.0) += d * 1e6 / n;
                        }
                    }
                    let row = Row {
                        concurrency: c,
                        server: name.into(),
                        activations: report.activations,
                        errors: report.error_total,
                        activations_per_sec: report.activations_per_sec,
                        p50_us: report.latency_us.p50,
                        p99_us: report.latency_us.p99,
                        server_cpu_us_per_activation: (c1 - c0) * 1e6 / n,
                        load_cpu_us_per_activation: (l1 - l0) * 1e6 / n,
                        idle_share: (m1.0 - m0.0) / (m1.1 - m0.1).max(1.0),
                        threads,
                    };
                    if !a.json {
                        eprintln!(
                            "round {} c={c:<3} {name:<22} {:>9.1}/s  p50 {:>6} µs  p99 {:>6} µs  errors {}  server CPU {:.1} µs/act  load CPU {:.1} µs/act  idle {:.0} %  {}",
                            round + 1,
                            row.activations_per_sec,
                            row.p50_us,
                            row.p99_us,
                            row.errors,
                            row.server_cpu_us_per_activation,
                            row.load_cpu_us_per_activation,
                            row.idle_share * 100.0,
                            row.threads
                                .iter()
                                .map(|(k, v)| format!("{k} {v:.1}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    rows.push(row);
                }
            }
        }
        drop(servers);
        let mean = |k: usize, p99: bool| {
            syncs
                .iter()
                .map(|s| if p99 { s[k].1 } else { s[k].0 })
                .sum::<u64>()
                / syncs.len().max(1) as u64
        };
        let sync = [
            (mean(0, false), mean(0, true)),
            (mean(1, false), mean(1, true)),
        ];
        // Merge the rounds: CPU per activation over all activations; rate
        // and percentiles the mean of the rounds' (and said so).
        let mut merged: Vec<Row> = Vec::new();
        for &c in &a.concurrency {
            for &(_, name, _) in &plan {
                let rs: Vec<&Row> = rows
                    .iter()
                    .filter(|r| r.concurrency == c && r.server == name)
                    .collect();
                let k = rs.len().max(1) as f64;
                let acts: u64 = rs.iter().map(|r| r.activations).sum();
                let w = |f: &dyn Fn(&Row) -> f64| {
                    rs.iter().map(|r| f(r) * r.activations as f64).sum::<f64>() / acts.max(1) as f64
                };
                let mut threads = BTreeMap::new();
                for r in &rs {
                    for (t, v) in &r.threads {
                        *threads.entry(t.clone()).or_insert(0.0) +=
                            v * r.activations as f64 / acts.max(1) as f64;
                    }
                }
                merged.push(Row {
                    concurrency: c,
                    server: name.into(),
                    activations: acts,
                    errors: rs.iter().map(|r| r.errors).sum(),
                    activations_per_sec: rs.iter().map(|r| r.activations_per_sec).sum::<f64>() / k,
                    p50_us: (rs.iter().map(|r| r.p50_us as f64).sum::<f64>() / k) as u64,
                    p99_us: (rs.iter().map(|r| r.p99_us as f64).sum::<f64>() / k) as u64,
                    server_cpu_us_per_activation: w(&|r| r.server_cpu_us_per_activation),
                    load_cpu_us_per_activation: w(&|r| r.load_cpu_us_per_activation),
                    idle_share: rs.iter().map(|r| r.idle_share).sum::<f64>() / k,
                    threads,
                });
            }
        }
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "machine": machine(),
                    "fdatasync_overwrite_us": {"p50": sync[0].0, "p99": sync[0].1},
                    "fdatasync_append_us": {"p50": sync[1].0, "p99": sync[1].1},
                    "fdatasync_by_round_us": syncs,
                    "runs": rows,
                    "merged": merged,
                })
            );
            return Ok(());
        }
        println!("machine: {}", machine());
        println!(
            "fdatasync of 4 KiB in the data dir's file system (mean over rounds of 200 each): overwrite p50 {} µs (p99 {}), append p50 {} µs (p99 {}); overwrite p50 by round: {:?}",
            sync[0].0,
            sync[0].1,
            sync[1].0,
            sync[1].1,
            syncs.iter().map(|s| s[0].0).collect::<Vec<_>>()
        );
        println!(
            "{} rounds x {} s per run; rate and percentiles are the mean over rounds, CPU per activation over all of them\n",
            a.rounds.max(1),
            a.duration
        );
        println!(
            "| clients | server | activations/s | p50 µs | p99 µs | errors | server CPU µs/act | CPU / floor's | load CPU µs/act | idle % | kmsd by thread (µs/act) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &merged {
            let floor = merged
                .iter()
                .find(|f| f.concurrency == r.concurrency && f.server == "floor")
                .map_or(f64::NAN, |f| f.server_cpu_us_per_activation);
            println!(
                "| {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.2} | {:.1} | {:.0} | {} |",
                r.concurrency,
                r.server,
                r.activations_per_sec,
                r.p50_us,
                r.p99_us,
                r.errors,
                r.server_cpu_us_per_activation,
                r.server_cpu_us_per_activation / floor,
                r.load_cpu_us_per_activation,
                r.idle_share * 100.0,
                r.threads
                    .iter()
                    .filter(|(_, v)| **v >= 0.05)
                    .map(|(k, v)| format!("{k} {v:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let get = |c: usize, n: &str| merged.iter().find(|r| r.concurrency == c && r.server == n);
        println!();
        for &c in &a.concurrency {
            if let (Some(f), Some(k)) = (get(c, "floor"), get(c, "kmsd")) {
                let mut line = format!(
                    "clients {c}: kmsd CPU/act {:.2} x floor's; p50 {} µs vs floor p50 + 1.25 x fdatasync p50 = {} µs",
                    k.server_cpu_us_per_activation / f.server_cpu_us_per_activation,
                    k.p50_us,
                    f.p50_us + sync[0].0 * 5 / 4
                );
                if let Some(v) = get(c, "vlmcsd") {
                    line += &format!(
                        "; kmsd rate / vlmcsd rate {:.2}",
                        k.activations_per_sec / v.activations_per_sec
                    );
                }
                println!("{line}");
            }
        }
        Ok(())
    }
}
