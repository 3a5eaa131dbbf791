//! The license ledger: packs, seats, the daily peaks and the audit trail,
//! as one transaction sees them. Each backend implements [`Ledger`] over
//! its own transaction; what to do with the rows (which pack, what to
//! reclaim, what to move) is decided by [`crate::licenses`], never here.
//!
//! The hot path does not go through this trait: a backend loads a
//! [`crate::licenses::Book`] inside the transaction that counts (see
//! `sqlite::seats` and `postgres::seats`), under the same lock the
//! ledger's writers take, so a fleet never binds more seats than a pack
//! holds.

use super::{Backend, StoreError};
pub use crate::licenses::Duplicate;
use crate::licenses::{Day, Pack, PackId, SeatRow};
use crate::protocol::guid::Guid;
use std::path::Path;

/// One day's high-water mark of a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeakRow {
    pub day: Day,
    pub pack: PackId,
    pub product: Guid,
    pub quantity: u32,
    pub peak: u32,
}

/// One change to the packs or seats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub pack: Option<PackId>,
    pub detail: String,
}

/// Daily peaks are kept this long (a true-up looks back three years).
pub const PEAK_KEEP_DAYS: i64 = 3 * 366;

/// A transaction on the ledger. Writers hold the ledger's lock from the
/// start (the same one seat binding takes) until [`Ledger::commit`].
#[allow(async_fn_in_trait)]
pub trait Ledger {
    /// Every pack, retired ones only when `retired`.
    async fn packs(&mut self, retired: bool) -> Result<Vec<Pack>, StoreError>;
    /// Every seat.
    async fn seats(&mut self) -> Result<Vec<SeatRow>, StoreError>;
    /// Seats per pack: `(pack, in use, last answered before stale_ms)`.
    async fn seat_counts(&mut self, stale_ms: i64) -> Result<Vec<(PackId, u32, u32)>, StoreError>;
    /// Stores a new pack (its `id` is ignored) and returns its id.
    async fn insert_pack(&mut self, p: &Pack, now_ms: i64) -> Result<PackId, StoreError>;
    /// Replaces a pack's terms.
    async fn update_pack(&mut self, p: &Pack) -> Result<(), StoreError>;
    /// Marks a pack retired.
    async fn retire_pack(&mut self, id: PackId, now_ms: i64) -> Result<(), StoreError>;
    /// Frees the seats of these machines.
    async fn delete_seats(&mut self, cmids: &[Guid]) -> Result<u64, StoreError>;
    /// Moves these seats to other packs.
    async fn move_seats(&mut self, moves: &[(Guid, PackId)]) -> Result<(), StoreError>;
    /// Appends to the audit trail.
    async fn audit(&mut self, row: &AuditRow) -> Result<(), StoreError>;
    /// The audit trail, newest first.
    async fn audit_rows(&mut self, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    /// Raises each pack's peak for `day` to its seats in use, keeping the
    /// quantity owned that day; forgets peaks older than [`PEAK_KEEP_DAYS`].
    async fn note_peaks(
        &mut self,
        day: Day,
        usage: &[(PackId, u32, u32)],
    ) -> Result<(), StoreError>;
    /// Daily peaks from `since` on, oldest first.
    async fn peaks(&mut self, since: Day) -> Result<Vec<PeakRow>, StoreError>;
    /// Machines seen under more than one workstation name:
    /// `(cmid, [(workstation, address, last seen)])`.
    async fn duplicates(&mut self) -> Result<Vec<Duplicate>, StoreError>;
    /// Machines answered since `since_ms`, per product: `(sku, machines)`.
    async fn in_use(&mut self, since_ms: i64) -> Result<Vec<(Guid, u32)>, StoreError>;
    async fn commit(self) -> Result<(), StoreError>;
}

/// Where a ledger is opened from: the store a host uses, named as
/// `kmsd status` names it.
#[derive(Debug, Clone)]
pub enum LedgerAt {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl LedgerAt {
    /// The ledger of the store `backend` names (`dir`: the data dir).
    pub fn of(backend: &Backend, dir: &Path) -> Result<Self, StoreError> {
        match backend {
            Backend::Sqlite => Ok(Self::Sqlite(dir.join(super::DB_FILE))),
            Backend::Memory => Err(StoreError::misconfigured(
                super::memory::LOCATION,
                "a memory store keeps no license packs: use the sqlite store \
                 (the default) or a fleet's PostgreSQL to record packs",
            )),
            Backend::Postgres(url) => Ok(Self::Postgres(url.clone())),
        }
    }
}

/// A ledger transaction on whichever store holds the packs.
pub enum AnyLedger {
    Sqlite(super::sqlite::ledger::SqliteLedger),
    Postgres(super::postgres::ledger::PgLedger),
}

impl AnyLedger {
    /// A read-only snapshot of the ledger at `at` (no lock, no migration).
    pub async fn read(at: &LedgerAt) -> Result<Self, StoreError> {
        match at {
            LedgerAt::Sqlite(path) => {
                let path = path.clone();
                super::blocking(move || super::sqlite::ledger::SqliteLedger::read(&path))
                    .await
                    .map(Self::Sqlite)
            }
            LedgerAt::Postgres(url) => super::postgres::ledger::PgLedger::read(url)
                .await
                .map(Self::Postgres),
        }
    }

    /// Opens the store at `at` (migrating it if needed) and begins a
    /// transaction holding the ledger's lock.
    pub async fn begin(at: &LedgerAt) -> Result<Self, StoreError> {
        match at {
            LedgerAt::Sqlite(path) => {
                let path = path.clone();
                super::blocking(move || super::sqlite::ledger::SqliteLedger::begin(&path))
                    .await
                    .map(Self::Sqlite)
            }
            LedgerAt::Postgres(url) => super::postgres::ledger::PgLedger::begin(url)
                .await
                .map(Self::Postgres),
        }
    }
}

macro_rules! both {
    ($self:ident, $l:ident => $e:expr) => {
        match $self {
            AnyLedger::Sqlite($l) => $e,
            AnyLedger::Postgres($l) => $e,
        }
    };
}

impl Ledger for AnyLedger {
    async fn packs(&mut self, retired: bool) -> Result<Vec<Pack>, StoreError> {
        both!(self, l => l.packs(retired).await)
    }
    async fn seats(&mut self) -> Result<Vec<SeatRow>, StoreError> {
        both!(self, l => l.seats().await)
    }
    async fn seat_counts(&mut self, stale_ms: i64) -> Result<Vec<(PackId, u32, u32)>, StoreError> {
        both!(self, l => l.seat_counts(stale_ms).await)
    }
    async fn insert_pack(&mut self, p: &Pack, now_ms: i64) -> Result<PackId, StoreError> {
        both!(self, l => l.insert_pack(p, now_ms).await)
    }
    async fn update_pack(&mut self, p: &Pack) -> Result<(), StoreError> {
        both!(self, l => l.update_pack(p).await)
    }
    async fn retire_pack(&mut self, id: PackId, now_ms: i64) -> Result<(), StoreError> {
        both!(self, l => l.retire_pack(id, now_ms).await)
    }
    async fn delete_seats(&mut self, cmids: &[Guid]) -> Result<u64, StoreError> {
        both!(self, l => l.delete_seats(cmids).await)
    }
    async fn move_seats(&mut self, moves: &[(Guid, PackId)]) -> Result<(), StoreError> {
        both!(self, l => l.move_seats(moves).await)
    }
    async fn audit(&mut self, row: &AuditRow) -> Result<(), StoreError> {
        both!(self, l => l.audit(row).await)
    }
    async fn audit_rows(&mut self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        both!(self, l => l.audit_rows(limit).await)
    }
    async fn note_peaks(
        &mut self,
        day: Day,
        usage: &[(PackId, u32, u32)],
    ) -> Result<(), StoreError> {
        both!(self, l => l.note_peaks(day, usage).await)
    }
    async fn peaks(&mut self, since: Day) -> Result<Vec<PeakRow>, StoreError> {
        both!(self, l => l.peaks(since).await)
    }
    async fn duplicates(&mut self) -> Result<Vec<Duplicate>, StoreError> {
        both!(self, l => l.duplicates().await)
    }
    async fn in_use(&mut self, since_ms: i64) -> Result<Vec<(Guid, u32)>, StoreError> {
        both!(self, l => l.in_use(since_ms).await)
    }
    async fn commit(self) -> Result<(), StoreError> {
        both!(self, l => l.commit().await)
    }
}
