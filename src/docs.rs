//! Man pages and shell completions, generated from the clap definitions in
//! [`crate::cli`] so they cannot drift from the binary: `kmsd man DIR`
//! (hidden; `scripts/package` runs it) and `kmsd completions SHELL`.

use crate::cli::Cli;
use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The manual the pages belong to (the centre of the title line).
const MANUAL: &str = "kmsd manual";

/// The command tree as the man pages and completions see it: built (so every
/// subcommand knows its full name, `kmsd-config-check`), without the
/// `help` subcommand.
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes `kmsd.1` and one page per visible subcommand (`kmsd-serve.1`,
/// `kmsd-config-check.1`, ...) into `dir`; returns the files written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let root = command();
    let mut pages = Vec::new();
    collect(&root, &mut pages);
    let mut written = Vec::new();
    for (i, cmd) in pages.into_iter().enumerate() {
        let name = cmd.get_display_name().unwrap_or("kmsd").to_owned();
        let text = if i == 0 {
            main_page(cmd)?
        } else {
            sub_page(cmd)?
        };
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `cmd` then its visible subcommands, depth first.
fn collect(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
    out.push(cmd.clone());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, out);
    }
}

fn man(cmd: clap::Command) -> Man {
    Man::new(cmd)
        .manual(MANUAL)
        .source(format!("kmsd {}", env!("CARGO_PKG_VERSION")))
}

/// `kmsd.1`: the generated sections, then files, environment and the
/// subcommands' pages.
fn main_page(cmd: clap::Command) -> Result<Vec<u8>> {
    let subs: Vec<String> = sub_names(&cmd);
    let m = man(cmd);
    let mut out = Vec::new();
    m.render_title(&mut out)?;
    m.render_name_section(&mut out)?;
    m.render_synopsis_section(&mut out)?;
    m.render_description_section(&mut out)?;
    m.render_options_section(&mut out)?;
    m.render_subcommands_section(&mut out)?;
    let mut r = Roff::new();
    r.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "/etc/kmsd/kmsd.toml",
            "The configuration file the packaged unit passes with --config; \
             every key is listed, commented out, with its default (kmsd config sample).",
        ),
        (
            "/var/lib/kmsd/kmsd.sqlite3",
            "The database: count pools, ePIDs, the client inventory and the activation log. \
             Under systemd the unit's StateDirectory; otherwise /var/lib/kmsd for root, \
             else $XDG_STATE_HOME/kmsd or ~/.local/state/kmsd.",
        ),
        (
            "/lib/systemd/system/kmsd.service",
            "The hardened unit: a dynamic user, a state directory, no new privileges. \
             systemctl reload kmsd rereads the configuration.",
        ),
    ] {
        r.control("TP", [] as [&str; 0]);
        r.text([bold(path)]);
        r.text([roman(what)]);
    }
    r.control("SH", ["ENVIRONMENT"]);
    for (var, what) in [
        (
            "KMSD_CONFIG",
            "The configuration file, when --config is not given.",
        ),
        (
            "KMSD_<KEY>",
            "Any configuration key (KMSD_LISTEN, KMSD_DATA_DIR, ...): overrides the file; \
             flags override both. kmsd config keys lists them.",
        ),
        (
            "STATE_DIRECTORY",
            "Set by systemd: the default data directory.",
        ),
        (
            "RUST_LOG",
            "A tracing filter that overrides -v, -q and log_level.",
        ),
    ] {
        r.control("TP", [] as [&str; 0]);
        r.text([bold(var)]);
        r.text([roman(what)]);
    }
    r.control("SH", ["SEE ALSO"]);
    let mut refs = Vec::new();
    for (i, s) in subs.iter().enumerate() {
        if i > 0 {
            refs.push(roman(", "));
        }
        refs.push(bold(s.as_str()));
        refs.push(roman("(1)"));
    }
    r.text(refs);
    out.write_all(r.render().as_bytes())?;
    m.render_version_section(&mut out)?;
    Ok(out)
}

/// A subcommand's page: everything clap knows, and a pointer back.
fn sub_page(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    man(cmd).render(&mut out)?;
    let mut r = Roff::new();
    r.control("SH", ["SEE ALSO"]);
    r.text([bold("kmsd"), roman("(1)"), roman(", "), italic("README.md")]);
    out.write_all(r.render().as_bytes())?;
    Ok(out)
}

/// The page names of every visible subcommand, at any depth.
fn sub_names(cmd: &clap::Command) -> Vec<String> {
    let mut all = Vec::new();
    collect(cmd, &mut all);
    all.iter()
        .skip(1)
        .filter_map(|c| c.get_display_name().map(str::to_owned))
        .collect()
}

/// `kmsd completions SHELL`: the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "kmsd", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "kmsd.1",
            "kmsd-serve.1",
            "kmsd-load.1",
            "kmsd-config-check.1",
            "kmsd-completions.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("-man") || n.contains("help"))
        );
        let main = std::fs::read_to_string(dir.path().join("kmsd.1")).unwrap();
        assert!(main.starts_with(".ie \\n(.g .ds Aq") || main.contains(".TH kmsd 1"));
        assert!(main.contains("FILES") && main.contains("/etc/kmsd/kmsd.toml"));
        assert!(main.contains("kmsd\\-serve"), "SEE ALSO names the pages");
        // The serve page carries the flags generated from the key table.
        let serve = std::fs::read_to_string(dir.path().join("kmsd-serve.1")).unwrap();
        assert!(serve.contains("max\\-clock\\-skew\\-minutes"), "{serve}");
    }

    #[test]
    fn completions_know_the_subcommands_and_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let text = String::from_utf8(completions(shell)).unwrap();
            for word in [
                "activate",
                "dns-record",
                "max-clock-skew-minutes",
                "boot-storm",
            ] {
                assert!(text.contains(word), "{shell}: {word}");
            }
        }
    }
}
