//! What the admin API shows of the store's answers, and its query
//! parameters.

use crate::protocol::kms::products::{self, Pool};
use crate::report::{self, ClientRow};
use crate::store::{ClientQuery, Store, StoreError, StoredActivation};
use serde::Serialize;

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

impl ActivationRow {
    /// Formats one stored activation record.
    pub fn new(a: &StoredActivation) -> Self {
        Self {
            id: a.id,
            time: report::iso_utc(a.time_ms),
            time_ms: a.time_ms,
            address: a.address.clone(),
            workstation: a.workstation.clone(),
            cmid: a.cmid.to_string(),
            product: products::sku(&a.sku_id)
                .map_or_else(|| "unknown SKU".into(), |s| s.name.into()),
            sku_id: a.sku_id.to_string(),
            kms_id: a.kms_id.to_string(),
            kms_group: products::kms_group(&a.kms_id).map(|g| g.name.to_owned()),
            pool: Pool::from_app_id(&a.app_id).map(|p| p.name().to_owned()),
            protocol: a.protocol,
            n_policy: a.n_policy,
            license_status: report::license_status_name(a.license_status),
            vm: a.vm,
            count: a.count,
            result: a.result.to_string(),
        }
    }
}

/// The `limit` most recent activation records, newest first.
pub async fn recent_activations(
    store: &Store,
    limit: usize,
) -> Result<Vec<ActivationRow>, StoreError> {
    Ok(store
        .recent(limit)
        .await?
        .iter()
        .map(ActivationRow::new)
        .collect())
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
pub async fn clients(
    store: &Store,
    mut query: ClientQuery,
    q: &str,
) -> Result<Vec<ClientRow>, StoreError> {
    let needle = needle(q);
    let limit = query.limit;
    if !needle.is_empty() {
        query.limit = SEARCH_SCAN;
    }
    let mut rows: Vec<ClientRow> = store
        .clients(query)
        .await?
        .iter()
        .map(ClientRow::new)
        .collect();
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

/// `since=`: see [`report::parse_since`].
pub fn parse_since(v: Option<&str>, now_ms: i64) -> Result<Option<i64>, String> {
    present(v)
        .map(|v| report::parse_since(v, now_ms))
        .transpose()
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
        assert_eq!(parse_since(None, 0), Ok(None));
        assert_eq!(parse_since(Some(" "), 0), Ok(None));
        assert_eq!(
            parse_since(Some("1700000000000"), 0),
            Ok(Some(1_700_000_000_000))
        );
        assert_eq!(
            parse_since(Some("2024-01-01"), 0),
            Ok(Some(1_704_067_200_000))
        );
        assert!(parse_since(Some("2024-02-30"), 0).is_err());
        assert!(parse_since(Some("2024-13-01"), 0).is_err());
        assert!(parse_since(Some("2024-1-1"), 0).is_err());
        assert!(parse_since(Some("yesterday"), 0).is_err());
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
            seat: None,
        };
        for q in ["srv-alpha", "{0F1E2D3C-0000", "10.0.0", "server 2022", ""] {
            assert!(client_matches(&row, &needle(q)), "{q}");
        }
        assert!(!client_matches(&row, &needle("office")));
    }
}
