//! The status page: server-rendered HTML with inline CSS, no scripts and no
//! external assets. Every interpolated string goes through [`Esc`].

use super::data::{self, ActivationRow};
use crate::protocol::kms::products::{self, Pool};
use crate::report::{self, ClientRow, StatusReport};
use crate::server::handler::Host;
use crate::store::{CountMode, StoreError};
use axum::http::StatusCode;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

/// Recent activations shown.
const RECENT: usize = 25;
/// Inventory rows shown.
const INVENTORY_ROWS: usize = 200;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    Esc(s).to_string()
}

/// Displays a string HTML-escaped.
pub struct Esc<'a>(pub &'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// What the page reads from the database (one blocking call).
pub struct PageDb {
    pub status: StatusReport,
    pub activations: Vec<ActivationRow>,
    /// Inventory rows to show (matching the search).
    pub clients: Vec<ClientRow>,
    /// How many rows match the search (all of the inventory without one).
    pub matching: u64,
}

/// Reads what the page shows.
pub fn load(dir: &Path, now_ms: i64, q: &str) -> Result<PageDb, StoreError> {
    let status = report::status(dir, now_ms)?;
    let activations = data::recent_activations(&dir.join(crate::store::DB_FILE), RECENT)?;
    let needle = data::needle(q);
    let (clients, matching) = if needle.is_empty() {
        (
            report::clients(dir, now_ms, None, None, INVENTORY_ROWS)?,
            status.inventory,
        )
    } else {
        let mut all = data::clients(dir, now_ms, None, None, q, usize::MAX)?;
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

/// The stylesheet, inlined in a `<style>` element.
const CSS: &str = include_str!("page.css");

/// The page.
pub fn render(v: &View<'_>) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let _ = write_page(&mut h, v);
    h
}

fn write_page(h: &mut String, v: &View<'_>) -> fmt::Result {
    write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>kmsd · KMS host status</title><style>{CSS}</style></head><body>\n"
    )?;
    write_header(h, v)?;
    h.push_str("<main class=\"wrap\">\n");
    write_tiles(h, v)?;
    write_pools(h, v)?;
    write_groups(h, v)?;
    write_activations(h, v)?;
    write_inventory(h, v)?;
    h.push_str("</main>\n");
    write!(
        h,
        "<footer class=\"wrap\"><a href=\"/metrics\">metrics</a><a href=\"/api/status\">status JSON</a>\
         <a href=\"/api/clients\">clients JSON</a><a href=\"/api/activations\">activations JSON</a>\
         <a href=\"/healthz\">health</a><div class=\"meta\">Database <span class=\"mono\">{}</span> \
         · schema {} · rendered {} UTC</div></footer>\n</body></html>\n",
        Esc(&v.db.status.database),
        v.db.status.schema_version,
        Esc(&short_time(&report::iso_utc(v.now_ms)))
    )
}

fn write_header(h: &mut String, v: &View<'_>) -> fmt::Result {
    let s = &v.db.status;
    let (state_class, state) = if v.shutting_down {
        ("down", "shutting down")
    } else {
        ("ok", "serving")
    };
    write!(
        h,
        "<header class=\"top\"><div class=\"wrap\"><div class=\"brand\"><h1>kmsd</h1>\
         <span class=\"tag\">KMS host · version {}</span><span class=\"state {}\" id=\"state\">{}</span></div>\
         <dl class=\"facts\" id=\"host-facts\">",
        Esc(env!("CARGO_PKG_VERSION")),
        Esc(state_class),
        Esc(state)
    )?;
    let listen = if v.kms_addrs.is_empty() {
        "none".to_owned()
    } else {
        v.kms_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    write!(
        h,
        "<div><dt>Listening on</dt><dd id=\"listen\" class=\"mono\">{}</dd></div>",
        Esc(&listen)
    )?;
    let mode = v.host.count_mode();
    let mode_note = match mode {
        CountMode::Real => "distinct clients, 30-day window".to_owned(),
        CountMode::Fixed(n) => format!("every client is told {n}"),
    };
    write!(
        h,
        "<div><dt>Count mode</dt><dd id=\"count-mode\">{}<small>{}</small></dd></div>",
        Esc(&mode.to_string()),
        Esc(&mode_note)
    )?;
    let build = s.host_build.clone().unwrap_or_else(|| "-".into());
    let build_name = build
        .parse::<u32>()
        .ok()
        .and_then(products::win_build)
        .map_or("", |b| b.name);
    write!(
        h,
        "<div><dt>Host build</dt><dd id=\"host-build\">{}<small>{}</small></dd></div>",
        Esc(&build),
        Esc(build_name)
    )?;
    write!(
        h,
        "<div><dt>HwID</dt><dd class=\"mono\">{}</dd></div>",
        Esc(s.hwid.as_deref().unwrap_or("-"))
    )?;
    let started = s.started.as_deref().map_or_else(|| "-".into(), short_time);
    write!(
        h,
        "<div><dt>Started (UTC)</dt><dd>{}<small>pid {}</small></dd></div>",
        Esc(&started),
        Esc(s.pid.as_deref().unwrap_or("-"))
    )?;
    h.push_str("</dl></div></header>\n");
    Ok(())
}

fn write_tiles(h: &mut String, v: &View<'_>) -> fmt::Result {
    let st = &v.host.stats;
    let tiles: [(&str, &str, u64, bool); 6] = [
        (
            "answered",
            "answered since start",
            st.answered.load(Ordering::Relaxed),
            false,
        ),
        (
            "refused",
            "refused since start",
            st.refused.load(Ordering::Relaxed),
            false,
        ),
        (
            "invalid",
            "invalid or faulted",
            st.invalid.load(Ordering::Relaxed) + st.faults.load(Ordering::Relaxed),
            false,
        ),
        (
            "store-failures",
            "store failures",
            st.store_failures.load(Ordering::Relaxed),
            true,
        ),
        (
            "inventory",
            "machines in the inventory",
            v.db.status.inventory,
            false,
        ),
        (
            "records",
            "activation records kept",
            v.db.status.records_kept,
            false,
        ),
    ];
    h.push_str("<section class=\"tiles\" id=\"tiles\">");
    for (id, label, n, alarm) in tiles {
        write!(
            h,
            "<div class=\"tile{}\" id=\"stat-{}\" data-value=\"{n}\"><div class=\"v\">{n}</div><div class=\"k\">{}</div></div>",
            if alarm && n > 0 { " bad" } else { "" },
            Esc(id),
            Esc(label)
        )?;
    }
    h.push_str("</section>\n");
    Ok(())
}

fn write_pools(h: &mut String, v: &View<'_>) -> fmt::Result {
    let fixed = matches!(v.host.count_mode(), CountMode::Fixed(_));
    h.push_str(
        "<section id=\"pools\"><h2>Count pools</h2><p class=\"sub\">Distinct client machines seen in the \
         last 30 days. A client activates once the count it is told reaches its product's threshold.</p>\
         <div class=\"pools\">",
    );
    for p in v.host.pools().status(v.now_ms) {
        let key = pool_key(p.pool);
        write!(
            h,
            "<article class=\"pool\" id=\"pool-{}\" data-pool=\"{}\" data-count=\"{}\" data-capacity=\"{}\">\
             <div class=\"pool-head\"><h3>{}</h3><span class=\"mono muted\">{}</span></div>\
             <div class=\"count\"><span class=\"value\">{}</span><small>{}</small></div>",
            Esc(key),
            Esc(p.pool.name()),
            p.count,
            p.capacity,
            Esc(pool_title(p.pool)),
            Esc(p.pool.name()),
            p.count,
            Esc(if fixed {
                "reported to every client"
            } else if p.count == 1 {
                "client counted"
            } else {
                "clients counted"
            }),
        )?;
        for t in report::thresholds(p.pool, p.count) {
            let pct = if t.needs == 0 {
                100
            } else {
                (u64::from(p.count.min(t.needs)) * 100 / u64::from(t.needs)) as u32
            };
            let (class, label) = if t.reached {
                ("ok", "activating")
            } else {
                ("wait", "waiting")
            };
            let hint = if t.reached {
                format!("{} clients activate", t.who)
            } else {
                let more = u64::from(t.needs - p.count);
                format!(
                    "{} more {} needed",
                    more,
                    if more == 1 { "client" } else { "clients" }
                )
            };
            write!(
                h,
                "<div class=\"threshold{}\" data-needs=\"{}\" data-reached=\"{}\">\
                 <div class=\"t-head\"><span class=\"who\">{}</span><span class=\"num\">{} / {}</span>\
                 <span class=\"badge {}\">{}</span></div>\
                 <div class=\"bar\" role=\"progressbar\" aria-label=\"{}\" aria-valuemin=\"0\" aria-valuemax=\"{}\" aria-valuenow=\"{}\">\
                 <div class=\"fill\" style=\"width:{}%\"></div></div><div class=\"hint\">{}</div></div>",
                if t.reached { " reached" } else { "" },
                t.needs,
                t.reached,
                Esc(t.who),
                p.count,
                t.needs,
                Esc(class),
                Esc(label),
                Esc(t.who),
                t.needs,
                p.count.min(t.needs),
                pct,
                Esc(&hint)
            )?;
        }
        let foot = if fixed {
            "Fixed count mode: no pool is kept.".to_owned()
        } else if p.capacity == 0 {
            "No client seen yet.".to_owned()
        } else {
            format!("Capacity {} (twice the highest threshold seen)", p.capacity)
        };
        write!(h, "<div class=\"foot\">{}</div></article>", Esc(&foot))?;
    }
    h.push_str("</div></section>\n");
    Ok(())
}

fn write_groups(h: &mut String, v: &View<'_>) -> fmt::Result {
    h.push_str(
        "<section id=\"groups\"><h2>Served product groups</h2><p class=\"sub\">The host key (ePID) \
         answered to each product group this host serves.</p><div class=\"card scroll\">\
         <table class=\"groups\"><thead><tr><th>Group</th><th>Pool</th><th>ePID</th></tr></thead><tbody>",
    );
    let served = v.host.served_groups();
    if served.is_empty() {
        h.push_str("<tr><td colspan=\"3\" class=\"empty\">No product group is served.</td></tr>");
    }
    for g in served.iter() {
        let pool = products::epid_group(g).map_or("", |e| pool_title(e.pool));
        let epid = v.host.epid(g).map_or("-", |e| e.as_str());
        write!(
            h,
            "<tr class=\"group\" data-group=\"{}\"><td>{}</td><td>{}</td><td class=\"mono\">{}</td></tr>",
            Esc(g),
            Esc(g),
            Esc(pool),
            Esc(epid)
        )?;
    }
    h.push_str("</tbody></table></div>");
    let not_served: Vec<&str> =
        v.db.status
            .epids
            .iter()
            .filter(|e| !served.contains(&e.group.as_str()))
            .map(|e| e.group.as_str())
            .collect();
    if !not_served.is_empty() {
        write!(
            h,
            "<p class=\"sub\" style=\"margin-top:8px\">Not served (refused): {}</p>",
            Esc(&not_served.join(", "))
        )?;
    }
    h.push_str("</section>\n");
    Ok(())
}

fn result_badge(result: &str) -> (&'static str, String) {
    if result == "answered" {
        ("ok", "answered".into())
    } else {
        ("bad", format!("refused {result}"))
    }
}

fn write_activations(h: &mut String, v: &View<'_>) -> fmt::Result {
    write!(
        h,
        "<section id=\"activations\"><h2>Recent activations</h2><p class=\"sub\">The last {RECENT} \
         requests, newest first.</p><div class=\"card scroll\"><table><thead><tr><th>When</th>\
         <th>Workstation</th><th>Address</th><th>Product</th><th>Protocol</th><th>Count</th>\
         <th>License status</th><th>Result</th></tr></thead><tbody>"
    )?;
    if v.db.activations.is_empty() {
        h.push_str("<tr><td colspan=\"8\" class=\"empty\">No activations yet.</td></tr>");
    }
    for a in &v.db.activations {
        let (class, label) = result_badge(&a.result);
        let short_cmid = a.cmid.get(..8).unwrap_or(&a.cmid);
        write!(
            h,
            "<tr class=\"activation\" data-id=\"{}\" data-cmid=\"{}\">\
             <td class=\"when\"><time datetime=\"{}\" title=\"{}\">{}</time><span class=\"second\">{}</span></td>\
             <td class=\"workstation\">{}<span class=\"second mono\" title=\"{}\">{}…</span></td>\
             <td class=\"mono\">{}</td>\
             <td class=\"product\" title=\"{}\">{}<span class=\"second\">{}</span></td>\
             <td>v{}{}</td><td class=\"num\">{}<span class=\"second\">needs {}</span></td>\
             <td>{}</td><td><span class=\"badge {}\">{}</span></td></tr>",
            a.id,
            Esc(&a.cmid),
            Esc(&a.time),
            Esc(&a.time),
            Esc(&ago(v.now_ms, a.time_ms)),
            Esc(&short_time(&a.time)),
            Esc(&a.workstation),
            Esc(&a.cmid),
            Esc(short_cmid),
            Esc(&a.address),
            Esc(&a.sku_id),
            Esc(&a.product),
            Esc(a.kms_group.as_deref().unwrap_or(&a.kms_id)),
            a.protocol,
            Esc(if a.vm { " · VM" } else { "" }),
            a.count,
            a.n_policy,
            Esc(&a.license_status),
            Esc(class),
            Esc(&label)
        )?;
    }
    h.push_str("</tbody></table></div></section>\n");
    Ok(())
}

fn write_inventory(h: &mut String, v: &View<'_>) -> fmt::Result {
    let db = v.db;
    let shown = db.clients.len() as u64;
    let info = if v.q.trim().is_empty() {
        if shown < db.matching {
            format!(
                "newest {shown} of {}",
                plural(db.matching, "machine", "machines")
            )
        } else {
            plural(db.matching, "machine", "machines")
        }
    } else if shown < db.matching {
        format!("{} match; newest {shown} shown", db.matching)
    } else {
        format!("{} match", plural(db.matching, "machine", "machines"))
    };
    write!(
        h,
        "<section id=\"inventory\"><h2>Client inventory</h2><p class=\"sub\">Every machine that has asked, \
         newest first. <span class=\"dot\" style=\"background:var(--ok)\"></span>live: counted in its pool now.</p>\
         <div class=\"card\"><form class=\"search\" method=\"get\" action=\"/\" role=\"search\">\
         <input type=\"search\" name=\"q\" id=\"q\" value=\"{}\" placeholder=\"Search workstation, CMID, address or product\" aria-label=\"Search the inventory\">\
         <button type=\"submit\">Search</button>{}<span class=\"info\" id=\"inventory-info\" data-matching=\"{}\">{}</span></form>\
         <div class=\"scroll\"><table><thead><tr><th>Status</th><th>Workstation</th><th>Product</th>\
         <th>Address</th><th>CMID</th><th>Last seen</th><th>Requests</th>\
         <th>Last result</th></tr></thead><tbody>",
        Esc(v.q),
        if v.q.is_empty() {
            ""
        } else {
            "<a href=\"/\">clear</a>"
        },
        db.matching,
        Esc(&info)
    )?;
    if db.clients.is_empty() {
        write!(
            h,
            "<tr><td colspan=\"8\" class=\"empty\">{}</td></tr>",
            Esc(if v.q.trim().is_empty() {
                "No clients yet."
            } else {
                "No machine matches the search."
            })
        )?;
    }
    for c in &db.clients {
        let (class, label) = result_badge(&c.last_result);
        write!(
            h,
            "<tr class=\"client{}\" data-live=\"{}\" data-cmid=\"{}\">\
             <td><span class=\"dot\"></span>{}</td><td class=\"workstation\">{}</td>\
             <td class=\"product\">{}<span class=\"second\">{}</span></td><td class=\"mono\">{}</td>\
             <td class=\"mono\">{}</td><td class=\"when\">{}<span class=\"second\">first {}</span></td><td class=\"num\">{}</td>\
             <td><span class=\"badge {}\">{}</span><span class=\"second\">count {}</span></td></tr>",
            if c.live { " live" } else { "" },
            c.live,
            Esc(&c.cmid),
            Esc(if c.live { "live" } else { "not counted" }),
            Esc(&c.workstation),
            Esc(&c.product),
            Esc(&c.pool),
            Esc(&c.address),
            Esc(&c.cmid),
            Esc(&short_time(&c.last_seen)),
            Esc(&short_time(&c.first_seen)),
            c.requests,
            Esc(class),
            Esc(&label),
            c.last_count
        )?;
    }
    h.push_str("</tbody></table></div></div></section>\n");
    Ok(())
}

/// The page when the database cannot be read.
pub fn render_error(status: StatusCode, msg: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kmsd · error</title>\
         <style>{CSS}</style></head><body><header class=\"top\"><div class=\"wrap\"><div class=\"brand\">\
         <h1>kmsd</h1><span class=\"tag\">KMS host</span><span class=\"state down\">{}</span></div></div></header>\
         <main class=\"wrap\"><section><h2>The database cannot be read</h2><p class=\"sub\" id=\"error\">{}</p>\
         </section></main></body></html>\n",
        Esc(&status.to_string()),
        Esc(msg)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape_html(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape_html("plain ü"), "plain ü");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(100_000, 99_000), "just now");
        assert_eq!(ago(10 * 60_000, 0), "10 min ago");
        assert_eq!(ago(5 * 3_600_000, 0), "5 h ago");
        assert_eq!(ago(3 * 86_400_000, 0), "3 d ago");
    }
}
