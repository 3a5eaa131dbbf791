//! The embedded store: one SQLite file in the data dir, written by one
//! thread that batches whatever is waiting into one transaction (group
//! commit), so each client's record is on disk before its response leaves
//! without each response paying for its own fsync. The pools are counted in
//! memory ([`Pools`]) and restored from the file at start-up.
//!
//! The hot commit only appends to the activation log (which names the pool
//! a request was counted in), plus a pool's capacity when it grew. The
//! inventory (`clients`) and the stored pools (`pool_entries`) are keyed
//! by CMID, so updating them inside the hot commit would dirty a random page
//! per record and make every client wait for those pages' fsync; the
//! running totals (`totals`) would add a second page to every commit. They
//! are instead folded from the log ([`fold`]) by the same thread after commits,
//! in chunks of a few hundred records (a fold costs about the same for one
//! record as for hundreds): when a few hundred are waiting and no commit is,
//! regardless once the tail passes [`FOLD_BACKLOG`] records, and all of it
//! at shutdown and start-up.
//! A fold does not wait for the disk (the log can always be folded again;
//! the next synchronous commit carries its pages to disk anyway);
//! `folded.upto` says how far. Readers fold the unfolded tail in memory
//! ([`read_tail`]), so nothing acknowledged is ever missing from a report,
//! and a crash loses nothing.
//!
//! Files by concern: [`schema`] (open, migrations), [`writer`] (the writer
//! thread and the hot commit), [`tail`] (the log's unfolded tail),
//! [`fold`], [`pool_rows`] (the stored pools, through the counting core),
//! [`prune`], [`meta`] (notes, ePIDs) and [`reads`] (queries only).

pub mod fold;
pub mod ledger;
pub mod meta;
pub mod pool_rows;
pub mod prune;
pub mod reads;
pub mod schema;
pub mod tail;
#[cfg(test)]
mod tests;
pub mod writer;

pub use fold::{FOLD_BACKLOG, fold, fold_all};
pub use meta::{ensure_epid, set_epid, set_meta};
pub use pool_rows::load;
pub use prune::prune;
pub use reads::inventory_size;
pub use schema::{SCHEMA_VERSION, open_ro, open_rw};
pub use tail::{Tail, TailClient, folded_upto, read_tail};
pub use writer::Writer;

use super::{
    Client, ClientQuery, CountMode, CountRequest, Counted, LoadedPool, Note, OpenOptions, Pools,
    Record, StoreError, StoreStatus, StoredActivation,
};
use crate::clock::Clock;
use crate::licenses::Seat;
use crate::protocol::guid::Guid;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "kmsd.sqlite3";

/// What the store is called in errors that have no path at hand.
const NAME: &str = "the SQLite store";

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

/// The embedded store's settings, read from the host's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub count_mode: CountMode,
    pub keep_records: u64,
    /// Whether a commit waits for the disk.
    pub durability: Durability,
    /// How long a write waits for a locked database.
    pub busy_timeout: Duration,
    /// This host's name, on the seats it binds.
    pub host: String,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::ServeConfig) -> Self {
        Self {
            data_dir: cfg.data_dir.clone(),
            count_mode: cfg.count_mode,
            keep_records: cfg.keep_records,
            durability: cfg.durability,
            busy_timeout: cfg.store_busy_timeout,
            host: hostname(),
        }
    }
}

/// SQLite's errors, by what they mean for the caller: a damaged or
/// foreign file, a file that cannot be reached or is locked, or a failed
/// statement.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        classify(NAME.to_owned(), e)
    }
}

/// [`StoreError`] for `e` on the store called `store`.
pub(crate) fn classify(store: String, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let code = e.sqlite_error_code();
    let source: super::Cause = std::sync::Arc::new(e);
    match code {
        Some(C::DatabaseCorrupt | C::NotADatabase) => StoreError::Corrupt { store, source },
        Some(
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::CannotOpen
            | C::PermissionDenied
            | C::ReadOnly
            | C::DiskFull
            | C::SystemIoFailure,
        ) => StoreError::Unavailable { store, source },
        _ => StoreError::Failed { store, source },
    }
}

/// GUIDs are stored as their 16 wire bytes.
impl ToSql for Guid {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Blob(&self.0)))
    }
}

impl FromSql for Guid {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let b = value.as_blob()?;
        <[u8; 16]>::try_from(b)
            .map(Guid)
            .map_err(|_| FromSqlError::InvalidBlobSize {
                expected_size: 16,
                blob_size: b.len(),
            })
    }
}

/// The SQLite store of a running host.
pub struct SqliteStore {
    path: PathBuf,
    pools: Pools,
    writer: Writer,
    clock: Clock,
}

impl SqliteStore {
    /// Opens (creating or migrating) the database in the data dir, folds a
    /// log tail left by a crash, loads the pools live at `now_ms` and starts
    /// the writer thread.
    pub fn open(settings: Settings, opts: OpenOptions) -> Result<Self, StoreError> {
        let s = &settings;
        std::fs::create_dir_all(&s.data_dir).map_err(|e| StoreError::Unavailable {
            store: s.data_dir.display().to_string(),
            source: super::error::cause(format!("cannot create the data dir: {e}")),
        })?;
        let path = s.data_dir.join(DB_FILE);
        let mut conn = open_rw(&path)?;
        conn.busy_timeout(s.busy_timeout)
            .map_err(|e| StoreError::open(&path, e))?;
        let now_ms = (opts.clock)();
        // Records committed after the last fold (a crash, a kill -9) go into
        // the inventory and the stored pools before anything else reads them.
        let folded = fold_all(&mut conn, now_ms)?;
        if folded > 0 {
            tracing::info!(
                records = folded,
                "folded the activation log's tail into the inventory (the last stop was not clean)"
            );
        }
        let pools = Pools::new(s.count_mode);
        pools.restore(&load(&conn, now_ms)?);
        if s.durability == Durability::Os {
            tracing::warn!(
                "durability = \"os\": commits are not flushed to disk; a power cut or an OS crash can lose the last moments' counts (a crash of kmsd loses nothing)"
            );
        }
        let writer = Writer::start(
            conn,
            writer::Upkeep {
                keep_records: s.keep_records,
                durability: s.durability,
                prune_every: opts.schedule.prune,
                clock: opts.clock.clone(),
                host: s.host.clone(),
            },
            opts.metrics,
        )?;
        Ok(Self {
            path,
            pools,
            writer,
            clock: opts.clock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// Counts in memory, commits the record, and takes the count back if
    /// the commit fails.
    ///
    /// A request asking for a seat is bound one in the commit's
    /// transaction; refused for want of one, its count is taken back.
    pub async fn count(&self, act: CountRequest) -> Result<Counted, StoreError> {
        let CountRequest {
            pool,
            mut record,
            seat,
        } = act;
        let t = self
            .pools
            .observe(pool, record.cmid, record.time_ms, record.n_policy);
        record.count = t.count;
        record.capacity = t.capacity;
        record.counted_in = (t.capacity > 0).then_some(pool);
        let written = if seat {
            self.writer.write_seated(record).await
        } else {
            self.writer.write(record).await.map(|()| Seat::None)
        };
        match written {
            Ok(Seat::Refused(p)) => {
                self.pools.undo(&t);
                Ok(Counted {
                    seat: Seat::Refused(p),
                    ..Counted::default()
                })
            }
            Ok(seat) => Ok(Counted {
                count: t.count,
                capacity: t.capacity,
                seat,
            }),
            Err(e) => {
                self.pools.undo(&t);
                Err(e)
            }
        }
    }

    pub async fn record(&self, rec: Record) -> Result<(), StoreError> {
        self.writer.write(rec).await
    }

    pub async fn note(&self, notes: Vec<(Note, String)>) -> Result<(), StoreError> {
        self.writer.note(notes).await
    }

    /// See [`super::Store::epid`].
    pub async fn epid(
        &self,
        group: &'static str,
        candidate: String,
        configured: bool,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let path = self.path.clone();
        super::blocking(move || epid(&path, group, &candidate, configured, now_ms)).await
    }

    /// The host's clock (what the store's upkeep reads).
    pub fn now_ms(&self) -> i64 {
        (self.clock)()
    }

    /// Takes and releases the write lock on a separate connection.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let path = self.path.clone();
        super::blocking(move || {
            let conn = open_rw(&path)?;
            conn.busy_timeout(std::time::Duration::from_millis(500))?;
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            Ok(())
        })
        .await
    }

    pub fn reader(&self) -> SqliteReader {
        SqliteReader::new(self.path.clone())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.writer.barrier().await
    }

    pub async fn close(&self) -> Result<(), StoreError> {
        self.writer.close().await
    }
}

/// See [`super::Store::epid`]. Blocking.
fn epid(
    path: &Path,
    group: &str,
    candidate: &str,
    configured: bool,
    now_ms: i64,
) -> Result<String, StoreError> {
    let conn = open_rw(path)?;
    if configured {
        set_epid(&conn, group, candidate, now_ms)?;
        Ok(candidate.to_owned())
    } else {
        ensure_epid(&conn, group, candidate, now_ms)
    }
}

/// Read-only queries on a database file, beside a running host or not
/// (WAL lets readers run beside the writer).
#[derive(Debug, Clone)]
pub struct SqliteReader {
    path: PathBuf,
}

impl SqliteReader {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn status(&self, now_ms: i64) -> Result<StoreStatus, StoreError> {
        let conn = open_ro(&self.path)?;
        reads::status(&conn, self.path.display().to_string(), now_ms)
    }

    pub fn clients(&self, q: &ClientQuery) -> Result<Vec<Client>, StoreError> {
        reads::clients(&open_ro(&self.path)?, q)
    }

    pub fn notes(&self) -> Result<Vec<(Note, String)>, StoreError> {
        reads::notes(&open_ro(&self.path)?)
    }

    pub fn recent(&self, limit: usize) -> Result<Vec<StoredActivation>, StoreError> {
        reads::recent(&open_ro(&self.path)?, limit)
    }

    pub fn pools(&self, now_ms: i64) -> Result<Vec<LoadedPool>, StoreError> {
        load(&open_ro(&self.path)?, now_ms)
    }
}

/// The machine's hostname ("localhost" when it cannot be read).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
