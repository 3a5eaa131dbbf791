//! The status page: server-rendered HTML with inline CSS, no scripts and no
//! external assets.
//!
//! [`load`] reads the database, [`StatusView::new`] turns what the page shows
//! into plain values (no markup), and [`maud`] renders them. Maud escapes
//! every spliced value, so text from the network (workstation names,
//! addresses, the search box) cannot become markup; the stylesheet is the
//! only text inserted raw.

use super::data::{self, ActivationRow};
use crate::host::Host;
use crate::protocol::kms::products::{self, Pool};
use crate::report::{self, ClientRow, StatusReport};
use crate::store::{ClientQuery, CountMode, Store, StoreError};
use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, PreEscaped, display, html};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// Recent activations shown.
const RECENT: usize = 25;
/// Inventory rows shown.
const INVENTORY_ROWS: usize = 200;

/// The stylesheet, inlined in a `<style>` element.
const CSS: &str = include_str!("page.css");

/// What the page reads from the store.
pub struct PageDb {
    pub status: StatusReport,
    pub activations: Vec<ActivationRow>,
    /// Inventory rows to show (matching the search).
    pub clients: Vec<ClientRow>,
    /// How many rows match the search (all of the inventory without one).
    pub matching: u64,
}

/// Reads what the page shows.
pub async fn load(store: &Store, now_ms: i64, q: &str) -> Result<PageDb, StoreError> {
    let status = StatusReport::new(store.status(now_ms).await?);
    let activations = data::recent_activations(store, RECENT).await?;
    let needle = data::needle(q);
    let query = ClientQuery {
        now_ms,
        pool: None,
        since_ms: None,
        limit: INVENTORY_ROWS,
    };
    let (clients, matching) = if needle.is_empty() {
        let rows = store.clients(query).await?;
        (rows.iter().map(ClientRow::new).collect(), status.inventory)
    } else {
        let query = ClientQuery {
            limit: usize::MAX,
            ..query
        };
        let mut all = data::clients(store, query, q).await?;
        let n = all.len() as u64;
        all.truncate(INVENTORY_ROWS);
        (all, n)
    };
    Ok(PageDb {
        status,
        activations,
        clients,
        matching,
    })
}

/// Everything one rendering needs.
pub struct View<'a> {
    pub host: &'a Host,
    pub kms_addrs: &'a [SocketAddr],
    pub shutting_down: bool,
    pub now_ms: i64,
    pub q: &'a str,
    pub db: &'a PageDb,
}

/// The page.
pub fn render(v: &View<'_>) -> String {
    StatusView::new(v).render().into_string()
}

/// The page when the database cannot be read.
pub fn render_error(status: StatusCode, msg: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "kmsd · error" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header.top { .wrap { .brand {
                    h1 { "kmsd" }
                    span.tag { "KMS host" }
                    span.state.down { (status.to_string()) }
                } } }
                main.wrap { section {
                    h2 { "The database cannot be read" }
                    p.sub #error { (msg) }
                } }
            }
        }
    }
    .into_string()
}

// ---------------------------------------------------------------------------
// The typed view: what the page says, as plain values.

/// The whole page's content.
struct StatusView<'a> {
    head: Head<'a>,
    tiles: Vec<Tile>,
    pools: Vec<PoolCard>,
    groups: Vec<GroupRow<'a>>,
    /// ePID groups in the database that this host does not serve.
    not_served: Vec<&'a str>,
    activations: Vec<ActivationLine<'a>>,
    /// The SRV record published per domain (none: the section is left out).
    dns: Vec<DnsLine<'a>>,
    inventory: Inventory<'a>,
    foot: Foot<'a>,
}

/// The header's facts about the host.
struct Head<'a> {
    shutting_down: bool,
    listen: String,
    count_mode: String,
    count_mode_note: String,
    host_build: &'a str,
    host_build_name: &'static str,
    hwid: &'a str,
    started: String,
    pid: &'a str,
}

/// One counter tile.
struct Tile {
    id: &'static str,
    label: &'static str,
    value: u64,
    /// Shown in red when not zero.
    alarm: bool,
}

/// One count pool.
struct PoolCard {
    pool: Pool,
    count: u32,
    capacity: u32,
    /// Fixed count mode: the count is what every client is told.
    fixed: bool,
    thresholds: Vec<Bar>,
}

/// One product threshold of a pool.
struct Bar {
    who: &'static str,
    needs: u32,
    reached: bool,
}

/// One served product group.
struct GroupRow<'a> {
    group: &'static str,
    pool: &'static str,
    epid: &'a str,
}

/// One domain this host publishes its SRV record in.
struct DnsLine<'a> {
    domain: &'a str,
    record: &'a str,
    published: bool,
    last_success: String,
    /// The last failure and how many since the last success.
    error: Option<(&'a str, u64)>,
}

/// One recent activation.
struct ActivationLine<'a> {
    id: i64,
    /// ISO 8601 UTC.
    time: &'a str,
    ago: String,
    workstation: &'a str,
    cmid: &'a str,
    address: &'a str,
    product: &'a str,
    sku_id: &'a str,
    /// The KMS group's name, or its ID when the catalog has none.
    group: &'a str,
    protocol: u16,
    vm: bool,
    count: u32,
    needs: u32,
    license_status: &'a str,
    result: Badge,
}

/// The inventory and its search box.
struct Inventory<'a> {
    q: &'a str,
    matching: u64,
    rows: Vec<ClientLine<'a>>,
}

/// One machine of the inventory.
struct ClientLine<'a> {
    live: bool,
    cmid: &'a str,
    workstation: &'a str,
    product: &'a str,
    pool: &'a str,
    address: &'a str,
    first_seen: &'a str,
    last_seen: &'a str,
    requests: u64,
    last_result: Badge,
    last_count: u32,
}

struct Foot<'a> {
    database: &'a str,
    schema_version: i64,
    rendered: String,
}

/// A result as a coloured badge: its CSS class and its text.
struct Badge {
    class: &'static str,
    label: String,
}

/// How a stored result ("answered", or the HRESULT refused with) reads.
fn result_badge(result: &str) -> Badge {
    if result == "answered" {
        Badge {
            class: "ok",
            label: "answered".into(),
        }
    } else {
        Badge {
            class: "bad",
            label: format!("refused {result}"),
        }
    }
}

impl<'a> StatusView<'a> {
    fn new(v: &View<'a>) -> Self {
        let host = v.host;
        let s = &v.db.status;
        let mode = host.count_mode();
        let listen = if v.kms_addrs.is_empty() {
            "none".to_owned()
        } else {
            let addrs: Vec<String> = v.kms_addrs.iter().map(ToString::to_string).collect();
            addrs.join(", ")
        };
        let host_build = s.host_build.as_deref().unwrap_or("-");
        let head = Head {
            shutting_down: v.shutting_down,
            listen,
            count_mode: mode.to_string(),
            count_mode_note: match mode {
                CountMode::Real => "distinct clients, 30-day window".to_owned(),
                CountMode::Fixed(n) => format!("every client is told {n}"),
            },
            host_build,
            host_build_name: host_build
                .parse::<u32>()
                .ok()
                .and_then(products::win_build)
                .map_or("", |b| b.name),
            hwid: s.hwid.as_deref().unwrap_or("-"),
            started: s.started.as_deref().map_or_else(|| "-".into(), short_time),
            pid: s.pid.as_deref().unwrap_or("-"),
        };

        let st = &host.stats;
        let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let tile = |id, label, value, alarm| Tile {
            id,
            label,
            value,
            alarm,
        };
        let tiles = vec![
            tile("answered", "answered since start", n(&st.answered), false),
            tile("refused", "refused since start", n(&st.refused), false),
            tile(
                "invalid",
                "invalid or faulted",
                n(&st.invalid) + n(&st.faults),
                false,
            ),
            tile(
                "store-failures",
                "store failures",
                n(&st.store_failures),
                true,
            ),
            tile("inventory", "machines in the inventory", s.inventory, false),
            tile("records", "activation records kept", s.records_kept, false),
        ];

        let fixed = matches!(mode, CountMode::Fixed(_));
        let pools = host
            .pools_now()
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
            .collect();

        let served = host.served_groups();
        let groups = served
            .iter()
            .map(|&g| GroupRow {
                group: g,
                pool: products::epid_group(g).map_or("", |e| pool_title(e.pool)),
                epid: host.epid(g).map_or("-", |e| e.as_str()),
            })
            .collect();
        let not_served = s
            .epids
            .iter()
            .filter(|e| !served.contains(&e.group.as_str()))
            .map(|e| e.group.as_str())
            .collect();

        let activations =
            v.db.activations
                .iter()
                .map(|a| ActivationLine {
                    id: a.id,
                    time: &a.time,
                    ago: ago(v.now_ms, a.time_ms),
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
                    result: result_badge(&a.result),
                })
                .collect();

        let rows =
            v.db.clients
                .iter()
                .map(|c| ClientLine {
                    live: c.live,
                    cmid: &c.cmid,
                    workstation: &c.workstation,
                    product: &c.product,
                    pool: &c.pool,
                    address: &c.address,
                    first_seen: &c.first_seen,
                    last_seen: &c.last_seen,
                    requests: c.requests,
                    last_result: result_badge(&c.last_result),
                    last_count: c.last_count,
                })
                .collect();

        let dns = s
            .dns
            .iter()
            .map(|d| DnsLine {
                domain: &d.domain,
                record: &d.record,
                published: d.published,
                last_success: d
                    .last_success
                    .as_deref()
                    .map_or_else(|| "never".into(), short_time),
                error: d.last_error.as_deref().map(|e| (e, d.failures)),
            })
            .collect();

        StatusView {
            head,
            tiles,
            pools,
            groups,
            not_served,
            activations,
            dns,
            inventory: Inventory {
                q: v.q,
                matching: v.db.matching,
                rows,
            },
            foot: Foot {
                database: &s.database,
                schema_version: s.schema_version,
                rendered: short_time(&report::iso_utc(v.now_ms)),
            },
        }
    }

    fn render(&self) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { "kmsd · KMS host status" }
                    style { (PreEscaped(CSS)) }
                }
                body {
                    (self.head.render())
                    main.wrap {
                        section.tiles #tiles {
                            @for t in &self.tiles { (t.render()) }
                        }
                        (self.render_pools())
                        (self.render_groups())
                        @if !self.dns.is_empty() { (self.render_dns()) }
                        (self.render_activations())
                        (self.inventory.render())
                    }
                    (self.foot.render())
                }
            }
        }
    }

    fn render_pools(&self) -> Markup {
        html! {
            section #pools {
                h2 { "Count pools" }
                p.sub {
                    "Distinct client machines seen in the last 30 days. A client activates once \
                     the count it is told reaches its product's threshold."
                }
                .pools { @for p in &self.pools { (p.render()) } }
            }
        }
    }

    fn render_groups(&self) -> Markup {
        html! {
            section #groups {
                h2 { "Served product groups" }
                p.sub { "The host key (ePID) answered to each product group this host serves." }
                .card.scroll { table.groups {
                    thead { tr { th { "Group" } th { "Pool" } th { "ePID" } } }
                    tbody {
                        @if self.groups.is_empty() {
                            tr { td.empty colspan="3" { "No product group is served." } }
                        }
                        @for g in &self.groups {
                            tr.group data-group=(g.group) {
                                td { (g.group) }
                                td { (g.pool) }
                                td.mono { (g.epid) }
                            }
                        }
                    }
                } }
                @if !self.not_served.is_empty() {
                    p.sub style="margin-top:8px" {
                        "Not served (refused): " (self.not_served.join(", "))
                    }
                }
            }
        }
    }

    fn render_dns(&self) -> Markup {
        html! {
            section #dns {
                h2 { "DNS" }
                p.sub { "The _vlmcs._tcp SRV record this host publishes by dynamic update, per domain." }
                .card.scroll { table.dns {
                    thead { tr { th { "Domain" } th { "State" } th { "Record" } th { "Last success (UTC)" } } }
                    tbody {
                        @for d in &self.dns {
                            tr data-domain=(d.domain) {
                                td { (d.domain) }
                                td { @if d.published {
                                    span.badge.ok { "published" }
                                } @else {
                                    span.badge.bad { "not published" }
                                } }
                                td.mono {
                                    (d.record)
                                    @if let Some((e, n)) = d.error {
                                        br; small.dns-error { "failing (" (n) "): " (e) }
                                    }
                                }
                                td { (d.last_success) }
                            }
                        }
                    }
                } }
            }
        }
    }

    fn render_activations(&self) -> Markup {
        html! {
            section #activations {
                h2 { "Recent activations" }
                p.sub { "The last " (RECENT) " requests, newest first." }
                .card.scroll { table {
                    thead { tr {
                        th { "When" } th { "Workstation" } th { "Address" } th { "Product" }
                        th { "Protocol" } th { "Count" } th { "License status" } th { "Result" }
                    } }
                    tbody {
                        @if self.activations.is_empty() {
                            tr { td.empty colspan="8" { "No activations yet." } }
                        }
                        @for a in &self.activations { (a.render()) }
                    }
                } }
            }
        }
    }
}

impl Head<'_> {
    fn render(&self) -> Markup {
        let (state_class, state) = if self.shutting_down {
            ("down", "shutting down")
        } else {
            ("ok", "serving")
        };
        html! {
            header.top { .wrap {
                .brand {
                    h1 { "kmsd" }
                    span.tag { "KMS host · version " (env!("CARGO_PKG_VERSION")) }
                    span.state.(state_class) #state { (state) }
                }
                dl.facts #host-facts {
                    div { dt { "Listening on" } dd.mono #listen { (self.listen) } }
                    div { dt { "Count mode" } dd #count-mode {
                        (self.count_mode) small { (self.count_mode_note) }
                    } }
                    div { dt { "Host build" } dd #host-build {
                        (self.host_build) small { (self.host_build_name) }
                    } }
                    div { dt { "HwID" } dd.mono { (self.hwid) } }
                    div { dt { "Started (UTC)" } dd {
                        (self.started) small { "pid " (self.pid) }
                    } }
                }
            } }
        }
    }
}

impl Tile {
    fn render(&self) -> Markup {
        html! {
            .tile.bad[self.alarm && self.value > 0] id={ "stat-" (self.id) } data-value=(self.value) {
                .v { (self.value) }
                .k { (self.label) }
            }
        }
    }
}

impl PoolCard {
    fn render(&self) -> Markup {
        let counted = if self.fixed {
            "reported to every client"
        } else if self.count == 1 {
            "client counted"
        } else {
            "clients counted"
        };
        let foot = if self.fixed {
            "Fixed count mode: no pool is kept.".to_owned()
        } else if self.capacity == 0 {
            "No client seen yet.".to_owned()
        } else {
            format!(
                "Capacity {} (twice the highest threshold seen)",
                self.capacity
            )
        };
        html! {
            article.pool id={ "pool-" (pool_key(self.pool)) } data-pool=(self.pool.name())
                data-count=(self.count) data-capacity=(self.capacity) {
                .pool-head {
                    h3 { (pool_title(self.pool)) }
                    span.mono.muted { (self.pool.name()) }
                }
                .count { span.value { (self.count) } small { (counted) } }
                @for t in &self.thresholds { (t.render(self.count)) }
                .foot { (foot) }
            }
        }
    }
}

impl Bar {
    fn render(&self, count: u32) -> Markup {
        let now = count.min(self.needs);
        let pct = if self.needs == 0 {
            100
        } else {
            u64::from(now) * 100 / u64::from(self.needs)
        };
        let (class, label) = if self.reached {
            ("ok", "activating")
        } else {
            ("wait", "waiting")
        };
        let hint = if self.reached {
            format!("{} clients activate", self.who)
        } else {
            let more = u64::from(self.needs - count);
            format!(
                "{more} more {} needed",
                if more == 1 { "client" } else { "clients" }
            )
        };
        html! {
            .threshold.reached[self.reached] data-needs=(self.needs) data-reached=(display(self.reached)) {
                .t-head {
                    span.who { (self.who) }
                    span.num { (count) " / " (self.needs) }
                    span.badge.(class) { (label) }
                }
                .bar role="progressbar" aria-label=(self.who) aria-valuemin="0"
                    aria-valuemax=(self.needs) aria-valuenow=(now) {
                    .fill style={ "width:" (pct) "%" } {}
                }
                .hint { (hint) }
            }
        }
    }
}

impl ActivationLine<'_> {
    fn render(&self) -> Markup {
        let short_cmid = self.cmid.get(..8).unwrap_or(self.cmid);
        html! {
            tr.activation data-id=(self.id) data-cmid=(self.cmid) {
                td.when {
                    time datetime=(self.time) title=(self.time) { (self.ago) }
                    span.second { (short_time(self.time)) }
                }
                td.workstation {
                    (self.workstation)
                    span.second.mono title=(self.cmid) { (short_cmid) "…" }
                }
                td.mono { (self.address) }
                td.product title=(self.sku_id) {
                    (self.product) span.second { (self.group) }
                }
                td { "v" (self.protocol) @if self.vm { " · VM" } }
                td.num { (self.count) span.second { "needs " (self.needs) } }
                td { (self.license_status) }
                td { (self.result.render()) }
            }
        }
    }
}

impl Inventory<'_> {
    /// "4 machines", "newest 200 of 1,000 machines", "3 match"...
    fn info(&self) -> String {
        let shown = self.rows.len() as u64;
        let machines = plural(self.matching, "machine", "machines");
        match (self.q.trim().is_empty(), shown < self.matching) {
            (true, true) => format!("newest {shown} of {machines}"),
            (true, false) => machines,
            (false, true) => format!("{} match; newest {shown} shown", self.matching),
            (false, false) => format!("{machines} match"),
        }
    }

    fn render(&self) -> Markup {
        html! {
            section #inventory {
                h2 { "Client inventory" }
                p.sub {
                    "Every machine that has asked, newest first. "
                    span.dot style="background:var(--ok)" {}
                    "live: counted in its pool now."
                }
                .card {
                    form.search method="get" action="/" role="search" {
                        input #q type="search" name="q" value=(self.q)
                            placeholder="Search workstation, CMID, address or product"
                            aria-label="Search the inventory";
                        button type="submit" { "Search" }
                        @if !self.q.is_empty() { a href="/" { "clear" } }
                        span.info #inventory-info data-matching=(self.matching) { (self.info()) }
                    }
                    .scroll { table {
                        thead { tr {
                            th { "Status" } th { "Workstation" } th { "Product" } th { "Address" }
                            th { "CMID" } th { "Last seen" } th { "Requests" } th { "Last result" }
                        } }
                        tbody {
                            @if self.rows.is_empty() {
                                tr { td.empty colspan="8" {
                                    @if self.q.trim().is_empty() {
                                        "No clients yet."
                                    } @else {
                                        "No machine matches the search."
                                    }
                                } }
                            }
                            @for c in &self.rows { (c.render()) }
                        }
                    } }
                }
            }
        }
    }
}

impl ClientLine<'_> {
    fn render(&self) -> Markup {
        html! {
            tr.client.live[self.live] data-live=(display(self.live)) data-cmid=(self.cmid) {
                td { span.dot {} (if self.live { "live" } else { "not counted" }) }
                td.workstation { (self.workstation) }
                td.product { (self.product) span.second { (self.pool) } }
                td.mono { (self.address) }
                td.mono { (self.cmid) }
                td.when {
                    (short_time(self.last_seen))
                    span.second { "first " (short_time(self.first_seen)) }
                }
                td.num { (self.requests) }
                td {
                    (self.last_result.render())
                    span.second { "count " (self.last_count) }
                }
            }
        }
    }
}

impl Foot<'_> {
    fn render(&self) -> Markup {
        html! {
            footer.wrap {
                a href="/metrics" { "metrics" }
                a href="/api/status" { "status JSON" }
                a href="/api/clients" { "clients JSON" }
                a href="/api/activations" { "activations JSON" }
                a href="/healthz" { "health" }
                .meta {
                    "Database " span.mono { (self.database) }
                    " · schema " (self.schema_version) " · rendered " (self.rendered) " UTC"
                }
            }
        }
    }
}

impl Badge {
    fn render(&self) -> Markup {
        html! { span.badge.(self.class) { (self.label) } }
    }
}

fn pool_title(p: Pool) -> &'static str {
    match p {
        Pool::Windows => "Windows",
        Pool::Office2010 => "Office 2010",
        Pool::Office2013Plus => "Office 2013 and later",
    }
}

/// A stable element id for a pool ("office2013+" has no `+` in it).
fn pool_key(p: Pool) -> &'static str {
    match p {
        Pool::Windows => "windows",
        Pool::Office2010 => "office2010",
        Pool::Office2013Plus => "office2013plus",
    }
}

/// "just now", "5 min ago", "3 h ago", "2 d ago".
fn ago(now_ms: i64, t_ms: i64) -> String {
    let s = (now_ms - t_ms).max(0) / 1000;
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// "2024-01-01T12:34:56Z" as "2024-01-01 12:34:56".
fn short_time(iso: &str) -> String {
    iso.trim_end_matches('Z').replacen('T', " ", 1)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile text that tells where it was put.
    fn evil(place: &str) -> String {
        format!("{place}<script>alert(1)</script>\"&'")
    }

    /// How [`evil`] must come out.
    fn escaped(place: &str) -> String {
        format!("{place}&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;'")
    }

    /// Hostile text in every field that comes from the network, the
    /// database or the request, rendered.
    fn hostile_page(q: &str) -> String {
        let t = |place: &str| Box::leak(evil(place).into_boxed_str()) as &'static str;
        let activation = ActivationLine {
            id: 7,
            time: t("time"),
            ago: evil("ago"),
            workstation: t("a-workstation"),
            cmid: t("a-cmid"),
            address: t("a-address"),
            product: t("a-product"),
            sku_id: t("a-sku"),
            group: t("a-group"),
            protocol: 6,
            vm: true,
            count: 3,
            needs: 5,
            license_status: t("a-license"),
            result: result_badge(t("a-result")),
        };
        let client = ClientLine {
            live: true,
            cmid: t("c-cmid"),
            workstation: t("c-workstation"),
            product: t("c-product"),
            pool: t("c-pool"),
            address: t("c-address"),
            first_seen: t("c-first"),
            last_seen: t("c-last"),
            requests: 2,
            last_result: result_badge(t("c-result")),
            last_count: 4,
        };
        let view = StatusView {
            head: Head {
                shutting_down: false,
                listen: evil("listen"),
                count_mode: evil("mode"),
                count_mode_note: evil("note"),
                host_build: t("build"),
                host_build_name: "",
                hwid: t("hwid"),
                started: evil("started"),
                pid: t("pid"),
            },
            tiles: vec![],
            pools: vec![PoolCard {
                pool: Pool::Windows,
                count: 3,
                capacity: 10,
                fixed: false,
                thresholds: vec![Bar {
                    who: t("who"),
                    needs: 5,
                    reached: false,
                }],
            }],
            groups: vec![GroupRow {
                group: t("group"),
                pool: "Windows",
                epid: t("epid"),
            }],
            not_served: vec![t("not-served")],
            activations: vec![activation],
            dns: vec![DnsLine {
                domain: t("d-domain"),
                record: t("d-record"),
                published: false,
                last_success: evil("d-success"),
                error: Some((t("d-error"), 2)),
            }],
            inventory: Inventory {
                q,
                matching: 1,
                rows: vec![client],
            },
            foot: Foot {
                database: t("database"),
                schema_version: 1,
                rendered: evil("rendered"),
            },
        };
        view.render().into_string()
    }

    #[test]
    fn hostile_text_is_escaped_everywhere() {
        let q = evil("q");
        let page = hostile_page(&q);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("</script"), "{page}");
        for place in [
            "time",
            "ago",
            "a-workstation",
            "a-cmid",
            "a-address",
            "a-product",
            "a-sku",
            "a-group",
            "a-license",
            "a-result",
            "c-cmid",
            "c-workstation",
            "c-product",
            "c-pool",
            "c-address",
            "c-first",
            "c-last",
            "c-result",
            "listen",
            "mode",
            "note",
            "build",
            "hwid",
            "started",
            "pid",
            "who",
            "group",
            "epid",
            "not-served",
            "d-domain",
            "d-record",
            "d-success",
            "d-error",
            "database",
            "rendered",
            "q",
        ] {
            assert!(
                page.contains(&escaped(place)),
                "{place} not escaped in {page}"
            );
        }
        // In attributes too: nothing closes the quotes.
        for attr in [
            format!("value=\"{}\"", escaped("q")),
            format!("data-cmid=\"{}\"", escaped("c-cmid")),
            format!("data-cmid=\"{}\"", escaped("a-cmid")),
            format!("data-group=\"{}\"", escaped("group")),
            format!("title=\"{}\"", escaped("a-sku")),
            format!("aria-label=\"{}\"", escaped("who")),
        ] {
            assert!(page.contains(&attr), "{attr} not in {page}");
        }
        let error = render_error(StatusCode::INTERNAL_SERVER_ERROR, &evil("error"));
        assert!(!error.contains("<script"), "{error}");
        assert!(error.contains(&escaped("error")), "{error}");
    }

    #[test]
    fn the_page_has_no_script_and_inlines_its_css() {
        let page = hostile_page("");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains(&format!("<style>{CSS}</style>")));
        for banned in ["<script", "<link", "<img", "src="] {
            assert!(!page.contains(banned), "{banned} in {page}");
        }
        assert!(
            !page.contains("href=\"/\">clear"),
            "no clear link without a search"
        );
        assert!(hostile_page("x").contains("<a href=\"/\">clear</a>"));
    }

    #[test]
    fn inventory_info_counts() {
        let info = |q, matching, shown| {
            let row = || ClientLine {
                live: false,
                cmid: "",
                workstation: "",
                product: "",
                pool: "",
                address: "",
                first_seen: "",
                last_seen: "",
                requests: 0,
                last_result: result_badge("answered"),
                last_count: 0,
            };
            Inventory {
                q,
                matching,
                rows: (0..shown).map(|_| row()).collect(),
            }
            .info()
        };
        assert_eq!(info("", 1, 1), "1 machine");
        assert_eq!(info(" ", 4, 4), "4 machines");
        assert_eq!(info("", 300, 200), "newest 200 of 300 machines");
        assert_eq!(info("srv", 0, 0), "0 machines match");
        assert_eq!(info("srv", 1, 1), "1 machine match");
        assert_eq!(info("srv", 300, 200), "300 match; newest 200 shown");
    }

    #[test]
    fn result_badges() {
        let ok = result_badge("answered");
        assert_eq!((ok.class, ok.label.as_str()), ("ok", "answered"));
        let bad = result_badge("0xC004F042");
        assert_eq!(
            (bad.class, bad.label.as_str()),
            ("bad", "refused 0xC004F042")
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(100_000, 99_000), "just now");
        assert_eq!(ago(10 * 60_000, 0), "10 min ago");
        assert_eq!(ago(5 * 3_600_000, 0), "5 h ago");
        assert_eq!(ago(3 * 86_400_000, 0), "3 d ago");
    }
}
