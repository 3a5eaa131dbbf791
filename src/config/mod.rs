//! The host's configuration: [`ServeConfig`], typed, with defaults and one
//! validation pass that names the offending key; the one table of keys
//! ([`keys::KEYS`]) every layer, flag and document comes from; and the
//! layers themselves ([`Layers`]: file < `KMSD_*` environment < flags).
//!
//! * [`keys`]: the key table and the reload classification
//!   ([`restart_needed`]).
//! * `value`: how a key's value is written ([`Kind`]) and read into a field.
//! * `render`: the effective TOML, the Markdown reference, the sample file.
//! * [`layer`]: [`Settings`] (one layer) and [`Layers`] (all of `serve`'s).

pub mod keys;
pub mod layer;
mod render;
mod value;

pub use keys::{KEYS, Key, Reload, changed, restart_needed};
pub use layer::{CONFIG_ENV, Layers, Resolved, Settings};
pub(crate) use render::capitalized;
pub use render::{effective_toml, markdown_table, sample_toml};
pub use value::Kind;

use crate::protocol::kms::{INTERVAL_RANGE, products};
use crate::protocol::rpc::pdu::{DEFAULT_MAX_PDU_LEN, HEADER_LEN, MAX_PDU_LEN};
use crate::server::access::AccessList;
use crate::store::CountMode;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The KMS port.
pub const DEFAULT_PORT: u16 = 1688;
/// vlmcsd's default HwId, which clients have seen for years.
pub const DEFAULT_HWID: [u8; 8] = [0x3A, 0x1C, 0x04, 0x96, 0x00, 0xB6, 0x00, 0x76];
/// Windows Server 2025: the newest host build, and the one the newest
/// Windows CSVLK installs on.
pub const DEFAULT_HOST_BUILD: u32 = 26100;

/// Everything `kmsd serve` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// Addresses to listen on (default: `[::]:1688` and `0.0.0.0:1688`).
    pub listen: Vec<SocketAddr>,
    pub data_dir: PathBuf,
    /// Negotiate NDR64 (hosts from Windows 8 / Server 2012 on do).
    pub ndr64: bool,
    /// Answer bind-time feature negotiation.
    pub btfn: bool,
    /// Host OS build the ePIDs advertise.
    pub host_build: u32,
    /// Host locale id the ePIDs advertise.
    pub lcid: u32,
    /// Host hardware ID (protocol 6 responses).
    pub hwid: [u8; 8],
    /// ePID per group, overriding the generated one.
    pub epids: BTreeMap<String, String>,
    /// The ePID groups (installed host keys) served; the rest get 0xC004F042.
    pub served_groups: Vec<String>,
    /// Refuse KMS counted IDs the catalog does not know (else: serve them as
    /// Windows clients).
    pub strict_products: bool,
    /// Refuse clients whose clock is further than this from the host's.
    pub max_clock_skew: Option<Duration>,
    /// Minutes between retries while a client is not activated.
    pub activation_interval: u32,
    /// Minutes between renewals once activated.
    pub renewal_interval: u32,
    pub count_mode: CountMode,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one address.
    pub max_connections_per_ip: usize,
    /// Connections over the per-address limit that wait for a slot (at
    /// most `read_timeout`) instead of being closed.
    pub max_queued_per_ip: usize,
    /// Most requests one connection may make.
    pub max_requests_per_connection: u32,
    /// Time allowed for one whole PDU to arrive once the host waits for it.
    pub read_timeout: Duration,
    /// Time a connection may sit idle between PDUs.
    pub idle_timeout: Duration,
    /// Largest PDU accepted.
    pub max_pdu_len: usize,
    /// Activation records kept (oldest pruned).
    pub keep_records: u64,
    /// Days a license seat is kept without an answered request.
    pub license_reclaim_days: u32,
    /// Time allowed for in-flight exchanges on shutdown.
    pub shutdown_grace: Duration,
    /// Who may connect (deny wins; default: loopback and private networks).
    pub access: AccessList,
    /// Where the state lives: the SQLite file in the data dir, or a fleet's
    /// PostgreSQL database.
    pub store: crate::store::Backend,
    /// PostgreSQL: most time a request waits for its commit before it is
    /// answered E_FAIL (and not counted).
    pub store_timeout: Duration,
    /// PostgreSQL: the isolation of the batch transactions.
    pub store_isolation: crate::store::Isolation,
    /// How long a store write waits for a locked database before failing.
    pub store_busy_timeout: Duration,
    /// Whether the embedded store's commit waits for the disk.
    pub durability: crate::store::Durability,
    /// The HTTP admin listener (metrics, health, status page); off when None.
    pub http: Option<SocketAddr>,
    /// Most connections the admin listener holds at once.
    pub http_max_connections: usize,
    /// The log filter (a level or a `tracing` filter); `RUST_LOG` overrides it.
    pub log_level: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// SRV publication by dynamic DNS update (the `dns_*` keys).
    pub dns: crate::dns::DnsSettings,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("{s:?}: expected text or json")),
        }
    }
}

/// The one home of every key's default: the README table, the sample file
/// and `--help` show these values (a key's `default_text` puts in words a
/// default that is no fixed value, such as the data directory).
impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                SocketAddr::from(([0u16; 8], DEFAULT_PORT)),
                SocketAddr::from(([0u8; 4], DEFAULT_PORT)),
            ],
            data_dir: default_data_dir(),
            ndr64: true,
            btfn: true,
            host_build: DEFAULT_HOST_BUILD,
            lcid: 1033,
            hwid: DEFAULT_HWID,
            epids: BTreeMap::new(),
            served_groups: products::epid_groups()
                .iter()
                .map(|g| g.name.to_owned())
                .collect(),
            strict_products: true,
            max_clock_skew: None,
            activation_interval: 120,
            renewal_interval: 10080,
            count_mode: CountMode::Real,
            max_connections: 4096,
            max_connections_per_ip: 64,
            max_queued_per_ip: 256,
            max_requests_per_connection: 64,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_pdu_len: DEFAULT_MAX_PDU_LEN,
            keep_records: 1_000_000,
            license_reclaim_days: crate::licenses::DEFAULT_RECLAIM_DAYS,
            shutdown_grace: Duration::from_secs(10),
            access: AccessList::default(),
            store: crate::store::Backend::Sqlite,
            store_timeout: Duration::from_secs(5),
            store_isolation: crate::store::Isolation::default(),
            store_busy_timeout: Duration::from_secs(5),
            durability: crate::store::Durability::Full,
            http: None,
            http_max_connections: 32,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            dns: crate::dns::DnsSettings::default(),
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{key}`: {problem}")]
pub struct ConfigError {
    pub key: &'static str,
    pub problem: String,
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

impl ServeConfig {
    /// Checks every value; the first problem is returned with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(bad("listen", "at least one address is needed"));
        }
        self.check_build()?;
        if self.durability != crate::store::Durability::Full
            && self.store != crate::store::Backend::Sqlite
        {
            return Err(bad(
                "durability",
                "\"os\" applies to the embedded SQLite store; a fleet's commits are as durable as its PostgreSQL makes them (synchronous_commit), and a memory store keeps nothing",
            ));
        }
        if !(1..=0xFFFF).contains(&self.lcid) {
            return Err(bad("lcid", "must be 1..=65535"));
        }
        for (key, v) in [
            ("activation_interval", self.activation_interval),
            ("renewal_interval", self.renewal_interval),
        ] {
            if !INTERVAL_RANGE.contains(&v) {
                let (lo, hi) = (INTERVAL_RANGE.start(), INTERVAL_RANGE.end());
                return Err(bad(key, format!("{v} minutes is outside {lo}..={hi}")));
            }
        }
        if !(1..=crate::licenses::DEFAULT_RECLAIM_DAYS).contains(&self.license_reclaim_days) {
            return Err(bad(
                "license_reclaim_days",
                format!(
                    "{} is outside 1..={} (a client's activation lasts 180 days)",
                    self.license_reclaim_days,
                    crate::licenses::DEFAULT_RECLAIM_DAYS
                ),
            ));
        }
        self.check_groups()?;
        self.check_limits()?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| bad("log_level", format!("{:?}: {e}", self.log_level)))?;
        self.dns
            .validate()
            .map_err(|(key, problem)| bad(key, problem))?;
        Ok(())
    }

    /// `host_build` is a known build, and `ndr64` what hosts of it did.
    fn check_build(&self) -> Result<(), ConfigError> {
        let build = products::win_build(self.host_build).ok_or_else(|| {
            bad(
                "host_build",
                format!(
                    "{} is not a known Windows build (known: {})",
                    self.host_build,
                    products::win_builds()
                        .iter()
                        .filter(|b| b.use_for_epid)
                        .map(|b| b.build.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        if self.ndr64 && !build.uses_ndr64 {
            return Err(bad(
                "ndr64",
                format!(
                    "build {} hosts do not negotiate NDR64; turn ndr64 off or pick a newer host_build",
                    self.host_build
                ),
            ));
        }
        Ok(())
    }

    /// The one check of ePID group names (the layers keep unknown names as
    /// written, for this to name them), and of the fixed ePIDs.
    fn check_groups(&self) -> Result<(), ConfigError> {
        let unknown = |g: &&String| products::epid_group(g).is_none();
        let unknown_group = (self
            .served_groups
            .iter()
            .find(unknown)
            .map(|g| ("serve", g)))
        .or_else(|| self.epids.keys().find(unknown).map(|g| ("epids", g)));
        if let Some((key, g)) = unknown_group {
            return Err(bad(
                key,
                format!("unknown ePID group {g:?} (known: {})", group_names()),
            ));
        }
        for (g, e) in &self.epids {
            crate::protocol::kms::Epid::new(e)
                .map_err(|err| bad("epids", format!("{g}: {err}")))?;
        }
        Ok(())
    }

    /// The PDU bound, the connection limits and the timeouts.
    fn check_limits(&self) -> Result<(), ConfigError> {
        if !(HEADER_LEN + 284..=MAX_PDU_LEN).contains(&self.max_pdu_len) {
            return Err(bad(
                "max_pdu_len",
                format!(
                    "{} is outside {}..={MAX_PDU_LEN}",
                    self.max_pdu_len,
                    HEADER_LEN + 284
                ),
            ));
        }
        for (key, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("http_max_connections", self.http_max_connections),
            (
                "max_requests_per_connection",
                self.max_requests_per_connection as usize,
            ),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1"));
            }
        }
        for (key, d) in [
            ("read_timeout_secs", self.read_timeout),
            ("idle_timeout_secs", self.idle_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return Err(bad(key, "must be between 1 ms and 1 hour"));
            }
        }
        Ok(())
    }
}

/// The ePID group names, comma-separated.
pub fn group_names() -> String {
    products::epid_groups()
        .iter()
        .map(|g| g.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$STATE_DIRECTORY` (systemd), else `/var/lib/kmsd` for root, else
/// `$XDG_STATE_HOME/kmsd` or `~/.local/state/kmsd`, else `./kmsd-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if std::env::var_os("USER").is_some_and(|u| u == "root")
        || std::env::var_os("HOME").is_some_and(|h| h == "/root")
    {
        return PathBuf::from("/var/lib/kmsd");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kmsd");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/state/kmsd");
    }
    PathBuf::from("kmsd-data")
}

/// Parses a HwId written as 16 hex digits.
pub fn parse_hwid(s: &str) -> Result<[u8; 8], String> {
    let s = s.trim();
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("HwId {s:?}: expected 16 hex digits"));
    }
    crate::protocol::hex::decode(s)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .ok_or_else(|| format!("HwId {s:?}: expected 16 hex digits"))
}

/// A HwId as 16 hex digits (what [`parse_hwid`] reads).
pub fn format_hwid(h: &[u8; 8]) -> String {
    crate::protocol::hex::upper(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::field_reassign_with_default)]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        ServeConfig::default().validate().unwrap();
        let mut c = ServeConfig::default();
        c.activation_interval = 5;
        assert_eq!(c.validate().unwrap_err().key, "activation_interval");
        let mut c = ServeConfig::default();
        c.host_build = 7601;
        assert_eq!(c.validate().unwrap_err().key, "ndr64");
        c.ndr64 = false;
        c.validate().unwrap();
        let mut c = ServeConfig::default();
        c.served_groups.push("Office1997".into());
        assert_eq!(c.validate().unwrap_err().key, "serve");
        let mut c = ServeConfig::default();
        c.epids.insert("Office1997".into(), String::new());
        assert_eq!(c.validate().unwrap_err().key, "epids");
        let mut c = ServeConfig::default();
        c.log_level = "info,[".into();
        assert_eq!(c.validate().unwrap_err().key, "log_level");
        let mut c = ServeConfig::default();
        c.durability = crate::store::Durability::Os;
        c.validate().unwrap();
        c.store = crate::store::Backend::Postgres("postgres://kmsd@127.0.0.1/fleet".into());
        assert_eq!(c.validate().unwrap_err().key, "durability");
        c.store = crate::store::Backend::Memory;
        assert_eq!(c.validate().unwrap_err().key, "durability");
        let mut c = ServeConfig::default();
        c.max_pdu_len = 100;
        assert_eq!(c.validate().unwrap_err().key, "max_pdu_len");
    }

    #[test]
    fn hwid_parses_sixteen_hex_digits() {
        assert_eq!(parse_hwid("3A1C049600B60076"), Ok(DEFAULT_HWID));
        assert_eq!(format_hwid(&DEFAULT_HWID), "3A1C049600B60076");
        assert!(parse_hwid("3A1C049600B6007").is_err());
        assert!(parse_hwid("3A1C049600B6007G").is_err());
    }
}
