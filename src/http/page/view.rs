//! The typed view: what the page says, as plain values built by one small
//! function per part of the page. No markup here.

use super::{PageDb, Row, View};
use crate::host::Host;
use crate::http::data::ActivationRow;
use crate::metrics::{Metrics, RequestResult};
use crate::protocol::kms::Hresult;
use crate::protocol::kms::products::{self, Pool};
use crate::report::{self, ClientRow, DnsReport, HostReport, StatusReport};
use crate::store::CountMode;
use std::net::SocketAddr;

/// The whole page's content.
pub(super) struct StatusView<'a> {
    pub(super) head: Head<'a>,
    pub(super) tiles: Vec<Tile>,
    /// The hosts sharing the database (none: the section is left out).
    pub(super) fleet: Vec<FleetHost<'a>>,
    pub(super) pools: Vec<PoolCard>,
    /// The license packs as the host last read them.
    pub(super) licenses: std::sync::Arc<crate::licenses::watch::Snapshot>,
    pub(super) groups: Vec<GroupRow<'a>>,
    /// ePID groups in the database that this host does not serve.
    pub(super) not_served: Vec<&'a str>,
    pub(super) activations: Vec<ActivationLine<'a>>,
    /// The SRV record published per domain (none: the section is left out).
    pub(super) dns: Vec<DnsLine<'a>>,
    pub(super) inventory: Inventory<'a>,
    pub(super) foot: Foot<'a>,
}

/// The header's facts about the host.
pub(super) struct Head<'a> {
    pub(super) shutting_down: bool,
    pub(super) listen: String,
    pub(super) count_mode: String,
    pub(super) count_mode_note: String,
    pub(super) host_build: &'a str,
    pub(super) host_build_name: &'static str,
    pub(super) hwid: &'a str,
    pub(super) started: String,
    pub(super) pid: &'a str,
}

/// One counter tile.
pub(super) struct Tile {
    pub(super) id: &'static str,
    pub(super) label: &'static str,
    pub(super) value: u64,
    /// Shown in red when not zero.
    pub(super) alarm: bool,
}

/// One host of a fleet, as `kmsd status` lists it.
pub(super) struct FleetHost<'a> {
    pub(super) id: &'a str,
    /// Heard from lately ([`report::HOST_GONE_MS`]); else silent.
    pub(super) alive: bool,
    /// Its KMS listeners, "-" when it noted none.
    pub(super) listen: String,
    pub(super) version: Option<&'a str>,
    pub(super) started: String,
    pub(super) heartbeat: String,
    pub(super) requests: u64,
}

/// One count pool.
pub(super) struct PoolCard {
    pub(super) pool: Pool,
    pub(super) count: u32,
    pub(super) capacity: u32,
    /// Fixed count mode: the count is what every client is told.
    pub(super) fixed: bool,
    pub(super) thresholds: Vec<Bar>,
}

/// One product threshold of a pool.
pub(super) struct Bar {
    pub(super) who: &'static str,
    pub(super) needs: u32,
    pub(super) reached: bool,
}

/// One served product group.
pub(super) struct GroupRow<'a> {
    pub(super) group: &'static str,
    pub(super) pool: &'static str,
    pub(super) epid: &'a str,
}

/// One domain this host publishes its SRV record in.
pub(super) struct DnsLine<'a> {
    pub(super) domain: &'a str,
    pub(super) record: &'a str,
    pub(super) published: bool,
    pub(super) last_success: String,
    /// The last failure and how many since the last success.
    pub(super) error: Option<(&'a str, u64)>,
}

/// One recent activation.
pub(super) struct ActivationLine<'a> {
    pub(super) id: i64,
    /// ISO 8601 UTC.
    pub(super) time: &'a str,
    pub(super) ago: String,
    pub(super) workstation: &'a str,
    pub(super) cmid: &'a str,
    pub(super) address: &'a str,
    pub(super) product: &'a str,
    pub(super) sku_id: &'a str,
    /// The KMS group's name, or its ID when the catalog has none.
    pub(super) group: &'a str,
    pub(super) protocol: u16,
    pub(super) vm: bool,
    pub(super) count: u32,
    pub(super) needs: u32,
    pub(super) license_status: &'a str,
    pub(super) result: Badge,
}

/// The inventory and its search box.
pub(super) struct Inventory<'a> {
    pub(super) q: &'a str,
    pub(super) matching: u64,
    pub(super) rows: Vec<ClientLine<'a>>,
}

/// One machine of the inventory.
pub(super) struct ClientLine<'a> {
    pub(super) live: bool,
    pub(super) cmid: &'a str,
    pub(super) workstation: &'a str,
    pub(super) product: &'a str,
    pub(super) pool: &'a str,
    pub(super) address: &'a str,
    pub(super) first_seen: &'a str,
    pub(super) last_seen: &'a str,
    pub(super) requests: u64,
    pub(super) last_result: Badge,
    pub(super) last_count: u32,
}

pub(super) struct Foot<'a> {
    pub(super) database: &'a str,
    pub(super) schema_version: i64,
    pub(super) rendered: String,
}

/// A result as a coloured badge: its CSS class and its text.
pub(super) struct Badge {
    pub(super) class: &'static str,
    pub(super) label: String,
}

impl Badge {
    /// How a request's result reads: "answered", or "refused" and the
    /// HRESULT sent instead.
    pub(super) fn result(r: Hresult) -> Self {
        if r.is_answered() {
            Self {
                class: "ok",
                label: r.to_string(),
            }
        } else {
            Self {
                class: "bad",
                label: format!("refused {r}"),
            }
        }
    }
}

impl<'a> StatusView<'a> {
    pub(super) fn new(v: &View<'a>) -> Self {
        let db: &'a PageDb = v.db;
        let s = &db.status;
        let served = v.host.served_groups();
        StatusView {
            head: Head::new(v, s),
            tiles: tiles(v.host.metrics(), s),
            fleet: fleet(s),
            pools: pools(v.host),
            licenses: v.host.licenses().snapshot(),
            groups: groups(v.host, &served),
            not_served: not_served(s, &served),
            activations: db
                .activations
                .iter()
                .map(|a| ActivationLine::new(a, v.now_ms))
                .collect(),
            dns: s.dns.iter().map(DnsLine::new).collect(),
            inventory: Inventory {
                q: v.q,
                matching: db.matching,
                rows: db.clients.iter().map(ClientLine::new).collect(),
            },
            foot: Foot {
                database: &s.database,
                schema_version: s.schema_version,
                rendered: short_time(&report::iso_utc(v.now_ms)),
            },
        }
    }
}

impl<'a> Head<'a> {
    fn new(v: &View<'a>, s: &'a StatusReport) -> Self {
        let mode = v.host.count_mode();
        let host_build = s.host_build.as_deref().unwrap_or("-");
        Head {
            shutting_down: v.shutting_down,
            listen: listen_text(v.kms_addrs),
            count_mode: mode.to_string(),
            count_mode_note: count_mode_note(mode),
            host_build,
            host_build_name: build_name(host_build),
            hwid: s.hwid.as_deref().unwrap_or("-"),
            started: s.started.as_deref().map_or_else(|| "-".into(), short_time),
            pid: s.pid.as_deref().unwrap_or("-"),
        }
    }
}

/// The KMS listeners, "none" without one.
fn listen_text(addrs: &[SocketAddr]) -> String {
    if addrs.is_empty() {
        return "none".to_owned();
    }
    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    addrs.join(", ")
}

fn count_mode_note(mode: CountMode) -> String {
    match mode {
        CountMode::Real => "distinct clients, 30-day window".to_owned(),
        CountMode::Fixed(n) => format!("every client is told {n}"),
    }
}

/// The Windows release of a host build number ("" when unknown).
fn build_name(host_build: &str) -> &'static str {
    host_build
        .parse::<u32>()
        .ok()
        .and_then(products::win_build)
        .map_or("", |b| b.name)
}

/// The counters since start, and the database's sizes.
fn tiles(m: &Metrics, s: &StatusReport) -> Vec<Tile> {
    let n = |r| m.requests_with(r);
    let tile = |id, label, value, alarm| Tile {
        id,
        label,
        value,
        alarm,
    };
    vec![
        tile(
            "answered",
            "answered since start",
            n(RequestResult::Answered),
            false,
        ),
        tile(
            "refused",
            "refused since start",
            n(RequestResult::Refused),
            false,
        ),
        tile(
            "invalid",
            "invalid or faulted",
            n(RequestResult::Invalid) + n(RequestResult::Fault),
            false,
        ),
        tile(
            "store-failures",
            "store failures",
            n(RequestResult::StoreError),
            true,
        ),
        tile("inventory", "machines in the inventory", s.inventory, false),
        tile("records", "activation records kept", s.records_kept, false),
    ]
}

/// The hosts of a fleet (none for a single host's database).
pub(super) fn fleet(s: &StatusReport) -> Vec<FleetHost<'_>> {
    s.hosts.iter().map(FleetHost::new).collect()
}

impl<'a> FleetHost<'a> {
    fn new(h: &'a HostReport) -> Self {
        FleetHost {
            id: &h.id,
            alive: h.alive,
            listen: if h.listen.is_empty() {
                "-".to_owned()
            } else {
                h.listen.join(", ")
            },
            version: h.version.as_deref(),
            started: short_time(&h.started),
            heartbeat: short_time(&h.last_heartbeat),
            requests: h.requests,
        }
    }
}

/// The pools as the host counts them now.
fn pools(host: &Host) -> Vec<PoolCard> {
    let fixed = matches!(host.count_mode(), CountMode::Fixed(_));
    host.pools_now()
        .into_iter()
        .map(|p| PoolCard {
            pool: p.pool,
            count: p.count,
            capacity: p.capacity,
            fixed,
            thresholds: report::thresholds(p.pool, p.count)
                .into_iter()
                .map(|t| Bar {
                    who: t.who,
                    needs: t.needs,
                    reached: t.reached,
                })
                .collect(),
        })
        .collect()
}

/// The groups this host serves, with the ePID it answers each with.
fn groups<'a>(host: &'a Host, served: &[&'static str]) -> Vec<GroupRow<'a>> {
    served
        .iter()
        .map(|&g| GroupRow {
            group: g,
            pool: products::epid_group(g).map_or("", |e| pool_title(e.pool)),
            epid: host.epid(g).map_or("-", |e| e.as_str()),
        })
        .collect()
}

/// The groups with an ePID in the database that this host does not serve.
fn not_served<'a>(s: &'a StatusReport, served: &[&str]) -> Vec<&'a str> {
    s.epids
        .iter()
        .filter(|e| !served.contains(&e.group.as_str()))
        .map(|e| e.group.as_str())
        .collect()
}

impl<'a> ActivationLine<'a> {
    fn new(r: &'a Row<ActivationRow>, now_ms: i64) -> Self {
        let a = &r.row;
        ActivationLine {
            id: a.id,
            time: &a.time,
            ago: ago(now_ms, a.time_ms),
            workstation: &a.workstation,
            cmid: &a.cmid,
            address: &a.address,
            product: &a.product,
            sku_id: &a.sku_id,
            group: a.kms_group.as_deref().unwrap_or(&a.kms_id),
            protocol: a.protocol,
            vm: a.vm,
            count: a.count,
            needs: a.n_policy,
            license_status: &a.license_status,
            result: Badge::result(r.result),
        }
    }
}

impl<'a> DnsLine<'a> {
    fn new(d: &'a DnsReport) -> Self {
        DnsLine {
            domain: &d.domain,
            record: &d.record,
            published: d.published,
            last_success: d
                .last_success
                .as_deref()
                .map_or_else(|| "never".into(), short_time),
            error: d.last_error.as_deref().map(|e| (e, d.failures)),
        }
    }
}

impl<'a> ClientLine<'a> {
    fn new(r: &'a Row<ClientRow>) -> Self {
        let c = &r.row;
        ClientLine {
            live: c.live,
            cmid: &c.cmid,
            workstation: &c.workstation,
            product: &c.product,
            pool: &c.pool,
            address: &c.address,
            first_seen: &c.first_seen,
            last_seen: &c.last_seen,
            requests: c.requests,
            last_result: Badge::result(r.result),
            last_count: c.last_count,
        }
    }
}

impl Inventory<'_> {
    /// "4 machines", "newest 200 of 1,000 machines", "3 match"...
    pub(super) fn info(&self) -> String {
        let shown = self.rows.len() as u64;
        let machines = plural(self.matching, "machine", "machines");
        match (self.q.trim().is_empty(), shown < self.matching) {
            (true, true) => format!("newest {shown} of {machines}"),
            (true, false) => machines,
            (false, true) => format!("{} match; newest {shown} shown", self.matching),
            (false, false) => format!("{machines} match"),
        }
    }
}

pub(super) fn pool_title(p: Pool) -> &'static str {
    match p {
        Pool::Windows => "Windows",
        Pool::Office2010 => "Office 2010",
        Pool::Office2013Plus => "Office 2013 and later",
    }
}

/// A stable element id for a pool ("office2013+" has no `+` in it).
pub(super) fn pool_key(p: Pool) -> &'static str {
    match p {
        Pool::Windows => "windows",
        Pool::Office2010 => "office2010",
        Pool::Office2013Plus => "office2013plus",
    }
}

/// "just now", "5 min ago", "3 h ago", "2 d ago".
pub(super) fn ago(now_ms: i64, t_ms: i64) -> String {
    let s = (now_ms - t_ms).max(0) / 1000;
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// "2024-01-01T12:34:56Z" as "2024-01-01 12:34:56".
pub(super) fn short_time(iso: &str) -> String {
    iso.trim_end_matches('Z').replacen('T', " ", 1)
}

pub(super) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
