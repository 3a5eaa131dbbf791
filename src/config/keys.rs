//! The one table of configuration keys. Every layer (TOML file, `KMSD_*`
//! environment, `kmsd serve` flags), the documentation (`kmsd config keys`,
//! `kmsd config sample`, the README: see `config::render`) and the SIGHUP
//! reload classification come from [`KEYS`]: a key is declared here once,
//! with how it is read into a [`ServeConfig`] and read back out.
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

use super::value::{Kind, cidrs, codec, int, list, num, optional, parsed, string, strings, text};
use super::{ServeConfig, format_hwid, parse_hwid};
use crate::protocol::kms::products;
use crate::server::access::AccessList;
use crate::store::postgres::url::redact_backend;
use std::borrow::Cow;
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
/// (or from what `field!` makes of a plain field).
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

/// The rest of the entry of a key that is one field of [`ServeConfig`]:
/// * `..field!(int, lcid)`, `..field!(secs, dns.refresh)`: a plain field,
///   read and written by a codec of `value::codec` (`int`, `secs`,
///   `millis`, `flag`, `string`, `parsed`), which also gives the kind and
///   the flag's value name (the entry may give its own);
/// * `..field!(Kind::Str, data_dir, READ, WRITE)`: a field of the given kind
///   that the closure `READ` (`|value| -> Result<_, String>`) reads from
///   the value and `WRITE` (`|field| -> Value`) writes back.
macro_rules! field {
    ($codec:ident, $($field:ident).+) => {
        Key {
            kind: codec::$codec::KIND,
            value_name: codec::$codec::VALUE_NAME,
            set: |c, v| put(&mut c.$($field).+, v, codec::$codec::read),
            get: |c| codec::$codec::write(&c.$($field).+),
            ..Key::BASE
        }
    };
    ($kind:expr, $($field:ident).+, $read:expr, $write:expr $(,)?) => {
        Key {
            kind: $kind,
            set: |c, v| put(&mut c.$($field).+, v, $read),
            get: |c| show(&c.$($field).+, $write),
            ..Key::BASE
        }
    };
}

/// `*slot = read(v)?` (for `field!`: a closure's types come from the
/// slot).
fn put<T>(
    slot: &mut T,
    v: &Value,
    read: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<(), String> {
    *slot = read(v)?;
    Ok(())
}

/// `write(field)` (for `field!`: the closure's types come from the field).
fn show<T>(field: &T, write: impl FnOnce(&T) -> Value) -> Value {
    write(field)
}

/// Every key, in the order the documentation lists them. The order is also
/// the order values are applied: `host_build` implies `ndr64` unless
/// `ndr64` (later) is set too.
pub static KEYS: &[Key] = &[
    Key {
        name: "listen",
        doc: "addresses the KMS listener binds",
        value_name: "ADDR:PORT",
        note: "The IPv6 wildcard is IPv6-only, beside IPv4.",
        ..field!(Kind::List, listen, |v| parsed(v, "ADDR:PORT"), |a| list(a))
    },
    Key {
        name: "data_dir",
        default_text: "per-user or /var/lib/kmsd",
        doc: "directory of the database (pools, ePIDs, inventory)",
        value_name: "DIR",
        note: "Default: $STATE_DIRECTORY (systemd), /var/lib/kmsd for root, else $XDG_STATE_HOME/kmsd or ~/.local/state/kmsd.",
        sample: r#""/var/lib/kmsd""#,
        ..field!(
            Kind::Str,
            data_dir,
            |v| Ok(PathBuf::from(string(v)?)),
            |d| text(d.display())
        )
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
        default_text: "all ePID groups",
        doc: "ePID groups (host keys) served; others get 0xC004F042",
        reload: Reload::Live,
        value_name: "GROUP",
        ..field!(
            Kind::List,
            served_groups,
            |v| Ok(strings(v)?.into_iter().map(group_name).collect()),
            |g| list(g)
        )
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
        default_text: "0 (off)",
        doc: "refuse clients whose clock is further off (0xC004F06C)",
        reload: Reload::Live,
        value_name: "MINUTES",
        aliases: &["max-clock-skew"],
        note: "0 turns the check off. Windows hosts use 240 (4 hours).",
        sample: "0",
        ..field!(
            Kind::Int,
            max_clock_skew,
            |v| {
                let minutes: u32 = int(v)?;
                Ok((minutes > 0).then(|| Duration::from_secs(u64::from(minutes) * 60)))
            },
            |d| num(d.map_or(0, |d| d.as_secs() / 60))
        )
    },
    Key {
        name: "epids",
        default_text: "generated once",
        doc: "fixed ePID per group, e.g. `Windows = \"03612-...\"`",
        value_name: "GROUP=EPID",
        aliases: &["epid"],
        note: "Groups not listed get one generated once and kept. A TOML table: keep it at the end of the file.",
        sample: r#"Windows = "03612-04918-012-345678-03-1033-26100.0000-3052024""#,
        ..field!(
            Kind::Table,
            epids,
            |v| {
                let t = v
                    .as_table()
                    .ok_or_else(|| format!("expected a table, found {v}"))?;
                t.iter()
                    .map(|(g, e)| Ok((group_name(g), string(e)?.to_owned())))
                    .collect()
            },
            |e| Value::Table(e.iter().map(|(g, e)| (g.clone(), text(e))).collect())
        )
    },
    Key {
        name: "hwid",
        doc: "host hardware ID sent to protocol 6 clients",
        value_name: "16HEX",
        note: "16 hex digits.",
        ..field!(Kind::Str, hwid, |v| parse_hwid(string(v)?), |h| text(
            format_hwid(h)
        ))
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
        name: "license_reclaim_days",
        doc: "days a license seat is kept without an answered request (1..=180)",
        value_name: "DAYS",
        ..field!(int, license_reclaim_days)
    },
    Key {
        name: "shutdown_grace_secs",
        doc: "seconds in-flight exchanges get on shutdown",
        reload: Reload::Live,
        ..field!(secs, shutdown_grace)
    },
    Key {
        name: "allow",
        default_text: "[] (loopback and private networks)",
        doc: "extra address blocks allowed, e.g. `0.0.0.0/0`",
        reload: Reload::Live,
        value_name: "CIDR",
        note: "Loopback, RFC 1918 private, link-local and IPv6 unique-local sources are always allowed unless denied; \"0.0.0.0/0\" allows everyone.",
        sample: "[]",
        ..field!(
            Kind::List,
            access.allow,
            |v| Ok([AccessList::default().allow, cidrs(v)?].concat()),
            |a| {
                let defaults = AccessList::default().allow;
                list(a.iter().filter(|a| !defaults.contains(a)))
            }
        )
    },
    Key {
        name: "deny",
        doc: "address blocks refused (wins over allow)",
        reload: Reload::Live,
        value_name: "CIDR",
        ..field!(Kind::List, access.deny, cidrs, |d| list(d))
    },
    Key {
        name: "store",
        doc: "`sqlite` (one file in the data dir), `memory` (nothing on disk, forgotten at exit) or `postgres://USER[:PASS]@HOST[:PORT]/DB` for a fleet",
        value_name: "sqlite|memory|URL",
        note: "A fleet: every host with the same URL shares one count, one inventory, one set of ePIDs and one activation log. TLS: add ?sslmode=verify-full&sslrootcert=/path/ca.pem.",
        sample: r#""postgres://kmsd@db.example:5432/kmsd""#,
        ..field!(Kind::Str, store, |v| string(v)?.parse(), |b| text(
            redact_backend(b)
        ))
    },
    Key {
        name: "store_timeout_ms",
        doc: "PostgreSQL: milliseconds a request waits for its commit",
        value_name: "MS",
        note: "Past it the client gets E_FAIL (0x80004005), is not counted, and retries later.",
        ..field!(
            Kind::Int,
            store_timeout,
            |v| Ok(Duration::from_millis(int::<u64>(v)?.max(1))),
            |d| num(d.as_millis())
        )
    },
    Key {
        name: "store_isolation",
        doc: "PostgreSQL: `read-committed`, `repeatable-read` or `serializable`",
        value_name: "LEVEL",
        note: "Counts are exact under each; repeatable-read and serializable retry on conflicts (how CockroachDB and YugabyteDB run).",
        ..field!(
            Kind::Str,
            store_isolation,
            |v| string(v)?.parse::<crate::store::Isolation>(),
            |i| text(i.name())
        )
    },
    Key {
        name: "store_busy_timeout_ms",
        doc: "milliseconds a write waits for a locked database",
        note: "A client whose write times out gets an error answer and is not counted.",
        ..field!(millis, store_busy_timeout)
    },
    Key {
        name: "durability",
        doc: "SQLite: `full` (a count is on disk before its answer leaves) or `os` (written, not flushed)",
        value_name: "full|os",
        note: "`os` survives a crash or kill -9 of kmsd, not a power cut or an OS crash; for labs. The default waits for the disk's flush on every commit.",
        ..field!(
            Kind::Str,
            durability,
            |v| {
                let s = string(v)?;
                crate::store::Durability::parse(s)
                    .ok_or_else(|| format!("{s:?}: expected full or os"))
            },
            |d| text(d.name())
        )
    },
    Key {
        name: "http",
        default_text: "off",
        doc: "admin listener (metrics, health, status page), e.g. `127.0.0.1:9688`",
        value_name: "ADDR:PORT|off",
        note: "Serves /metrics, /healthz, /readyz, /api/* and a status page at /. Off unless set; keep it on loopback or behind a firewall.",
        sample: r#""127.0.0.1:9688""#,
        ..field!(
            Kind::Str,
            http,
            |v| match string(v)? {
                "" | "off" => Ok(None),
                s => Ok(Some(
                    s.parse().map_err(|_| format!("{s:?} is not ADDR:PORT"))?
                )),
            },
            |h| h.map_or_else(|| text("off"), text)
        )
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
        doc: "domains whose `_vlmcs._tcp` SRV record this host publishes by dynamic update, `DOMAIN[,PRIORITY[,WEIGHT]]`",
        reload: Reload::Live,
        value_name: "DOMAIN[,PRIO[,WEIGHT]]",
        note: "The format of Windows' DnsDomainPublishList, e.g. [\"lab.example.com,0,100\"]. The host adds its own record (the port it listens on) and only ever deletes its own, so several hosts can share the RRset; give them all the same dns_ttl. Failures are logged and retried and never stop the KMS service.",
        ..field!(
            Kind::List,
            dns.publish,
            |v| crate::dns::parse_publish_list(&strings(v)?),
            |p| list(p)
        )
    },
    Key {
        name: "dns_server",
        default_text: "the zone's SOA primary",
        doc: "DNS server the updates go to, `ADDR[:PORT]`",
        reload: Reload::Live,
        value_name: "ADDR:PORT",
        note: "Default: the MNAME of the zone's SOA, looked up through the name servers of /etc/resolv.conf.",
        ..field!(
            Kind::Str,
            dns.server,
            |v| optional(v, crate::dns::parse_server),
            |s| s.map_or_else(|| text(""), text)
        )
    },
    Key {
        name: "dns_tsig_key",
        default_text: "none (unsigned updates)",
        doc: "TSIG key file the updates are signed with, as `tsig-keygen` writes it (hmac-sha256 or hmac-sha512)",
        reload: Reload::Live,
        value_name: "PATH",
        note: "Read when the configuration is (at start and on SIGHUP). Without a key, updates are unsigned: only for a zone that allows them (a Windows DNS zone set to non-secure updates).",
        ..field!(
            Kind::Str,
            dns.tsig_key,
            |v| optional(v, |p| crate::dns::TsigKey::load(std::path::Path::new(p))),
            |k| k
                .as_ref()
                .map_or_else(|| text(""), |k| text(k.path.display()))
        )
    },
    Key {
        name: "dns_host_name",
        default_text: "this machine's name",
        doc: "host name the SRV record points clients at",
        reload: Reload::Live,
        value_name: "NAME",
        note: "A name without a dot gets the domain appended.",
        ..field!(
            Kind::Str,
            dns.host_name,
            |v| optional(v, |n| {
                crate::dns::normal_name(n).ok_or_else(|| format!("{n:?} is not a host name"))
            }),
            |n| text(n.as_deref().unwrap_or(""))
        )
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

#[cfg(test)]
mod tests;
