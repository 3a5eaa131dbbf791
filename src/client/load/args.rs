//! The arguments of `kmsd load` ([`LoadArgs`]) and the settings they
//! choose between: which machine IDs the clients send ([`Clients`]), the
//! shape of the run ([`Scenario`]) and how activations use connections
//! ([`ConnectionMode`]).

use super::engine::{LoadOptions, SOURCES};
use crate::protocol::kms::{Version, products};
use anyhow::{Context, bail};
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The longest run the CLI accepts (seconds).
pub const MAX_DURATION_SECS: u64 = 3600;
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

impl LoadArgs {
    /// Refuses what the scenario cannot use, before any traffic.
    pub(super) fn check_scenario(&self) -> anyhow::Result<()> {
        match self.scenario {
            Scenario::Classic if self.over.is_some() => {
                bail!("--over is for --scenario boot-storm")
            }
            Scenario::Classic => {}
            Scenario::BootStorm => {
                if !matches!(self.clients, Clients::Pool(_)) {
                    bail!(
                        "--scenario boot-storm needs --clients N: the number of machines that boot"
                    );
                }
                if self.requests.is_some() {
                    bail!(
                        "--requests is for the classic scenario; a boot storm is --clients N machines"
                    );
                }
            }
        }
        Ok(())
    }

    /// The run these arguments ask for, every number within its bounds
    /// (the progress line off: [`super::run`] decides it).
    pub(super) fn options(&self) -> anyhow::Result<LoadOptions> {
        let sku = products::find_sku(&self.product).map_err(anyhow::Error::msg)?;
        let version = Version::from_wire(self.protocol, 0).context("protocol must be 4, 5 or 6")?;
        let mut opts = LoadOptions::new(version, sku);
        opts.concurrency = self.concurrency as usize;
        opts.duration = Duration::from_secs(self.duration.clamp(1, MAX_DURATION_SECS));
        opts.requests = self.requests;
        opts.clients = self.clients;
        opts.connection = self.connection;
        opts.requests_per_connection = self.requests_per_connection.max(1);
        opts.timeout = Duration::from_secs(self.timeout.clamp(1, 60));
        opts.sources = usize::from(self.sources);
        opts.scenario = self.scenario;
        opts.over = Duration::from_secs(self.over.unwrap_or(DEFAULT_OVER_SECS));
        Ok(opts)
    }
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
}
