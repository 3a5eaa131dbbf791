//! The `kmsd` binary: parse the command line, set up logging, dispatch.

use anyhow::{Context, Result};
use clap::Parser;
use kmsd::app::{self, App};
use kmsd::cli::{Cli, Command, ConfigCommand, LogFormat, StoreCommand};
use kmsd::commands;
use kmsd::config::{self, Layers, ServeConfig};
use kmsd::logging::{self, LogSink};

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
            let layers = args.layers(cli.verbose, cli.quiet, cli.log_format)?;
            let config::Resolved { cfg, warnings } = layers.resolve()?;
            let json = cfg.log_format == LogFormat::Json;
            let (reload, _flush_on_exit) = logging::init(&cfg.log_level, json, LogSink::Background);
            for w in warnings {
                tracing::warn!("{w}");
            }
            rt()?.block_on(serve(cfg, layers, reload))
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let r = args
                .layers(cli.verbose, cli.quiet, cli.log_format)?
                .resolve()?;
            for w in r.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", config::effective_toml(&r.cfg));
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Config(ConfigCommand::Sample) => {
            print!("{}", config::sample_toml());
            Ok(())
        }
        Command::Config(ConfigCommand::Keys) => {
            print!("{}", config::markdown_table());
            Ok(())
        }
        Command::DnsRecord(args) => commands::dns_record(args),
        Command::Completions(args) => {
            use std::io::Write;
            let script = kmsd::docs::completions(args.shell);
            match std::io::stdout().lock().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Man(args) => {
            for page in kmsd::docs::write_man_pages(&args.dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
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
                Command::Probe(args) => rt()?.block_on(commands::probe(args)),
                Command::Products(args) => commands::products(args),
                Command::Status(args) => rt()?.block_on(commands::status(args)),
                Command::Clients(args) => rt()?.block_on(commands::clients(args)),
                Command::Licenses(args) => rt()?.block_on(kmsd::licenses::commands::run(args)),
                Command::Store(StoreCommand::Copy(args)) => {
                    rt()?.block_on(commands::store_copy(args))
                }
                Command::Serve(_)
                | Command::Config(_)
                | Command::DnsRecord(_)
                | Command::Completions(_)
                | Command::Man(_) => Ok(()),
            }
        }
    }
}

/// `kmsd serve`: start, then serve until a signal; SIGHUP reads the file
/// and the environment again.
async fn serve(cfg: ServeConfig, layers: Layers, reload: app::LogReload) -> Result<()> {
    let opts = app::Options {
        log_reload: Some(reload),
        ..app::Options::default()
    };
    let app = App::start(cfg, opts).await?;
    let reread = move || layers.resolve().map(|r| r.cfg).map_err(|e| e.to_string());
    app.run(reread).await?;
    Ok(())
}
