//! The bodies of the subcommands other than `serve` (see [`crate::app`]):
//! what `kmsd activate`, `load`, `probe`, `products`, `status`, `clients` and
//! `dns-record` do and print.

use crate::cli::{ActivateArgs, ClientsArgs, DnsRecordArgs, ProductsArgs, StatusArgs};
use crate::client::{ClientOptions, Connection, ProductRequest, discover};
use crate::protocol::guid::Guid;
use crate::protocol::hex;
use crate::protocol::kms::Version;
use crate::protocol::kms::products;
use crate::report::{ClientRow, StatusReport, parse_since};
use crate::store::{ClientQuery, StoreReader, unix_ms_now};
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
    let request = activation_request(a)?;
    let opts = ClientOptions {
        ndr64: a.ndr64.on(),
        btfn: a.btfn.on(),
        ..ClientOptions::sending(&request, Duration::from_secs(a.timeout.max(1)))
    };
    let (mut conn, found) = open_for_activation(a, opts).await?;
    let mut rng = rand::rng();
    for i in 1..=a.requests {
        let cmid = a.cmid.unwrap_or_else(|| Guid::random_v4(&mut rng));
        let x = conn.activate(cmid).await.with_context(|| {
            format!(
                "request {i} of {} ({}) failed",
                a.requests, request.sku.name
            )
        })?;
        let answered = AnswerReport {
            request: i,
            product: request.sku.name,
            n_policy: request.n_policy,
            host: found.as_deref(),
            x: &x,
        };
        if a.json {
            println!("{}", answered.json_line());
        } else {
            println!("{answered}");
        }
    }
    Ok(())
}

/// The request `activate` sends: the product asked for (Windows 10/11 Pro
/// by default), in its protocol and with its threshold unless overridden.
fn activation_request(a: &ActivateArgs) -> Result<ProductRequest> {
    let mut request = match (&a.product, a.sku) {
        (_, Some(id)) => ProductRequest::new(
            products::sku(&id).with_context(|| format!("unknown SKU {id}; see `kmsd products`"))?,
        ),
        (Some(q), None) => ProductRequest::find(q)?,
        (None, None) => ProductRequest::find("Windows 10/11 Pro")?,
    };
    if let Some(major) = a.protocol {
        request =
            request.version(Version::from_wire(major, 0).context("protocol must be 4, 5 or 6")?);
    }
    if let Some(n) = a.n_policy {
        request = request.n_policy(n);
    }
    Ok(request.workstation(&a.machine_name)?)
}

/// A bound connection to the host `a` names, or to the first host of the
/// `--discover` domain that answers a bind (as Windows does: a host that
/// does not answer gives way to the next, each one tried is logged), with
/// the name of the host found.
async fn open_for_activation(
    a: &ActivateArgs,
    opts: ClientOptions,
) -> Result<(Connection, Option<String>)> {
    let Some(domain) = &a.discover else {
        let addr = crate::client::resolve(&a.host).await?;
        let conn = Connection::open(addr, opts)
            .await
            .with_context(|| format!("activation against {addr} failed"))?;
        return Ok((conn, None));
    };
    let found = discover::first_answering(domain, a.dns_server, |addr| {
        Connection::open(addr, opts.clone())
    })
    .await?;
    if !a.json {
        println!(
            "KMS host {} at {} answered (found under _vlmcs._tcp.{domain})",
            found.host, found.addr
        );
    }
    Ok((found.answer, Some(discover::host_name(&found.host))))
}

/// One verified answer to `activate`, as it prints it.
struct AnswerReport<'a> {
    /// 1 for the first request.
    request: u32,
    product: &'a str,
    n_policy: u32,
    /// The host found by `--discover`.
    host: Option<&'a str>,
    x: &'a crate::client::Exchange,
}

impl AnswerReport<'_> {
    fn activated(&self) -> bool {
        self.x.response.count >= self.n_policy
    }

    /// The answer as one JSON object (`--json`), keys in a fixed order.
    fn json_line(&self) -> String {
        let r = &self.x.response;
        let host = self
            .host
            .map_or(String::new(), |h| format!("\"host\":{h:?},"));
        let hwid = r
            .hwid
            .map_or("null".into(), |h| format!("\"{}\"", hex::upper(&h)));
        format!(
            "{{{host}\"request\":{},\"product\":\"{}\",\"protocol\":{},\"syntax\":\"{}\",\"cmid\":\"{}\",\"epid\":\"{}\",\"hwid\":{hwid},\"count\":{},\"n_policy\":{},\"activated\":{},\"activation_interval\":{},\"renewal_interval\":{}}}",
            self.request,
            self.product,
            r.version.major(),
            self.x.syntax.name(),
            self.x.cmid,
            r.epid,
            r.count,
            self.n_policy,
            self.activated(),
            r.activation_interval,
            r.renewal_interval
        )
    }
}

impl std::fmt::Display for AnswerReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.x.response;
        let hwid = r
            .hwid
            .map_or(String::new(), |h| format!("\n  HwId {}", hex::upper(&h)));
        write!(
            f,
            "request {}: {} via KMS {} ({}), CMID {}\n  ePID {}{hwid}\n  count {} of {} needed: {}\n  intervals: activation {} min, renewal {} min",
            self.request,
            self.product,
            r.version,
            self.x.syntax.name(),
            self.x.cmid,
            r.epid,
            r.count,
            self.n_policy,
            if self.activated() {
                "activated"
            } else {
                "below threshold, client stays unactivated"
            },
            r.activation_interval,
            r.renewal_interval
        )
    }
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
    let mut t = crate::term::table(&["SKU ID", "product", "group", "N", "protocol"], &[3]);
    for s in products::skus() {
        if !s.name.to_lowercase().contains(&filter) {
            continue;
        }
        let g = products::kms_group(&s.kms_id);
        t.add_row(vec![
            s.id.to_string(),
            s.name.to_owned(),
            g.map_or("?", |g| g.name).to_owned(),
            g.map_or(0, |g| g.n_policy).to_string(),
            format!("v{}", g.map_or(0, |g| g.protocol_major)),
        ]);
    }
    if t.row_count() == 0 {
        bail!("no product matches {filter:?}");
    }
    println!("{}", t.trim_fmt());
    Ok(())
}

pub async fn status(a: &StatusArgs) -> Result<()> {
    let dir = a.at.dir();
    let st = StoreReader::open(&a.at.store, &dir)?
        .status(unix_ms_now())
        .await?;
    let report = StatusReport::new(st);
    let licenses = crate::licenses::commands::summary(&a.at.store, &dir).await;
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        if let (Some(l), Some(o)) = (licenses, v.as_object_mut()) {
            o.insert("licenses".into(), serde_json::to_value(l)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{report}");
        if let Some(l) = licenses.filter(|l| !l.packs.is_empty() || !l.uncovered.is_empty()) {
            println!("\nLicenses (kmsd licenses for more):");
            for p in &l.packs {
                println!(
                    "  pack {:<4} {:<40} {:>5} of {:<5} in use, {} free, {} stale, {} over ({})",
                    p.id, p.product, p.in_use, p.owned, p.free, p.stale, p.over, p.enforce
                );
            }
            for u in &l.uncovered {
                println!("  no pack     {:<40} {:>5} machines", u.product, u.machines);
            }
        }
    }
    Ok(())
}

pub async fn clients(a: &ClientsArgs) -> Result<()> {
    let dir = a.at.dir();
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
    if a.duplicates {
        return crate::licenses::commands::duplicates(&a.at.store, &dir, a.json).await;
    }
    let mut rows: Vec<ClientRow> = StoreReader::open(&a.at.store, &dir)?
        .clients(&query)
        .await?
        .iter()
        .map(ClientRow::new)
        .collect();
    let seats = crate::licenses::commands::seat_map(&a.at.store, &dir).await;
    for r in &mut rows {
        r.seat = seats.get(&r.cmid).copied();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut t = crate::term::table(
        &[
            "CMID",
            "pool",
            "live",
            "workstation",
            "last seen",
            "reqs",
            "count",
            "last result",
            "seat",
            "product",
        ],
        &[5, 6],
    );
    for r in &rows {
        t.add_row(vec![
            r.cmid.clone(),
            r.pool.clone(),
            if r.live { "yes" } else { "no" }.to_owned(),
            r.workstation.clone(),
            r.last_seen.clone(),
            r.requests.to_string(),
            r.last_count.to_string(),
            r.last_result.clone(),
            r.seat
                .map_or_else(|| "-".to_owned(), |p| format!("pack {p}")),
            r.product.clone(),
        ]);
    }
    println!("{}", t.trim_fmt());
    println!("{} machines", rows.len());
    Ok(())
}

/// `kmsd store copy`.
pub async fn store_copy(a: &crate::cli::StoreCopyArgs) -> Result<()> {
    use crate::store::postgres::import::Progress;
    let bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    let progress = |p: Progress| {
        let Ok(mut b) = bar.lock() else { return };
        match p {
            Progress::Stage { what, total } => {
                if let Some(old) = b.take() {
                    old.finish();
                }
                *b = Some(crate::term::bar(total, what));
            }
            Progress::Done(n) => {
                if let Some(b) = b.as_ref() {
                    b.inc(n);
                }
            }
        }
    };
    let report = crate::store::postgres::import::copy(&a.from, &a.to, a.merge, &progress).await;
    if let Ok(mut b) = bar.lock()
        && let Some(b) = b.take()
    {
        b.finish_and_clear();
    }
    let report = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
