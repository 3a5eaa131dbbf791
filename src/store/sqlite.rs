//! The durable layer: one SQLite file in the data dir, written by one thread
//! that batches whatever is waiting into one transaction (group commit), so
//! each client's record is on disk before its response leaves without each
//! response paying for its own fsync.

use super::StoreError;
use crate::protocol::guid::Guid;
use crate::protocol::kms::products::Pool;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 2;
/// Most records committed in one transaction.
const MAX_BATCH: usize = 512;

/// One request as the host saw it: the inventory row, the activation record
/// and (when it was counted) the pool entry, written together.
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

/// One pool as stored: its capacity and live entries (CMID, last seen ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedPool {
    pub pool: Pool,
    pub capacity: u32,
    pub entries: Vec<(Guid, i64)>,
}

/// What the store holds at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub pools: Vec<LoadedPool>,
    /// ePIDs by group name.
    pub epids: Vec<(String, String)>,
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

enum Job {
    Write(Box<Record>, Reply),
    /// Completes once everything queued before it is committed.
    Barrier(Reply),
}

/// Batch statistics, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    pub batches: u64,
    pub records: u64,
    pub failures: u64,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Durable {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::open(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| StoreError::open(path, e))?;
    Ok(conn)
}

/// Opens (creating or migrating) the database at `path`.
pub fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_conn(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )?;
    let e = |err| StoreError::open(path, err);
    // Touch the file: a corrupt or foreign file fails here, never silently resets.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(e)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(e)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_owned(),
            detail: format!("cannot switch to WAL journaling (got {mode})"),
        });
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(e)?;
    migrate(&conn, version).map_err(|err| match err {
        StoreError::Sqlite(d) => StoreError::Open {
            path: path.to_owned(),
            detail: d,
        },
        other => other,
    })?;
    Ok(conn)
}

/// Opens the database read-only (for `kmsd status` beside a running host).
pub fn open_ro(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.to_owned(),
            detail: "no database here (has the host run with this data dir?)".into(),
        });
    }
    let conn = open_conn(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::open(path, e))?;
    if version != SCHEMA_VERSION {
        return Err(StoreError::Open {
            path: path.to_owned(),
            detail: format!("schema version {version}, this kmsd reads {SCHEMA_VERSION}"),
        });
    }
    Ok(conn)
}

fn migrate(conn: &Connection, from: i64) -> Result<(), StoreError> {
    if from > SCHEMA_VERSION {
        return Err(StoreError::Sqlite(format!(
            "database schema version {from} is newer than this kmsd ({SCHEMA_VERSION}); refusing to touch it"
        )));
    }
    if from < 1 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE epids (
                 grp TEXT PRIMARY KEY,
                 epid TEXT NOT NULL,
                 created_ms INTEGER NOT NULL
             );
             CREATE TABLE pools (
                 pool TEXT PRIMARY KEY,
                 capacity INTEGER NOT NULL
             );
             CREATE TABLE pool_entries (
                 pool TEXT NOT NULL,
                 cmid BLOB NOT NULL,
                 last_seen_ms INTEGER NOT NULL,
                 PRIMARY KEY (pool, cmid)
             ) WITHOUT ROWID;
             CREATE INDEX pool_entries_by_time ON pool_entries (pool, last_seen_ms);
             CREATE TABLE clients (
                 cmid BLOB NOT NULL,
                 app_id BLOB NOT NULL,
                 first_seen_ms INTEGER NOT NULL,
                 last_seen_ms INTEGER NOT NULL,
                 workstation TEXT NOT NULL,
                 sku_id BLOB NOT NULL,
                 address TEXT NOT NULL,
                 requests INTEGER NOT NULL,
                 last_hresult INTEGER NOT NULL,
                 last_count INTEGER NOT NULL,
                 PRIMARY KEY (cmid, app_id)
             ) WITHOUT ROWID;
             CREATE INDEX clients_by_last_seen ON clients (last_seen_ms);
             CREATE TABLE activations (
                 id INTEGER PRIMARY KEY,
                 time_ms INTEGER NOT NULL,
                 address TEXT NOT NULL,
                 workstation TEXT NOT NULL,
                 cmid BLOB NOT NULL,
                 app_id BLOB NOT NULL,
                 sku_id BLOB NOT NULL,
                 kms_id BLOB NOT NULL,
                 n_policy INTEGER NOT NULL,
                 license_status INTEGER NOT NULL,
                 binding_expiration INTEGER NOT NULL,
                 vm INTEGER NOT NULL,
                 protocol INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 hresult INTEGER NOT NULL
             );
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    if from < 2 {
        // v2: facts about the running host for `kmsd status`, and running
        // totals by result and license state that survive record pruning.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE meta (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );
             CREATE TABLE totals (
                 hresult INTEGER NOT NULL,
                 license_status INTEGER NOT NULL,
                 n INTEGER NOT NULL,
                 PRIMARY KEY (hresult, license_status)
             ) WITHOUT ROWID;
             INSERT INTO totals (hresult, license_status, n)
                 SELECT hresult, license_status, COUNT(*) FROM activations
                 GROUP BY hresult, license_status;
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// Records facts about the running host (listen addresses, served groups...).
pub fn set_meta(conn: &Connection, entries: &[(&str, String)]) -> Result<(), StoreError> {
    for (k, v) in entries {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![k, v],
        )?;
    }
    Ok(())
}

/// Reads pools (entries live at `now_ms`) and ePIDs.
pub fn load(conn: &Connection, now_ms: i64) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let cutoff = now_ms - super::window::TTL_MS;
    for pool in Pool::ALL {
        let capacity: u32 = conn
            .query_row(
                "SELECT capacity FROM pools WHERE pool = ?1",
                [pool.name()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let mut stmt = conn.prepare(
            "SELECT cmid, last_seen_ms FROM pool_entries
             WHERE pool = ?1 AND last_seen_ms > ?2
             ORDER BY last_seen_ms DESC, cmid DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![pool.name(), cutoff, capacity], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut entries = Vec::new();
        for row in rows {
            let (cmid, t) = row?;
            if let Ok(b) = <[u8; 16]>::try_from(cmid.as_slice()) {
                entries.push((Guid(b), t));
            }
        }
        loaded.pools.push(LoadedPool {
            pool,
            capacity,
            entries,
        });
    }
    let mut stmt = conn.prepare("SELECT grp, epid FROM epids ORDER BY grp")?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
        loaded.epids.push(row?);
    }
    Ok(loaded)
}

/// Stores an ePID for `group` unless one is there; returns the stored one.
pub fn ensure_epid(
    conn: &Connection,
    group: &str,
    epid: &str,
    now_ms: i64,
) -> Result<String, StoreError> {
    conn.execute(
        "INSERT INTO epids (grp, epid, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT(grp) DO NOTHING",
        params![group, epid, now_ms],
    )?;
    Ok(
        conn.query_row("SELECT epid FROM epids WHERE grp = ?1", [group], |r| {
            r.get(0)
        })?,
    )
}

/// Replaces the stored ePID for `group` (an operator override).
pub fn set_epid(conn: &Connection, group: &str, epid: &str, now_ms: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO epids (grp, epid, created_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(grp) DO UPDATE SET epid = excluded.epid, created_ms = excluded.created_ms",
        params![group, epid, now_ms],
    )?;
    Ok(())
}

/// Deletes pool entries that can no longer be live (expired, or beyond each
/// pool's capacity) and activation records past the retention.
pub fn prune(conn: &Connection, now_ms: i64, keep_records: u64) -> Result<(), StoreError> {
    let cutoff = now_ms - super::window::TTL_MS;
    conn.execute(
        "DELETE FROM pool_entries WHERE last_seen_ms <= ?1",
        [cutoff],
    )?;
    // Per pool, everything older than its capacity-th newest entry: one
    // index walk of `capacity` rows to find the boundary, then a range delete.
    for pool in Pool::ALL {
        let capacity: i64 = conn
            .query_row(
                "SELECT capacity FROM pools WHERE pool = ?1",
                [pool.name()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let boundary: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT last_seen_ms, cmid FROM pool_entries WHERE pool = ?1
                 ORDER BY last_seen_ms DESC, cmid DESC LIMIT 1 OFFSET ?2",
                params![pool.name(), (capacity - 1).max(0)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match boundary {
            Some((t, c)) if capacity > 0 => {
                conn.execute(
                    "DELETE FROM pool_entries WHERE pool = ?1 AND (last_seen_ms, cmid) < (?2, ?3)",
                    params![pool.name(), t, c],
                )?;
            }
            Some(_) => {
                conn.execute("DELETE FROM pool_entries WHERE pool = ?1", [pool.name()])?;
            }
            None => {}
        }
    }
    // The activation log beyond `keep_records`, in bounded chunks so a large
    // backlog never stalls the writer (each call takes at most PRUNE_CHUNK).
    conn.execute(
        "DELETE FROM activations WHERE id <= MIN(
             (SELECT MAX(id) FROM activations) - ?1,
             (SELECT MIN(id) FROM activations) + ?2)",
        params![keep_records as i64, PRUNE_CHUNK],
    )?;
    Ok(())
}

/// Most activation records one prune deletes.
const PRUNE_CHUNK: i64 = 20_000;

fn write_record(tx: &rusqlite::Transaction<'_>, r: &Record) -> rusqlite::Result<()> {
    if let Some(pool) = r.counted_in {
        tx.prepare_cached(
            "INSERT INTO pool_entries (pool, cmid, last_seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(pool, cmid) DO UPDATE SET last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
        )?
        .execute(params![pool.name(), &r.cmid.0[..], r.time_ms])?;
    }
    tx.prepare_cached(
        "INSERT INTO clients (cmid, app_id, first_seen_ms, last_seen_ms, workstation, sku_id,
                              address, requests, last_hresult, last_count)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, 1, ?7, ?8)
         ON CONFLICT(cmid, app_id) DO UPDATE SET
             last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),
             workstation = excluded.workstation, sku_id = excluded.sku_id,
             address = excluded.address, requests = requests + 1,
             last_hresult = excluded.last_hresult, last_count = excluded.last_count",
    )?
    .execute(params![
        &r.cmid.0[..],
        &r.app_id.0[..],
        r.time_ms,
        r.workstation,
        &r.sku_id.0[..],
        r.address,
        r.hresult,
        r.count
    ])?;
    tx.prepare_cached(
        "INSERT INTO activations (time_ms, address, workstation, cmid, app_id, sku_id, kms_id,
             n_policy, license_status, binding_expiration, vm, protocol, count, hresult)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        r.time_ms,
        r.address,
        r.workstation,
        &r.cmid.0[..],
        &r.app_id.0[..],
        &r.sku_id.0[..],
        &r.kms_id.0[..],
        r.n_policy,
        r.license_status,
        r.binding_expiration,
        r.vm,
        r.protocol,
        r.count,
        r.hresult
    ])?;
    Ok(())
}

/// Writes a batch in one transaction: per record the pool entry, the
/// inventory row and the activation record; per batch the pools' capacities
/// and the running totals (one statement per distinct key, not per record).
fn commit_batch(conn: &mut Connection, batch: &[&Record]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    let mut capacities: Vec<(Pool, u32)> = Vec::new();
    let mut totals: Vec<((u32, u32), i64)> = Vec::new();
    for r in batch {
        write_record(&tx, r)?;
        if let Some(pool) = r.counted_in {
            match capacities.iter_mut().find(|(p, _)| *p == pool) {
                Some((_, c)) => *c = (*c).max(r.capacity),
                None => capacities.push((pool, r.capacity)),
            }
        }
        let key = (r.hresult, r.license_status);
        match totals.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => totals.push((key, 1)),
        }
    }
    for (pool, capacity) in capacities {
        tx.prepare_cached(
            "INSERT INTO pools (pool, capacity) VALUES (?1, ?2)
             ON CONFLICT(pool) DO UPDATE SET capacity = MAX(capacity, excluded.capacity)",
        )?
        .execute(params![pool.name(), capacity])?;
    }
    for ((hresult, status), n) in totals {
        tx.prepare_cached(
            "INSERT INTO totals (hresult, license_status, n) VALUES (?1, ?2, ?3)
             ON CONFLICT(hresult, license_status) DO UPDATE SET n = n + excluded.n",
        )?
        .execute(params![hresult, status, n])?;
    }
    tx.commit()?;
    Ok(())
}

impl Durable {
    /// Starts the writer thread on `conn` (already opened and migrated).
    /// `keep_records` bounds the activation log.
    pub fn start(
        conn: Connection,
        path: PathBuf,
        keep_records: u64,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("kmsd-store".into())
            .spawn(move || writer(conn, rx, keep_records, &metrics))
            .map_err(|e| StoreError::Sqlite(format!("cannot start the store thread: {e}")))?;
        Ok(Self { tx, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `record` and waits until it is committed.
    pub async fn write(&self, record: Record) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Write(Box::new(record), done))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until everything queued so far is committed.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Barrier(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }
}

fn writer(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Job>,
    keep_records: u64,
    metrics: &crate::metrics::Metrics,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut since_prune = 0u64;
    let mut last_prune = Instant::now();
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let records: Vec<&Record> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Write(r, _) => Some(&**r),
                Job::Barrier(_) => None,
            })
            .collect();
        let result = if records.is_empty() {
            Ok(())
        } else {
            let t = Instant::now();
            let r = commit_batch(&mut conn, &records);
            metrics
                .store_commit_latency
                .observe(t.elapsed().as_secs_f64());
            metrics.store_batch_size.observe(records.len() as f64);
            r
        };
        since_prune += records.len() as u64;
        if let Err(e) = &result {
            tracing::error!(error = %e, records = records.len(), "store commit failed; these clients get an error answer");
        } else {
            tracing::trace!(records = records.len(), "store batch committed");
        }
        for j in jobs.drain(..) {
            let reply = match j {
                Job::Write(_, r) | Job::Barrier(r) => r,
            };
            let _ = reply.send(result.clone());
        }
        if since_prune >= 10_000 || last_prune.elapsed().as_secs() >= 3600 {
            let now = super::unix_ms_now();
            if let Err(e) = prune(&conn, now, keep_records) {
                tracing::warn!(error = %e, "store pruning failed; will retry later");
            }
            since_prune = 0;
            last_prune = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cmid: u128, hresult: u32) -> Record {
        Record {
            time_ms: 1_000,
            address: "127.0.0.1".into(),
            workstation: "ws".into(),
            cmid: Guid::from_u128(cmid),
            app_id: Pool::Windows.app_id(),
            sku_id: Guid::NIL,
            kms_id: Guid::NIL,
            counted_in: (hresult == 0).then_some(Pool::Windows),
            capacity: 10,
            n_policy: 5,
            license_status: 2,
            binding_expiration: 43200,
            vm: false,
            protocol: 6,
            count: 1,
            hresult,
        }
    }

    #[test]
    fn a_v1_database_migrates_to_v2_keeping_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).unwrap();
            migrate_to_v1_only(&conn);
            let mut conn = conn;
            commit_batch_v1(
                &mut conn,
                &[record(1, 0), record(2, 0), record(3, 0xC004_F042)],
            );
        }
        let conn = open_rw(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let totals: Vec<(u32, i64)> = conn
            .prepare("SELECT hresult, n FROM totals ORDER BY hresult")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            totals,
            vec![(0, 2), (0xC004_F042, 1)],
            "totals rebuilt from v1 records"
        );
        let loaded = load(&conn, 2_000).unwrap();
        let w = loaded
            .pools
            .iter()
            .find(|p| p.pool == Pool::Windows)
            .unwrap();
        assert_eq!((w.capacity, w.entries.len()), (10, 2));
    }

    #[test]
    fn prune_keeps_what_can_still_be_live() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("db")).unwrap();
        let now = 100 * 86_400_000;
        let mut records: Vec<Record> = (0..15u128)
            .map(|i| Record {
                time_ms: now - 1000 + i as i64,
                ..record(i, 0)
            })
            .collect();
        // One expired entry.
        records.push(Record {
            time_ms: now - 31 * 86_400_000,
            ..record(99, 0)
        });
        let refs: Vec<&Record> = records.iter().collect();
        commit_batch(&mut conn, &refs).unwrap();
        prune(&conn, now, 5).unwrap();
        let left: Vec<Vec<u8>> = conn
            .prepare("SELECT cmid FROM pool_entries ORDER BY last_seen_ms")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let want: Vec<Vec<u8>> = (5..15u128).map(|i| Guid::from_u128(i).0.to_vec()).collect();
        assert_eq!(left, want, "the 10 most recent (capacity 10) remain");
        let kept: i64 = conn
            .query_row("SELECT COUNT(*) FROM activations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 5);
    }

    #[test]
    fn prune_of_a_large_pool_keeps_exactly_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("db")).unwrap();
        let records: Vec<Record> = (0..5000u128)
            .map(|i| Record {
                time_ms: 1_000_000 + i as i64,
                capacity: 50,
                ..record(i, 0)
            })
            .collect();
        let refs: Vec<&Record> = records.iter().collect();
        commit_batch(&mut conn, &refs).unwrap();
        prune(&conn, 2_000_000, 1_000_000).unwrap();
        let (n, oldest): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), MIN(last_seen_ms) FROM pool_entries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, oldest), (50, 1_000_000 + 4950));
        let total: i64 = conn
            .query_row("SELECT n FROM totals", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 5000, "totals aggregated per batch");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let err = open_rw(&path).unwrap_err().to_string();
        assert!(err.contains("newer than this kmsd"), "{err}");
    }

    /// The v1 schema exactly as the first release created it.
    fn migrate_to_v1_only(conn: &Connection) {
        migrate(conn, 0).unwrap();
        conn.execute_batch("DROP TABLE meta; DROP TABLE totals; PRAGMA user_version = 1;")
            .unwrap();
    }

    /// Writes records the way v1 did (no totals table).
    fn commit_batch_v1(conn: &mut Connection, records: &[Record]) {
        let tx = conn.transaction().unwrap();
        for r in records {
            tx.execute(
                "INSERT INTO pool_entries (pool, cmid, last_seen_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
                params![r.counted_in.map(Pool::name), &r.cmid.0[..], r.time_ms],
            )
            .ok();
            tx.execute(
                "INSERT INTO pools (pool, capacity) VALUES ('windows', ?1) ON CONFLICT DO NOTHING",
                [r.capacity],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO activations (time_ms, address, workstation, cmid, app_id, sku_id, kms_id,
                     n_policy, license_status, binding_expiration, vm, protocol, count, hresult)
                 VALUES (?1, '', '', ?2, x'', x'', x'', 5, ?3, 0, 0, 6, 1, ?4)",
                params![r.time_ms, &r.cmid.0[..], r.license_status, r.hresult],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
}
