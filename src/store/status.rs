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

/// A note as the host writes it, typed; stored as text under its
/// [`Note`] key ([`NoteValue::text`]) and read back once into
/// [`HostNotes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoteValue {
    StartedMs(i64),
    Pid(u32),
    Listen(Vec<std::net::SocketAddr>),
    ServedGroups(Vec<&'static str>),
    CountMode(crate::store::CountMode),
    HostBuild(u32),
    Hwid([u8; 8]),
    Version(&'static str),
    MaxConnections(usize),
    Dns(Vec<crate::dns::DomainState>),
}

impl NoteValue {
    pub fn note(&self) -> Note {
        match self {
            Self::StartedMs(_) => Note::StartedMs,
            Self::Pid(_) => Note::Pid,
            Self::Listen(_) => Note::Listen,
            Self::ServedGroups(_) => Note::ServedGroups,
            Self::CountMode(_) => Note::CountMode,
            Self::HostBuild(_) => Note::HostBuild,
            Self::Hwid(_) => Note::Hwid,
            Self::Version(_) => Note::Version,
            Self::MaxConnections(_) => Note::MaxConnections,
            Self::Dns(_) => Note::Dns,
        }
    }

    /// The stored text (lists comma-separated; the DNS states as JSON).
    pub fn text(&self) -> String {
        let join = |v: Vec<String>| v.join(",");
        match self {
            Self::StartedMs(v) => v.to_string(),
            Self::Pid(v) => v.to_string(),
            Self::Listen(a) => join(a.iter().map(ToString::to_string).collect()),
            Self::ServedGroups(g) => g.join(","),
            Self::CountMode(m) => m.to_string(),
            Self::HostBuild(b) => b.to_string(),
            Self::Hwid(h) => crate::config::format_hwid(h),
            Self::Version(v) => (*v).to_owned(),
            Self::MaxConnections(n) => n.to_string(),
            Self::Dns(s) => serde_json::to_string(s).unwrap_or_else(|_| "[]".into()),
        }
    }

    /// The stored form: key and text.
    pub fn stored(&self) -> (Note, String) {
        (self.note(), self.text())
    }
}

/// What a host noted about itself, parsed once from the stored text
/// ([`HostNotes::parse`]); what a host never noted is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNotes {
    pub started_ms: Option<i64>,
    pub pid: Option<String>,
    /// The KMS listeners' addresses.
    pub listen: Vec<String>,
    /// The ePID groups served.
    pub served_groups: Vec<String>,
    pub count_mode: Option<String>,
    pub host_build: Option<String>,
    pub hwid: Option<String>,
    pub version: Option<String>,
    pub max_connections: Option<String>,
    /// The DNS publisher's state per domain.
    pub dns: Vec<crate::dns::DomainState>,
}

impl HostNotes {
    /// The notes from their stored form (an unreadable value is left out).
    pub fn parse(stored: impl IntoIterator<Item = (Note, String)>) -> Self {
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mut n = Self::default();
        for (k, v) in stored {
            match k {
                Note::StartedMs => n.started_ms = v.parse().ok(),
                Note::Pid => n.pid = Some(v),
                Note::Listen => n.listen = list(&v),
                Note::ServedGroups => n.served_groups = list(&v),
                Note::CountMode => n.count_mode = Some(v),
                Note::HostBuild => n.host_build = Some(v),
                Note::Hwid => n.hwid = Some(v),
                Note::Version => n.version = Some(v),
                Note::MaxConnections => n.max_connections = Some(v),
                Note::Dns => n.dns = serde_json::from_str(&v).unwrap_or_default(),
            }
        }
        n
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
    pub notes: HostNotes,
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
    /// What the host noted (a single host's store; in a fleet, the
    /// reading host's own).
    pub notes: HostNotes,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_written_typed_read_back_typed() {
        let written = [
            NoteValue::StartedMs(1_700_000_000_000),
            NoteValue::Listen(vec![
                "127.0.0.1:1688".parse().unwrap(),
                "[::1]:1688".parse().unwrap(),
            ]),
            NoteValue::ServedGroups(vec!["Windows", "Office2021"]),
            NoteValue::Hwid([0x3A, 0x1C, 0x04, 0x96, 0x00, 0xB6, 0x00, 0x76]),
            NoteValue::Dns(vec![crate::dns::DomainState {
                domain: "lab.test".into(),
                failures: 2,
                ..Default::default()
            }]),
            NoteValue::Listen(Vec::new()),
        ];
        let n = HostNotes::parse(written.iter().map(NoteValue::stored));
        assert_eq!(n.started_ms, Some(1_700_000_000_000));
        assert!(n.listen.is_empty(), "the later note wins: {:?}", n.listen);
        assert_eq!(n.served_groups, vec!["Windows", "Office2021"]);
        assert_eq!(n.hwid.as_deref(), Some("3A1C049600B60076"));
        assert_eq!(n.dns[0].domain, "lab.test");
        assert_eq!(n.dns[0].failures, 2);
        let listen = NoteValue::Listen(vec!["127.0.0.1:1688".parse().unwrap()]);
        assert_eq!(
            HostNotes::parse([listen.stored()]).listen,
            vec!["127.0.0.1:1688"]
        );
        // Text a host never wrote is left out, not guessed at.
        let n = HostNotes::parse([(Note::StartedMs, "soon".into()), (Note::Dns, "{".into())]);
        assert_eq!((n.started_ms, n.dns.len()), (None, 0));
    }
}
