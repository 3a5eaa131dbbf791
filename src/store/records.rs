//! What the host hands the store per request, and what a store gives
//! back: the activation record, the request to count, its count, and the
//! record as the log keeps it.

use crate::licenses::Seat;
use crate::protocol::guid::Guid;
use crate::protocol::kms::Hresult;
use crate::protocol::kms::products::Pool;

/// One request as the host saw it: the activation record, from which the
/// inventory row and (when it was counted) the pool entry follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time_ms: i64,
    pub address: String,
    pub workstation: String,
    pub cmid: Guid,
    pub app_id: Guid,
    pub sku_id: Guid,
    pub kms_id: Guid,
    /// The pool the CMID was counted in (None when refused or not counted).
    pub counted_in: Option<Pool>,
    /// The pool's capacity after this request.
    pub capacity: u32,
    pub n_policy: u32,
    pub license_status: u32,
    pub binding_expiration: u32,
    pub vm: bool,
    pub protocol: u16,
    pub count: u32,
    /// [`Hresult::ANSWERED`], else the HRESULT sent in its place.
    pub hresult: Hresult,
}

impl Record {
    /// The seat this record's machine holds or takes, answered by `host`
    /// (its pack is decided by the book).
    pub fn seat_row(&self, host: &str) -> crate::licenses::SeatRow {
        crate::licenses::SeatRow {
            cmid: self.cmid,
            pack: 0,
            sku: self.sku_id,
            workstation: self.workstation.clone(),
            address: self.address.clone(),
            host: host.to_owned(),
            first_ms: self.time_ms,
            last_ms: self.time_ms,
        }
    }
}

/// A request to count: its record, with the pool to count its CMID in.
/// The store fills in the count, the capacity and `counted_in`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRequest {
    pub pool: Pool,
    pub record: Record,
    /// A license pack covers the record's product: bind the machine a seat
    /// when the answer activates it (see [`crate::licenses`]). False costs
    /// nothing.
    pub seat: bool,
}

/// What counting one request gave, once its record is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counted {
    /// Live entries in the pool after this request (what the client is told).
    pub count: u32,
    /// The pool's capacity after this request (0 when nothing is counted).
    pub capacity: u32,
    /// The machine's seat; [`Seat::Refused`]: nothing was counted and the
    /// refusal is recorded.
    pub seat: Seat,
}

/// One activation record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredActivation {
    pub id: i64,
    pub time_ms: i64,
    pub address: String,
    pub workstation: String,
    pub cmid: Guid,
    pub app_id: Guid,
    pub sku_id: Guid,
    pub kms_id: Guid,
    pub n_policy: u32,
    pub license_status: u32,
    pub vm: bool,
    pub protocol: u16,
    pub count: u32,
    pub result: Hresult,
}
