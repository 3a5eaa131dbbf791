//! The bodies of the subcommands other than `serve` (see [`crate::app`]):
//! what `kmsd activate`, `load`, `probe`, `products`, `status`, `clients` and
//! `dns-record` do and print.

use crate::cli::{ActivateArgs, ClientsArgs, DnsRecordArgs, ProductsArgs, StatusArgs};
use crate::client::{ClientOptions, Connection};
use crate::protocol::guid::Guid;
use crate::protocol::hex;
use crate::protocol::kms::Version;
use crate::protocol::kms::products;
use crate::report::{ClientRow, StatusReport, parse_since};
use crate::store::{ClientQuery, Reader, unix_ms_now};
use anyhow::{Context, Result, bail};
use std::time::Duration;

pub fn dns_record(a: &DnsRecordArgs) -> Result<()> {
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
    println!("; nsupdate script: save the lines below and run `nsupdate -k KEYFILE FILE`.");
    println!("; It replaces only this host's record: other hosts' records (a fleet) stay.");
    println!("update delete {name} SRV {rdata}");
    println!("update add {name} {} SRV {rdata}", a.ttl);
    println!("send");
    Ok(())
}

pub async fn activate(a: &ActivateArgs) -> Result<()> {
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
    let (mut conn, found) = match &a.discover {
        Some(domain) => {
            let (conn, host, addr) = open_discovered(domain, a.dns_server, &opts).await?;
            if !a.json {
                println!("KMS host {host} at {addr} answered (found under _vlmcs._tcp.{domain})");
            }
            let name = format!(
                "{}:{}",
                host.srv.target.trim_end_matches('.'),
                host.srv.port
            );
            (conn, Some(name))
        }
        None => {
            let addr = crate::client::resolve(&a.host).await?;
            let conn = Connection::open(addr, opts)
                .await
                .with_context(|| format!("activation against {addr} failed"))?;
            (conn, None)
        }
    };
    let mut rng = rand::rng();
    for i in 1..=a.requests {
        let cmid = a.cmid.unwrap_or_else(|| Guid::random_v4(&mut rng));
        let x = conn
            .activate(cmid)
            .await
            .with_context(|| format!("request {i} of {} ({}) failed", a.requests, sku.name))?;
        let r = &x.response;
        let hwid = r.hwid.map(|h| hex::upper(&h));
        let activated = r.count >= n_policy;
        if a.json {
            let host = found
                .as_ref()
                .map_or(String::new(), |h| format!("\"host\":{h:?},"));
            println!(
                "{{{host}\"request\":{i},\"product\":\"{}\",\"protocol\":{},\"syntax\":\"{}\",\"cmid\":\"{}\",\"epid\":\"{}\",\"hwid\":{},\"count\":{},\"n_policy\":{},\"activated\":{},\"activation_interval\":{},\"renewal_interval\":{}}}",
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

/// Connects to the first host of `domain`'s SRV records (RFC 2782 order)
/// that answers a bind, as Windows does: a host that does not answer gives
/// way to the next; each one tried is logged.
async fn open_discovered(
    domain: &str,
    server: Option<std::net::SocketAddr>,
    opts: &ClientOptions,
) -> Result<(
    Connection,
    crate::dns::discover::FoundHost,
    std::net::SocketAddr,
)> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let hosts = crate::dns::discover::hosts(domain, server, &mut rng)
        .await
        .with_context(|| format!("cannot look up _vlmcs._tcp.{domain}"))?;
    if hosts.is_empty() {
        bail!("no KMS host is published under _vlmcs._tcp.{domain}");
    }
    let mut tried = Vec::new();
    for h in hosts {
        if h.addrs.is_empty() {
            tracing::warn!(host = %h, "no address for this KMS host; trying the next");
            tried.push(format!("{h}: no address"));
        }
        for &addr in &h.addrs {
            match Connection::open(addr, opts.clone()).await {
                Ok(conn) => return Ok((conn, h, addr)),
                Err(e) => {
                    tracing::warn!(host = %h, %addr, error = %e, "KMS host does not answer; trying the next");
                    tried.push(format!("{h} at {addr}: {e}"));
                }
            }
        }
    }
    bail!(
        "no KMS host under _vlmcs._tcp.{domain} answered: {}",
        tried.join("; ")
    )
}

pub async fn load(a: &crate::client::load::LoadArgs) -> Result<()> {
    let report = crate::client::load::run(a).await?;
    if let Some(path) = &a.report {
        std::fs::write(path, crate::client::load::html::render(&report))
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

/// `kmsd probe`: prints a report card per host, then exits 0 (every host
/// conforms), 1 (one does not, or looks like an emulator) or 2 (one could
/// not be reached, or the targets could not be found).
pub async fn probe(a: &crate::probe::ProbeArgs) -> Result<()> {
    use std::io::Write;
    let cards = match crate::probe::run(a).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kmsd probe: {e}");
            std::process::exit(2);
        }
    };
    let code = crate::probe::exit_code(&cards);
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({ "hosts": cards, "exit_code": code });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        for (i, c) in cards.iter().enumerate() {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "{c}")?;
        }
    }
    out.flush()?;
    drop(out);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

pub fn products(a: &ProductsArgs) -> Result<()> {
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

pub async fn status(a: &StatusArgs) -> Result<()> {
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(crate::config::default_data_dir);
    let st = Reader::for_backend(&a.store, &dir)?
        .status(unix_ms_now())
        .await?;
    let report = StatusReport::new(st);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

pub async fn clients(a: &ClientsArgs) -> Result<()> {
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(crate::config::default_data_dir);
    let now = unix_ms_now();
    let pool = match &a.pool {
        Some(p) => Some(products::Pool::from_name(p).with_context(|| {
            format!("--pool {p:?}: expected windows, office2010 or office2013+")
        })?),
        None => None,
    };
    let since = a
        .since
        .as_deref()
        .map(|s| parse_since(s, now).map_err(anyhow::Error::msg))
        .transpose()?;
    let query = ClientQuery {
        now_ms: now,
        pool,
        since_ms: since,
        limit: a.limit,
    };
    let rows: Vec<ClientRow> = Reader::for_backend(&a.store, &dir)?
        .clients(&query)
        .await?
        .iter()
        .map(ClientRow::new)
        .collect();
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

/// `kmsd store copy`.
pub async fn store_copy(a: &crate::cli::StoreCopyArgs) -> Result<()> {
    let report = crate::store::copy::copy(&a.from, &a.to, a.merge).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
