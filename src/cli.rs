//! Command-line interface (clap derive).

use crate::config::{ConfigError, KEYS, Key, Kind, Layers, Reload, Settings};
use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// Log format [default: text; KMSD_LOG_FORMAT; for `serve` the key
    /// log_format, which needs a restart to change].
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::config::LogFormat;

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
    /// License packs and seats: what the operator owns, which machine holds
    /// which seat; without a subcommand, each pack's usage.
    Licenses(crate::licenses::commands::LicensesArgs),
    /// Load generator: many Windows-like clients against a host (loopback
    /// unless --allow-remote), every response verified; reports activations/s,
    /// errors by kind and latency percentiles. Stops by itself.
    Load(crate::client::load::LoadArgs),
    /// Grade a KMS host (or every host under _vlmcs._tcp.DOMAIN) against
    /// what a Windows KMS host does: RPC, protocols 4/5/6, refusals, ePIDs,
    /// intervals, counting (--count-check), latency. A report card per
    /// host; exit 0 all conform, 1 one does not or looks like an emulator,
    /// 2 one could not be reached.
    Probe(crate::probe::ProbeArgs),
    /// List the products (SKUs) the catalog knows.
    Products(ProductsArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the DNS SRV record that points clients at this host.
    DnsRecord(DnsRecordArgs),
    /// Store tools.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Print a shell completion script, for installs without the package:
    /// e.g. `kmsd completions bash > ~/.local/share/bash-completion/completions/kmsd`.
    Completions(CompletionsArgs),
    /// Write the man pages (kmsd.1 and one per subcommand) into a directory;
    /// `scripts/package` runs it, so the pages come from these definitions.
    #[command(hide = true)]
    Man(ManArgs),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Move a single host's store (its data dir) into a fleet's PostgreSQL
    /// database: pools, ePIDs, inventory, totals and the activation log.
    /// Safe to run again: only what is new is copied.
    Copy(StoreCopyArgs),
}

#[derive(Debug, Args)]
pub struct StoreCopyArgs {
    /// The host's data dir (the one `kmsd serve` used).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The fleet's database: postgres://USER[:PASS]@HOST[:PORT]/DB.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Add this host to a database that already holds a fleet (the fleet's
    /// ePIDs are kept).
    #[arg(long)]
    pub merge: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory the pages are written to (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
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

/// Which store a report reads: a host's data dir, or a fleet's database
/// (`kmsd status`, `kmsd clients`, `kmsd licenses`).
#[derive(Debug, Clone, Args)]
pub struct StoreAt {
    /// Data directory of the host (default: the default data dir).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// A fleet's database (postgres://USER[:PASS]@HOST[:PORT]/DB) instead of
    /// a data dir; `sqlite` (the default) reads the data dir.
    #[arg(
        long,
        value_name = "URL",
        env = "KMSD_STORE",
        default_value = "sqlite",
        hide_env_values = true,
        global = true
    )]
    pub store: crate::store::Backend,
}

impl StoreAt {
    /// The data dir named, or the default one.
    pub fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(crate::config::default_data_dir)
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub at: StoreAt,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClientsArgs {
    #[command(flatten)]
    pub at: StoreAt,
    /// Only one pool: windows, office2010 or office2013+.
    #[arg(long)]
    pub pool: Option<String>,
    /// Only machines seen since a date (YYYY-MM-DD) or for a while (e.g. 7d, 12h).
    #[arg(long)]
    pub since: Option<String>,
    /// Most rows printed.
    #[arg(long, default_value = "1000")]
    pub limit: usize,
    /// List the client machine IDs seen under more than one workstation
    /// name instead (an image cloned without `sysprep /generalize`: those
    /// machines count as one, and hold one license seat).
    #[arg(long)]
    pub duplicates: bool,
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

/// The flags of `kmsd serve` and `kmsd config check`: the file, and one
/// flag per configuration key.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys: see `kmsd config sample`). KMSD_*
    /// environment variables override it; flags override both.
    #[arg(long, value_name = "PATH", env = "KMSD_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub keys: KeyFlags,
}

impl ServeArgs {
    /// The flags given, as the top configuration layer. `--log-level` wins
    /// over `-v`/`-q`; the global `--log-format` is the `log_format` flag.
    pub fn to_settings(
        &self,
        verbose: u8,
        quiet: bool,
        log_format: Option<LogFormat>,
    ) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        for (k, values) in &self.keys.given {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            s.set_str(k.name, &values, &format!("--{}", k.flag()))?;
        }
        if s.get("log_level").is_none() {
            let level = match (quiet, verbose) {
                (true, _) => Some("warn"),
                (_, 0) => None,
                (_, 1) => Some("debug"),
                _ => Some("trace"),
            };
            if let Some(level) = level {
                s.set_str("log_level", &[level], "-v/-q")?;
            }
        }
        if let Some(f) = log_format {
            s.set_str("log_format", &[&f.to_string()], "--log-format")?;
        }
        Ok(s)
    }

    /// The configuration layers of `kmsd serve` these flags make.
    pub fn layers(
        &self,
        verbose: u8,
        quiet: bool,
        log_format: Option<LogFormat>,
    ) -> Result<Layers, ConfigError> {
        Ok(Layers::new(
            self.config.clone(),
            self.to_settings(verbose, quiet, log_format)?,
        ))
    }
}

/// Keys whose flag is a global option of `kmsd` rather than one of `serve`
/// (`--log-format` also sets the format of the other commands' logs).
pub const GLOBAL_KEY_FLAGS: &[&str] = &["log_format"];

/// One flag per configuration key, generated from the key table: `--NAME`
/// with `-` for `_` (`--max-clock-skew-minutes` for
/// `max_clock_skew_minutes`), taking values as the `KMSD_*` environment
/// writes them (lists comma-separated or repeated, tables `GROUP=VALUE`,
/// booleans `true|false`, `on|off`, or the bare flag for true). Older
/// spellings stay accepted, hidden (`--lenient-products`,
/// `--max-clock-skew`, `--idle-timeout`, `--epid`).
#[derive(Debug, Clone, Default)]
pub struct KeyFlags {
    /// The keys given, each with its values as written, in table order.
    pub given: Vec<(&'static Key, Vec<String>)>,
}

fn flag_keys() -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(|k| !GLOBAL_KEY_FLAGS.contains(&k.name))
}

impl clap::FromArgMatches for KeyFlags {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut out = Self::default();
        out.update_from_arg_matches(m)?;
        Ok(out)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        for k in flag_keys() {
            let mut values: Vec<String> = m
                .get_many::<String>(k.name)
                .map(|v| v.cloned().collect())
                .unwrap_or_default();
            for (flag, value) in k.switches {
                if m.get_flag(flag) {
                    values.push((*value).to_owned());
                }
            }
            if !values.is_empty() {
                self.given.retain(|(g, _)| g.name != k.name);
                self.given.push((k, values));
            }
        }
        Ok(())
    }
}

impl clap::Args for KeyFlags {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction};
        for k in flag_keys() {
            let help = format!(
                "{} [default: {}; {}{}]",
                crate::config::capitalized(k.doc),
                k.shown_default(),
                k.env_var(),
                if k.reload == Reload::Live {
                    "; SIGHUP applies it"
                } else {
                    ""
                }
            );
            let mut arg = Arg::new(k.name)
                .long(k.flag())
                .value_name(k.value_name)
                .help(help)
                .aliases(k.aliases.iter().copied());
            arg = match k.kind {
                Kind::List | Kind::Table => arg.action(ArgAction::Append),
                Kind::Bool => arg
                    .action(ArgAction::Set)
                    .num_args(0..=1)
                    .default_missing_value("true"),
                Kind::Str | Kind::Int => arg.action(ArgAction::Set),
            };
            cmd = cmd.arg(arg);
            for (flag, value) in k.switches {
                cmd = cmd.arg(
                    Arg::new(*flag)
                        .long(*flag)
                        .action(ArgAction::SetTrue)
                        .hide(true)
                        .conflicts_with(k.name)
                        .help(format!("Same as --{} {value}", k.flag())),
                );
            }
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// Host, optionally with port (default port 1688). IPv6 in brackets.
    #[arg(default_value = "127.0.0.1:1688")]
    pub host: String,
    /// Find the host the way Windows does instead: the _vlmcs._tcp.DOMAIN
    /// SRV records, lowest priority first, weighted random within one, the
    /// next host when one does not answer.
    #[arg(long, value_name = "DOMAIN", conflicts_with = "host")]
    pub discover: Option<String>,
    /// DNS server for --discover (default: the first nameserver of
    /// /etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT", requires = "discover", value_parser = crate::dns::parse_server)]
    pub dns_server: Option<std::net::SocketAddr>,
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
