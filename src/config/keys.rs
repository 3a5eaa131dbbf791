//! The one table of configuration keys. Every layer (TOML file, `KMSD_*`
//! environment, `kmsd serve` flags), the documentation (`kmsd config keys`,
//! `kmsd config sample`, the README: see [`render`](super::render)) and the
//! SIGHUP reload classification come from [`KEYS`]: a key is declared here
//! once, with how it is read into a [`ServeConfig`] and read back out.
//!
//! Adding a key: a field of [`ServeConfig`] with its default in
//! `ServeConfig::default()` (the one home of a default: the documentation
//! shows that value), an entry here, and a check in
//! [`ServeConfig::validate`] if not every value of its type is valid. A key
//! stored as is in one field is one short entry:
//!
//! ```text
//! Key {
//!     name: "lcid",
//!     doc: "host locale id the generated ePIDs name",
//!     value_name: "LCID",
//!     ..field!(int, lcid)
//! },
//! ```

use super::value::{Kind, cidrs, codec, int, list, num, parsed, string, strings, text};
use super::{ServeConfig, parse_hwid};
use crate::protocol::kms::products;
use crate::server::access::AccessList;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use toml::Value;

/// When a running host applies a change of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// On SIGHUP, without dropping connections.
    Live,
    /// Only on a restart; SIGHUP logs the key as needing one.
    Restart,
}

/// One configuration key. An entry gives what differs from [`Key::BASE`]
/// (or from what [`field!`] makes of a plain field).
#[derive(Clone, Copy)]
pub struct Key {
    /// The TOML key; the flag is `--` plus the name with `-` for `_`, the
    /// environment variable `KMSD_` plus the name in capitals.
    pub name: &'static str,
    pub kind: Kind,
    /// The default in words, for a default that is no fixed value (`"off"`,
    /// `"per-user or /var/lib/kmsd"`); empty for the value in
    /// `ServeConfig::default()`. See [`Key::shown_default`].
    pub default_text: &'static str,
    /// What the key does (one line).
    pub doc: &'static str,
    /// [`Reload::Restart`] unless the entry says [`Reload::Live`].
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
    /// What an entry does not say. Its `name`, `set` and `get` are
    /// placeholders every entry replaces (the tests of every key's name,
    /// flag and value find one that does not).
    pub const BASE: Self = Self {
        name: "",
        kind: Kind::Str,
        default_text: "",
        doc: "",
        reload: Reload::Restart,
        value_name: "VALUE",
        aliases: &[],
        note: "",
        sample: "",
        switches: &[],
        set: |_, _| Err("the key has no setter".into()),
        get: |_| Value::String(String::new()),
    };

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

    /// The default as the documentation shows it: the words of
    /// `default_text`, else the value in `ServeConfig::default()` as TOML
    /// writes it.
    pub fn shown_default(&self) -> Cow<'static, str> {
        if self.default_text.is_empty() {
            Cow::Owned(self.get(&ServeConfig::default()).to_string())
        } else {
            Cow::Borrowed(self.default_text)
        }
    }

    /// Whether the shown default is a literal TOML value (else it is prose).
    pub fn default_is_literal(&self) -> bool {
        format!("x = {}", self.shown_default())
            .parse::<toml::Table>()
            .is_ok()
    }
}

/// The key named `name`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// An ePID group's canonical name if it is one; else the name as written
/// (the one check of group names is [`ServeConfig::validate`]).
fn group_name(g: &str) -> String {
    products::epid_group(g).map_or_else(|| g.to_owned(), |e| e.name.to_owned())
}

/// The rest of the entry of a key stored as is in one field of
/// [`ServeConfig`]: `..field!(int, lcid)`, `..field!(secs, dns.refresh)`.
/// The codec (a module of [`codec`](super::value::codec): `int`, `secs`,
/// `millis`, `flag`, `string`, `parsed`) gives the kind, the flag's value
/// name (the entry may give its own) and the setter and getter.
macro_rules! field {
    ($codec:ident, $($field:ident).+) => {
        Key {
            kind: codec::$codec::KIND,
            value_name: codec::$codec::VALUE_NAME,
            set: |c, v| {
                c.$($field).+ = codec::$codec::read(v)?;
                Ok(())
            },
            get: |c| codec::$codec::write(&c.$($field).+),
            ..Key::BASE
        }
    };
}

/// Every key, in the order the documentation lists them. The order is also
/// the order values are applied: `host_build` implies `ndr64` unless
/// `ndr64` (later) is set too.
pub static KEYS: &[Key] = &[
    Key {
        name: "listen",
        kind: Kind::List,
        doc: "addresses the KMS listener binds",
        value_name: "ADDR:PORT",
        note: "The IPv6 wildcard is IPv6-only, beside IPv4.",
        set: |c, v| {
            c.listen = parsed(v, "ADDR:PORT")?;
            Ok(())
        },
        get: |c| list(&c.listen),
        ..Key::BASE
    },
    Key {
        name: "data_dir",
        kind: Kind::Str,
        default_text: "per-user or /var/lib/kmsd",
        doc: "directory of the database (pools, ePIDs, inventory)",
        value_name: "DIR",
        note: "Default: $STATE_DIRECTORY (systemd), /var/lib/kmsd for root, else $XDG_STATE_HOME/kmsd or ~/.local/state/kmsd.",
        sample: r#""/var/lib/kmsd""#,
        set: |c, v| {
            c.data_dir = PathBuf::from(string(v)?);
            Ok(())
        },
        get: |c| text(c.data_dir.display()),
        ..Key::BASE
    },
    Key {
        name: "count_mode",
        doc: "`real` counts distinct clients; `fixed:N` always answers N (emulator)",
        value_name: "MODE",
        note: "With `real`, clients below their threshold stay unactivated, as with a Microsoft host; `fixed:N` remembers nothing.",
        ..field!(parsed, count_mode)
    },
    Key {
        name: "serve",
        kind: Kind::List,
        default_text: "all ePID groups",
        doc: "ePID groups (host keys) served; others get 0xC004F042",
        reload: Reload::Live,
        value_name: "GROUP",
        set: |c, v| {
            c.served_groups = strings(v)?.into_iter().map(group_name).collect();
            Ok(())
        },
        get: |c| list(&c.served_groups),
        ..Key::BASE
    },
    Key {
        name: "strict_products",
        doc: "refuse unknown KMS counted IDs (else serve them as Windows)",
        reload: Reload::Live,
        switches: &[("lenient-products", "false")],
        note: "Unknown IDs get 0xC004F042; false serves them as Windows clients.",
        ..field!(flag, strict_products)
    },
    Key {
        name: "max_clock_skew_minutes",
        kind: Kind::Int,
        default_text: "0 (off)",
        doc: "refuse clients whose clock is further off (0xC004F06C)",
        reload: Reload::Live,
        value_name: "MINUTES",
        aliases: &["max-clock-skew"],
        note: "0 turns the check off. Windows hosts use 240 (4 hours).",
        sample: "0",
        set: |c, v| {
            let minutes: u32 = int(v)?;
            c.max_clock_skew = (minutes > 0).then(|| Duration::from_secs(u64::from(minutes) * 60));
            Ok(())
        },
        get: |c| num(c.max_clock_skew.map_or(0, |d| d.as_secs() / 60)),
        ..Key::BASE
    },
    Key {
        name: "epids",
        kind: Kind::Table,
        default_text: "generated once",
        doc: "fixed ePID per group, e.g. `Windows = \"03612-...\"`",
        value_name: "GROUP=EPID",
        aliases: &["epid"],
        note: "Groups not listed get one generated once and kept. A TOML table: keep it at the end of the file.",
        sample: r#"Windows = "03612-04918-012-345678-03-1033-26100.0000-3052024""#,
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
        ..Key::BASE
    },
    Key {
        name: "hwid",
        kind: Kind::Str,
        doc: "host hardware ID sent to protocol 6 clients",
        value_name: "16HEX",
        note: "16 hex digits.",
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
        ..Key::BASE
    },
    Key {
        name: "host_build",
        kind: Kind::Int,
        doc: "host OS build the generated ePIDs name",
        value_name: "BUILD",
        note: "An older build also turns NDR64 off, as those hosts did not offer it.",
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
        ..Key::BASE
    },
    Key {
        name: "lcid",
        doc: "host locale id the generated ePIDs name",
        value_name: "LCID",
        ..field!(int, lcid)
    },
    Key {
        name: "ndr64",
        doc: "negotiate NDR64",
        ..field!(flag, ndr64)
    },
    Key {
        name: "btfn",
        doc: "answer bind-time feature negotiation",
        ..field!(flag, btfn)
    },
    Key {
        name: "activation_interval",
        doc: "minutes between retries while not activated (15..=43200)",
        reload: Reload::Live,
        value_name: "MINUTES",
        ..field!(int, activation_interval)
    },
    Key {
        name: "renewal_interval",
        doc: "minutes between renewals once activated (15..=43200)",
        reload: Reload::Live,
        value_name: "MINUTES",
        ..field!(int, renewal_interval)
    },
    Key {
        name: "max_connections",
        doc: "connections open at once",
        ..field!(int, max_connections)
    },
    Key {
        name: "max_connections_per_ip",
        doc: "connections open at once from one address",
        reload: Reload::Live,
        ..field!(int, max_connections_per_ip)
    },
    Key {
        name: "max_queued_per_ip",
        doc: "connections over the per-address limit that wait (up to read_timeout_secs) for a slot",
        reload: Reload::Live,
        note: "Many clients behind one NAT gateway share one address; 0 closes an over-limit connection at once.",
        ..field!(int, max_queued_per_ip)
    },
    Key {
        name: "max_requests_per_connection",
        doc: "requests one connection may make",
        reload: Reload::Live,
        ..field!(int, max_requests_per_connection)
    },
    Key {
        name: "read_timeout_secs",
        doc: "seconds for a whole PDU to arrive once it started",
        reload: Reload::Live,
        ..field!(secs, read_timeout)
    },
    Key {
        name: "idle_timeout_secs",
        doc: "seconds a connection may sit idle between PDUs",
        reload: Reload::Live,
        aliases: &["idle-timeout"],
        ..field!(secs, idle_timeout)
    },
    Key {
        name: "max_pdu_len",
        doc: "largest PDU accepted (300..=5840)",
        reload: Reload::Live,
        value_name: "BYTES",
        ..field!(int, max_pdu_len)
    },
    Key {
        name: "keep_records",
        doc: "activation records kept (oldest pruned)",
        ..field!(int, keep_records)
    },
    Key {
        name: "shutdown_grace_secs",
        doc: "seconds in-flight exchanges get on shutdown",
        reload: Reload::Live,
        ..field!(secs, shutdown_grace)
    },
    Key {
        name: "allow",
        kind: Kind::List,
        default_text: "[] (loopback and private networks)",
        doc: "extra address blocks allowed, e.g. `0.0.0.0/0`",
        reload: Reload::Live,
        value_name: "CIDR",
        note: "Loopback, RFC 1918 private, link-local and IPv6 unique-local sources are always allowed unless denied; \"0.0.0.0/0\" allows everyone.",
        sample: "[]",
        set: |c, v| {
            c.access.allow = AccessList::default().allow;
            c.access.allow.extend(cidrs(v)?);
            Ok(())
        },
        get: |c| {
            let defaults = AccessList::default().allow;
            list(c.access.allow.iter().filter(|a| !defaults.contains(a)))
        },
        ..Key::BASE
    },
    Key {
        name: "deny",
        kind: Kind::List,
        doc: "address blocks refused (wins over allow)",
        reload: Reload::Live,
        value_name: "CIDR",
        set: |c, v| {
            c.access.deny = cidrs(v)?;
            Ok(())
        },
        get: |c| list(&c.access.deny),
        ..Key::BASE
    },
    Key {
        name: "store",
        kind: Kind::Str,
        doc: "`sqlite` (one file in the data dir) or `postgres://USER[:PASS]@HOST[:PORT]/DB` for a fleet",
        value_name: "sqlite|URL",
        note: "A fleet: every host with the same URL shares one count, one inventory, one set of ePIDs and one activation log. TLS: add ?sslmode=verify-full&sslrootcert=/path/ca.pem.",
        sample: r#""postgres://kmsd@db.example:5432/kmsd""#,
        set: |c, v| {
            c.store = string(v)?.parse()?;
            Ok(())
        },
        get: |c| text(crate::store::postgres::url::redact_backend(&c.store)),
        ..Key::BASE
    },
    Key {
        name: "store_timeout_ms",
        kind: Kind::Int,
        doc: "PostgreSQL: milliseconds a request waits for its commit",
        value_name: "MS",
        note: "Past it the client gets E_FAIL (0x80004005), is not counted, and retries later.",
        set: |c, v| {
            c.store_timeout = Duration::from_millis(int::<u64>(v)?.max(1));
            Ok(())
        },
        get: |c| num(c.store_timeout.as_millis()),
        ..Key::BASE
    },
    Key {
        name: "store_isolation",
        kind: Kind::Str,
        doc: "PostgreSQL: `read-committed`, `repeatable-read` or `serializable`",
        value_name: "LEVEL",
        note: "Counts are exact under each; repeatable-read and serializable retry on conflicts (how CockroachDB and YugabyteDB run).",
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
        ..Key::BASE
    },
    Key {
        name: "store_busy_timeout_ms",
        doc: "milliseconds a write waits for a locked database",
        note: "A client whose write times out gets an error answer and is not counted.",
        ..field!(millis, store_busy_timeout)
    },
    Key {
        name: "durability",
        kind: Kind::Str,
        doc: "SQLite: `full` (a count is on disk before its answer leaves) or `os` (written, not flushed)",
        value_name: "full|os",
        note: "`os` survives a crash or kill -9 of kmsd, not a power cut or an OS crash; for labs. The default waits for the disk's flush on every commit.",
        set: |c, v| {
            let s = string(v)?;
            c.durability = crate::store::Durability::parse(s)
                .ok_or_else(|| format!("{s:?}: expected full or os"))?;
            Ok(())
        },
        get: |c| text(c.durability.name()),
        ..Key::BASE
    },
    Key {
        name: "http",
        kind: Kind::Str,
        default_text: "off",
        doc: "admin listener (metrics, health, status page), e.g. `127.0.0.1:9688`",
        value_name: "ADDR:PORT|off",
        note: "Serves /metrics, /healthz, /readyz, /api/* and a status page at /. Off unless set; keep it on loopback or behind a firewall.",
        sample: r#""127.0.0.1:9688""#,
        set: |c, v| {
            let s = string(v)?;
            c.http = match s {
                "" | "off" => None,
                _ => Some(s.parse().map_err(|_| format!("{s:?} is not ADDR:PORT"))?),
            };
            Ok(())
        },
        get: |c| c.http.map_or_else(|| text("off"), text),
        ..Key::BASE
    },
    Key {
        name: "http_max_connections",
        doc: "connections the admin listener holds at once",
        note: "When all are taken, a new connection replaces the oldest one still sending its request headers; headers must arrive within 5 s and a request is answered within 10 s.",
        ..field!(int, http_max_connections)
    },
    Key {
        name: "log_level",
        doc: "error, warn, info, debug, trace, or a tracing filter",
        reload: Reload::Live,
        value_name: "LEVEL",
        note: "RUST_LOG overrides it.",
        ..field!(string, log_level)
    },
    Key {
        name: "log_format",
        doc: "text or json",
        value_name: "text|json",
        ..field!(parsed, log_format)
    },
    Key {
        name: "dns_publish",
        kind: Kind::List,
        doc: "domains whose `_vlmcs._tcp` SRV record this host publishes by dynamic update, `DOMAIN[,PRIORITY[,WEIGHT]]`",
        reload: Reload::Live,
        value_name: "DOMAIN[,PRIO[,WEIGHT]]",
        note: "The format of Windows' DnsDomainPublishList, e.g. [\"lab.example.com,0,100\"]. The host adds its own record (the port it listens on) and only ever deletes its own, so several hosts can share the RRset; give them all the same dns_ttl. Failures are logged and retried and never stop the KMS service.",
        set: |c, v| {
            c.dns.publish = crate::dns::parse_publish_list(&strings(v)?)?;
            Ok(())
        },
        get: |c| list(&c.dns.publish),
        ..Key::BASE
    },
    Key {
        name: "dns_server",
        kind: Kind::Str,
        default_text: "the zone's SOA primary",
        doc: "DNS server the updates go to, `ADDR[:PORT]`",
        reload: Reload::Live,
        value_name: "ADDR:PORT",
        note: "Default: the MNAME of the zone's SOA, looked up through the name servers of /etc/resolv.conf.",
        set: |c, v| {
            let s = string(v)?;
            c.dns.server = match s.trim() {
                "" => None,
                s => Some(crate::dns::parse_server(s)?),
            };
            Ok(())
        },
        get: |c| c.dns.server.map_or_else(|| text(""), text),
        ..Key::BASE
    },
    Key {
        name: "dns_tsig_key",
        kind: Kind::Str,
        default_text: "none (unsigned updates)",
        doc: "TSIG key file the updates are signed with, as `tsig-keygen` writes it (hmac-sha256 or hmac-sha512)",
        reload: Reload::Live,
        value_name: "PATH",
        note: "Read when the configuration is (at start and on SIGHUP). Without a key, updates are unsigned: only for a zone that allows them (a Windows DNS zone set to non-secure updates).",
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
        ..Key::BASE
    },
    Key {
        name: "dns_host_name",
        kind: Kind::Str,
        default_text: "this machine's name",
        doc: "host name the SRV record points clients at",
        reload: Reload::Live,
        value_name: "NAME",
        note: "A name without a dot gets the domain appended.",
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
        ..Key::BASE
    },
    Key {
        name: "dns_ttl",
        doc: "TTL in seconds of the published SRV record",
        reload: Reload::Live,
        value_name: "SECS",
        note: "An RRset has one TTL: every host publishing in a domain should use the same.",
        ..field!(int, dns.ttl)
    },
    Key {
        name: "dns_refresh",
        doc: "seconds between re-assertions of the published record",
        reload: Reload::Live,
        note: "The record is also re-asserted on SIGHUP; after a failure it is retried sooner (from 1 s, doubling).",
        ..field!(secs, dns.refresh)
    },
    Key {
        name: "dns_withdraw_on_stop",
        doc: "delete the published record on a clean stop",
        reload: Reload::Live,
        ..field!(flag, dns.withdraw_on_stop)
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
