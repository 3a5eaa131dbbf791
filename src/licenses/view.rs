//! The packs and seats as `kmsd licenses`, `/api/licenses` and
//! `/api/seats` show them (one shape for the CLI's JSON and the API).

use super::admin::Report;
use super::{Ageing, SeatRow, Usage, format_day, sku_name};
use crate::report::iso_utc;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PackView {
    pub id: i64,
    pub product: String,
    pub covers: Vec<String>,
    pub quantity: u32,
    /// Seats owned today (0 once expired).
    pub owned: u32,
    pub in_use: u32,
    pub free: u32,
    pub stale: u32,
    pub over: u32,
    pub enforce: &'static str,
    pub agreement: String,
    pub starts: Option<String>,
    pub expires: Option<String>,
    pub note: String,
}

impl From<&Usage> for PackView {
    fn from(u: &Usage) -> Self {
        let p = &u.pack;
        Self {
            id: p.id,
            product: p.product_name(),
            covers: p.covers.iter().map(sku_name).collect(),
            quantity: p.quantity,
            owned: u.owned,
            in_use: u.in_use,
            free: u.free,
            stale: u.stale,
            over: u.over,
            enforce: p.enforce.name(),
            agreement: p.agreement.clone(),
            starts: p.starts.map(format_day),
            expires: p.expires.map(format_day),
            note: p.note.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UncoveredView {
    pub product: String,
    pub machines: u32,
}

/// `kmsd licenses --json` and `/api/licenses`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LicensesView {
    pub packs: Vec<PackView>,
    pub uncovered: Vec<UncoveredView>,
}

impl From<&Report> for LicensesView {
    fn from(r: &Report) -> Self {
        Self {
            packs: r.packs.iter().map(PackView::from).collect(),
            uncovered: r
                .uncovered
                .iter()
                .map(|(sku, n)| UncoveredView {
                    product: sku_name(sku),
                    machines: *n,
                })
                .collect(),
        }
    }
}

/// One seat, for `kmsd licenses seats --json` and `/api/seats`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SeatView {
    pub cmid: String,
    pub pack: i64,
    pub product: String,
    pub workstation: String,
    pub address: String,
    pub host: String,
    pub first_seen: String,
    pub last_seen: String,
    pub stale: bool,
    /// Other machines (CMIDs) holding a seat under the same workstation
    /// name: most likely this machine re-imaged with a new CMID, so one
    /// machine holds two seats. Reported, never merged: `kmsd licenses
    /// release` the old one.
    pub likely_duplicate_of: Vec<String>,
}

impl SeatView {
    /// Every seat of `all` (those of `keep`), each with the other seats
    /// under its workstation name.
    pub fn list(all: &[SeatRow], ageing: Ageing, keep: impl Fn(&SeatRow) -> bool) -> Vec<SeatView> {
        let mut by_name: std::collections::HashMap<String, Vec<&SeatRow>> =
            std::collections::HashMap::new();
        for s in all {
            by_name
                .entry(s.workstation.to_lowercase())
                .or_default()
                .push(s);
        }
        all.iter()
            .filter(|s| keep(s))
            .map(|s| {
                let mut v = SeatView::new(s, ageing);
                v.likely_duplicate_of = by_name
                    .get(&s.workstation.to_lowercase())
                    .into_iter()
                    .flatten()
                    .filter(|o| o.cmid != s.cmid)
                    .map(|o| o.cmid.to_string())
                    .collect();
                v
            })
            .collect()
    }

    pub fn new(s: &SeatRow, ageing: Ageing) -> Self {
        Self {
            cmid: s.cmid.to_string(),
            pack: s.pack,
            product: sku_name(&s.sku),
            workstation: s.workstation.clone(),
            address: s.address.clone(),
            host: s.host.clone(),
            first_seen: iso_utc(s.first_ms),
            last_seen: iso_utc(s.last_ms),
            stale: ageing.is_stale(s.last_ms),
            likely_duplicate_of: Vec::new(),
        }
    }
}

/// A Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `kmsd_license_*` gauges of `packs`, appended to `out`.
pub fn render_metrics(out: &mut String, packs: &[Usage]) {
    use std::fmt::Write;
    type Field = fn(&Usage) -> Option<i64>;
    let gauges: [(&str, &str, Field); 5] = [
        (
            "quantity",
            "Seats owned in the pack (0 once it has expired).",
            |u| Some(i64::from(u.owned)),
        ),
        ("in_use", "Seats bound to machines.", |u| {
            Some(i64::from(u.in_use))
        }),
        ("stale", "Seats whose machine missed three renewals.", |u| {
            Some(i64::from(u.stale))
        }),
        ("over", "Seats beyond the pack's quantity.", |u| {
            Some(i64::from(u.over))
        }),
        (
            "expiry_timestamp_seconds",
            "When the pack expires (the end of its last day), unix seconds.",
            |u| u.pack.expires.map(|d| (d.0 + 1) * 86_400),
        ),
    ];
    for (name, help, f) in gauges {
        let _ = writeln!(
            out,
            "# HELP kmsd_license_{name} {help}\n# TYPE kmsd_license_{name} gauge"
        );
        for u in packs {
            if let Some(v) = f(u) {
                let _ = writeln!(
                    out,
                    "kmsd_license_{name}{{pack=\"{}\",product=\"{}\"}} {v}",
                    u.pack.id,
                    label(&u.pack.product_name())
                );
            }
        }
    }
}
