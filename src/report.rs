//! What `kmsd status` and `kmsd clients` print (and the admin API serves):
//! the store's typed answers ([`crate::store`]) formatted for people and
//! JSON. No queries here.

use crate::protocol::kms::products::{self, Date, Pool};
use crate::store::{Client, StoreStatus};
use serde::Serialize;
use std::fmt::Write as _;

/// ISO 8601 UTC of unix milliseconds.
pub fn iso_utc(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000) / 1000;
    let d = Date::from_days_since_unix_epoch(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year,
        d.month,
        d.day,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A threshold a pool serves and whether the count reaches it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Threshold {
    pub who: &'static str,
    pub needs: u32,
    pub reached: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PoolReport {
    pub pool: &'static str,
    pub count: u32,
    pub capacity: u32,
    pub thresholds: Vec<Threshold>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EpidReport {
    pub group: String,
    pub epid: String,
    pub served: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TotalReport {
    /// "activated-or-counted" (0) or the HRESULT refused with.
    pub result: String,
    pub license_status: String,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusReport {
    pub database: String,
    pub schema_version: i64,
    pub started: Option<String>,
    pub pid: Option<String>,
    pub listen: Vec<String>,
    pub count_mode: Option<String>,
    pub host_build: Option<String>,
    pub hwid: Option<String>,
    /// The KMS connection limit in force.
    pub max_connections: Option<String>,
    pub pools: Vec<PoolReport>,
    pub epids: Vec<EpidReport>,
    pub totals: Vec<TotalReport>,
    pub inventory: u64,
    pub records_kept: u64,
    /// The hosts of a fleet (empty for a single host's data dir).
    pub hosts: Vec<HostReport>,
    /// Single-host stores copied into a fleet (`kmsd store copy`).
    pub imports: Vec<ImportReport>,
    /// The SRV records this host publishes, per domain.
    pub dns: Vec<DnsReport>,
}

/// One domain of `dns_publish`: the record and how its publication went.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DnsReport {
    pub domain: String,
    pub record: String,
    pub published: bool,
    pub server: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub failures: u64,
}

impl DnsReport {
    /// The reports of the publisher's note (JSON); none if there is none.
    pub fn from_states(states: &[crate::dns::DomainState]) -> Vec<Self> {
        states
            .iter()
            .cloned()
            .map(|d| Self {
                domain: d.domain,
                record: d.record,
                published: d.published,
                server: d.server,
                last_success: d.last_success_ms.map(iso_utc),
                last_error: d.last_error,
                failures: d.failures,
            })
            .collect()
    }
}

/// One host of a fleet.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostReport {
    pub id: String,
    pub listen: Vec<String>,
    pub version: Option<String>,
    pub started: String,
    pub last_heartbeat: String,
    /// Heard from within [`HOST_GONE_MS`].
    pub alive: bool,
    pub requests: u64,
}

impl HostReport {
    fn new(h: &crate::store::HostStatus, now_ms: i64) -> Self {
        HostReport {
            id: h.id.clone(),
            listen: h.notes.listen.clone(),
            version: h.notes.version.clone(),
            started: iso_utc(h.started_ms),
            last_heartbeat: iso_utc(h.heartbeat_ms),
            alive: now_ms - h.heartbeat_ms < HOST_GONE_MS,
            requests: h.requests,
        }
    }
}

/// A single host's store copied into a fleet: an import, never a host.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    pub source: String,
    pub first_copied: String,
    pub last_copied: String,
    /// Its activation log is copied up to this record id.
    pub copied_upto: i64,
}

/// A fleet host not heard from for this long is shown as gone (its
/// heartbeat comes every 10 s).
pub const HOST_GONE_MS: i64 = 3 * 60_000;

/// The thresholds that apply in a pool.
pub fn thresholds(pool: Pool, count: u32) -> Vec<Threshold> {
    let t = |who, needs| Threshold {
        who,
        needs,
        reached: count >= needs,
    };
    match pool {
        Pool::Windows => vec![t("Windows Server", 5), t("Windows client OS", 25)],
        Pool::Office2010 => vec![t("Office 2010", 5)],
        Pool::Office2013Plus => vec![t("Office 2013 and later", 5)],
    }
}

/// The license status a client reported, by name.
pub fn license_status_name(s: u32) -> String {
    match s {
        0 => "unlicensed".into(),
        1 => "licensed".into(),
        2 => "initial grace".into(),
        3 => "additional grace".into(),
        4 => "non-genuine grace".into(),
        5 => "notification".into(),
        6 => "extended grace".into(),
        n => format!("unknown ({n})"),
    }
}

impl StatusReport {
    /// Formats what the store holds.
    pub fn new(st: StoreStatus) -> Self {
        let n = &st.notes;
        let mut served = n.served_groups.clone();
        for h in &st.hosts {
            served.extend(h.notes.served_groups.iter().cloned());
        }
        let hosts = st
            .hosts
            .iter()
            .map(|h| HostReport::new(h, st.now_ms))
            .collect();
        Self {
            database: st.location.clone(),
            schema_version: st.schema_version,
            started: n.started_ms.map(iso_utc),
            pid: n.pid.clone(),
            listen: n.listen.clone(),
            count_mode: n.count_mode.clone(),
            host_build: n.host_build.clone(),
            hwid: n.hwid.clone(),
            max_connections: n.max_connections.clone(),
            pools: st
                .pools
                .iter()
                .map(|p| PoolReport {
                    pool: p.pool.name(),
                    count: p.count,
                    capacity: p.capacity,
                    thresholds: thresholds(p.pool, p.count),
                })
                .collect(),
            epids: st
                .epids
                .iter()
                .map(|(group, epid)| EpidReport {
                    served: served.contains(group),
                    group: group.clone(),
                    epid: epid.clone(),
                })
                .collect(),
            totals: st
                .totals
                .iter()
                .map(|t| TotalReport {
                    result: t.hresult.to_string(),
                    license_status: license_status_name(t.license_status),
                    requests: t.requests,
                })
                .collect(),
            inventory: st.inventory,
            records_kept: st.records_kept,
            hosts,
            imports: st
                .imports
                .iter()
                .map(|i| ImportReport {
                    source: i.source.clone(),
                    first_copied: iso_utc(i.first_ms),
                    last_copied: iso_utc(i.last_ms),
                    copied_upto: i.copied_upto,
                })
                .collect(),
            dns: DnsReport::from_states(&n.dns),
        }
    }
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        writeln!(
            f,
            "Database:        {} (schema {})",
            self.database, self.schema_version
        )?;
        if !self.hosts.is_empty() {
            let alive = self.hosts.iter().filter(|h| h.alive).count();
            writeln!(
                f,
                "Fleet:           {} hosts, {alive} alive",
                self.hosts.len()
            )?;
            for h in &self.hosts {
                writeln!(
                    f,
                    "  {:<28} {:<5} {:<24} v{:<8} started {}  heartbeat {}  requests {}",
                    h.id,
                    if h.alive { "alive" } else { "GONE" },
                    if h.listen.is_empty() {
                        "-".into()
                    } else {
                        h.listen.join(",")
                    },
                    h.version.as_deref().unwrap_or("?"),
                    h.started,
                    h.last_heartbeat,
                    h.requests
                )?;
            }
            for i in &self.imports {
                writeln!(
                    f,
                    "  imported {}  first copied {}  last copied {}  (log through record {})",
                    i.source, i.first_copied, i.last_copied, i.copied_upto
                )?;
            }
            writeln!(f)?;
            return self.fmt_shared(f);
        }
        writeln!(
            f,
            "Host started:    {} (pid {})",
            opt(&self.started),
            opt(&self.pid)
        )?;
        writeln!(
            f,
            "Listening on:    {}",
            if self.listen.is_empty() {
                "-".into()
            } else {
                self.listen.join(", ")
            }
        )?;
        writeln!(
            f,
            "Host build:      {}    HwId: {}",
            opt(&self.host_build),
            opt(&self.hwid)
        )?;
        writeln!(f, "Count mode:      {}", opt(&self.count_mode))?;
        writeln!(f, "Connections:     at most {}", opt(&self.max_connections))?;
        writeln!(f)?;
        self.fmt_shared(f)
    }
}

impl StatusReport {
    /// The pools, ePIDs, totals and inventory (one host's or a fleet's).
    fn fmt_shared(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Count pools (distinct clients seen in the last 30 days):"
        )?;
        for p in &self.pools {
            let mut line = format!(
                "  {:<12} {:>4} of capacity {:<4}",
                p.pool, p.count, p.capacity
            );
            for t in &p.thresholds {
                let _ = write!(
                    line,
                    "  {}: {}/{} {}",
                    t.who,
                    p.count.min(t.needs),
                    t.needs,
                    if t.reached { "activating" } else { "waiting" }
                );
            }
            writeln!(f, "{line}")?;
        }
        writeln!(f)?;
        writeln!(f, "ePIDs (host keys):")?;
        for e in &self.epids {
            writeln!(
                f,
                "  {:<12} {}  {}",
                e.group,
                e.epid,
                if e.served { "served" } else { "not served" }
            )?;
        }
        writeln!(f)?;
        writeln!(f, "Requests since the database was created:")?;
        if self.totals.is_empty() {
            writeln!(f, "  none")?;
        }
        for t in &self.totals {
            writeln!(
                f,
                "  {:<22} {:<20} {}",
                t.result, t.license_status, t.requests
            )?;
        }
        writeln!(f)?;
        if !self.dns.is_empty() {
            writeln!(f, "DNS (the SRV record this host publishes per domain):")?;
            for d in &self.dns {
                writeln!(
                    f,
                    "  {:<24} {:<13} {}",
                    d.domain,
                    if d.published {
                        "published"
                    } else {
                        "not published"
                    },
                    if d.record.is_empty() { "-" } else { &d.record }
                )?;
                writeln!(
                    f,
                    "  {:<24} last success {} via {}",
                    "",
                    d.last_success.as_deref().unwrap_or("never"),
                    d.server.as_deref().unwrap_or("-")
                )?;
                if let Some(e) = &d.last_error {
                    writeln!(f, "  {:<24} last error ({} since): {e}", "", d.failures)?;
                }
            }
            writeln!(f)?;
        }
        write!(
            f,
            "Client inventory: {} machines; activation records kept: {}",
            self.inventory, self.records_kept
        )
    }
}

/// One machine in the inventory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientRow {
    pub cmid: String,
    pub pool: String,
    pub workstation: String,
    pub product: String,
    pub sku_id: String,
    pub address: String,
    pub first_seen: String,
    pub last_seen: String,
    pub requests: u64,
    pub last_result: String,
    pub last_count: u32,
    /// Counted in its pool right now.
    pub live: bool,
    /// The license pack it holds a seat in (`kmsd clients` fills it in).
    pub seat: Option<i64>,
}

impl ClientRow {
    /// Formats one machine of the inventory.
    pub fn new(m: &Client) -> Self {
        let p = Pool::from_app_id(&m.app_id);
        Self {
            cmid: m.cmid.to_string(),
            pool: p.map_or_else(|| m.app_id.to_string(), |p| p.name().to_owned()),
            workstation: m.workstation.clone(),
            product: products::sku(&m.sku_id)
                .map_or_else(|| "unknown SKU".into(), |s| s.name.to_owned()),
            sku_id: m.sku_id.to_string(),
            address: m.address.clone(),
            first_seen: iso_utc(m.first_seen_ms),
            last_seen: iso_utc(m.last_seen_ms),
            requests: m.requests,
            last_result: m.last_result.to_string(),
            last_count: m.last_count,
            live: m.live,
            seat: None,
        }
    }
}

/// `--since` / `since=`: unix milliseconds (all digits), a UTC date
/// `YYYY-MM-DD`, or a span back from `now_ms` such as `7d`, `12h`, `30m`.
pub fn parse_since(v: &str, now_ms: i64) -> Result<i64, String> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse::<i64>()
            .map_err(|_| format!("since {v:?}: number too large"));
    }
    if let Some(unit) = v.chars().last()
        && unit.is_ascii_alphabetic()
        && let Ok(n) = v[..v.len() - 1].parse::<u32>()
    {
        let ms = match unit {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' => 60_000,
            _ => return Err(format!("since {v:?}: the unit must be d, h or m")),
        };
        return Ok(now_ms - i64::from(n) * ms);
    }
    match Date::parse_iso(v) {
        Ok(date) => Ok(date.days_since_unix_epoch() * 86_400_000),
        Err(e) if e == Date::NO_SUCH_DATE => Err(format!("since {v:?}: {e}")),
        Err(_) => Err(format!(
            "since {v:?}: expected YYYY-MM-DD, a span like 7d or 12h, or unix milliseconds"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_formats_utc() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(1_704_067_200_000), "2024-01-01T00:00:00Z");
        assert_eq!(iso_utc(1_709_210_096_000), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn since_takes_ms_a_date_or_a_span() {
        let now = 1_704_067_200_000;
        assert_eq!(parse_since("1700000000000", now), Ok(1_700_000_000_000));
        assert_eq!(parse_since("2024-01-01", now), Ok(1_704_067_200_000));
        assert_eq!(parse_since("7d", now), Ok(now - 7 * 86_400_000));
        assert_eq!(parse_since("12h", now), Ok(now - 12 * 3_600_000));
        assert_eq!(parse_since("30m", now), Ok(now - 30 * 60_000));
        for bad in [
            "2024-02-30",
            "2024-13-01",
            "2024-1-1",
            "yesterday",
            "7w",
            "",
            "-5d",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_dns_note_reads_into_reports() {
        use crate::store::{HostNotes, Note};
        let parsed = |v: &str| HostNotes::parse([(Note::Dns, v.to_owned())]).dns;
        assert!(DnsReport::from_states(&HostNotes::default().dns).is_empty());
        assert!(DnsReport::from_states(&parsed("not json")).is_empty());
        let note = r#"[{"domain":"lab.test","record":"_vlmcs._tcp.lab.test. 600 IN SRV 0 0 1688 kms1.lab.test.","server":"127.0.0.1:53","published":false,"last_success_ms":0,"last_attempt_ms":5,"last_error":"the DNS server rejected the TSIG key 'k' (BADSIG)","failures":3,"updates":1,"current":null}]"#;
        let r = DnsReport::from_states(&parsed(note));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].last_success.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(r[0].failures, 3);
        assert!(!r[0].published);
    }

    #[test]
    fn thresholds_per_pool() {
        let w = thresholds(Pool::Windows, 7);
        assert_eq!(
            w.iter().map(|t| (t.needs, t.reached)).collect::<Vec<_>>(),
            vec![(5, true), (25, false)]
        );
        assert!(!thresholds(Pool::Office2010, 4)[0].reached);
    }
}
