//! All state behind one interface. [`Store`] is what the host decides with:
//! start-up (pools, ePIDs), count-and-commit (a request gets its count only
//! once its record is durable), refusal records, notes about the running
//! host, typed queries for reports and the admin API, a health probe, and a
//! clean close. [`Reader`] is the same queries for a process that is not
//! the host (`kmsd status`, `kmsd clients`).
//!
//! Backends: the embedded SQLite file ([`sqlite`], the default), and
//! PostgreSQL for a fleet of hosts sharing one count ([`postgres`]). The
//! interface assumes nothing about where the pools live: a backend batches
//! the activations waiting at once and gives back their counts.

pub mod copy;
mod pools;
pub mod postgres;
pub mod sqlite;
pub mod window;

use crate::protocol::guid::Guid;
use crate::protocol::kms::Hresult;
use crate::protocol::kms::products::Pool;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use pools::{CountMode, PoolStatus, Pools, Ticket};

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "kmsd.sqlite3";

/// Store failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {}: {detail}", path.display())]
    Open { path: PathBuf, detail: String },
    #[error("database error: {0}")]
    Sqlite(String),
    #[error("database error: {0}")]
    Postgres(String),
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    #[error("cannot use the fleet database {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("no commit within {0:?}")]
    Timeout(std::time::Duration),
    #[error("too many requests are waiting for the database")]
    Overloaded,
    #[error(
        "the configured ePID for {group} ({configured}) differs from the fleet's ({fleet}); \
         drop it from this host's configuration, or give every host the same one"
    )]
    EpidConflict {
        group: String,
        configured: String,
        fleet: String,
    },
    #[error("the store has shut down")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e.to_string())
    }
}

/// Wall clock in unix milliseconds (the shell's clock; the core never reads it).
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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
    /// 0 for an answered request, else the HRESULT sent.
    pub hresult: u32,
}

/// A request to count: its record, with the pool to count its CMID in.
/// The store fills in the count, the capacity and `counted_in`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub pool: Pool,
    pub record: Record,
}

/// What counting one request gave, once its record is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Live entries in the pool after this request (what the client is told).
    pub count: u32,
    /// The pool's capacity after this request (0 when nothing is counted).
    pub capacity: u32,
}

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

/// Which store a host uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// One SQLite file in the data dir.
    #[default]
    Sqlite,
    /// A fleet's PostgreSQL database (the URL).
    Postgres(String),
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite => f.write_str("sqlite"),
            Self::Postgres(url) => f.write_str(url),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" | "sqlite" => Ok(Self::Sqlite),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                postgres::url::parse(url).map_err(|e| e.to_string())?;
                Ok(Self::Postgres(url.to_owned()))
            }
            other => Err(format!(
                "{:?}: expected `sqlite` or postgres://USER[:PASS]@HOST[:PORT]/DB",
                postgres::url::redact(other)
            )),
        }
    }
}

/// How far the embedded store's commit goes before its clients are
/// answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// On disk: every commit waits for the flush (`fsync`) (the default).
    #[default]
    Full,
    /// Handed to the operating system: a commit is written to the file but
    /// not flushed. Survives a crash or `kill -9` of kmsd, not a power cut or
    /// an OS crash, which can lose the counts of the last moments.
    Os,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(Self::Full),
            "os" => Some(Self::Os),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Os => "os",
        }
    }
}

/// How a store is opened for the host.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub count_mode: CountMode,
    pub keep_records: u64,
    /// SQLite: whether a commit waits for the disk.
    pub durability: Durability,
    /// SQLite: how long a write waits for a locked database.
    pub busy_timeout: std::time::Duration,
    /// PostgreSQL: most time a request waits for its commit.
    pub timeout: std::time::Duration,
    /// PostgreSQL: the isolation of the batches (`read-committed`,
    /// `repeatable-read`, `serializable`).
    pub isolation: String,
}

/// This host's name in a fleet: kept in the data dir, so a restarted host
/// is the same host.
fn host_id(data_dir: &Path) -> Result<String, StoreError> {
    let file = data_dir.join("host-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let id = format!(
        "{}-{:08x}",
        if name.is_empty() { "kmsd" } else { &name },
        rand::random::<u32>()
    );
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&file, format!("{id}\n")))
        .map_err(|e| StoreError::Open {
            path: file,
            detail: format!("cannot keep this host's fleet name: {e}"),
        })?;
    Ok(id)
}

/// The host's store.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the store for a host (creating or migrating it), brings its
    /// derived tables up to date, and loads the pools live at `now_ms`.
    pub async fn open(
        opts: &StoreOptions,
        now_ms: i64,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<Self, StoreError> {
        match &opts.backend {
            Backend::Sqlite => {
                let opts = opts.clone();
                blocking(move || sqlite::SqliteStore::open(&opts, now_ms, metrics))
                    .await
                    .map(Self::Sqlite)
            }
            Backend::Postgres(url) => {
                let dir = opts.data_dir.clone();
                let host_id = blocking(move || host_id(&dir)).await?;
                let pg = postgres::PgOptions {
                    url: url.clone(),
                    host_id,
                    count_mode: opts.count_mode,
                    keep_records: opts.keep_records,
                    timeout: opts.timeout,
                    isolation: postgres::isolation(&opts.isolation).ok_or_else(|| {
                        StoreError::Postgres(format!(
                            "store_isolation {:?}: expected read-committed, repeatable-read or serializable",
                            opts.isolation
                        ))
                    })?,
                    metrics,
                };
                postgres::PgStore::open(&pg, now_ms)
                    .await
                    .map(Self::Postgres)
            }
        }
    }

    /// Where the store is, for logs and reports (never a password).
    pub fn location(&self) -> String {
        match self {
            Self::Sqlite(s) => s.path().display().to_string(),
            Self::Postgres(p) => format!("{} (as host {})", p.shown(), p.host_id()),
        }
    }

    pub fn count_mode(&self) -> CountMode {
        match self {
            Self::Sqlite(s) => s.pools().mode(),
            Self::Postgres(p) => p.mode(),
        }
    }

    /// The ePID for `group`: the stored one, else `candidate` stored now.
    /// With `configured`, the operator's ePID replaces any stored one.
    pub async fn epid(
        &self,
        group: &'static str,
        candidate: String,
        configured: bool,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        match self {
            Self::Sqlite(s) => {
                let path = s.path().to_owned();
                blocking(move || sqlite::epid(&path, group, &candidate, configured, now_ms)).await
            }
            Self::Postgres(p) => p.epid(group, &candidate, configured, now_ms).await,
        }
    }

    /// Counts `act` and returns its count once its record is durable. On
    /// `Err` nothing was counted.
    pub async fn count(&self, act: Activation) -> Result<Counted, StoreError> {
        match self {
            Self::Sqlite(s) => s.count(act).await,
            Self::Postgres(p) => p.count(act.pool, act.record).await,
        }
    }

    /// Records a request that was refused (nothing is counted).
    pub async fn record(&self, rec: Record) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.record(rec).await,
            Self::Postgres(p) => p.record(rec).await,
        }
    }

    /// The pools' counts and capacities at `now_ms`, as the host counts
    /// (cheap: for metrics and the status page; a fleet's as of its last
    /// commit or heartbeat).
    pub fn pools_now(&self, now_ms: i64) -> Vec<PoolStatus> {
        match self {
            Self::Sqlite(s) => s.pools().status(now_ms),
            Self::Postgres(p) => p.pools_now(),
        }
    }

    /// Writes notes about the running host.
    pub async fn note(&self, notes: Vec<(Note, String)>) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.note(notes).await,
            Self::Postgres(p) => p.note(notes).await,
        }
    }

    /// Checks that the store can be written right now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.probe().await,
            Self::Postgres(p) => p.probe().await,
        }
    }

    /// The reads of reports and the admin API.
    pub fn reader(&self) -> Reader {
        match self {
            Self::Sqlite(s) => Reader::Sqlite(s.reader()),
            Self::Postgres(p) => Reader::Postgres(p.reader()),
        }
    }

    /// [`Reader::status`].
    pub async fn status(&self, now_ms: i64) -> Result<StoreStatus, StoreError> {
        self.reader().status(now_ms).await
    }

    /// [`Reader::clients`].
    pub async fn clients(&self, q: ClientQuery) -> Result<Vec<Client>, StoreError> {
        self.reader().clients(&q).await
    }

    /// [`Reader::recent`].
    pub async fn recent(&self, limit: usize) -> Result<Vec<StoredActivation>, StoreError> {
        self.reader().recent(limit).await
    }

    /// Waits until every record queued so far is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.flush().await,
            Self::Postgres(p) => p.flush().await,
        }
    }

    /// Stops the store cleanly (commits what is queued, brings derived
    /// tables up to date). Call once no request is in flight.
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(p) => p.close().await,
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Sqlite(format!("store task failed: {e}")))?
}

/// The queries of reports, for a process that is not the host (or for the
/// host, through [`Store::reader`]).
#[derive(Debug, Clone)]
pub enum Reader {
    Sqlite(sqlite::Reader),
    Postgres(postgres::PgReader),
}

impl Reader {
    /// The store of the host whose data dir is `dir`.
    pub fn open(dir: &Path) -> Self {
        Self::Sqlite(sqlite::Reader::new(dir.join(DB_FILE)))
    }

    /// The store of a fleet (`postgres://…`) or of the host whose data dir
    /// is `dir`.
    pub fn for_backend(backend: &Backend, dir: &Path) -> Result<Self, StoreError> {
        match backend {
            Backend::Sqlite => Ok(Self::open(dir)),
            Backend::Postgres(url) => postgres::PgReader::connect(url).map(Self::Postgres),
        }
    }

    /// What `kmsd status` shows (`now_ms`: the host's clock; a fleet uses
    /// the database's).
    pub async fn status(&self, now_ms: i64) -> Result<StoreStatus, StoreError> {
        match self {
            Self::Sqlite(r) => {
                let r = r.clone();
                blocking(move || r.status(now_ms)).await
            }
            Self::Postgres(r) => r.status().await,
        }
    }

    pub async fn clients(&self, q: &ClientQuery) -> Result<Vec<Client>, StoreError> {
        match self {
            Self::Sqlite(r) => {
                let (r, q) = (r.clone(), *q);
                blocking(move || r.clients(&q)).await
            }
            Self::Postgres(r) => r.clients(q).await,
        }
    }

    /// The `limit` most recent activation records, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<StoredActivation>, StoreError> {
        match self {
            Self::Sqlite(r) => {
                let r = r.clone();
                blocking(move || r.recent(limit)).await
            }
            Self::Postgres(r) => r.recent(limit).await,
        }
    }

    /// The pools as a host starting now would load them.
    pub async fn pools(&self, now_ms: i64) -> Result<Vec<LoadedPool>, StoreError> {
        match self {
            Self::Sqlite(r) => {
                let r = r.clone();
                blocking(move || r.pools(now_ms)).await
            }
            Self::Postgres(r) => r.pools().await,
        }
    }
}
