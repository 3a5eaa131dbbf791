//! The one table of configuration keys. Every layer (TOML file, `KMSD_*`
//! environment, `kmsd serve` flags), the documentation (`kmsd config keys`,
//! `kmsd config sample`, the README) and the SIGHUP reload classification
//! come from [`KEYS`]: a key is declared here once, with how it is read into
//! a [`ServeConfig`] and how it is read back out of one.

use super::{ServeConfig, parse_hwid};
use crate::protocol::kms::products;
use crate::server::access::{AccessList, Cidr};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use toml::Value;

/// How a key's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Str,
    /// A whole number, 0 or more.
    Int,
    /// `true`/`false` (the environment and flags also take on/off, yes/no, 1/0).
    Bool,
    /// A list of strings (comma-separated in the environment and flags;
    /// flags may also repeat).
    List,
    /// A table of strings (`GROUP=VALUE` pairs in the environment and flags).
    Table,
}

/// When a running host applies a change of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// On SIGHUP, without dropping connections.
    Live,
    /// Only on a restart; SIGHUP logs the key as needing one.
    Restart,
}

/// One configuration key.
#[derive(Clone, Copy)]
pub struct Key {
    /// The TOML key; the flag is `--` plus the name with `-` for `_`, the
    /// environment variable `KMSD_` plus the name in capitals.
    pub name: &'static str,
    pub kind: Kind,
    /// The default as the documentation shows it.
    pub default: &'static str,
    /// What the key does (one line).
    pub doc: &'static str,
    pub reload: Reload,
    /// The flag's value name in `--help`.
    pub value_name: &'static str,
    /// Older flag spellings, still accepted, not shown in `--help`.
    pub aliases: &'static [&'static str],
    /// More about the key, for the sample file (may be empty).
    pub note: &'static str,
    /// The value the sample file shows (commented out), when the default is
    /// not a literal (else the default); for a table, its entries.
    pub sample: &'static str,
    /// Older valueless flags, still accepted, not shown: (flag, the value it means).
    pub switches: &'static [(&'static str, &'static str)],
    /// Stores a value (already of the key's [`Kind`]) into the configuration.
    set: fn(&mut ServeConfig, &Value) -> Result<(), String>,
    /// Reads the key's value back out of the configuration.
    get: fn(&ServeConfig) -> Value,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("reload", &self.reload)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// `KMSD_<NAME>`.
    pub fn env_var(&self) -> String {
        format!("KMSD_{}", self.name.to_ascii_uppercase())
    }

    /// The long flag, without the dashes: the name with `-` for `_`.
    pub fn flag(&self) -> &'static str {
        static FLAGS: OnceLock<Vec<String>> = OnceLock::new();
        let flags = FLAGS.get_or_init(|| KEYS.iter().map(|k| k.name.replace('_', "-")).collect());
        let i = KEYS
            .iter()
            .position(|k| k.name == self.name)
            .expect("a key of the table");
        &flags[i]
    }

    /// Stores `value` (checked against the key's kind) into `cfg`.
    pub fn set(&self, cfg: &mut ServeConfig, value: &Value) -> Result<(), String> {
        self.kind.check(value)?;
        (self.set)(cfg, value)
    }

    /// The key's value in `cfg`, as TOML writes it.
    pub fn get(&self, cfg: &ServeConfig) -> Value {
        (self.get)(cfg)
    }

    /// Whether `default` is a literal TOML value (else it is prose).
    pub fn default_is_literal(&self) -> bool {
        format!("x = {}", self.default)
            .parse::<toml::Table>()
            .is_ok()
    }
}

/// The key named `name`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

impl Kind {
    /// Checks that a TOML value is of this kind.
    pub fn check(self, v: &Value) -> Result<(), String> {
        let ok = match self {
            Kind::Str => v.is_str(),
            Kind::Int => v.as_integer().is_some_and(|n| n >= 0),
            Kind::Bool => v.is_bool(),
            Kind::List => v.as_array().is_some_and(|a| a.iter().all(Value::is_str)),
            Kind::Table => v.as_table().is_some_and(|t| t.values().all(Value::is_str)),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {}, found {v}", self.expected()))
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "a whole number (0 or more)",
            Kind::Bool => "true or false",
            Kind::List => "a list of strings",
            Kind::Table => "a table of strings",
        }
    }

    /// Parses the value as the environment and flags write it: `values` are
    /// the occurrences (one for the environment; a flag may repeat). Lists
    /// are comma-separated, tables `GROUP=VALUE` pairs; a repeated scalar
    /// takes the last.
    pub fn parse(self, values: &[&str]) -> Result<Value, String> {
        let last = values.last().map_or("", |v| v.trim());
        let items = || {
            values
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        Ok(match self {
            Kind::Str => Value::String(last.to_owned()),
            Kind::Int => Value::Integer(
                last.parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| format!("{last:?} is not a whole number (0 or more)"))?,
            ),
            Kind::Bool => Value::Boolean(match last.to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => return Err(format!("{last:?} is not true/false (or on/off)")),
            }),
            Kind::List => Value::Array(items().map(|s| Value::String(s.into())).collect()),
            Kind::Table => {
                let mut t = toml::Table::new();
                for pair in items() {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("{pair:?}: expected GROUP=VALUE"))?;
                    t.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
                }
                Value::Table(t)
            }
        })
    }
}

// Readers for `set` (the value's kind is checked before).

fn string(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, found {v}"))
}

fn int<T: TryFrom<i64>>(v: &Value) -> Result<T, String> {
    let n = v
        .as_integer()
        .ok_or_else(|| format!("expected a whole number, found {v}"))?;
    T::try_from(n).map_err(|_| format!("{n} is out of range"))
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found {v}"))
}

fn strings(v: &Value) -> Result<Vec<&str>, String> {
    v.as_array()
        .ok_or_else(|| format!("expected a list, found {v}"))?
        .iter()
        .map(string)
        .collect()
}

fn parsed<T: std::str::FromStr>(v: &Value, what: &str) -> Result<Vec<T>, String> {
    strings(v)?
        .into_iter()
        .map(|s| s.parse().map_err(|_| format!("{s:?} is not {what}")))
        .collect()
}

fn cidrs(v: &Value) -> Result<Vec<Cidr>, String> {
    strings(v)?.into_iter().map(str::parse).collect()
}

// Writers for `get`.

fn text(s: impl ToString) -> Value {
    Value::String(s.to_string())
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> Value {
    Value::Array(items.into_iter().map(text).collect())
}

fn num(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

/// An ePID group's canonical name if it is one; else the name as written
/// (the one check of group names is [`ServeConfig::validate`]).
fn group_name(g: &str) -> String {
    products::epid_group(g).map_or_else(|| g.to_owned(), |e| e.name.to_owned())
}

/// Every key, in the order the documentation lists them. The order is also
/// the order values are applied: `host_build` implies `ndr64` unless
/// `ndr64` (later) is set too.
pub static KEYS: &[Key] = &[
    Key {
        name: "listen",
        kind: Kind::List,
        default: r#"["[::]:1688", "0.0.0.0:1688"]"#,
        doc: "addresses the KMS listener binds",
        reload: Reload::Restart,
        value_name: "ADDR:PORT",
        aliases: &[],
        note: "The IPv6 wildcard is IPv6-only, beside IPv4.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.listen = parsed(v, "ADDR:PORT")?;
            Ok(())
        },
        get: |c| list(&c.listen),
    },
    Key {
        name: "data_dir",
        kind: Kind::Str,
        default: "per-user or /var/lib/kmsd",
        doc: "directory of the database (pools, ePIDs, inventory)",
        reload: Reload::Restart,
        value_name: "DIR",
        aliases: &[],
        note: "Default: $STATE_DIRECTORY (systemd), /var/lib/kmsd for root, else $XDG_STATE_HOME/kmsd or ~/.local/state/kmsd.",
        sample: r#""/var/lib/kmsd""#,
        switches: &[],
        set: |c, v| {
            c.data_dir = PathBuf::from(string(v)?);
            Ok(())
        },
        get: |c| text(c.data_dir.display()),
    },
    Key {
        name: "count_mode",
        kind: Kind::Str,
        default: r#""real""#,
        doc: "`real` counts distinct clients; `fixed:N` always answers N (emulator)",
        reload: Reload::Restart,
        value_name: "MODE",
        aliases: &[],
        note: "With `real`, clients below their threshold stay unactivated, as with a Microsoft host; `fixed:N` remembers nothing.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.count_mode = string(v)?.parse()?;
            Ok(())
        },
        get: |c| text(c.count_mode),
    },
    Key {
        name: "serve",
        kind: Kind::List,
        default: "all ePID groups",
        doc: "ePID groups (host keys) served; others get 0xC004F042",
        reload: Reload::Live,
        value_name: "GROUP",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.served_groups = strings(v)?.into_iter().map(group_name).collect();
            Ok(())
        },
        get: |c| list(&c.served_groups),
    },
    Key {
        name: "strict_products",
        kind: Kind::Bool,
        default: "true",
        doc: "refuse unknown KMS counted IDs (else serve them as Windows)",
        reload: Reload::Live,
        value_name: "true|false",
        aliases: &[],
        note: "Unknown IDs get 0xC004F042; false serves them as Windows clients.",
        sample: r#""#,
        switches: &[("lenient-products", "false")],
        set: |c, v| {
            c.strict_products = boolean(v)?;
            Ok(())
        },
        get: |c| Value::Boolean(c.strict_products),
    },
    Key {
        name: "max_clock_skew_minutes",
        kind: Kind::Int,
        default: "0 (off)",
        doc: "refuse clients whose clock is further off (0xC004F06C)",
        reload: Reload::Live,
        value_name: "MINUTES",
        aliases: &["max-clock-skew"],
        note: "0 turns the check off. Windows hosts use 240 (4 hours).",
        sample: r#"0"#,
        switches: &[],
        set: |c, v| {
            let minutes: u32 = int(v)?;
            c.max_clock_skew = (minutes > 0).then(|| Duration::from_secs(u64::from(minutes) * 60));
            Ok(())
        },
        get: |c| num(c.max_clock_skew.map_or(0, |d| d.as_secs() / 60)),
    },
    Key {
        name: "epids",
        kind: Kind::Table,
        default: "generated once",
        doc: "fixed ePID per group, e.g. `Windows = \"03612-...\"`",
        reload: Reload::Restart,
        value_name: "GROUP=EPID",
        aliases: &["epid"],
        note: "Groups not listed get one generated once and kept. A TOML table: keep it at the end of the file.",
        sample: r#"Windows = "03612-04918-012-345678-03-1033-26100.0000-3052024""#,
        switches: &[],
        set: |c, v| {
            let t = v
                .as_table()
                .ok_or_else(|| format!("expected a table, found {v}"))?;
            c.epids = t
                .iter()
                .map(|(g, e)| Ok((group_name(g), string(e)?.to_owned())))
                .collect::<Result<BTreeMap<_, _>, String>>()?;
            Ok(())
        },
        get: |c| Value::Table(c.epids.iter().map(|(g, e)| (g.clone(), text(e))).collect()),
    },
    Key {
        name: "hwid",
        kind: Kind::Str,
        default: r#""3A1C049600B60076""#,
        doc: "host hardware ID sent to protocol 6 clients",
        reload: Reload::Restart,
        value_name: "16HEX",
        aliases: &[],
        note: "16 hex digits.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.hwid = parse_hwid(string(v)?)?;
            Ok(())
        },
        get: |c| {
            text(
                c.hwid
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<String>(),
            )
        },
    },
    Key {
        name: "host_build",
        kind: Kind::Int,
        default: "26100",
        doc: "host OS build the generated ePIDs name",
        reload: Reload::Restart,
        value_name: "BUILD",
        aliases: &[],
        note: "An older build also turns NDR64 off, as those hosts did not offer it.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.host_build = int(v)?;
            // An older host build implies the RPC behaviour of its time
            // (unless ndr64, applied after, is set too).
            if let Some(b) = products::win_build(c.host_build) {
                c.ndr64 = b.uses_ndr64;
            }
            Ok(())
        },
        get: |c| num(c.host_build),
    },
    Key {
        name: "lcid",
        kind: Kind::Int,
        default: "1033",
        doc: "host locale id the generated ePIDs name",
        reload: Reload::Restart,
        value_name: "LCID",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.lcid = int(v)?;
            Ok(())
        },
        get: |c| num(c.lcid),
    },
    Key {
        name: "ndr64",
        kind: Kind::Bool,
        default: "true",
        doc: "negotiate NDR64",
        reload: Reload::Restart,
        value_name: "true|false",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.ndr64 = boolean(v)?;
            Ok(())
        },
        get: |c| Value::Boolean(c.ndr64),
    },
    Key {
        name: "btfn",
        kind: Kind::Bool,
        default: "true",
        doc: "answer bind-time feature negotiation",
        reload: Reload::Restart,
        value_name: "true|false",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.btfn = boolean(v)?;
            Ok(())
        },
        get: |c| Value::Boolean(c.btfn),
    },
    Key {
        name: "activation_interval",
        kind: Kind::Int,
        default: "120",
        doc: "minutes between retries while not activated (15..=43200)",
        reload: Reload::Live,
        value_name: "MINUTES",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.activation_interval = int(v)?;
            Ok(())
        },
        get: |c| num(c.activation_interval),
    },
    Key {
        name: "renewal_interval",
        kind: Kind::Int,
        default: "10080",
        doc: "minutes between renewals once activated (15..=43200)",
        reload: Reload::Live,
        value_name: "MINUTES",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.renewal_interval = int(v)?;
            Ok(())
        },
        get: |c| num(c.renewal_interval),
    },
    Key {
        name: "max_connections",
        kind: Kind::Int,
        default: "4096",
        doc: "connections open at once",
        reload: Reload::Restart,
        value_name: "N",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.max_connections = int(v)?;
            Ok(())
        },
        get: |c| num(c.max_connections),
    },
    Key {
        name: "max_connections_per_ip",
        kind: Kind::Int,
        default: "64",
        doc: "connections open at once from one address",
        reload: Reload::Live,
        value_name: "N",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.max_connections_per_ip = int(v)?;
            Ok(())
        },
        get: |c| num(c.max_connections_per_ip),
    },
    Key {
        name: "max_queued_per_ip",
        kind: Kind::Int,
        default: "256",
        doc: "connections over the per-address limit that wait (up to read_timeout_secs) for a slot",
        reload: Reload::Live,
        value_name: "N",
        aliases: &[],
        note: "Many clients behind one NAT gateway share one address; 0 closes an over-limit connection at once.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.max_queued_per_ip = int(v)?;
            Ok(())
        },
        get: |c| num(c.max_queued_per_ip),
    },
    Key {
        name: "max_requests_per_connection",
        kind: Kind::Int,
        default: "64",
        doc: "requests one connection may make",
        reload: Reload::Live,
        value_name: "N",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.max_requests_per_connection = int(v)?;
            Ok(())
        },
        get: |c| num(c.max_requests_per_connection),
    },
    Key {
        name: "read_timeout_secs",
        kind: Kind::Int,
        default: "10",
        doc: "seconds for a whole PDU to arrive once it started",
        reload: Reload::Live,
        value_name: "SECS",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.read_timeout = Duration::from_secs(int(v)?);
            Ok(())
        },
        get: |c| num(c.read_timeout.as_secs()),
    },
    Key {
        name: "idle_timeout_secs",
        kind: Kind::Int,
        default: "30",
        doc: "seconds a connection may sit idle between PDUs",
        reload: Reload::Live,
        value_name: "SECS",
        aliases: &["idle-timeout"],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.idle_timeout = Duration::from_secs(int(v)?);
            Ok(())
        },
        get: |c| num(c.idle_timeout.as_secs()),
    },
    Key {
        name: "max_pdu_len",
        kind: Kind::Int,
        default: "512",
        doc: "largest PDU accepted (300..=5840)",
        reload: Reload::Live,
        value_name: "BYTES",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.max_pdu_len = int(v)?;
            Ok(())
        },
        get: |c| num(c.max_pdu_len),
    },
    Key {
        name: "keep_records",
        kind: Kind::Int,
        default: "1000000",
        doc: "activation records kept (oldest pruned)",
        reload: Reload::Restart,
        value_name: "N",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.keep_records = int(v)?;
            Ok(())
        },
        get: |c| num(c.keep_records),
    },
    Key {
        name: "shutdown_grace_secs",
        kind: Kind::Int,
        default: "10",
        doc: "seconds in-flight exchanges get on shutdown",
        reload: Reload::Live,
        value_name: "SECS",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.shutdown_grace = Duration::from_secs(int(v)?);
            Ok(())
        },
        get: |c| num(c.shutdown_grace.as_secs()),
    },
    Key {
        name: "allow",
        kind: Kind::List,
        default: "[] (loopback and private networks)",
        doc: "extra address blocks allowed, e.g. `0.0.0.0/0`",
        reload: Reload::Live,
        value_name: "CIDR",
        aliases: &[],
        note: "Loopback, RFC 1918 private, link-local and IPv6 unique-local sources are always allowed unless denied; \"0.0.0.0/0\" allows everyone.",
        sample: r#"[]"#,
        switches: &[],
        set: |c, v| {
            c.access.allow = AccessList::default().allow;
            c.access.allow.extend(cidrs(v)?);
            Ok(())
        },
        get: |c| {
            let defaults = AccessList::default().allow;
            list(c.access.allow.iter().filter(|a| !defaults.contains(a)))
        },
    },
    Key {
        name: "deny",
        kind: Kind::List,
        default: "[]",
        doc: "address blocks refused (wins over allow)",
        reload: Reload::Live,
        value_name: "CIDR",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.access.deny = cidrs(v)?;
            Ok(())
        },
        get: |c| list(&c.access.deny),
    },
    Key {
        name: "store",
        kind: Kind::Str,
        default: r#""sqlite""#,
        doc: "`sqlite` (one file in the data dir), `memory` (nothing on disk, forgotten at exit) or `postgres://USER[:PASS]@HOST[:PORT]/DB` for a fleet",
        reload: Reload::Restart,
        value_name: "sqlite|memory|URL",
        aliases: &[],
        note: "A fleet: every host with the same URL shares one count, one inventory, one set of ePIDs and one activation log. TLS: add ?sslmode=verify-full&sslrootcert=/path/ca.pem.",
        sample: r#""postgres://kmsd@db.example:5432/kmsd""#,
        switches: &[],
        set: |c, v| {
            c.store = string(v)?.parse()?;
            Ok(())
        },
        get: |c| text(crate::store::postgres::url::redact_backend(&c.store)),
    },
    Key {
        name: "store_timeout_ms",
        kind: Kind::Int,
        default: "5000",
        doc: "PostgreSQL: milliseconds a request waits for its commit",
        reload: Reload::Restart,
        value_name: "MS",
        aliases: &[],
        note: "Past it the client gets E_FAIL (0x80004005), is not counted, and retries later.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.store_timeout = Duration::from_millis(int::<u64>(v)?.max(1));
            Ok(())
        },
        get: |c| num(c.store_timeout.as_millis()),
    },
    Key {
        name: "store_isolation",
        kind: Kind::Str,
        default: r#""read-committed""#,
        doc: "PostgreSQL: `read-committed`, `repeatable-read` or `serializable`",
        reload: Reload::Restart,
        value_name: "LEVEL",
        aliases: &[],
        note: "Counts are exact under each; repeatable-read and serializable retry on conflicts (how CockroachDB and YugabyteDB run).",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            let s = string(v)?;
            if crate::store::postgres::isolation(s).is_none() {
                return Err(format!(
                    "{s:?}: expected read-committed, repeatable-read or serializable"
                ));
            }
            c.store_isolation = s.to_owned();
            Ok(())
        },
        get: |c| text(&c.store_isolation),
    },
    Key {
        name: "store_busy_timeout_ms",
        kind: Kind::Int,
        default: "5000",
        doc: "milliseconds a write waits for a locked database",
        reload: Reload::Restart,
        value_name: "MS",
        aliases: &[],
        note: "A client whose write times out gets an error answer and is not counted.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.store_busy_timeout = Duration::from_millis(int(v)?);
            Ok(())
        },
        get: |c| num(c.store_busy_timeout.as_millis()),
    },
    Key {
        name: "durability",
        kind: Kind::Str,
        default: r#""full""#,
        doc: "SQLite: `full` (a count is on disk before its answer leaves) or `os` (written, not flushed)",
        reload: Reload::Restart,
        value_name: "full|os",
        aliases: &[],
        note: "`os` survives a crash or kill -9 of kmsd, not a power cut or an OS crash; for labs. The default waits for the disk's flush on every commit.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            let s = string(v)?;
            c.durability = crate::store::Durability::parse(s)
                .ok_or_else(|| format!("{s:?}: expected full or os"))?;
            Ok(())
        },
        get: |c| text(c.durability.name()),
    },
    Key {
        name: "http",
        kind: Kind::Str,
        default: "off",
        doc: "admin listener (metrics, health, status page), e.g. `127.0.0.1:9688`",
        reload: Reload::Restart,
        value_name: "ADDR:PORT|off",
        aliases: &[],
        note: "Serves /metrics, /healthz, /readyz, /api/* and a status page at /. Off unless set; keep it on loopback or behind a firewall.",
        sample: r#""127.0.0.1:9688""#,
        switches: &[],
        set: |c, v| {
            let s = string(v)?;
            c.http = match s {
                "" | "off" => None,
                _ => Some(s.parse().map_err(|_| format!("{s:?} is not ADDR:PORT"))?),
            };
            Ok(())
        },
        get: |c| c.http.map_or_else(|| text("off"), text),
    },
    Key {
        name: "http_max_connections",
        kind: Kind::Int,
        default: "32",
        doc: "connections the admin listener holds at once",
        reload: Reload::Restart,
        value_name: "N",
        aliases: &[],
        note: "When all are taken, a new connection replaces the oldest one still sending its request headers; headers must arrive within 5 s and a request is answered within 10 s.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.http_max_connections = int(v)?;
            Ok(())
        },
        get: |c| num(c.http_max_connections),
    },
    Key {
        name: "log_level",
        kind: Kind::Str,
        default: r#""info""#,
        doc: "error, warn, info, debug, trace, or a tracing filter",
        reload: Reload::Live,
        value_name: "LEVEL",
        aliases: &[],
        note: "RUST_LOG overrides it.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.log_level = string(v)?.to_owned();
            Ok(())
        },
        get: |c| text(&c.log_level),
    },
    Key {
        name: "log_format",
        kind: Kind::Str,
        default: r#""text""#,
        doc: "text or json",
        reload: Reload::Restart,
        value_name: "text|json",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.log_format = string(v)?.parse()?;
            Ok(())
        },
        get: |c| text(c.log_format),
    },
    Key {
        name: "dns_publish",
        kind: Kind::List,
        default: "[]",
        doc: "domains whose `_vlmcs._tcp` SRV record this host publishes by dynamic update, `DOMAIN[,PRIORITY[,WEIGHT]]`",
        reload: Reload::Live,
        value_name: "DOMAIN[,PRIO[,WEIGHT]]",
        aliases: &[],
        note: "The format of Windows' DnsDomainPublishList, e.g. [\"lab.example.com,0,100\"]. The host adds its own record (the port it listens on) and only ever deletes its own, so several hosts can share the RRset; give them all the same dns_ttl. Failures are logged and retried and never stop the KMS service.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.dns.publish = crate::dns::parse_publish_list(&strings(v)?)?;
            Ok(())
        },
        get: |c| list(&c.dns.publish),
    },
    Key {
        name: "dns_server",
        kind: Kind::Str,
        default: "the zone's SOA primary",
        doc: "DNS server the updates go to, `ADDR[:PORT]`",
        reload: Reload::Live,
        value_name: "ADDR:PORT",
        aliases: &[],
        note: "Default: the MNAME of the zone's SOA, looked up through the name servers of /etc/resolv.conf.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            let s = string(v)?;
            c.dns.server = match s.trim() {
                "" => None,
                s => Some(crate::dns::parse_server(s)?),
            };
            Ok(())
        },
        get: |c| c.dns.server.map_or_else(|| text(""), text),
    },
    Key {
        name: "dns_tsig_key",
        kind: Kind::Str,
        default: "none (unsigned updates)",
        doc: "TSIG key file the updates are signed with, as `tsig-keygen` writes it (hmac-sha256 or hmac-sha512)",
        reload: Reload::Live,
        value_name: "PATH",
        aliases: &[],
        note: "Read when the configuration is (at start and on SIGHUP). Without a key, updates are unsigned: only for a zone that allows them (a Windows DNS zone set to non-secure updates).",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            let s = string(v)?;
            c.dns.tsig_key = match s.trim() {
                "" => None,
                p => Some(crate::dns::TsigKey::load(std::path::Path::new(p))?),
            };
            Ok(())
        },
        get: |c| {
            c.dns
                .tsig_key
                .as_ref()
                .map_or_else(|| text(""), |k| text(k.path.display()))
        },
    },
    Key {
        name: "dns_host_name",
        kind: Kind::Str,
        default: "this machine's name",
        doc: "host name the SRV record points clients at",
        reload: Reload::Live,
        value_name: "NAME",
        aliases: &[],
        note: "A name without a dot gets the domain appended.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            let s = string(v)?;
            c.dns.host_name = match s.trim() {
                "" => None,
                n => Some(
                    crate::dns::normal_name(n)
                        .ok_or_else(|| format!("{n:?} is not a host name"))?,
                ),
            };
            Ok(())
        },
        get: |c| text(c.dns.host_name.as_deref().unwrap_or("")),
    },
    Key {
        name: "dns_ttl",
        kind: Kind::Int,
        default: "3600",
        doc: "TTL in seconds of the published SRV record",
        reload: Reload::Live,
        value_name: "SECS",
        aliases: &[],
        note: "An RRset has one TTL: every host publishing in a domain should use the same.",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.dns.ttl = int(v)?;
            Ok(())
        },
        get: |c| num(c.dns.ttl),
    },
    Key {
        name: "dns_refresh",
        kind: Kind::Int,
        default: "3600",
        doc: "seconds between re-assertions of the published record",
        reload: Reload::Live,
        value_name: "SECS",
        aliases: &[],
        note: "The record is also re-asserted on SIGHUP; after a failure it is retried sooner (from 1 s, doubling).",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.dns.refresh = Duration::from_secs(int(v)?);
            Ok(())
        },
        get: |c| num(c.dns.refresh.as_secs()),
    },
    Key {
        name: "dns_withdraw_on_stop",
        kind: Kind::Bool,
        default: "true",
        doc: "delete the published record on a clean stop",
        reload: Reload::Live,
        value_name: "true|false",
        aliases: &[],
        note: "",
        sample: r#""#,
        switches: &[],
        set: |c, v| {
            c.dns.withdraw_on_stop = boolean(v)?;
            Ok(())
        },
        get: |c| Value::Boolean(c.dns.withdraw_on_stop),
    },
];

/// The keys whose value differs between `old` and `new`.
pub fn changed(old: &ServeConfig, new: &ServeConfig) -> Vec<&'static Key> {
    KEYS.iter().filter(|k| k.get(old) != k.get(new)).collect()
}

/// The keys whose change between `old` and `new` only a restart applies
/// (what a SIGHUP reload names in its warning).
pub fn restart_needed(old: &ServeConfig, new: &ServeConfig) -> Vec<&'static str> {
    changed(old, new)
        .into_iter()
        .filter(|k| k.reload == Reload::Restart)
        .map(|k| k.name)
        .collect()
}

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
            format!("`{}`", k.default)
        } else {
            k.default.to_owned()
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
            k.default.to_owned()
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

/// Edit distance (insertions, deletions, substitutions) between two names.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The key closest to `name` if it is within two edits.
pub fn closest(name: &str) -> Option<&'static Key> {
    KEYS.iter()
        .map(|k| (edit_distance(name, k.name), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_classification_comes_from_the_table() {
        let old = ServeConfig::default();
        let mut new = old.clone();
        new.log_level = "debug".into();
        assert_eq!(key("log_level").unwrap().reload, Reload::Live);
        assert!(restart_needed(&old, &new).is_empty(), "log_level is live");
        new.log_format = crate::config::LogFormat::Json;
        assert_eq!(restart_needed(&old, &new), ["log_format"]);
        new.access.deny.push("10.0.0.0/8".parse().unwrap());
        new.lcid = 1031;
        assert_eq!(restart_needed(&old, &new), ["lcid", "log_format"]);
        let changed: Vec<_> = changed(&old, &new).iter().map(|k| k.name).collect();
        assert_eq!(changed, ["lcid", "deny", "log_level", "log_format"]);
    }

    #[test]
    fn a_change_of_each_key_is_seen_as_that_key() {
        // Each key set to a value other than the default is seen as
        // changed by its own key, and by no other.
        for k in KEYS {
            let mut cfg = ServeConfig::default();
            let v = match k.kind {
                Kind::Int => Value::Integer(k.get(&cfg).as_integer().unwrap() + 1),
                Kind::Bool => Value::Boolean(!k.get(&cfg).as_bool().unwrap()),
                _ => continue,
            };
            k.set(&mut cfg, &v).unwrap();
            let changed: Vec<_> = changed(&ServeConfig::default(), &cfg)
                .iter()
                .map(|k| k.name)
                .filter(|n| *n == k.name || *n != "ndr64") // host_build implies it
                .collect();
            assert_eq!(changed, [k.name]);
        }
    }

    #[test]
    fn documented_literal_defaults_are_the_real_ones() {
        let cfg = ServeConfig::default();
        let mut literal = 0;
        for k in KEYS.iter().filter(|k| k.default_is_literal()) {
            let doc: toml::Table = format!("x = {}", k.default).parse().unwrap();
            assert_eq!(doc["x"], k.get(&cfg), "{}", k.name);
            literal += 1;
        }
        assert!(literal > KEYS.len() / 2);
    }

    #[test]
    fn names_and_flags() {
        assert_eq!(
            key("max_clock_skew_minutes").unwrap().flag(),
            "max-clock-skew-minutes"
        );
        assert_eq!(key("data_dir").unwrap().env_var(), "KMSD_DATA_DIR");
        assert_eq!(edit_distance("listn", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("lsiten").map(|k| k.name), Some("listen"));
        assert_eq!(closest("service_host").map(|k| k.name), None);
        let mut names: Vec<_> = KEYS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KEYS.len(), "a key declared twice");
    }
}
