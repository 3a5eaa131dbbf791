//! The `kmsd` binary: parse the command line, set up logging, dispatch.

use anyhow::{Context, Result, bail};
use clap::Parser;
use kmsd::cli::{
    ActivateArgs, Cli, ClientsArgs, Command, LogFormat, ProductsArgs, ServeArgs, StatusArgs,
};
use kmsd::client::{ClientOptions, Connection};
use kmsd::config::{DEFAULT_PORT, ServeConfig};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::Version;
use kmsd::protocol::kms::products;
use kmsd::server::{self, Server, handler::Host};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve(args)),
        Command::Activate(args) => rt.block_on(activate(args)),
        Command::Products(args) => products_cmd(&args),
        Command::Status(args) => status_cmd(&args),
        Command::Clients(args) => clients_cmd(&args),
    }
}

fn serve_config(a: ServeArgs) -> Result<ServeConfig> {
    let mut c = ServeConfig::default();
    if !a.listen.is_empty() {
        c.listen = a.listen;
    }
    if let Some(d) = a.data_dir {
        c.data_dir = d;
    }
    c.count_mode = a.count_mode;
    if !a.served_groups.is_empty() {
        c.served_groups = a.served_groups;
    }
    c.strict_products = !a.lenient_products;
    c.max_clock_skew = a.max_clock_skew.map(|m| Duration::from_secs(m * 60));
    for e in a.epids {
        let (g, v) = e
            .split_once('=')
            .with_context(|| format!("--epid {e:?}: expected GROUP=EPID"))?;
        let group = products::epid_group(g).with_context(|| {
            format!(
                "--epid: unknown group {g:?} (known: {})",
                kmsd::config::group_names()
            )
        })?;
        c.epids.insert(group.name.to_owned(), v.to_owned());
    }
    if let Some(h) = a.hwid {
        c.hwid = h;
    }
    if let Some(b) = a.host_build {
        c.host_build = b;
        if let Some(w) = products::win_build(b) {
            c.ndr64 = w.uses_ndr64;
        }
    }
    if let Some(l) = a.lcid {
        c.lcid = l;
    }
    if let Some(v) = a.ndr64 {
        c.ndr64 = v.on();
    }
    if let Some(v) = a.btfn {
        c.btfn = v.on();
    }
    if let Some(v) = a.activation_interval {
        c.activation_interval = v;
    }
    if let Some(v) = a.renewal_interval {
        c.renewal_interval = v;
    }
    if let Some(v) = a.max_connections {
        c.max_connections = v;
    }
    if let Some(v) = a.max_connections_per_ip {
        c.max_connections_per_ip = v;
    }
    c.access.allow.extend(a.allow);
    c.access.deny.extend(a.deny);
    if let Some(v) = a.keep_records {
        c.keep_records = v;
    }
    if let Some(v) = a.idle_timeout {
        c.idle_timeout = Duration::from_secs(v);
    }
    c.validate()?;
    Ok(c)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let cfg = serve_config(args)?;
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
    let server = Server::new(listeners, host.clone(), cfg);
    if let Err(e) = host.note_listening(&server.local_addrs()) {
        tracing::warn!(error = %e, "cannot note the listen addresses for `kmsd status`");
    }
    let token = CancellationToken::new();
    tokio::spawn(server::signal::cancel_on_signal(token.clone()));
    server.run(token).await;
    Ok(())
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
fn resolve(target: &str) -> Result<SocketAddr> {
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = target.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    let with_port = if target.contains(':') {
        target.to_owned()
    } else {
        format!("{target}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {target:?}"))?
        .next()
        .with_context(|| format!("{target:?} resolves to no address"))
}

async fn activate(a: ActivateArgs) -> Result<()> {
    let addr = resolve(&a.host)?;
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
