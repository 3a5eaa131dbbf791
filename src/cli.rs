//! Command-line interface (clap derive).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "kmsd",
    version,
    about = "A KMS host for labs, test networks and interoperability work"
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output (warnings and errors only).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format (default text; config key log_format).
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the KMS host.
    Serve(Box<ServeArgs>),
    /// Perform activations against a host, like a Windows client, verifying
    /// every response.
    Activate(ActivateArgs),
    /// Show a host's state, like `slmgr /dlv` on a Windows host: pools and
    /// thresholds, ePIDs, listen addresses, requests by result.
    Status(StatusArgs),
    /// List the client inventory (every machine that asked), newest first.
    Clients(ClientsArgs),
    /// Load generator: many Windows-like clients against a host (loopback
    /// unless --allow-remote), every response verified; reports activations/s,
    /// errors by kind and latency percentiles. Stops by itself.
    Load(crate::client::load::LoadArgs),
    /// List the products (SKUs) the catalog knows.
    Products(ProductsArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the DNS SRV record that points clients at this host.
    DnsRecord(DnsRecordArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file, KMSD_* environment, flags) and print
    /// the effective result as TOML.
    Check(Box<ServeArgs>),
    /// Print a sample kmsd.toml with every key, commented.
    Sample,
    /// Print the table of configuration keys (Markdown).
    Keys,
}

#[derive(Debug, Args)]
pub struct DnsRecordArgs {
    /// DNS domain the clients search, e.g. lab.example.com.
    #[arg(long)]
    pub domain: String,
    /// Host name clients should connect to (default: this machine's name).
    #[arg(long)]
    pub target: Option<String>,
    /// KMS port.
    #[arg(long, default_value = "1688")]
    pub port: u16,
    /// Record TTL in seconds.
    #[arg(long, default_value = "3600")]
    pub ttl: u32,
    /// SRV priority.
    #[arg(long, default_value = "0")]
    pub priority: u16,
    /// SRV weight.
    #[arg(long, default_value = "0")]
    pub weight: u16,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Data directory of the host (default: the default data dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClientsArgs {
    /// Data directory of the host (default: the default data dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Only one pool: windows, office2010 or office2013+.
    #[arg(long)]
    pub pool: Option<String>,
    /// Only machines seen since a date (YYYY-MM-DD) or for a while (e.g. 7d, 12h).
    #[arg(long)]
    pub since: Option<String>,
    /// Most rows printed.
    #[arg(long, default_value = "1000")]
    pub limit: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn on(self) -> bool {
        self == Self::On
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys: see `kmsd config sample`). KMSD_*
    /// environment variables override it; flags override both.
    #[arg(long, value_name = "PATH", env = "KMSD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable). Default: [::]:1688 and 0.0.0.0:1688.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Data directory (database with pools, ePIDs, inventory). Created if missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `real` (count distinct clients, as Microsoft hosts do) or `fixed:N`
    /// (always answer N, remember nothing: an emulator's behaviour).
    #[arg(long, value_name = "MODE")]
    pub count_mode: Option<String>,
    /// Serve only these ePID groups (host keys), repeatable; default all.
    #[arg(long = "serve", value_name = "GROUP")]
    pub served_groups: Vec<String>,
    /// Serve unknown KMS counted IDs as Windows clients instead of refusing them.
    #[arg(long)]
    pub lenient_products: bool,
    /// Refuse clients whose clock is off by more than this many minutes (0xC004F06C).
    #[arg(long, value_name = "MINUTES")]
    pub max_clock_skew: Option<u64>,
    /// Fix the ePID of a group, e.g. Windows=03612-00206-556-123727-03-1033-17763.0000-2972018.
    #[arg(long = "epid", value_name = "GROUP=EPID")]
    pub epids: Vec<String>,
    /// Host hardware ID sent to protocol 6 clients (16 hex digits).
    #[arg(long, value_name = "16HEX")]
    pub hwid: Option<String>,
    /// Host OS build the generated ePIDs name.
    #[arg(long)]
    pub host_build: Option<u32>,
    /// Host locale id the generated ePIDs name.
    #[arg(long)]
    pub lcid: Option<u32>,
    /// Negotiate NDR64.
    #[arg(long, value_enum)]
    pub ndr64: Option<OnOff>,
    /// Answer bind-time feature negotiation.
    #[arg(long, value_enum)]
    pub btfn: Option<OnOff>,
    /// Retry interval for clients not yet activated, minutes (15..=43200).
    #[arg(long)]
    pub activation_interval: Option<u32>,
    /// Renewal interval for activated clients, minutes (15..=43200).
    #[arg(long)]
    pub renewal_interval: Option<u32>,
    /// Most connections open at once.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one address.
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// Seconds a connection may stay idle.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Also accept clients from this address block (repeatable), e.g.
    /// 203.0.113.0/24 or 0.0.0.0/0. Default: loopback and private networks only.
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<crate::server::access::Cidr>,
    /// Refuse clients from this address block (repeatable; wins over --allow).
    #[arg(long, value_name = "CIDR")]
    pub deny: Vec<crate::server::access::Cidr>,
    /// Activation records kept in the database (oldest pruned).
    #[arg(long)]
    pub keep_records: Option<u64>,
    /// Serve the admin API (metrics, health, status page) here, e.g. 127.0.0.1:9688.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<String>,
}

impl ServeArgs {
    /// The flags given, as the top configuration layer.
    pub fn to_settings(
        &self,
        verbose: u8,
        quiet: bool,
        log_format: Option<LogFormat>,
    ) -> Result<crate::settings::Settings, crate::config::ConfigError> {
        let mut epids = std::collections::BTreeMap::new();
        for e in &self.epids {
            let (g, v) = e
                .split_once('=')
                .ok_or_else(|| crate::config::ConfigError {
                    key: "epids",
                    problem: format!("--epid {e:?}: expected GROUP=EPID"),
                })?;
            epids.insert(g.to_owned(), v.to_owned());
        }
        let strings = |v: &[crate::server::access::Cidr]| {
            v.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        Ok(crate::settings::Settings {
            listen: (!self.listen.is_empty())
                .then(|| self.listen.iter().map(ToString::to_string).collect()),
            data_dir: self.data_dir.clone(),
            count_mode: self.count_mode.clone(),
            serve: (!self.served_groups.is_empty()).then(|| self.served_groups.clone()),
            strict_products: self.lenient_products.then_some(false),
            max_clock_skew_minutes: self.max_clock_skew,
            epids: (!epids.is_empty()).then_some(epids),
            hwid: self.hwid.clone(),
            host_build: self.host_build,
            lcid: self.lcid,
            ndr64: self.ndr64.map(OnOff::on),
            btfn: self.btfn.map(OnOff::on),
            activation_interval: self.activation_interval,
            renewal_interval: self.renewal_interval,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            idle_timeout_secs: self.idle_timeout,
            keep_records: self.keep_records,
            allow: (!self.allow.is_empty()).then(|| strings(&self.allow)),
            deny: (!self.deny.is_empty()).then(|| strings(&self.deny)),
            http: self.http.clone(),
            log_level: match (quiet, verbose) {
                (true, _) => Some("warn".into()),
                (_, 0) => None,
                (_, 1) => Some("debug".into()),
                _ => Some("trace".into()),
            },
            log_format: log_format.map(|f| match f {
                LogFormat::Text => "text".into(),
                LogFormat::Json => "json".into(),
            }),
            ..Default::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// Host, optionally with port (default port 1688). IPv6 in brackets.
    #[arg(default_value = "127.0.0.1:1688")]
    pub host: String,
    /// KMS protocol version (default: the product's).
    #[arg(long, short = 'p', value_parser = clap::value_parser!(u16).range(4..=6))]
    pub protocol: Option<u16>,
    /// Product: a SKU name (or unique part of one) or SKU GUID; see `kmsd products`.
    #[arg(long, conflicts_with = "sku")]
    pub product: Option<String>,
    /// SKU GUID.
    #[arg(long)]
    pub sku: Option<crate::protocol::guid::Guid>,
    /// Client machine ID (default: a fresh random one per request).
    #[arg(long)]
    pub cmid: Option<crate::protocol::guid::Guid>,
    /// Workstation name sent.
    #[arg(long, default_value = "kmsd-client")]
    pub machine_name: String,
    /// Offer NDR64.
    #[arg(long, value_enum, default_value = "on")]
    pub ndr64: OnOff,
    /// Offer bind-time feature negotiation.
    #[arg(long, value_enum, default_value = "on")]
    pub btfn: OnOff,
    /// Requests on the one connection.
    #[arg(long, short = 'n', default_value = "1", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub requests: u32,
    /// Override the threshold sent (N_Policy).
    #[arg(long)]
    pub n_policy: Option<u32>,
    /// Seconds allowed per step.
    #[arg(long, default_value = "10")]
    pub timeout: u64,
    /// Print the responses as JSON lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProductsArgs {
    /// Only SKUs whose name contains this (case-insensitive).
    pub filter: Option<String>,
}
