//! What a store reports: the pools, the host's notes, the fleet's hosts
//! and imports, totals, the inventory. The same for every backend.

use crate::protocol::guid::Guid;
use crate::protocol::kms::Hresult;
use crate::protocol::kms::products::Pool;
use crate::store::PoolStatus;

/// One pool as stored: its capacity and live entries (CMID, last seen ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPool {
    pub pool: Pool,
    pub capacity: u32,
    pub entries: Vec<(Guid, i64)>,
}

/// Facts about the running host that reports show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Note {
    StartedMs,
    Pid,
    Listen,
    ServedGroups,
    CountMode,
    HostBuild,
    Hwid,
    /// The kmsd version the host runs.
    Version,
    /// The KMS connection limit in force (lowered when the descriptors
    /// cannot hold `max_connections`).
    MaxConnections,
    /// The DNS publisher's state per domain (JSON, [`crate::dns::DomainState`]s).
    Dns,
}

impl Note {
    pub const ALL: [Note; 10] = [
        Note::StartedMs,
        Note::Pid,
        Note::Listen,
        Note::ServedGroups,
        Note::CountMode,
        Note::HostBuild,
        Note::Hwid,
        Note::Version,
        Note::MaxConnections,
        Note::Dns,
    ];

    /// The key it is stored under.
    pub fn key(self) -> &'static str {
        match self {
            Note::StartedMs => "started_ms",
            Note::Pid => "pid",
            Note::Listen => "listen",
            Note::ServedGroups => "served_groups",
            Note::CountMode => "count_mode",
            Note::HostBuild => "host_build",
            Note::Hwid => "hwid",
            Note::Version => "version",
            Note::MaxConnections => "max_connections",
            Note::Dns => "dns",
        }
    }
}

/// Requests since the store was created, by result and license state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Total {
    pub hresult: Hresult,
    pub license_status: u32,
    pub requests: u64,
}

/// One host of a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub id: String,
    pub started_ms: i64,
    /// When the host last said it was alive (the database's clock).
    pub heartbeat_ms: i64,
    /// Requests it answered or refused since the fleet began.
    pub requests: u64,
    pub notes: Vec<(Note, String)>,
}

/// A single host's store copied into a fleet by `kmsd store copy`: an
/// import, not a host (it never answers a client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// Where it came from (the data dir's database file).
    pub source: String,
    /// When it was first copied and when last (unix ms, the database's clock).
    pub first_ms: i64,
    pub last_ms: i64,
    /// The source's activation log is copied up to this record id.
    pub copied_upto: i64,
}

/// What `kmsd status` shows, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// Where the store is (a file path, a database URL without secrets).
    pub location: String,
    pub schema_version: i64,
    /// The store's clock when it was read.
    pub now_ms: i64,
    /// Notes by [`Note`], as the host wrote them (a single host's store).
    pub notes: Vec<(Note, String)>,
    /// Every host of a fleet (empty for a single host's store).
    pub hosts: Vec<HostStatus>,
    /// Single-host stores copied into a fleet (`kmsd store copy`), oldest
    /// first (empty elsewhere).
    pub imports: Vec<Import>,
    /// Live entries and capacity per pool.
    pub pools: Vec<PoolStatus>,
    /// ePIDs by group name.
    pub epids: Vec<(String, String)>,
    pub totals: Vec<Total>,
    /// Machines in the inventory.
    pub inventory: u64,
    /// Activation records kept.
    pub records_kept: u64,
}

impl StoreStatus {
    pub fn note(&self, n: Note) -> Option<&str> {
        self.notes
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.as_str())
    }
}

/// Which machines of the inventory to list (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientQuery {
    pub now_ms: i64,
    pub pool: Option<Pool>,
    /// Only machines seen at or after this.
    pub since_ms: Option<i64>,
    pub limit: usize,
}

/// One machine of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub cmid: Guid,
    pub app_id: Guid,
    pub workstation: String,
    pub sku_id: Guid,
    pub address: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub requests: u64,
    pub last_result: Hresult,
    pub last_count: u32,
    /// Counted in its pool right now.
    pub live: bool,
}
