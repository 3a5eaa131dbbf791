//! `kmsd probe`: grades a KMS host against what a Windows host does, or
//! every host published under `_vlmcs._tcp.DOMAIN`, to find the ones that
//! are not what they claim (emulators answering every product, fixed
//! counts, random ePIDs, broken crypto).
//!
//! * [`driver`] performs a fixed, bounded battery of exchanges and records
//!   what it saw ([`grade::Observations`]);
//! * [`grade`] turns observations into a report card ([`grade::Card`]):
//!   pure functions, unit-tested on hand-made observations;
//! * [`run`] resolves the targets (loopback and private addresses only,
//!   unless `--allow-remote`), probes them one after the other and returns
//!   the cards.

pub mod driver;
pub mod grade;

pub use driver::{PROBE_CMID, ProbeOptions, probe};
pub use grade::{Card, Check, Grade, Observations, Verdict, exit_code, grade};

use crate::client::target;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Most hosts one `--discover` run probes.
pub const MAX_HOSTS: usize = 32;

/// `kmsd probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Host to probe, HOST[:PORT] (port 1688 when left out). Loopback and
    /// private addresses only, unless --allow-remote.
    #[arg(required_unless_present = "discover")]
    pub host: Option<String>,
    /// Probe every host published under the _vlmcs._tcp.DOMAIN SRV records
    /// instead (in RFC 2782 order), one report card each.
    #[arg(long, value_name = "DOMAIN", conflicts_with = "host")]
    pub discover: Option<String>,
    /// DNS server for --discover (default: the first nameserver of
    /// /etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT", requires = "discover", value_parser = crate::dns::parse_server)]
    pub dns_server: Option<SocketAddr>,
    /// Also check that the host counts clients: sends 4 new machine IDs to
    /// its Windows pool and 3 to its Office 2013+ pool. THIS ADDS 7
    /// MACHINES TO THE TARGET'S COUNTS (a real host keeps them for 30
    /// days), so use it only on hosts you run or test. Without it the probe
    /// uses one fixed machine ID, which a repeated probe only renews.
    #[arg(long)]
    pub count_check: bool,
    /// Seconds allowed for each step (connect, each reply).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub timeout: u64,
    /// The target is not on loopback or a private network and you operate
    /// it: probe it anyway.
    #[arg(long)]
    pub allow_remote: bool,
    /// Print the report cards as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Loopback, RFC 1918 private, link-local or IPv6 unique-local: the
/// addresses the host's own default access list admits.
pub fn is_local(ip: IpAddr) -> bool {
    crate::server::access::AccessList::default().permits(ip)
}

/// Why a probe run could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Resolve(#[from] target::ResolveError),
    #[error(
        "refusing to probe {target} ({addr}): not a loopback or private address; pass \
         --allow-remote only for a host you operate"
    )]
    NotLocal { target: String, addr: SocketAddr },
    #[error("cannot look up _vlmcs._tcp.{domain}: {err}")]
    Dns {
        domain: String,
        err: crate::dns::message::DnsError,
    },
    #[error("no KMS host is published under _vlmcs._tcp.{0}")]
    NoHosts(String),
}

/// Probes what `args` name and returns one card per host.
pub async fn run(args: &ProbeArgs) -> Result<Vec<Card>, ProbeError> {
    let opts = ProbeOptions::new(Duration::from_secs(args.timeout), args.count_check);
    let mut cards = Vec::new();
    match (&args.discover, &args.host) {
        (Some(domain), _) => {
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
            let hosts = crate::dns::discover::hosts(domain, args.dns_server, &mut rng)
                .await
                .map_err(|err| ProbeError::Dns {
                    domain: domain.clone(),
                    err,
                })?;
            if hosts.is_empty() {
                return Err(ProbeError::NoHosts(domain.clone()));
            }
            for h in hosts.into_iter().take(MAX_HOSTS) {
                let name = format!("{}:{}", h.srv.target.trim_end_matches('.'), h.srv.port);
                let Some(&addr) = h.addrs.first() else {
                    let o = Observations::unreachable(
                        name,
                        None,
                        "the SRV target has no address".into(),
                        opts.today,
                    );
                    cards.push(grade(&o));
                    continue;
                };
                if !args.allow_remote && !is_local(addr.ip()) {
                    let o = Observations::unreachable(
                        name,
                        Some(addr),
                        "not probed: not a loopback or private address (--allow-remote)".into(),
                        opts.today,
                    );
                    cards.push(grade(&o));
                    continue;
                }
                cards.push(grade(&probe(name, addr, &opts).await));
            }
        }
        (None, Some(host)) => {
            let addrs = target::resolve_all(host).await?;
            if !args.allow_remote
                && let Some(&addr) = addrs.iter().find(|a| !is_local(a.ip()))
            {
                return Err(ProbeError::NotLocal {
                    target: host.clone(),
                    addr,
                });
            }
            let addr = addrs
                .first()
                .copied()
                .ok_or_else(|| target::ResolveError::NoAddress {
                    target: host.clone(),
                })?;
            cards.push(grade(&probe(host.clone(), addr, &opts).await));
        }
        (None, None) => {}
    }
    Ok(cards)
}
