//! Configuration layers: a TOML file (`--config`), `KMSD_*` environment
//! variables, and command-line flags, each overriding the one before, over
//! the defaults of [`ServeConfig`]. Every key is listed in [`KEYS`], which
//! the README table and the sample `kmsd.toml` are tested against.

use crate::config::{ConfigError, ServeConfig, parse_hwid};
use crate::protocol::kms::products;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a key's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Int,
    Bool,
    List,
    Table,
}

/// One configuration key: name, kind, default as written, what it does,
/// and whether a running host applies a change on SIGHUP.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub doc: &'static str,
    pub reloadable: bool,
}

const fn key(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    doc: &'static str,
    reloadable: bool,
) -> Key {
    Key {
        name,
        kind,
        default,
        doc,
        reloadable,
    }
}

/// Every key, in the order the documentation lists them.
pub const KEYS: &[Key] = &[
    key(
        "listen",
        Kind::List,
        r#"["[::]:1688", "0.0.0.0:1688"]"#,
        "addresses the KMS listener binds",
        false,
    ),
    key(
        "data_dir",
        Kind::Str,
        "per-user or /var/lib/kmsd",
        "directory of the database (pools, ePIDs, inventory)",
        false,
    ),
    key(
        "count_mode",
        Kind::Str,
        r#""real""#,
        "`real` counts distinct clients; `fixed:N` always answers N (emulator)",
        false,
    ),
    key(
        "serve",
        Kind::List,
        "all ePID groups",
        "ePID groups (host keys) served; others get 0xC004F042",
        true,
    ),
    key(
        "strict_products",
        Kind::Bool,
        "true",
        "refuse unknown KMS counted IDs (else serve them as Windows)",
        true,
    ),
    key(
        "max_clock_skew_minutes",
        Kind::Int,
        "0 (off)",
        "refuse clients whose clock is further off (0xC004F06C)",
        true,
    ),
    key(
        "epids",
        Kind::Table,
        "generated once",
        "fixed ePID per group, e.g. `Windows = \"03612-...\"`",
        false,
    ),
    key(
        "hwid",
        Kind::Str,
        r#""3A1C049600B60076""#,
        "host hardware ID sent to protocol 6 clients",
        false,
    ),
    key(
        "host_build",
        Kind::Int,
        "26100",
        "host OS build the generated ePIDs name",
        false,
    ),
    key(
        "lcid",
        Kind::Int,
        "1033",
        "host locale id the generated ePIDs name",
        false,
    ),
    key("ndr64", Kind::Bool, "true", "negotiate NDR64", false),
    key(
        "btfn",
        Kind::Bool,
        "true",
        "answer bind-time feature negotiation",
        false,
    ),
    key(
        "activation_interval",
        Kind::Int,
        "120",
        "minutes between retries while not activated (15..=43200)",
        true,
    ),
    key(
        "renewal_interval",
        Kind::Int,
        "10080",
        "minutes between renewals once activated (15..=43200)",
        true,
    ),
    key(
        "max_connections",
        Kind::Int,
        "4096",
        "connections open at once",
        false,
    ),
    key(
        "max_connections_per_ip",
        Kind::Int,
        "64",
        "connections open at once from one address",
        true,
    ),
    key(
        "max_requests_per_connection",
        Kind::Int,
        "64",
        "requests one connection may make",
        true,
    ),
    key(
        "read_timeout_secs",
        Kind::Int,
        "10",
        "seconds for a whole PDU to arrive once it started",
        true,
    ),
    key(
        "idle_timeout_secs",
        Kind::Int,
        "30",
        "seconds a connection may sit idle between PDUs",
        true,
    ),
    key(
        "max_pdu_len",
        Kind::Int,
        "512",
        "largest PDU accepted (300..=5840)",
        true,
    ),
    key(
        "keep_records",
        Kind::Int,
        "1000000",
        "activation records kept (oldest pruned)",
        false,
    ),
    key(
        "shutdown_grace_secs",
        Kind::Int,
        "10",
        "seconds in-flight exchanges get on shutdown",
        true,
    ),
    key(
        "allow",
        Kind::List,
        "[] (loopback and private networks)",
        "extra address blocks allowed, e.g. `0.0.0.0/0`",
        true,
    ),
    key(
        "deny",
        Kind::List,
        "[]",
        "address blocks refused (wins over allow)",
        true,
    ),
    key(
        "store_busy_timeout_ms",
        Kind::Int,
        "5000",
        "milliseconds a write waits for a locked database",
        false,
    ),
    key(
        "http",
        Kind::Str,
        "off",
        "admin listener (metrics, health, status page), e.g. `127.0.0.1:9688`",
        false,
    ),
    key(
        "log_level",
        Kind::Str,
        r#""info""#,
        "error, warn, info, debug, trace, or a tracing filter",
        true,
    ),
    key("log_format", Kind::Str, r#""text""#, "text or json", false),
];

/// One configuration layer: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict_products: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clock_skew_minutes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epids: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hwid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_build: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lcid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ndr64: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub btfn: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_interval: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_interval: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pdu_len: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_busy_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

fn bad(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        problem: problem.into(),
    }
}

impl Settings {
    /// Parses a TOML document; unknown keys are refused by name.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            key: "config",
            problem: format!("{}: {}", origin.display(), e.message()),
        })
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("config", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text, path)
    }

    /// The `KMSD_<KEY>` variables among `vars` (lists comma-separated).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        for (name, value) in vars {
            let Some(k) = name.strip_prefix("KMSD_") else {
                continue;
            };
            let k = k.to_ascii_lowercase();
            let Some(spec) = KEYS.iter().find(|s| s.name == k) else {
                return Err(bad("environment", format!("{name} is not a kmsd setting")));
            };
            let v = match spec.kind {
                Kind::Str => toml::Value::String(value),
                Kind::List => toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                ),
                Kind::Int => toml::Value::Integer(value.trim().parse().map_err(|_| {
                    bad(spec.name, format!("{name}={value:?} is not a whole number"))
                })?),
                Kind::Bool => toml::Value::Boolean(match value.trim() {
                    "1" | "true" | "on" | "yes" => true,
                    "0" | "false" | "off" | "no" => false,
                    _ => {
                        return Err(bad(
                            spec.name,
                            format!("{name}={value:?} is not true/false"),
                        ));
                    }
                }),
                Kind::Table => {
                    // GROUP=EPID,GROUP=EPID
                    let mut t = toml::Table::new();
                    for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
                        let (g, e) = pair.split_once('=').ok_or_else(|| {
                            bad(spec.name, format!("{name}: expected GROUP=VALUE pairs"))
                        })?;
                        t.insert(
                            g.trim().to_owned(),
                            toml::Value::String(e.trim().to_owned()),
                        );
                    }
                    toml::Value::Table(t)
                }
            };
            table.insert(k, v);
        }
        Self::deserialize(table).map_err(|e| bad("environment", e.to_string()))
    }

    /// This layer with `top` laid over it (top's keys win).
    pub fn overlay(self, top: Self) -> Self {
        let mut base = toml::Table::try_from(self).unwrap_or_default();
        let over = toml::Table::try_from(top).unwrap_or_default();
        base.extend(over);
        Self::deserialize(base).unwrap_or_default()
    }

    /// The keys this layer sets.
    pub fn keys_set(&self) -> Vec<String> {
        toml::Table::try_from(self)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Applies this layer to `cfg`; the first bad value is named by its key.
    pub fn apply(&self, cfg: &mut ServeConfig) -> Result<(), ConfigError> {
        if let Some(v) = &self.listen {
            cfg.listen = v
                .iter()
                .map(|a| {
                    a.parse()
                        .map_err(|_| bad("listen", format!("{a:?} is not ADDR:PORT")))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = &self.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &self.count_mode {
            cfg.count_mode = v.parse().map_err(|e: String| bad("count_mode", e))?;
        }
        if let Some(v) = &self.serve {
            cfg.served_groups = v
                .iter()
                .map(|g| {
                    products::epid_group(g)
                        .map(|e| e.name.to_owned())
                        .ok_or_else(|| {
                            bad(
                                "serve",
                                format!(
                                    "unknown ePID group {g:?} (known: {})",
                                    crate::config::group_names()
                                ),
                            )
                        })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = self.strict_products {
            cfg.strict_products = v;
        }
        if let Some(v) = self.max_clock_skew_minutes {
            cfg.max_clock_skew = (v > 0).then(|| Duration::from_secs(v * 60));
        }
        if let Some(v) = &self.epids {
            for (g, e) in v {
                let group = products::epid_group(g).ok_or_else(|| {
                    bad(
                        "epids",
                        format!(
                            "unknown ePID group {g:?} (known: {})",
                            crate::config::group_names()
                        ),
                    )
                })?;
                cfg.epids.insert(group.name.to_owned(), e.clone());
            }
        }
        if let Some(v) = &self.hwid {
            cfg.hwid = parse_hwid(v).map_err(|e| bad("hwid", e))?;
        }
        if let Some(v) = self.host_build {
            cfg.host_build = v;
            // An older host build implies the RPC behaviour of its time
            // (unless ndr64 is set explicitly below).
            if let Some(b) = products::win_build(v) {
                cfg.ndr64 = b.uses_ndr64;
            }
        }
        if let Some(v) = self.lcid {
            cfg.lcid = v;
        }
        if let Some(v) = self.ndr64 {
            cfg.ndr64 = v;
        }
        if let Some(v) = self.btfn {
            cfg.btfn = v;
        }
        if let Some(v) = self.activation_interval {
            cfg.activation_interval = v;
        }
        if let Some(v) = self.renewal_interval {
            cfg.renewal_interval = v;
        }
        if let Some(v) = self.max_connections {
            cfg.max_connections = v;
        }
        if let Some(v) = self.max_connections_per_ip {
            cfg.max_connections_per_ip = v;
        }
        if let Some(v) = self.max_requests_per_connection {
            cfg.max_requests_per_connection = v;
        }
        if let Some(v) = self.read_timeout_secs {
            cfg.read_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.idle_timeout_secs {
            cfg.idle_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.max_pdu_len {
            cfg.max_pdu_len = v;
        }
        if let Some(v) = self.keep_records {
            cfg.keep_records = v;
        }
        if let Some(v) = self.shutdown_grace_secs {
            cfg.shutdown_grace = Duration::from_secs(v);
        }
        let cidrs = |key: &'static str, v: &[String]| {
            v.iter()
                .map(|c| c.parse().map_err(|e: String| bad(key, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        if let Some(v) = &self.allow {
            cfg.access.allow = crate::server::access::AccessList::default().allow;
            cfg.access.allow.extend(cidrs("allow", v)?);
        }
        if let Some(v) = &self.deny {
            cfg.access.deny = cidrs("deny", v)?;
        }
        if let Some(v) = self.store_busy_timeout_ms {
            cfg.store_busy_timeout = Duration::from_millis(v);
        }
        if let Some(v) = &self.http {
            cfg.http = if v.is_empty() || v == "off" {
                None
            } else {
                Some(
                    v.parse()
                        .map_err(|_| bad("http", format!("{v:?} is not ADDR:PORT")))?,
                )
            };
        }
        if let Some(v) = &self.log_level {
            tracing_subscriber::EnvFilter::try_new(v)
                .map_err(|e| bad("log_level", e.to_string()))?;
        }
        if let Some(v) = &self.log_format
            && !matches!(v.as_str(), "text" | "json")
        {
            return Err(bad("log_format", format!("{v:?}: expected text or json")));
        }
        Ok(())
    }

    /// Defaults, then each layer in order, validated.
    pub fn resolve(layers: &[&Self]) -> Result<ServeConfig, ConfigError> {
        let mut cfg = ServeConfig::default();
        for l in layers {
            l.apply(&mut cfg)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The configuration reference as a Markdown table (the README embeds it;
/// a test keeps the two equal). Regenerate with `kmsd config keys`.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | default | reload | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        let env = format!("KMSD_{}", k.name.to_ascii_uppercase());
        let literal = k.default.starts_with(['[', '"'])
            || k.default.parse::<f64>().is_ok()
            || matches!(k.default, "true" | "false");
        let default = if literal {
            format!("`{}`", k.default)
        } else {
            k.default.to_owned()
        };
        out.push_str(&format!(
            "| `{}` (`{env}`) | {} | {} | {} |\n",
            k.name,
            default,
            if k.reloadable { "SIGHUP" } else { "restart" },
            k.doc
        ));
    }
    out
}

/// The keys whose change between `old` and `new` only a restart applies.
pub fn restart_needed(old: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            out.push(key);
        }
    };
    check(old.listen != new.listen, "listen");
    check(old.data_dir != new.data_dir, "data_dir");
    check(old.count_mode != new.count_mode, "count_mode");
    check(old.epids != new.epids, "epids");
    check(old.hwid != new.hwid, "hwid");
    check(old.host_build != new.host_build, "host_build");
    check(old.lcid != new.lcid, "lcid");
    check(old.ndr64 != new.ndr64, "ndr64");
    check(old.btfn != new.btfn, "btfn");
    check(
        old.max_connections != new.max_connections,
        "max_connections",
    );
    check(old.keep_records != new.keep_records, "keep_records");
    check(
        old.store_busy_timeout != new.store_busy_timeout,
        "store_busy_timeout_ms",
    );
    check(old.http != new.http, "http");
    out
}

/// The effective configuration as TOML (what `kmsd config check` prints).
pub fn effective_toml(cfg: &ServeConfig, log_level: &str, log_format: &str) -> String {
    let s = Settings {
        listen: Some(cfg.listen.iter().map(ToString::to_string).collect()),
        data_dir: Some(cfg.data_dir.clone()),
        count_mode: Some(cfg.count_mode.to_string()),
        serve: Some(cfg.served_groups.clone()),
        strict_products: Some(cfg.strict_products),
        max_clock_skew_minutes: Some(cfg.max_clock_skew.map_or(0, |d| d.as_secs() / 60)),
        epids: Some(cfg.epids.clone()),
        hwid: Some(cfg.hwid.iter().map(|b| format!("{b:02X}")).collect()),
        host_build: Some(cfg.host_build),
        lcid: Some(cfg.lcid),
        ndr64: Some(cfg.ndr64),
        btfn: Some(cfg.btfn),
        activation_interval: Some(cfg.activation_interval),
        renewal_interval: Some(cfg.renewal_interval),
        max_connections: Some(cfg.max_connections),
        max_connections_per_ip: Some(cfg.max_connections_per_ip),
        max_requests_per_connection: Some(cfg.max_requests_per_connection),
        read_timeout_secs: Some(cfg.read_timeout.as_secs()),
        idle_timeout_secs: Some(cfg.idle_timeout.as_secs()),
        max_pdu_len: Some(cfg.max_pdu_len),
        keep_records: Some(cfg.keep_records),
        shutdown_grace_secs: Some(cfg.shutdown_grace.as_secs()),
        allow: Some({
            let defaults = crate::server::access::AccessList::default().allow;
            cfg.access
                .allow
                .iter()
                .filter(|c| !defaults.contains(c))
                .map(ToString::to_string)
                .collect()
        }),
        deny: Some(cfg.access.deny.iter().map(ToString::to_string).collect()),
        store_busy_timeout_ms: Some(cfg.store_busy_timeout.as_millis() as u64),
        http: Some(cfg.http.map_or_else(|| "off".into(), |a| a.to_string())),
        log_level: Some(log_level.to_owned()),
        log_format: Some(log_format.to_owned()),
    };
    toml::to_string(&s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_a_settings_field_and_back() {
        let full = effective_toml(&ServeConfig::default(), "info", "text");
        let table: toml::Table = toml::from_str(&full).unwrap();
        let mut fields: Vec<&str> = table.keys().map(String::as_str).collect();
        fields.sort_unstable();
        let mut keys: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        keys.sort_unstable();
        assert_eq!(fields, keys);
        // And the effective TOML round-trips to the same configuration.
        let again =
            Settings::resolve(&[&Settings::from_toml(&full, Path::new("x")).unwrap()]).unwrap();
        assert_eq!(again, ServeConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Settings::from_toml("listne = []", Path::new("k.toml")).unwrap_err();
        assert!(e.problem.contains("listne"), "{e}");
        let s = Settings::from_toml("activation_interval = 5", Path::new("k.toml")).unwrap();
        assert_eq!(
            Settings::resolve(&[&s]).unwrap_err().key,
            "activation_interval"
        );
        let s = Settings::from_toml("allow = [\"10.0.0.0/99\"]", Path::new("k.toml")).unwrap();
        assert_eq!(Settings::resolve(&[&s]).unwrap_err().key, "allow");
        let e = Settings::from_env([("KMSD_LISTNE".into(), "x".into())]).unwrap_err();
        assert!(e.problem.contains("KMSD_LISTNE"));
    }

    #[test]
    fn layers_override_in_order() {
        let file = Settings::from_toml(
            "activation_interval = 60\nrenewal_interval = 1440\nserve = [\"Windows\"]",
            Path::new("f"),
        )
        .unwrap();
        let env = Settings::from_env([
            ("KMSD_RENEWAL_INTERVAL".into(), "2880".into()),
            (
                "KMSD_ALLOW".into(),
                "203.0.113.0/24, 198.51.100.0/24".into(),
            ),
            (
                "KMSD_EPIDS".into(),
                "Office2019=03612-00206-684-137669-03-1033-17763.0000-2972018".into(),
            ),
            ("PATH".into(), "/bin".into()),
        ])
        .unwrap();
        let cli = Settings {
            activation_interval: Some(30),
            ..Default::default()
        };
        let merged = file.clone().overlay(env.clone()).overlay(cli.clone());
        let cfg = Settings::resolve(&[&file, &env, &cli]).unwrap();
        assert_eq!(Settings::resolve(&[&merged]).unwrap(), cfg);
        assert_eq!(cfg.activation_interval, 30, "flag over file");
        assert_eq!(cfg.renewal_interval, 2880, "environment over file");
        assert_eq!(cfg.served_groups, vec!["Windows".to_owned()]);
        assert!(cfg.access.permits("203.0.113.9".parse().unwrap()));
        assert!(
            cfg.access.permits("10.0.0.1".parse().unwrap()),
            "defaults kept"
        );
        assert_eq!(cfg.epids.len(), 1);
    }
}
