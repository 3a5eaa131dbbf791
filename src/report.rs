//! What `kmsd status` and `kmsd clients` print, read from a data dir (the
//! database a running host writes; WAL lets this read beside it).

use crate::protocol::guid::Guid;
use crate::protocol::kms::products::{self, Date, Pool};
use crate::store::{StoreError, sqlite, window};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

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
    pub pools: Vec<PoolReport>,
    pub epids: Vec<EpidReport>,
    pub totals: Vec<TotalReport>,
    pub inventory: u64,
    pub records_kept: u64,
}

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

fn result_name(hr: u32) -> String {
    if hr == 0 {
        "answered".into()
    } else {
        format!("refused {hr:#010X}")
    }
}

fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Live entries of each pool at `now_ms`, as the host holds them.
pub fn pool_counts(conn: &Connection, now_ms: i64) -> Result<Vec<(Pool, u32, u32)>, StoreError> {
    let loaded = sqlite::load(conn, now_ms)?;
    Ok(loaded
        .pools
        .iter()
        .map(|p| (p.pool, p.entries.len() as u32, p.capacity))
        .collect())
}

/// Reads the status of the host whose data dir is `dir`.
pub fn status(dir: &Path, now_ms: i64) -> Result<StatusReport, StoreError> {
    let path = dir.join(crate::store::DB_FILE);
    let conn = sqlite::open_ro(&path)?;
    // One read transaction: the folded tables and the log tail agree.
    let _snapshot = conn.unchecked_transaction()?;
    let served: Vec<String> = meta(&conn, "served_groups")?
        .map(|s| {
            s.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let pools = pool_counts(&conn, now_ms)?
        .into_iter()
        .map(|(pool, count, capacity)| PoolReport {
            pool: pool.name(),
            count,
            capacity,
            thresholds: thresholds(pool, count),
        })
        .collect();
    let mut epids = Vec::new();
    let mut stmt = conn.prepare("SELECT grp, epid FROM epids ORDER BY grp")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (group, epid) = row?;
        epids.push(EpidReport {
            served: served.contains(&group),
            group,
            epid,
        });
    }
    let mut totals = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT hresult, license_status, n FROM totals ORDER BY hresult, license_status",
    )?;
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, u32>(0)?,
            r.get::<_, u32>(1)?,
            r.get::<_, i64>(2)? as u64,
        ))
    })? {
        let (hr, ls, n) = row?;
        totals.push(TotalReport {
            result: result_name(hr),
            license_status: license_status_name(ls),
            requests: n,
        });
    }
    let inventory = sqlite::inventory_size(&conn)?;
    let records_kept = conn.query_row(
        // Two sub-selects: SQLite answers each from the rowid b-tree's ends,
        // where MAX(id) - MIN(id) in one select scans the table.
        "SELECT COALESCE((SELECT MAX(id) FROM activations) - (SELECT MIN(id) FROM activations) + 1, 0)",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64;
    Ok(StatusReport {
        database: path.display().to_string(),
        schema_version: sqlite::SCHEMA_VERSION,
        started: meta(&conn, "started_ms")?
            .and_then(|s| s.parse().ok())
            .map(iso_utc),
        pid: meta(&conn, "pid")?,
        listen: meta(&conn, "listen")?
            .map(|s| {
                s.split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        count_mode: meta(&conn, "count_mode")?,
        host_build: meta(&conn, "host_build")?,
        hwid: meta(&conn, "hwid")?,
        pools,
        epids,
        totals,
        inventory,
        records_kept,
    })
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        writeln!(
            f,
            "Database:        {} (schema {})",
            self.database, self.schema_version
        )?;
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
        writeln!(f)?;
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
}

/// Lists the inventory, newest first: optionally one pool, and only
/// machines seen at or after `since_ms`.
pub fn clients(
    dir: &Path,
    now_ms: i64,
    pool: Option<Pool>,
    since_ms: Option<i64>,
    limit: usize,
) -> Result<Vec<ClientRow>, StoreError> {
    let conn = sqlite::open_ro(&dir.join(crate::store::DB_FILE))?;
    // One read transaction: the folded tables and the log tail agree.
    let _snapshot = conn.unchecked_transaction()?;
    let loaded = sqlite::load(&conn, now_ms)?;
    let tail = sqlite::read_tail(&conn, sqlite::folded_upto(&conn)?, i64::MAX)?;
    let live = |p: Pool, g: &Guid| {
        loaded
            .pools
            .iter()
            .any(|lp| lp.pool == p && lp.entries.iter().any(|(c, _)| c == g))
    };
    let since = since_ms.unwrap_or(i64::MIN);
    let app_filter: Option<Guid> = pool.map(Pool::app_id);
    let wanted = |m: &Machine| m.last >= since && app_filter.is_none_or(|a| a == m.app);
    let guid = |b: &[u8]| Guid(<[u8; 16]>::try_from(b).unwrap_or([0; 16]));
    let machine = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Machine> {
        Ok(Machine {
            cmid: guid(&r.get::<_, Vec<u8>>(0)?),
            app: guid(&r.get::<_, Vec<u8>>(1)?),
            workstation: r.get(2)?,
            sku: guid(&r.get::<_, Vec<u8>>(3)?),
            address: r.get(4)?,
            first: r.get(5)?,
            last: r.get(6)?,
            requests: r.get::<_, i64>(7)? as u64,
            hresult: r.get(8)?,
            count: r.get(9)?,
        })
    };
    const COLUMNS: &str = "cmid, app_id, workstation, sku_id, address, first_seen_ms, last_seen_ms,
                requests, last_hresult, last_count";
    // Stored rows, newest first; machines with requests in the tail are
    // taken from the merge below instead, so fetch that many more.
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM clients WHERE last_seen_ms >= ?1 AND (?2 IS NULL OR app_id = ?2)
         ORDER BY last_seen_ms DESC LIMIT ?3"
    ))?;
    let fetch = limit
        .saturating_add(tail.clients.len())
        .min(i64::MAX as usize) as i64;
    let mut machines = Vec::new();
    for m in stmt.query_map(
        params![since, app_filter.map(|a| a.0.to_vec()), fetch],
        machine,
    )? {
        let m = m?;
        if !tail.clients.contains_key(&(m.cmid, m.app)) {
            machines.push(m);
        }
    }
    let mut stored = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM clients WHERE cmid = ?1 AND app_id = ?2"
    ))?;
    for ((cmid, app), t) in &tail.clients {
        let before = stored
            .query_row(params![&cmid.0[..], &app.0[..]], machine)
            .optional()?;
        let m = Machine {
            cmid: *cmid,
            app: *app,
            workstation: t.workstation.clone(),
            sku: t.sku_id,
            address: t.address.clone(),
            first: before.as_ref().map_or(t.first_ms, |b| b.first),
            last: before.as_ref().map_or(t.last_ms, |b| b.last.max(t.last_ms)),
            requests: before.as_ref().map_or(0, |b| b.requests) + t.requests,
            hresult: t.last_hresult,
            count: t.last_count,
        };
        if wanted(&m) {
            machines.push(m);
        }
    }
    machines.sort_by_key(|m| std::cmp::Reverse(m.last));
    machines.truncate(limit);
    Ok(machines
        .into_iter()
        .map(|m| {
            let p = Pool::from_app_id(&m.app);
            ClientRow {
                cmid: m.cmid.to_string(),
                pool: p.map_or_else(|| m.app.to_string(), |p| p.name().to_owned()),
                workstation: m.workstation,
                product: products::sku(&m.sku)
                    .map_or_else(|| "unknown SKU".into(), |s| s.name.to_owned()),
                sku_id: m.sku.to_string(),
                address: m.address,
                first_seen: iso_utc(m.first),
                last_seen: iso_utc(m.last),
                requests: m.requests,
                last_result: result_name(m.hresult),
                last_count: m.count,
                live: p.is_some_and(|p| live(p, &m.cmid)) && m.last > now_ms - window::TTL_MS,
            }
        })
        .collect())
}

/// One inventory row, stored or folded from the log tail.
struct Machine {
    cmid: Guid,
    app: Guid,
    workstation: String,
    sku: Guid,
    address: String,
    first: i64,
    last: i64,
    requests: u64,
    hresult: u32,
    count: u32,
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
    fn thresholds_per_pool() {
        let w = thresholds(Pool::Windows, 7);
        assert_eq!(
            w.iter().map(|t| (t.needs, t.reached)).collect::<Vec<_>>(),
            vec![(5, true), (25, false)]
        );
        assert!(!thresholds(Pool::Office2010, 4)[0].reached);
    }
}
