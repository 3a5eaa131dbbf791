//! The page's markup: `maud` templates over the typed view ([`super::view`]).
//! Maud escapes every spliced value; the stylesheet is the only raw text.

use super::view::{
    ActivationLine, Badge, Bar, ClientLine, FleetHost, Foot, Head, Inventory, PoolCard, StatusView,
    Tile, plural, pool_key, pool_title, short_time,
};
use super::{CSS, RECENT};
use crate::report::HOST_GONE_MS;
use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, PreEscaped, display, html};

/// The page when the database cannot be read.
pub(super) fn error_page(status: StatusCode, msg: &str) -> Markup {
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
}

/// The hosts sharing the database, as `kmsd status` lists them.
fn render_fleet(hosts: &[FleetHost<'_>]) -> Markup {
    let alive = hosts.iter().filter(|h| h.alive).count();
    html! {
        section #fleet {
            h2 { "Fleet" }
            p.sub {
                (plural(hosts.len() as u64, "host shares", "hosts share"))
                " this database, " (alive) " alive. A host is silent when its heartbeat \
                 (every 10 s) has not come for " (HOST_GONE_MS / 60_000) " minutes."
            }
            .card.scroll { table.fleet {
                thead { tr {
                    th { "Host" } th { "State" } th { "Listening on" } th { "Version" }
                    th { "Last heartbeat (UTC)" } th { "Requests" }
                } }
                tbody { @for h in hosts { (h.render()) } }
            } }
        }
    }
}

impl FleetHost<'_> {
    fn render(&self) -> Markup {
        html! {
            tr.host.silent[!self.alive] data-host=(self.id) data-alive=(display(self.alive)) {
                td { (self.id) }
                td { @if self.alive {
                    span.badge.ok { "alive" }
                } @else {
                    span.badge.bad { "silent" }
                } }
                td.mono { (self.listen) }
                td { (self.version.unwrap_or("-")) }
                td.when {
                    (self.heartbeat)
                    span.second { "started " (self.started) }
                }
                td.num { (self.requests) }
            }
        }
    }
}

impl StatusView<'_> {
    pub(super) fn render(&self) -> Markup {
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
                        @if !self.fleet.is_empty() { (render_fleet(&self.fleet)) }
                        (self.render_pools())
                        (super::licenses::render(&self.licenses))
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
