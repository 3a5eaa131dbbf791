//! All state behind one interface. [`Store`] is what the host decides with:
//! start-up (pools, ePIDs), count-and-commit (a request gets its count only
//! once its record is durable), refusal records, notes about the running
//! host, typed queries for reports and the admin API, a health probe, and a
//! clean close. [`StoreReader`] is the same queries for a process that is not
//! the host (`kmsd status`, `kmsd clients`).
//!
//! What a count is (30-day expiry, capacity, eviction, fixed mode, clock
//! steps) is decided in one place, the pure counting core ([`window`],
//! [`pools`]); a backend loads a pool's rows into it and persists the
//! [`window::PoolDelta`] it reports. No backend re-implements a rule.
//!
//! Backends, chosen by [`open`] from the `store` setting:
//! - `sqlite` ([`sqlite`], the default): one file in the data dir;
//! - `memory` ([`memory`]): nothing on disk, gone at exit;
//! - `postgres://…` ([`postgres`]): a fleet of hosts sharing one count.
//!
//! Errors ([`StoreError`]) say what happened and what to do, never which
//! backend said so; the backend's own error is their source.

pub mod error;
pub mod ledger;
pub mod location;
pub mod memory;
mod pools;
pub mod postgres;
pub mod records;
pub mod schedule;
pub mod sqlite;
pub mod status;
pub mod window;

use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use std::path::Path;
use std::sync::Arc;

pub(crate) use error::blocking;
pub use error::{Cause, StoreError};
pub use location::{Backend, Isolation};
pub use pools::{CountMode, PoolStatus, Pools, Ticket, live};
pub use records::{CountRequest, Counted, Record, StoredActivation};
pub use schedule::Schedule;
pub use sqlite::{DB_FILE, Durability};
pub use status::{
    Client, ClientQuery, HostNotes, HostStatus, Import, LoadedPool, Note, NoteValue, StoreStatus,
    Total,
};

/// The system clock in unix milliseconds (kept here for callers outside
/// a running host; see [`crate::clock`]).
pub use crate::clock::unix_ms_now;

/// What opening a host's store takes besides the configuration.
#[derive(Clone)]
pub struct OpenOptions {
    /// The host's clock: counts, expiry and pruning all read it.
    pub clock: Clock,
    /// Where commit times and batch sizes are observed.
    pub metrics: Arc<Metrics>,
    /// How often background tasks run.
    pub schedule: Schedule,
}

/// Opens the store the configuration names (`store`: `sqlite`, `memory`
/// or `postgres://…`), each backend reading its own settings from `cfg`,
/// and loads the pools live now.
pub async fn open(cfg: &ServeConfig, opts: OpenOptions) -> Result<Store, StoreError> {
    match &cfg.store {
        Backend::Sqlite => {
            let settings = sqlite::Settings::from_config(cfg);
            blocking(move || sqlite::SqliteStore::open(settings, opts))
                .await
                .map(Store::Sqlite)
        }
        Backend::Memory => Ok(Store::Memory(memory::MemoryStore::open(cfg, &opts))),
        Backend::Postgres(url) => {
            let settings = postgres::Settings::from_config(url, cfg)?;
            postgres::PgStore::open(settings, opts)
                .await
                .map(Store::Postgres)
        }
    }
}

/// The host's store.
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Memory(memory::MemoryStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Where the store is, for logs and reports (never a password).
    pub fn location(&self) -> String {
        match self {
            Self::Sqlite(s) => s.path().display().to_string(),
            Self::Memory(_) => memory::LOCATION.to_owned(),
            Self::Postgres(p) => format!("{} (as host {})", p.shown(), p.host_id()),
        }
    }

    pub fn count_mode(&self) -> CountMode {
        match self {
            Self::Sqlite(s) => s.pools().mode(),
            Self::Memory(m) => m.pools().mode(),
            Self::Postgres(p) => p.mode(),
        }
    }

    /// The ePID for `group`: the stored one, else `candidate` stored now.
    /// With `configured`, the operator's ePID replaces any stored one (a
    /// fleet refuses one that differs from its own: [`StoreError::Conflict`]).
    pub async fn epid(
        &self,
        group: &'static str,
        candidate: String,
        configured: bool,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        match self {
            Self::Sqlite(s) => s.epid(group, candidate, configured, now_ms).await,
            Self::Memory(m) => Ok(m.epid(group, candidate, configured, now_ms)),
            Self::Postgres(p) => p.epid(group, &candidate, configured, now_ms).await,
        }
    }

    /// Counts `act` and returns its count once its record is durable. On
    /// `Err` nothing was counted.
    pub async fn count(&self, act: CountRequest) -> Result<Counted, StoreError> {
        match self {
            Self::Sqlite(s) => s.count(act).await,
            // Nothing to wait for: counted inline on the caller's thread.
            Self::Memory(m) => Ok(m.count(act)),
            Self::Postgres(p) => p.count(act.pool, act.record, act.seat).await,
        }
    }

    /// Records a request that was refused (nothing is counted).
    pub async fn record(&self, rec: Record) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.record(rec).await,
            Self::Memory(m) => {
                m.record(rec);
                Ok(())
            }
            Self::Postgres(p) => p.record(rec).await,
        }
    }

    /// The pools' counts and capacities at `now_ms`, as the host counts
    /// (cheap, for metrics and the status page: a single host's from its
    /// pools in memory, a fleet's as of this host's last commit or
    /// heartbeat).
    pub fn pools_now(&self, now_ms: i64) -> Vec<PoolStatus> {
        match self {
            Self::Sqlite(s) => s.pools().status(now_ms),
            Self::Memory(m) => m.pools().status(now_ms),
            Self::Postgres(p) => p.pools_now(),
        }
    }

    /// Writes notes about the running host.
    pub async fn note(&self, notes: Vec<NoteValue>) -> Result<(), StoreError> {
        let notes: Vec<(Note, String)> = notes.iter().map(NoteValue::stored).collect();
        match self {
            Self::Sqlite(s) => s.note(notes).await,
            Self::Memory(m) => {
                m.note(notes);
                Ok(())
            }
            Self::Postgres(p) => p.note(notes).await,
        }
    }

    /// Where the license ledger is (None: a memory store keeps no packs).
    pub fn ledger_at(&self) -> Option<ledger::LedgerAt> {
        match self {
            Self::Sqlite(s) => Some(ledger::LedgerAt::Sqlite(s.path().to_owned())),
            Self::Memory(_) => None,
            Self::Postgres(p) => Some(ledger::LedgerAt::Postgres(p.url().to_owned())),
        }
    }

    /// Checks that the store can be written right now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.probe().await,
            Self::Memory(_) => Ok(()),
            Self::Postgres(p) => p.probe().await,
        }
    }

    /// The reads of reports and the admin API.
    pub fn reader(&self) -> StoreReader {
        match self {
            Self::Sqlite(s) => StoreReader::Sqlite(s.reader()),
            Self::Memory(m) => StoreReader::Memory(m.reader()),
            Self::Postgres(p) => StoreReader::Postgres(p.reader()),
        }
    }

    /// [`StoreReader::status`].
    pub async fn status(&self, now_ms: i64) -> Result<StoreStatus, StoreError> {
        self.reader().status(now_ms).await
    }

    /// [`StoreReader::clients`].
    pub async fn clients(&self, q: ClientQuery) -> Result<Vec<Client>, StoreError> {
        self.reader().clients(&q).await
    }

    /// [`StoreReader::recent`].
    pub async fn recent(&self, limit: usize) -> Result<Vec<StoredActivation>, StoreError> {
        self.reader().recent(limit).await
    }

    /// Waits until every record queued so far is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.flush().await,
            Self::Memory(_) => Ok(()),
            Self::Postgres(p) => p.flush().await,
        }
    }

    /// Stops the store cleanly (commits what is queued, brings derived
    /// tables up to date). Call once no request is in flight.
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Memory(_) => Ok(()),
            Self::Postgres(p) => p.close().await,
        }
    }
}

/// The queries of reports, for a process that is not the host (or for the
/// host, through [`Store::reader`]).
#[derive(Debug, Clone)]
pub enum StoreReader {
    Sqlite(sqlite::SqliteReader),
    Memory(memory::MemoryReader),
    Postgres(postgres::PgReader),
}

impl StoreReader {
    /// The store `backend` names, for `kmsd status` and `kmsd clients`
    /// (`dir`: the host's data dir, for `sqlite`). A `memory` store lives
    /// inside its host and cannot be read from outside: the error says
    /// where to look instead.
    pub fn open(backend: &Backend, dir: &Path) -> Result<Self, StoreError> {
        match backend {
            Backend::Sqlite => Ok(Self::Sqlite(sqlite::SqliteReader::new(dir.join(DB_FILE)))),
            Backend::Memory => Err(StoreError::misconfigured(
                memory::LOCATION,
                "a memory store lives inside its running host and ends with it; \
                 read that host's status page or its /api/status instead",
            )),
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
            Self::Memory(r) => Ok(r.status(now_ms)),
            Self::Postgres(r) => r.status().await,
        }
    }

    pub async fn clients(&self, q: &ClientQuery) -> Result<Vec<Client>, StoreError> {
        match self {
            Self::Sqlite(r) => {
                let (r, q) = (r.clone(), *q);
                blocking(move || r.clients(&q)).await
            }
            Self::Memory(r) => Ok(r.clients(q)),
            Self::Postgres(r) => r.clients(q).await,
        }
    }

    /// The notes of the host reading (a single host's, or in a fleet the
    /// reading host's own; none for a fleet read from the CLI): cheaper than
    /// a whole status when only a note is wanted.
    pub async fn notes(&self) -> Result<HostNotes, StoreError> {
        let stored = match self {
            Self::Sqlite(r) => {
                let r = r.clone();
                blocking(move || r.notes()).await
            }
            Self::Memory(r) => Ok(r.notes()),
            Self::Postgres(r) => r.notes().await,
        }?;
        Ok(HostNotes::parse(stored))
    }

    /// The `limit` most recent activation records, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<StoredActivation>, StoreError> {
        match self {
            Self::Sqlite(r) => {
                let r = r.clone();
                blocking(move || r.recent(limit)).await
            }
            Self::Memory(r) => Ok(r.recent(limit)),
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
            Self::Memory(r) => Ok(r.pools(now_ms)),
            Self::Postgres(r) => r.pools().await,
        }
    }
}
