//! What the admin API reads from the database, and its query parameters.

use crate::protocol::guid::Guid;
use crate::protocol::kms::products::{self, Date, Pool};
use crate::report::{self, ClientRow};
use crate::store::{StoreError, sqlite};
use rusqlite::params;
use serde::Serialize;
use std::path::Path;

/// One activation record, as `/api/activations` and the page show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActivationRow {
    pub id: i64,
    /// ISO 8601 UTC.
    pub time: String,
    pub time_ms: i64,
    pub address: String,
    pub workstation: String,
    pub cmid: String,
    /// SKU name from the catalog ("unknown SKU" when it has none).
    pub product: String,
    pub sku_id: String,
    /// The KMS counted ID.
    pub kms_id: String,
    /// The catalog name of the KMS counted ID, when known.
    pub kms_group: Option<String>,
    /// The count pool of the Application ID, when it is one of the three.
    pub pool: Option<String>,
    /// Major protocol version (4, 5 or 6).
    pub protocol: u16,
    pub n_policy: u32,
    pub license_status: String,
    pub vm: bool,
    /// The count the host reported.
    pub count: u32,
    /// "answered", or the HRESULT sent instead, as 0x%08X.
    pub result: String,
}

fn guid(b: &[u8]) -> Guid {
    Guid(<[u8; 16]>::try_from(b).unwrap_or([0; 16]))
}

/// The `limit` most recent activation records in the database at `db`,
/// newest first.
pub fn recent_activations(db: &Path, limit: usize) -> Result<Vec<ActivationRow>, StoreError> {
    let conn = sqlite::open_ro(db)?;
    let mut stmt = conn.prepare(
        "SELECT id, time_ms, address, workstation, cmid, app_id, sku_id, kms_id, n_policy,
                license_status, vm, protocol, count, hresult
         FROM activations ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Vec<u8>>(4)?,
            r.get::<_, Vec<u8>>(5)?,
            r.get::<_, Vec<u8>>(6)?,
            r.get::<_, Vec<u8>>(7)?,
            r.get::<_, u32>(8)?,
            r.get::<_, u32>(9)?,
            r.get::<_, bool>(10)?,
            r.get::<_, u16>(11)?,
            r.get::<_, u32>(12)?,
            r.get::<_, u32>(13)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            id,
            time_ms,
            address,
            workstation,
            cmid,
            app,
            sku,
            kms,
            n_policy,
            ls,
            vm,
            proto,
            count,
            hr,
        ) = row?;
        let (cmid, app, sku, kms) = (guid(&cmid), guid(&app), guid(&sku), guid(&kms));
        out.push(ActivationRow {
            id,
            time: report::iso_utc(time_ms),
            time_ms,
            address,
            workstation,
            cmid: cmid.to_string(),
            product: products::sku(&sku).map_or_else(|| "unknown SKU".into(), |s| s.name.into()),
            sku_id: sku.to_string(),
            kms_id: kms.to_string(),
            kms_group: products::kms_group(&kms).map(|g| g.name.to_owned()),
            pool: Pool::from_app_id(&app).map(|p| p.name().to_owned()),
            protocol: proto,
            n_policy,
            license_status: report::license_status_name(ls),
            vm,
            count,
            result: result_name(hr),
        });
    }
    Ok(out)
}

/// "answered" or the HRESULT as 0x%08X.
pub fn result_name(hr: u32) -> String {
    if hr == 0 {
        "answered".into()
    } else {
        format!("0x{hr:08X}")
    }
}

/// Whether an inventory row matches a search: a case-insensitive substring
/// of the workstation, CMID, address or product (`needle` lowercased).
pub fn client_matches(row: &ClientRow, needle: &str) -> bool {
    needle.is_empty()
        || [&row.workstation, &row.cmid, &row.address, &row.product]
            .iter()
            .any(|f| f.to_lowercase().contains(needle))
}

/// The search text as [`client_matches`] wants it (braces of a pasted
/// `{GUID}` dropped).
pub fn needle(q: &str) -> String {
    q.trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .to_lowercase()
}

/// Most inventory rows scanned for a search.
const SEARCH_SCAN: usize = 1_000_000;

/// The inventory (newest first), filtered by `q`, at most `limit` rows.
pub fn clients(
    dir: &Path,
    now_ms: i64,
    pool: Option<Pool>,
    since_ms: Option<i64>,
    q: &str,
    limit: usize,
) -> Result<Vec<ClientRow>, StoreError> {
    let needle = needle(q);
    if needle.is_empty() {
        return report::clients(dir, now_ms, pool, since_ms, limit);
    }
    let mut rows = report::clients(dir, now_ms, pool, since_ms, SEARCH_SCAN)?;
    rows.retain(|r| client_matches(r, &needle));
    rows.truncate(limit);
    Ok(rows)
}

fn present(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|s| !s.is_empty())
}

/// `pool=`: "windows", "office2010" or "office2013+" (also "office2013",
/// "office2013plus", and "office2013 " as a `+` decoded from a query string
/// becomes a space).
pub fn parse_pool(v: Option<&str>) -> Result<Option<Pool>, String> {
    let Some(v) = present(v) else {
        return Ok(None);
    };
    let norm = v.to_ascii_lowercase();
    let norm = norm
        .strip_suffix("plus")
        .or_else(|| norm.strip_suffix('+'))
        .unwrap_or(&norm);
    match norm {
        "windows" => Ok(Some(Pool::Windows)),
        "office2010" => Ok(Some(Pool::Office2010)),
        "office2013" => Ok(Some(Pool::Office2013Plus)),
        _ => Err(format!(
            "pool {v:?}: expected windows, office2010 or office2013+"
        )),
    }
}

/// `since=`: unix milliseconds or a UTC date `YYYY-MM-DD`.
pub fn parse_since(v: Option<&str>) -> Result<Option<i64>, String> {
    let Some(v) = present(v) else {
        return Ok(None);
    };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    let bad = || format!("since {v:?}: expected unix milliseconds or YYYY-MM-DD");
    let parts: Vec<&str> = v.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let date = Date {
        year: y.parse().map_err(|_| bad())?,
        month: m.parse().map_err(|_| bad())?,
        day: d.parse().map_err(|_| bad())?,
    };
    let days = date.days_since_unix_epoch();
    if !(1..=12).contains(&date.month) || Date::from_days_since_unix_epoch(days) != date {
        return Err(format!("since {v:?}: no such date"));
    }
    Ok(Some(days * 86_400_000))
}

/// `limit=`: a count, `default` when absent, at most `max`.
pub fn parse_limit(v: Option<&str>, default: usize, max: usize) -> Result<usize, String> {
    match present(v) {
        None => Ok(default),
        Some(s) => s
            .parse::<u64>()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX).min(max))
            .map_err(|_| format!("limit {s:?}: expected a number (at most {max})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_ms_or_a_date() {
        assert_eq!(parse_since(None), Ok(None));
        assert_eq!(parse_since(Some(" ")), Ok(None));
        assert_eq!(
            parse_since(Some("1700000000000")),
            Ok(Some(1_700_000_000_000))
        );
        assert_eq!(parse_since(Some("2024-01-01")), Ok(Some(1_704_067_200_000)));
        assert!(parse_since(Some("2024-02-30")).is_err());
        assert!(parse_since(Some("2024-13-01")).is_err());
        assert!(parse_since(Some("2024-1-1")).is_err());
        assert!(parse_since(Some("yesterday")).is_err());
    }

    #[test]
    fn pool_names_survive_query_decoding() {
        assert_eq!(parse_pool(Some("Windows")), Ok(Some(Pool::Windows)));
        assert_eq!(
            parse_pool(Some("office2013+")),
            Ok(Some(Pool::Office2013Plus))
        );
        assert_eq!(
            parse_pool(Some("office2013 ")),
            Ok(Some(Pool::Office2013Plus))
        );
        assert_eq!(
            parse_pool(Some("office2013plus")),
            Ok(Some(Pool::Office2013Plus))
        );
        assert_eq!(parse_pool(Some("")), Ok(None));
        assert!(parse_pool(Some("linux")).is_err());
    }

    #[test]
    fn limits_default_and_clamp() {
        assert_eq!(parse_limit(None, 200, 5000), Ok(200));
        assert_eq!(parse_limit(Some("10"), 200, 5000), Ok(10));
        assert_eq!(parse_limit(Some("99999999999999999"), 200, 5000), Ok(5000));
        assert!(parse_limit(Some("-1"), 200, 5000).is_err());
        assert!(parse_limit(Some("ten"), 200, 5000).is_err());
    }

    #[test]
    fn results_are_named_or_hex() {
        assert_eq!(result_name(0), "answered");
        assert_eq!(result_name(0xC004_F042), "0xC004F042");
    }

    #[test]
    fn search_matches_any_field_ignoring_case() {
        let row = ClientRow {
            cmid: "0f1e2d3c-0000-4000-8000-000000000001".into(),
            pool: "windows".into(),
            workstation: "SRV-Alpha".into(),
            product: "Windows Server 2022 Standard".into(),
            sku_id: String::new(),
            address: "10.0.0.7".into(),
            first_seen: String::new(),
            last_seen: String::new(),
            requests: 1,
            last_result: "answered".into(),
            last_count: 1,
            live: true,
        };
        for q in ["srv-alpha", "{0F1E2D3C-0000", "10.0.0", "server 2022", ""] {
            assert!(client_matches(&row, &needle(q)), "{q}");
        }
        assert!(!client_matches(&row, &needle("office")));
    }
}
