//! The `kmsd` binary: parse the command line, set up logging, dispatch.

use anyhow::{Context, Result, bail};
use clap::Parser;
use kmsd::cli::{
    ActivateArgs, Cli, ClientsArgs, Command, ConfigCommand, DnsRecordArgs, LogFormat, ProductsArgs,
    ServeArgs, StatusArgs,
};
use kmsd::client::{ClientOptions, Connection};
use kmsd::config::ServeConfig;
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::Version;
use kmsd::protocol::kms::products;
use kmsd::server::{self, Server, handler::Host};
use kmsd::settings::{self, Settings};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Replaces the log filter of a running process (SIGHUP).
type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Where log lines go: straight to stderr, or (for the host) through a
/// writer thread, so a line costs a worker thread a formatted copy and a
/// channel send rather than a write syscall, lines are written out in
/// batches, and a stalled log reader (a full pipe, a slow journal) can
/// never hold up an activation: past 128k queued lines, new ones are
/// dropped instead. The guard flushes what is queued when dropped.
enum LogSink {
    Stderr,
    Background,
}

/// Sets up logging; `RUST_LOG` wins over `level`.
fn init_logging(
    level: &str,
    json: bool,
    sink: LogSink,
) -> (
    LogReload,
    Option<tracing_appender::non_blocking::WorkerGuard>,
) {
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    match &cli.command {
        Command::Serve(args) => {
            let layers = Layers::read(args, &cli)?;
            let (cfg, level, json) = layers.resolve()?;
            let (reload, _flush_on_exit) = init_logging(&level, json, LogSink::Background);
            rt()?.block_on(serve(cfg, layers, reload))
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let (cfg, level, json) = Layers::read(args, &cli)?.resolve()?;
            print!(
                "{}",
                settings::effective_toml(&cfg, &level, if json { "json" } else { "text" })
            );
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Config(ConfigCommand::Sample) => {
            print!("{SAMPLE_CONFIG}");
            Ok(())
        }
        Command::Config(ConfigCommand::Keys) => {
            print!("{}", settings::markdown_table());
            Ok(())
        }
        Command::DnsRecord(args) => dns_record(args),
        other => {
            let level = match (cli.quiet, cli.verbose) {
                (true, _) => "warn",
                (_, 0) => "info",
                (_, 1) => "debug",
                _ => "trace",
            };
            let _ = init_logging(
                level,
                cli.log_format == Some(LogFormat::Json),
                LogSink::Stderr,
            );
            match other {
                Command::Activate(args) => rt()?.block_on(activate(args)),
                Command::Load(args) => rt()?.block_on(load_cmd(args)),
                Command::Products(args) => products_cmd(args),
                Command::Status(args) => status_cmd(args),
                Command::Clients(args) => clients_cmd(args),
                Command::Serve(_) | Command::Config(_) | Command::DnsRecord(_) => Ok(()),
            }
        }
    }
}

/// The sample configuration shipped in packaging/.
const SAMPLE_CONFIG: &str = include_str!("../packaging/kmsd.toml");

/// The configuration layers of `serve`: file, environment, flags.
struct Layers {
    file_path: Option<std::path::PathBuf>,
    flags: Settings,
}

impl Layers {
    fn read(args: &ServeArgs, cli: &Cli) -> Result<Self> {
        Ok(Self {
            file_path: args.config.clone(),
            flags: args.to_settings(cli.verbose, cli.quiet, cli.log_format)?,
        })
    }

    /// Reads the file and the environment again and resolves all layers:
    /// the configuration, the log level and whether logs are JSON.
    fn resolve(&self) -> Result<(ServeConfig, String, bool)> {
        let file = match &self.file_path {
            Some(p) => Settings::from_file(p)?,
            None => Settings::default(),
        };
        let env = Settings::from_env(std::env::vars().filter(|(k, _)| k != "KMSD_CONFIG"))?;
        let merged = file.overlay(env).overlay(self.flags.clone());
        let cfg = Settings::resolve(&[&merged])?;
        let level = merged.log_level.clone().unwrap_or_else(|| "info".into());
        let json = merged.log_format.as_deref() == Some("json");
        Ok((cfg, level, json))
    }
}

async fn serve(cfg: ServeConfig, layers: Layers, reload_log: LogReload) -> Result<()> {
    let host = Host::open(&cfg).context("cannot start the host")?;
    tracing::info!(
        data = %host.db_path().display(),
        count_mode = %host.count_mode(),
        served = ?host.served_groups(),
        "store open"
    );
    for g in host.served_groups() {
        if let Some(e) = host.epid(g) {
            tracing::info!(group = g, epid = %e, "ePID");
        }
    }
    let listeners = server::bind_all(&cfg)?;
    let host = Arc::new(host);
    let server = Server::new(listeners, host.clone(), cfg.clone());
    let kms_addrs = server.local_addrs();
    if let Err(e) = host.note_listening(&kms_addrs) {
        tracing::warn!(error = %e, "cannot note the listen addresses for `kmsd status`");
    }
    let token = CancellationToken::new();
    tokio::spawn(server::signal::cancel_on_signal(token.clone()));
    tokio::spawn(reload_on_sighup(
        layers,
        cfg.clone(),
        host.clone(),
        server.tunables(),
        reload_log,
        token.clone(),
    ));
    let http = match cfg.http {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the admin API"))?;
            tracing::info!(%addr, "admin API listening");
            let state = kmsd::http::AdminState {
                host: host.clone(),
                data_dir: cfg.data_dir.clone(),
                kms_addrs,
            };
            Some(tokio::spawn(kmsd::http::serve(l, state, token.clone())))
        }
        None => None,
    };
    server.run(token).await;
    if let Some(h) = http {
        let _ = h.await;
    }
    match host.close_store().await {
        Ok(()) => tracing::info!("store closed"),
        Err(e) => {
            tracing::warn!(error = %e, "store not closed cleanly; the next start folds the log")
        }
    }
    Ok(())
}

/// SIGHUP: read the file and environment again; apply what can change
/// live; say which changes need a restart.
async fn reload_on_sighup(
    layers: Layers,
    mut current: ServeConfig,
    host: Arc<Host>,
    tunables: server::SharedTunables,
    reload_log: LogReload,
    token: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; configuration reload is off");
        return;
    };
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        let (new, level, _) = match layers.resolve() {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: configuration invalid; keeping the running one");
                continue;
            }
        };
        host.set_policy(kmsd::server::handler::Policy::from_config(&new));
        match tunables.write() {
            Ok(mut t) => *t = server::Tunables::from_config(&new),
            Err(e) => *e.into_inner() = server::Tunables::from_config(&new),
        }
        if let Err(e) = reload_log(&level) {
            tracing::warn!(error = %e, "SIGHUP: log level not changed");
        }
        let restart = settings::restart_needed(&current, &new);
        if restart.is_empty() {
            tracing::info!("SIGHUP: configuration reloaded");
        } else {
            tracing::warn!(keys = ?restart, "SIGHUP: configuration reloaded; these changes need a restart to apply");
        }
        current = new;
    }
}

fn dns_record(a: &DnsRecordArgs) -> Result<()> {
    let domain = a.domain.trim_end_matches('.');
    if domain.is_empty() || domain.contains(char::is_whitespace) || domain.starts_with('.') {
        bail!("--domain {:?} is not a DNS name", a.domain);
    }
    let target = match &a.target {
        Some(t) => t.trim_end_matches('.').to_owned(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .context("cannot tell this machine's name; pass --target HOST")?,
    };
    let target = if target.contains('.') {
        target
    } else {
        format!("{target}.{domain}")
    };
    let name = format!("_vlmcs._tcp.{domain}.");
    let rdata = format!("{} {} {} {target}.", a.priority, a.weight, a.port);
    println!("; zone file line (clients look up _vlmcs._tcp in their DNS domain)");
    println!("{name} {} IN SRV {rdata}", a.ttl);
    println!();
    println!("; nsupdate script: save the lines below and run `nsupdate -k KEYFILE FILE`");
    println!("update delete {name} SRV");
    println!("update add {name} {} SRV {rdata}", a.ttl);
    println!("send");
    Ok(())
}

async fn activate(a: &ActivateArgs) -> Result<()> {
    let addr = kmsd::client::resolve(&a.host).await?;
    let sku = match (&a.product, a.sku) {
        (_, Some(id)) => {
            products::sku(&id).with_context(|| format!("unknown SKU {id}; see `kmsd products`"))?
        }
        (Some(q), None) => products::find_sku(q).map_err(anyhow::Error::msg)?,
        (None, None) => products::find_sku("Windows 10/11 Pro").map_err(anyhow::Error::msg)?,
    };
    let group = products::kms_group(&sku.kms_id).context("catalog: SKU without a KMS group")?;
    let major = a.protocol.unwrap_or(group.protocol_major);
    let version = Version::from_wire(major, 0).context("protocol must be 4, 5 or 6")?;
    let opts = ClientOptions {
        version,
        ndr64: a.ndr64.on(),
        btfn: a.btfn.on(),
        alter_context: true,
        app_id: sku.app_id,
        sku_id: sku.id,
        kms_id: sku.kms_id,
        n_policy: a.n_policy.unwrap_or(group.n_policy),
        workstation: a.machine_name.clone(),
        license_status: 2,
        binding_expiration: 43200,
        vm: false,
        timeout: Duration::from_secs(a.timeout.max(1)),
        clock_offset_ms: 0,
    };
    let n_policy = opts.n_policy;
    let mut conn = Connection::open(addr, opts)
        .await
        .with_context(|| format!("activation against {addr} failed"))?;
    let mut rng = rand::rng();
    for i in 1..=a.requests {
        let cmid = a.cmid.unwrap_or_else(|| Guid::random_v4(&mut rng));
        let x = conn
            .activate(cmid)
            .await
            .with_context(|| format!("request {i} of {} ({}) failed", a.requests, sku.name))?;
        let r = &x.response;
        let hwid = r
            .hwid
            .map(|h| h.iter().map(|b| format!("{b:02X}")).collect::<String>());
        let activated = r.count >= n_policy;
        if a.json {
            println!(
                "{{\"request\":{i},\"product\":\"{}\",\"protocol\":{},\"syntax\":\"{}\",\"cmid\":\"{}\",\"epid\":\"{}\",\"hwid\":{},\"count\":{},\"n_policy\":{},\"activated\":{},\"activation_interval\":{},\"renewal_interval\":{}}}",
                sku.name,
                r.version.major(),
                x.syntax.name(),
                x.cmid,
                r.epid,
                hwid.as_ref().map_or("null".into(), |h| format!("\"{h}\"")),
                r.count,
                n_policy,
                activated,
                r.activation_interval,
                r.renewal_interval
            );
        } else {
            println!(
                "request {i}: {} via KMS {} ({}), CMID {}\n  ePID {}{}\n  count {} of {} needed: {}\n  intervals: activation {} min, renewal {} min",
                sku.name,
                r.version,
                x.syntax.name(),
                x.cmid,
                r.epid,
                hwid.map_or(String::new(), |h| format!("\n  HwId {h}")),
                r.count,
                n_policy,
                if activated {
                    "activated"
                } else {
                    "below threshold, client stays unactivated"
                },
                r.activation_interval,
                r.renewal_interval
            );
        }
    }
    Ok(())
}

async fn load_cmd(a: &kmsd::client::load::LoadArgs) -> Result<()> {
    let report = kmsd::client::load::run(a).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn products_cmd(a: &ProductsArgs) -> Result<()> {
    let filter = a.filter.as_deref().unwrap_or("").to_lowercase();
    let mut n = 0;
    for s in products::skus() {
        if !s.name.to_lowercase().contains(&filter) {
            continue;
        }
        let g = products::kms_group(&s.kms_id);
        println!(
            "{}  {:<58} group: {} (N={}, v{})",
            s.id,
            s.name,
            g.map_or("?", |g| g.name),
            g.map_or(0, |g| g.n_policy),
            g.map_or(0, |g| g.protocol_major)
        );
        n += 1;
    }
    if n == 0 {
        bail!("no product matches {filter:?}");
    }
    Ok(())
}

fn status_cmd(a: &StatusArgs) -> Result<()> {
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(kmsd::config::default_data_dir);
    let report = kmsd::report::status(&dir, kmsd::store::unix_ms_now())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// `YYYY-MM-DD`, or a span back from now such as `7d`, `12h`, `30m`.
fn parse_since(s: &str, now_ms: i64) -> Result<i64> {
    if let Some((n, unit)) = s.char_indices().last().map(|(i, c)| (&s[..i], c))
        && let Ok(n) = n.parse::<i64>()
    {
        let ms = match unit {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' => 60_000,
            _ => bail!("--since {s:?}: unit must be d, h or m"),
        };
        return Ok(now_ms - n * ms);
    }
    let parts: Vec<&str> = s.split('-').collect();
    if let [y, m, d] = parts.as_slice()
        && let (Ok(year), Ok(month), Ok(day)) = (y.parse(), m.parse(), d.parse())
    {
        let date = products::Date { year, month, day };
        return Ok(date.days_since_unix_epoch() * 86_400_000);
    }
    bail!("--since {s:?}: expected YYYY-MM-DD or a span like 7d, 12h")
}

fn clients_cmd(a: &ClientsArgs) -> Result<()> {
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(kmsd::config::default_data_dir);
    let now = kmsd::store::unix_ms_now();
    let pool = match &a.pool {
        Some(p) => Some(products::Pool::from_name(p).with_context(|| {
            format!("--pool {p:?}: expected windows, office2010 or office2013+")
        })?),
        None => None,
    };
    let since = a
        .since
        .as_deref()
        .map(|s| parse_since(s, now))
        .transpose()?;
    let rows = kmsd::report::clients(&dir, now, pool, since, a.limit)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<36}  {:<12} {:<4} {:<20} {:<20} {:>5} {:>5}  {:<22} product",
        "CMID", "pool", "live", "workstation", "last seen", "reqs", "count", "last result"
    );
    for r in &rows {
        println!(
            "{:<36}  {:<12} {:<4} {:<20} {:<20} {:>5} {:>5}  {:<22} {}",
            r.cmid,
            r.pool,
            if r.live { "yes" } else { "no" },
            r.workstation,
            r.last_seen,
            r.requests,
            r.last_count,
            r.last_result,
            r.product
        );
    }
    println!("{} machines", rows.len());
    Ok(())
}
