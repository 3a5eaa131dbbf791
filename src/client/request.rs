//! The one request builder of `kmsd activate`, `kmsd load` and `kmsd
//! probe`: a product in, the request base a Windows client of it sends out.
//! The threshold is the catalog's N_Policy for the SKU's group and the
//! version the group's protocol, unless the caller asks for others; the
//! license state is a freshly installed volume client's: initial grace, 30
//! days left.

use crate::protocol::guid::Guid;
use crate::protocol::kms::products::{self, Sku};
use crate::protocol::kms::{KmsError, RequestBase, Version, Workstation};

/// The license status the clients send: initial (out-of-box) grace, the
/// state of a volume client that has not activated yet.
pub const LICENSE_STATUS_INITIAL_GRACE: u32 = 2;
/// Minutes left in that grace the clients send: 30 days.
pub const GRACE_MINUTES_LEFT: u32 = 30 * 24 * 60;
/// The catalog's threshold for a group without an `NCountPolicy` of its own
/// (the generator's default). Every catalog SKU has a group, so this only
/// stands in for a lookup that cannot fail.
const CATALOG_DEFAULT_N_POLICY: u32 = 25;

/// Why a request cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The product names no SKU, or several (the catalog's words).
    #[error("{0}")]
    Product(String),
    #[error("workstation name {name:?}: {err}")]
    Workstation { name: String, err: KmsError },
}

/// A request for one product, as a Windows client of it sends it; [`base`]
/// gives the bytes' fields for one machine at one time.
///
/// [`base`]: ProductRequest::base
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductRequest {
    pub sku: &'static Sku,
    pub version: Version,
    /// The threshold sent (N_Policy).
    pub n_policy: u32,
    /// The client says it runs in a virtual machine.
    pub vm: bool,
    pub workstation: Workstation,
}

impl ProductRequest {
    /// What a client of `sku` sends: its group's protocol and N_Policy, no
    /// workstation name, not a virtual machine.
    pub fn new(sku: &'static Sku) -> Self {
        let group = products::kms_group(&sku.kms_id);
        Self {
            sku,
            version: group
                .and_then(|g| Version::from_wire(g.protocol_major, 0))
                .unwrap_or(Version::V6),
            n_policy: group.map_or(CATALOG_DEFAULT_N_POLICY, |g| g.n_policy),
            vm: false,
            workstation: Workstation([0; 128]),
        }
    }

    /// The request for `product` as `kmsd products` names it: a SKU name,
    /// a unique part of one, or a SKU GUID.
    pub fn find(product: &str) -> Result<Self, RequestError> {
        products::find_sku(product)
            .map(Self::new)
            .map_err(RequestError::Product)
    }

    /// The same request in protocol `version`.
    pub fn version(self, version: Version) -> Self {
        Self { version, ..self }
    }

    /// The same request with the threshold `n_policy` instead of the
    /// catalog's.
    pub fn n_policy(self, n_policy: u32) -> Self {
        Self { n_policy, ..self }
    }

    /// The same request from the workstation `name` (at most 63 UTF-16
    /// units, no NUL).
    pub fn workstation(self, name: &str) -> Result<Self, RequestError> {
        let workstation = Workstation::new(name).map_err(|err| RequestError::Workstation {
            name: name.to_owned(),
            err,
        })?;
        Ok(Self {
            workstation,
            ..self
        })
    }

    /// The request base machine `cmid` sends at `client_time` (a FILETIME).
    pub fn base(&self, cmid: Guid, client_time: u64) -> RequestBase {
        RequestBase {
            version: self.version,
            vm_info: u32::from(self.vm),
            license_status: LICENSE_STATUS_INITIAL_GRACE,
            binding_expiration: GRACE_MINUTES_LEFT,
            app_id: self.sku.app_id,
            sku_id: self.sku.id,
            kms_id: self.sku.kms_id,
            cmid,
            n_policy: self.n_policy,
            client_time,
            previous_cmid: Guid::NIL,
            workstation: self.workstation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_gives_the_threshold_and_the_protocol() {
        for (name, n, major) in [
            ("Windows 10/11 Enterprise", 25, 6),
            ("Windows Server 2022 Datacenter", 5, 6),
            ("Office LTSC Professional Plus 2021", 5, 6),
        ] {
            let r = ProductRequest::find(name).unwrap();
            let g = products::kms_group(&r.sku.kms_id).unwrap();
            assert_eq!((r.n_policy, g.n_policy), (n, n), "{name}");
            assert_eq!(r.version.major(), major, "{name}");
        }
        // A group on protocol 4 or 5 keeps it.
        let old = products::skus()
            .iter()
            .find(|s| products::kms_group(&s.kms_id).is_some_and(|g| g.protocol_major == 4))
            .unwrap();
        assert_eq!(ProductRequest::new(old).version, Version::V4);
    }

    #[test]
    fn the_base_says_what_a_fresh_volume_client_says() {
        let r = ProductRequest::find("Windows 10/11 Enterprise")
            .unwrap()
            .version(Version::V5)
            .n_policy(7)
            .workstation("lab-pc")
            .unwrap();
        let cmid = Guid::from_u128(42);
        let b = r.base(cmid, 133_801_632_000_000_000);
        assert_eq!(b.version, Version::V5);
        assert_eq!((b.license_status, b.binding_expiration), (2, 43_200));
        assert_eq!(b.n_policy, 7);
        assert_eq!(
            (b.sku_id, b.kms_id, b.app_id),
            (r.sku.id, r.sku.kms_id, r.sku.app_id)
        );
        assert_eq!((b.cmid, b.client_time), (cmid, 133_801_632_000_000_000));
        assert_eq!(b.workstation.name(), "lab-pc");
        assert_eq!(b.vm_info, 0);
    }

    #[test]
    fn a_bad_product_or_workstation_is_refused() {
        assert!(matches!(
            ProductRequest::find("no such product at all"),
            Err(RequestError::Product(_))
        ));
        let r = ProductRequest::find("Windows 10/11 Pro").unwrap();
        let e = r.workstation(&"x".repeat(64)).unwrap_err();
        assert!(matches!(e, RequestError::Workstation { .. }), "{e}");
    }
}
