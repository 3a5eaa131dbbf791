//! The `kmsd` binary: parse the command line, set up logging, dispatch.

use anyhow::{Context, Result};
use clap::Parser;
use kmsd::app::{self, App, Reloaded};
use kmsd::cli::{Cli, Command, ConfigCommand, LogFormat, ServeArgs};
use kmsd::commands;
use kmsd::config::ServeConfig;
use kmsd::logging::{self, LogSink};
use kmsd::settings::{self, Settings};

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
            let (reload, _flush_on_exit) = logging::init(&level, json, LogSink::Background);
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
        Command::DnsRecord(args) => commands::dns_record(args),
        other => {
            let level = match (cli.quiet, cli.verbose) {
                (true, _) => "warn",
                (_, 0) => "info",
                (_, 1) => "debug",
                _ => "trace",
            };
            let json = cli.log_format == Some(LogFormat::Json);
            let _ = logging::init(level, json, LogSink::Stderr);
            match other {
                Command::Activate(args) => rt()?.block_on(commands::activate(args)),
                Command::Load(args) => rt()?.block_on(commands::load(args)),
                Command::Products(args) => commands::products(args),
                Command::Status(args) => commands::status(args),
                Command::Clients(args) => commands::clients(args),
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

async fn serve(cfg: ServeConfig, layers: Layers, reload: app::LogReload) -> Result<()> {
    let opts = app::Options {
        log_reload: Some(reload),
        ..app::Options::default()
    };
    let app = App::start(cfg, opts).await?;
    let reread = move || {
        layers
            .resolve()
            .map(|(config, log_level, _)| Reloaded { config, log_level })
            .map_err(|e| e.to_string())
    };
    app.run(reread).await?;
    Ok(())
}
