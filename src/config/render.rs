//! The key table written out: the effective configuration as TOML (`kmsd
//! config check`), the Markdown reference the README embeds (`kmsd config
//! keys`) and the sample file shipped as `packaging/kmsd.toml` (`kmsd
//! config sample`). Tests keep the README and the sample equal to these.

use super::ServeConfig;
use super::keys::{KEYS, Reload};
use super::value::Kind;
use toml::Value;

/// The effective configuration as TOML (what `kmsd config check` prints),
/// every key in table order; it reads back to the same configuration.
pub fn effective_toml(cfg: &ServeConfig) -> String {
    let mut out = String::new();
    let mut tables = String::new();
    for k in KEYS {
        match k.get(cfg) {
            Value::Table(t) => {
                tables.push_str(&format!("\n[{}]\n", k.name));
                for (name, v) in &t {
                    let bare = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        tables.push_str(&format!("{name} = {v}\n"));
                    } else {
                        tables.push_str(&format!("{} = {v}\n", Value::String(name.clone())));
                    }
                }
            }
            v => out.push_str(&format!("{} = {v}\n", k.name)),
        }
    }
    out + &tables
}

/// The configuration reference as a Markdown table (the README embeds it;
/// a test keeps the two equal). Regenerate with `kmsd config keys`.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | default | reload | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        let default = if k.default_is_literal() {
            format!("`{}`", k.shown_default())
        } else {
            k.shown_default().into_owned()
        };
        out.push_str(&format!(
            "| `{}` (`{}`, `--{}`) | {} | {} | {} |\n",
            k.name,
            k.env_var(),
            k.flag(),
            default,
            match k.reload {
                Reload::Live => "SIGHUP",
                Reload::Restart => "restart",
            },
            k.doc
        ));
    }
    out
}

/// The sample configuration file (`kmsd config sample`; shipped as
/// `packaging/kmsd.toml`, which a test keeps equal to it): every key,
/// commented out, with what it does.
pub fn sample_toml() -> String {
    let mut out = String::from(SAMPLE_HEADER);
    let mut tables = String::new();
    for k in KEYS {
        let marker = match k.reload {
            Reload::Live => "[reload] ",
            Reload::Restart => "",
        };
        let mut about = format!("{marker}{}.", capitalized(k.doc));
        if !k.note.is_empty() {
            about = format!("{about} {}", k.note);
        }
        let mut block = String::from("\n");
        for line in wrap(&about, 76) {
            block.push_str(&format!("# {line}\n"));
        }
        if k.kind == Kind::Table {
            block.push_str(&format!("# [{}]\n", k.name));
            for entry in k.sample.lines() {
                block.push_str(&format!("# {entry}\n"));
            }
            tables.push_str(&block);
            continue;
        }
        let value = if !k.sample.is_empty() {
            k.sample.to_owned()
        } else if k.default_is_literal() {
            k.shown_default().into_owned()
        } else {
            k.get(&ServeConfig::default()).to_string()
        };
        block.push_str(&format!("# {} = {value}\n", k.name));
        out.push_str(&block);
    }
    out + &tables
}

const SAMPLE_HEADER: &str = "\
# kmsd.toml: configuration for `kmsd serve --config /etc/kmsd/kmsd.toml`.
# Written by `kmsd config sample` from the same table as every layer.
#
# Every key is optional; the values shown (commented out) are the defaults
# unless the comment says otherwise. KMSD_<KEY> environment variables
# override this file (lists comma-separated, epids as GROUP=EPID pairs), and
# command-line flags override both: each key has a flag of its name with
# dashes (max_clock_skew_minutes: --max-clock-skew-minutes).
# `kmsd config check --config FILE` validates a file and prints the result.
# Keys marked [reload] take effect on SIGHUP; the others need a restart.
";

/// "refuse ..." → "Refuse ..."; "ePID ..." stays.
pub(crate) fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match (c.next(), c.next()) {
        (Some(a), Some(b)) if !b.is_uppercase() => a.to_uppercase().chain([b]).chain(c).collect(),
        _ => s.to_owned(),
    }
}

/// Words of `text` in lines of at most `width` characters (a longer word
/// gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_literal_defaults_are_the_real_ones() {
        let cfg = ServeConfig::default();
        let mut literal = 0;
        for k in KEYS.iter().filter(|k| k.default_is_literal()) {
            let doc: toml::Table = format!("x = {}", k.shown_default()).parse().unwrap();
            assert_eq!(doc["x"], k.get(&cfg), "{}", k.name);
            literal += 1;
        }
        assert!(literal > KEYS.len() / 2);
    }

    #[test]
    fn a_default_in_words_is_no_second_home_of_a_value() {
        // A fixed default lives in ServeConfig::default() alone; words are
        // for the defaults that are no fixed value.
        for k in KEYS.iter().filter(|k| !k.default_text.is_empty()) {
            let as_toml = format!("x = {}", k.default_text).parse::<toml::Table>();
            assert!(
                as_toml.is_err(),
                "{}: write no value in default_text",
                k.name
            );
        }
    }
}
