//! Product policy: what a host with a given set of host keys (served ePID
//! groups) answers to a verified request, before anything is counted.
//! Pure: the request, the policy and the host's clock reading go in; a
//! decision to count (naming the pool and the ePID group) or a refusal with
//! its HRESULT comes out. One catalog lookup per request.

use super::kms::RequestBase;
use super::kms::hresult;
use super::kms::products::{self, KmsGroup, Pool};

/// Highest threshold (N_Policy) a host accepts; above it the request is
/// malformed (0x8007000D), as on a Windows host.
pub const MAX_N_POLICY: u32 = 1000;

/// FILETIME of the unix epoch.
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// Unix milliseconds of a FILETIME (any peer value: no overflow).
pub fn filetime_to_unix_ms(ft: u64) -> i64 {
    let ms = (i128::from(ft) - i128::from(FILETIME_UNIX_EPOCH)) / 10_000;
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// What decides a request: the host keys installed and the checks enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPolicy {
    /// ePID groups served (catalog names, e.g. "Windows", "Office2016").
    pub served: Vec<&'static str>,
    /// Refuse unknown KMS counted IDs (else count them as their
    /// application's default group).
    pub strict_products: bool,
    /// Refuse clients whose clock is further than this from the host's.
    pub max_clock_skew_ms: Option<u64>,
}

/// A request the host counts and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// The count pool of the request's application.
    pub pool: Pool,
    /// The ePID group whose ePID answers it.
    pub epid_group: &'static str,
    /// The catalog entry of the KMS counted ID (None when unknown and
    /// served leniently).
    pub kms_group: Option<&'static KmsGroup>,
}

/// A refusal: the HRESULT sent in place of a response, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub hresult: u32,
    pub why: &'static str,
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Count(Count),
    Refuse(Refusal),
}

fn refuse(hresult: u32, why: &'static str) -> Decision {
    Decision::Refuse(Refusal { hresult, why })
}

/// Decides `req` under `policy` at the host's time `now_ms`.
///
/// Checked in this order: N_Policy bound (0x8007000D), clock skew
/// (0xC004F06C), then the product (0xC004F042): a retail or pre-release
/// KMS counted ID, an Application ID that is not the counted ID's, an
/// unknown counted ID (unless lenient), a group not served.
pub fn decide(policy: &ProductPolicy, req: &RequestBase, now_ms: i64) -> Decision {
    if req.n_policy > MAX_N_POLICY {
        return refuse(hresult::INVALID_DATA, "N_Policy above 1000");
    }
    if let Some(max) = policy.max_clock_skew_ms {
        let skew = filetime_to_unix_ms(req.client_time).abs_diff(now_ms);
        if skew > max {
            return refuse(hresult::TIME_SKEW, "client clock too far from the host's");
        }
    }
    let kms_group = products::kms_group(&req.kms_id);
    let (pool, epid_group) = match kms_group {
        Some(g) => {
            if !g.is_volume() && policy.strict_products {
                return refuse(
                    hresult::KMS_ID_MISMATCH,
                    "retail or pre-release KMS counted ID",
                );
            }
            if g.app_id != req.app_id {
                return refuse(
                    hresult::KMS_ID_MISMATCH,
                    "Application ID does not match the KMS counted ID",
                );
            }
            (g.pool, g.epid_group)
        }
        None if policy.strict_products => {
            return refuse(hresult::KMS_ID_MISMATCH, "unknown KMS counted ID");
        }
        None => match products::app(&req.app_id) {
            Some(app) => (app.pool, app.default_epid_group),
            None => return refuse(hresult::KMS_ID_MISMATCH, "unknown Application ID"),
        },
    };
    if !policy.served.contains(&epid_group) {
        return refuse(
            hresult::KMS_ID_MISMATCH,
            "product group not served by this host",
        );
    }
    Decision::Count(Count {
        pool,
        epid_group,
        kms_group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::guid::Guid;
    use crate::protocol::kms::{Version, Workstation};

    fn all_groups() -> Vec<&'static str> {
        products::epid_groups().iter().map(|g| g.name).collect()
    }

    fn policy() -> ProductPolicy {
        ProductPolicy {
            served: all_groups(),
            strict_products: true,
            max_clock_skew_ms: None,
        }
    }

    fn request(sku_name: &str) -> RequestBase {
        let sku = products::find_sku(sku_name).unwrap();
        let g = products::kms_group(&sku.kms_id).unwrap();
        RequestBase {
            version: Version::from_wire(6, 0).unwrap(),
            vm_info: 0,
            license_status: 2,
            binding_expiration: 43200,
            app_id: sku.app_id,
            sku_id: sku.id,
            kms_id: sku.kms_id,
            cmid: Guid::from_u128(7),
            n_policy: g.n_policy,
            client_time: 133_000_000_000_000_000,
            previous_cmid: Guid::from_u128(0),
            workstation: Workstation::new("ws").unwrap(),
        }
    }

    #[test]
    fn a_served_volume_product_is_counted_in_its_pool() {
        let r = request("Windows Server 2022 Datacenter");
        match decide(&policy(), &r, 0) {
            Decision::Count(c) => {
                assert_eq!(c.pool, Pool::Windows);
                assert_eq!(c.epid_group, "Windows");
                assert_eq!(c.kms_group.map(|g| g.id), Some(r.kms_id));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn refusals_name_their_hresult() {
        let mut p = policy();
        let mut r = request("Windows 10/11 Pro");
        r.n_policy = 1001;
        assert_eq!(
            decide(&p, &r, 0),
            refuse(hresult::INVALID_DATA, "N_Policy above 1000")
        );
        let mut r = request("Windows 10/11 Pro");
        r.app_id = Pool::Office2013Plus.app_id();
        assert!(
            matches!(decide(&p, &r, 0), Decision::Refuse(x) if x.hresult == hresult::KMS_ID_MISMATCH && x.why.contains("Application ID"))
        );
        let mut r = request("Windows 10/11 Pro");
        r.kms_id = Guid::from_u128(0x1234);
        assert!(
            matches!(decide(&p, &r, 0), Decision::Refuse(x) if x.why == "unknown KMS counted ID")
        );
        p.strict_products = false;
        assert!(
            matches!(decide(&p, &r, 0), Decision::Count(c) if c.pool == Pool::Windows && c.kms_group.is_none())
        );
        p.served = vec!["Office2016"];
        assert!(matches!(decide(&p, &r, 0), Decision::Refuse(x) if x.why.contains("not served")));
    }

    #[test]
    fn clock_skew_is_checked_both_ways_only_when_enabled() {
        let mut p = policy();
        let r = request("Windows 10/11 Pro");
        let client_ms = filetime_to_unix_ms(r.client_time);
        let hour = 3_600_000;
        assert!(matches!(
            decide(&p, &r, client_ms + 100 * hour),
            Decision::Count(_)
        ));
        p.max_clock_skew_ms = Some(4 * hour as u64);
        for now in [client_ms + 4 * hour + 1, client_ms - 4 * hour - 1] {
            assert_eq!(
                decide(&p, &r, now),
                refuse(hresult::TIME_SKEW, "client clock too far from the host's")
            );
        }
        assert!(matches!(
            decide(&p, &r, client_ms + 4 * hour),
            Decision::Count(_)
        ));
    }

    #[test]
    fn filetime_conversion_never_overflows() {
        assert_eq!(filetime_to_unix_ms(FILETIME_UNIX_EPOCH), 0);
        assert_eq!(filetime_to_unix_ms(0), -11_644_473_600_000);
        assert!(filetime_to_unix_ms(u64::MAX) > 0);
    }
}
