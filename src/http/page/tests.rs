//! The page's view and markup: escaping, the inventory's wording, results,
//! ages, and the fleet section.

use super::CSS;
use super::markup::error_page;
use super::view::*;
use crate::protocol::kms::Hresult;
use crate::protocol::kms::products::Pool;
use crate::report::{HOST_GONE_MS, StatusReport};
use crate::store::{HostStatus, Note, StoreStatus};
use axum::http::StatusCode;

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
    let host = FleetHost {
        id: t("h-id"),
        alive: false,
        listen: evil("h-listen"),
        version: Some(t("h-version")),
        started: evil("h-started"),
        heartbeat: evil("h-heartbeat"),
        requests: 9,
    };
    hostile_view(q, vec![host]).render().into_string()
}

/// A page of hostile text (see [`hostile_page`]) with `fleet`.
fn hostile_view<'a>(q: &'a str, fleet: Vec<FleetHost<'a>>) -> StatusView<'a> {
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
        result: Badge::result(Hresult(0xC004_F042)),
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
        last_result: Badge::result(Hresult::ANSWERED),
        last_count: 4,
    };
    StatusView {
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
        fleet,
        licenses: Default::default(),
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
    }
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
        "c-cmid",
        "c-workstation",
        "c-product",
        "c-pool",
        "c-address",
        "c-first",
        "c-last",
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
        "h-id",
        "h-listen",
        "h-version",
        "h-started",
        "h-heartbeat",
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
        format!("data-host=\"{}\"", escaped("h-id")),
        format!("aria-label=\"{}\"", escaped("who")),
    ] {
        assert!(page.contains(&attr), "{attr} not in {page}");
    }
    let error = error_page(StatusCode::INTERNAL_SERVER_ERROR, &evil("error")).into_string();
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
            last_result: Badge::result(Hresult::ANSWERED),
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
    let ok = Badge::result(Hresult::ANSWERED);
    assert_eq!((ok.class, ok.label.as_str()), ("ok", "answered"));
    let bad = Badge::result(Hresult(0xC004_F042));
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

/// A fleet host `id` whose heartbeat is `age_ms` old at `NOW`.
fn host(id: &str, age_ms: i64, notes: Vec<(Note, String)>) -> HostStatus {
    HostStatus {
        id: id.into(),
        started_ms: NOW - 3_600_000,
        heartbeat_ms: NOW - age_ms,
        requests: 42,
        notes: crate::store::HostNotes::parse(notes),
    }
}

/// The store's answer for a fleet of `hosts`, read at `NOW`.
fn fleet_status(hosts: Vec<HostStatus>) -> StatusReport {
    StatusReport::new(StoreStatus {
        location: "postgres://kmsd@db/kmsd".into(),
        schema_version: 1,
        now_ms: NOW,
        notes: Default::default(),
        hosts,
        imports: vec![],
        pools: vec![],
        epids: vec![],
        totals: vec![],
        inventory: 0,
        records_kept: 0,
    })
}

const NOW: i64 = 1_704_067_200_000;

/// The `<tr>` of the fleet host `id`.
fn host_row<'p>(page: &'p str, id: &str) -> &'p str {
    let at = page
        .find(&format!("data-host=\"{id}\""))
        .unwrap_or_else(|| panic!("no row for {id} in {page}"));
    let start = page[..at].rfind("<tr").unwrap_or(0);
    let end = page[at..].find("</tr>").map_or(page.len(), |e| at + e);
    &page[start..end]
}

#[test]
fn the_fleet_section_lists_every_host_alive_or_silent() {
    let listen = (Note::Listen, "10.0.0.5:1688,[::1]:1688".to_owned());
    let version = (Note::Version, "0.1.0".to_owned());
    let status = fleet_status(vec![
        host("kms-east-1", 10_000, vec![listen, version]),
        host("kms-west-2", HOST_GONE_MS, vec![]),
    ]);
    let page = hostile_view("", fleet(&status)).render().into_string();
    assert!(page.contains("<section id=\"fleet\">"), "{page}");
    assert!(
        page.contains("2 hosts share this database, 1 alive."),
        "{page}"
    );

    let east = host_row(&page, "kms-east-1");
    assert!(east.contains("class=\"host\""), "{east}");
    assert!(east.contains("data-alive=\"true\""), "{east}");
    assert!(
        east.contains(">alive<") && !east.contains("silent"),
        "{east}"
    );
    assert!(east.contains("10.0.0.5:1688, [::1]:1688"), "{east}");
    assert!(east.contains(">0.1.0<"), "{east}");
    assert!(east.contains("2023-12-31 23:59:50"), "heartbeat: {east}");
    assert!(east.contains("started 2023-12-31 23:00:00"), "{east}");
    assert!(east.contains(">42<"), "requests: {east}");

    // Silent from HOST_GONE_MS on, as `kmsd status` says GONE.
    let west = host_row(&page, "kms-west-2");
    assert!(west.contains("class=\"host silent\""), "{west}");
    assert!(west.contains("data-alive=\"false\""), "{west}");
    assert!(
        west.contains(">silent<") && !west.contains(">alive<"),
        "{west}"
    );
    assert!(west.contains(">-<"), "no listener or version noted: {west}");
    assert_eq!(
        status.hosts.iter().map(|h| h.alive).collect::<Vec<_>>(),
        [true, false],
        "the page's marking is the CLI report's"
    );
}

#[test]
fn no_fleet_section_without_hosts() {
    let single = fleet_status(vec![]);
    assert!(fleet(&single).is_empty());
    let page = hostile_view("", fleet(&single)).render().into_string();
    assert!(!page.contains("id=\"fleet\""), "{page}");
    assert!(!page.contains("data-host="), "{page}");
    assert!(!page.contains(">Fleet<"), "{page}");
}

/// The licenses section: a bar per pack with what is over and stale, the
/// uncovered products, and the warning about machines sharing one CMID;
/// nothing at all without packs, uncovered products or duplicates.
#[test]
fn the_licenses_section_shows_packs_overage_uncovered_and_duplicates() {
    use crate::licenses::watch::Snapshot;
    use crate::licenses::{Day, Duplicate, Enforce, Pack, Usage};
    use crate::protocol::guid::Guid;
    let empty = super::licenses::render(&Snapshot::default()).into_string();
    assert!(empty.is_empty(), "{empty}");
    let dc = crate::protocol::kms::products::find_sku("Windows Server 2019 Datacenter").unwrap();
    let ess = crate::protocol::kms::products::find_sku("Windows Server 2019 Essentials").unwrap();
    let pack = Pack {
        id: 7,
        product: dc.id,
        covers: vec![],
        quantity: 5,
        enforce: Enforce::Warn,
        agreement: "EA-<b>1</b>".into(),
        starts: None,
        expires: Some(Day(20_000)),
        note: String::new(),
    };
    let mut snap = Snapshot::default();
    snap.report.packs = vec![Usage {
        pack,
        owned: 5,
        in_use: 6,
        free: 0,
        stale: 2,
        over: 1,
    }];
    snap.report.uncovered = vec![(ess.id, 3)];
    snap.duplicates = vec![Duplicate {
        cmid: Guid::from_u128(1),
        machines: vec![
            ("a".into(), "10.0.0.1".into(), 0),
            ("b".into(), "10.0.0.2".into(), 0),
        ],
    }];
    let html = super::licenses::render(&snap).into_string();
    assert!(html.contains("data-pack=\"7\""), "{html}");
    assert!(html.contains("6 / 5 seats in use"), "{html}");
    assert!(
        html.contains("1 over") && html.contains("2 stale"),
        "{html}"
    );
    assert!(html.contains("expires 2024-10-04"), "{html}");
    assert!(
        html.contains("EA-&lt;b&gt;1&lt;/b&gt;"),
        "the agreement as text: {html}"
    );
    assert!(
        html.contains("Windows Server 2019 Essentials: 3 machines"),
        "{html}"
    );
    assert!(
        html.contains("id=\"duplicates\"") && html.contains("1 client machine ID is shared"),
        "{html}"
    );
}
