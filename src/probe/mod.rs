//! `kmsd probe`: grades a KMS host against what a Windows host does, or
//! every host published under `_vlmcs._tcp.DOMAIN`, to find the ones that
//! are not what they claim (emulators answering every product, fixed
//! counts, random ePIDs, broken crypto).
//!
//! * [`driver`] performs a fixed, bounded battery of exchanges and records
//!   what it saw ([`grade::Observations`]);
//! * [`grade`] turns observations into a report card ([`grade::Card`]):
//!   pure functions, unit-tested on hand-made observations;
//! * [`run`] resolves the targets (loopback only unless `--allow-remote`,
//!   the same rule as `kmsd load`: [`crate::client::check_remote`]), probes
//!   them one after the other and returns the cards.

pub mod driver;
pub mod grade;

pub use driver::{PROBE_CMID, ProbeOptions, probe};
pub use grade::{Card, Check, Grade, Observations, Verdict, exit_code, grade};

use crate::client::discover::{self, DiscoverError};
use crate::client::target::{self, TargetError};
use std::net::SocketAddr;
use std::time::Duration;

/// Most hosts one `--discover` run probes.
pub const MAX_HOSTS: usize = 32;

/// `kmsd probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Host to probe, HOST[:PORT] (port 1688 when left out). Loopback only,
    /// unless --allow-remote.
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
    /// The target is not on this machine's loopback (a host on your network,
    /// or further) and you operate it: probe it anyway.
    #[arg(long)]
    pub allow_remote: bool,
    /// Print the report cards as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `kmsd probe` refuses in the `--allow-remote` rule's words.
const ACTION: &str = "probe";

/// Why a probe run could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Discover(#[from] DiscoverError),
}

/// Probes what `args` name and returns one card per host.
pub async fn run(args: &ProbeArgs) -> Result<Vec<Card>, ProbeError> {
    let opts = ProbeOptions::new(Duration::from_secs(args.timeout), args.count_check);
    match (&args.discover, &args.host) {
        (Some(domain), _) => probe_published(domain, args, &opts).await,
        (None, Some(host)) => {
            let addr = target::resolve_allowed(ACTION, host, args.allow_remote).await?;
            Ok(vec![grade(&probe(host.clone(), addr, &opts).await)])
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// Probes every host published under `_vlmcs._tcp.DOMAIN` (at most
/// [`MAX_HOSTS`]), each at its first address; a host without one, or one
/// the `--allow-remote` rule keeps out, gets an unreachable card saying so.
async fn probe_published(
    domain: &str,
    args: &ProbeArgs,
    opts: &ProbeOptions,
) -> Result<Vec<Card>, ProbeError> {
    let mut cards = Vec::new();
    for host in discover::published(domain, args.dns_server)
        .await?
        .into_iter()
        .take(MAX_HOSTS)
    {
        let name = discover::host_name(&host);
        let Some(&addr) = host.addrs.first() else {
            let why = "the SRV target has no address".to_owned();
            cards.push(grade(&Observations::unreachable(
                name, None, why, opts.today,
            )));
            continue;
        };
        if let Err(e) = target::check_remote(ACTION, &name, addr, args.allow_remote) {
            let why = format!("not probed: {e}");
            cards.push(grade(&Observations::unreachable(
                name,
                Some(addr),
                why,
                opts.today,
            )));
            continue;
        }
        cards.push(grade(&probe(name, addr, opts).await));
    }
    Ok(cards)
}
