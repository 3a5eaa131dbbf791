//! The durable layer: one SQLite file in the data dir, written by one thread
//! that batches whatever is waiting into one transaction (group commit), so
//! each client's record is on disk before its response leaves without each
//! response paying for its own fsync.
//!
//! The hot commit only appends: the activation log (which names the pool a
//! request was counted in), the pools' capacities and the running totals.
//! The inventory (`clients`) and the stored pools (`pool_entries`) are keyed
//! by CMID, so updating them inside the hot commit would dirty a random page
//! per record and make every client wait for those pages' fsync. They are
//! instead folded from the log by the same thread after commits: a short
//! chunk when no commit is waiting, a longer one once the tail passes
//! [`FOLD_BACKLOG`] records, and all of it at shutdown and start-up. A fold
//! does not wait for the disk (the log can always be folded again; the next
//! synchronous commit carries its pages to disk anyway); `folded.upto` says how far. Readers
//! fold the unfolded tail in memory ([`read_tail`]), so nothing acknowledged
//! is ever missing from a report, and a crash loses nothing.

use super::StoreError;
use crate::protocol::guid::Guid;
use crate::protocol::kms::products::Pool;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 3;
/// Most records committed in one transaction.
const MAX_BATCH: usize = 512;
/// Most log records one fold transaction reads at start-up and shutdown.
const FOLD_MAX: i64 = 65_536;
/// Most log records one fold reads while serving and commits are queued
/// (they wait for it, so it is kept short).
const FOLD_CHUNK: i64 = 256;
/// Most log records one fold reads when no commit is waiting.
const FOLD_IDLE_CHUNK: i64 = 64;
/// Unfolded records past which folding no longer waits for a gap.
pub const FOLD_BACKLOG: u64 = 4096;

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
    /// Commits what is queued before it, folds the whole log tail, and
    /// stops the writer.
    Close(Reply),
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
    if from < 3 {
        // v3: the activation log names the pool a request was counted in,
        // and `folded` marks how much of it the inventory and the stored
        // pools reflect (v2 wrote those per record: all of it).
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE activations ADD COLUMN pool TEXT;
             CREATE TABLE folded (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 upto INTEGER NOT NULL
             );
             INSERT INTO folded (id, upto) SELECT 1, COALESCE(MAX(id), 0) FROM activations;
             PRAGMA user_version = 3;
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

fn capacity(conn: &Connection, pool: Pool) -> rusqlite::Result<u32> {
    Ok(conn
        .prepare_cached("SELECT capacity FROM pools WHERE pool = ?1")?
        .query_row([pool.name()], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The newest `capacity` entries of `pool` seen after `cutoff`, stored or in
/// `tail`, newest first. A tail entry only moves a CMID's time forward, so
/// the newest `capacity` of the union are among the newest `capacity`
/// stored ones and the tail's.
fn newest_entries(
    conn: &Connection,
    pool: Pool,
    capacity: u32,
    cutoff: i64,
    tail: &Tail,
) -> rusqlite::Result<Vec<(Guid, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT cmid, last_seen_ms FROM pool_entries
         WHERE pool = ?1 AND last_seen_ms > ?2
         ORDER BY last_seen_ms DESC, cmid DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![pool.name(), cutoff, capacity], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut newest: HashMap<Guid, i64> = HashMap::new();
    for row in rows {
        let (cmid, t) = row?;
        if let Ok(b) = <[u8; 16]>::try_from(cmid.as_slice()) {
            newest.insert(Guid(b), t);
        }
    }
    for ((p, cmid), t) in &tail.pool_entries {
        if *p == pool && *t > cutoff {
            let e = newest.entry(*cmid).or_insert(*t);
            *e = (*e).max(*t);
        }
    }
    let mut entries: Vec<(Guid, i64)> = newest.into_iter().collect();
    entries.sort_unstable_by_key(|&(g, t)| std::cmp::Reverse((t, g.0)));
    entries.truncate(capacity as usize);
    Ok(entries)
}

/// Reads pools (entries live at `now_ms`) and ePIDs, the unfolded log tail
/// included. Runs in one read transaction, so the tail and the folded
/// tables agree.
pub fn load(conn: &Connection, now_ms: i64) -> Result<Loaded, StoreError> {
    // Inside the caller's transaction if there is one, else in our own.
    let _snapshot = if conn.is_autocommit() {
        Some(conn.unchecked_transaction()?)
    } else {
        None
    };
    let tail = read_tail(conn, folded_upto(conn)?, i64::MAX)?;
    let mut loaded = Loaded::default();
    let cutoff = now_ms - super::window::TTL_MS;
    for pool in Pool::ALL {
        let capacity = capacity(conn, pool)?;
        let entries = newest_entries(conn, pool, capacity, cutoff, &tail)?;
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

/// Machines in the inventory, those only in the unfolded log tail included.
pub fn inventory_size(conn: &Connection) -> Result<u64, StoreError> {
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))?;
    let tail = read_tail(conn, folded_upto(conn)?, i64::MAX)?;
    let mut known = conn.prepare("SELECT 1 FROM clients WHERE cmid = ?1 AND app_id = ?2")?;
    let mut new = 0u64;
    for (cmid, app) in tail.clients.keys() {
        if !known.exists(params![&cmid.0[..], &app.0[..]])? {
            new += 1;
        }
    }
    Ok(stored as u64 + new)
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
    trim_log(conn, keep_records, PRUNE_CHUNK)?;
    Ok(())
}

/// Most activation records one prune deletes.
const PRUNE_CHUNK: i64 = 2_000;

/// Deletes the oldest activation records beyond `keep_records`, at most
/// `most` of them, so a large backlog is worked off in steps that never
/// stall the writer. Never a record not yet folded, and never the newest:
/// ids are rowids, which only keep rising while the table is not empty.
fn trim_log(conn: &Connection, keep_records: u64, most: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM activations WHERE id <= MIN(
             (SELECT MAX(id) FROM activations) - MAX(?1, 1),
             (SELECT MIN(id) FROM activations) + ?2 - 1,
             (SELECT upto FROM folded WHERE id = 1))",
    )?
    .execute(params![keep_records.min(i64::MAX as u64) as i64, most])
}

fn write_record(tx: &rusqlite::Transaction<'_>, r: &Record) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO activations (time_ms, address, workstation, cmid, app_id, sku_id, kms_id,
             n_policy, license_status, binding_expiration, vm, protocol, count, hresult, pool)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
        r.hresult,
        r.counted_in.map(Pool::name),
    ])?;
    Ok(())
}

/// One machine's requests in the unfolded tail of the log, in log order:
/// what its inventory row gains when the tail is folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailClient {
    pub first_ms: i64,
    pub last_ms: i64,
    pub requests: u64,
    pub workstation: String,
    pub sku_id: Guid,
    pub address: String,
    pub last_hresult: u32,
    pub last_count: u32,
}

/// The activation records after some id, folded per machine (CMID and
/// application) and per pool entry.
#[derive(Debug, Default)]
pub struct Tail {
    /// The last record id read (the fold's new mark), or the start id.
    pub upto: i64,
    /// Records read.
    pub records: u64,
    pub clients: HashMap<(Guid, Guid), TailClient>,
    /// Last seen ms per (pool, CMID), for the requests that were counted.
    pub pool_entries: HashMap<(Pool, Guid), i64>,
}

/// How far the inventory and stored pools reflect the activation log.
pub fn folded_upto(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT upto FROM folded WHERE id = 1", [], |r| r.get(0))
}

fn guid_of(b: &[u8]) -> Guid {
    Guid(<[u8; 16]>::try_from(b).unwrap_or([0; 16]))
}

/// Reads and folds at most `limit` activation records after id `after`.
pub fn read_tail(conn: &Connection, after: i64, limit: i64) -> rusqlite::Result<Tail> {
    let mut tail = Tail {
        upto: after,
        ..Tail::default()
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, time_ms, address, workstation, cmid, app_id, sku_id, count, hresult, pool
         FROM activations WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after, limit])?;
    while let Some(row) = rows.next()? {
        let time: i64 = row.get(1)?;
        let cmid = guid_of(&row.get::<_, Vec<u8>>(4)?);
        let app = guid_of(&row.get::<_, Vec<u8>>(5)?);
        let update = TailClient {
            first_ms: time,
            last_ms: time,
            requests: 1,
            address: row.get(2)?,
            workstation: row.get(3)?,
            sku_id: guid_of(&row.get::<_, Vec<u8>>(6)?),
            last_count: row.get(7)?,
            last_hresult: row.get(8)?,
        };
        tail.clients
            .entry((cmid, app))
            .and_modify(|c| {
                // Like one upsert per record: the first record's time
                // stays first seen, even if a later one says earlier.
                *c = TailClient {
                    first_ms: c.first_ms,
                    last_ms: c.last_ms.max(time),
                    requests: c.requests + 1,
                    ..update.clone()
                }
            })
            .or_insert_with(|| update.clone());
        if let Some(pool) = row
            .get::<_, Option<String>>(9)?
            .as_deref()
            .and_then(Pool::from_name)
        {
            let t = tail.pool_entries.entry((pool, cmid)).or_insert(time);
            *t = (*t).max(time);
        }
        tail.upto = row.get(0)?;
        tail.records += 1;
    }
    Ok(tail)
}

/// Folds at most `max` unfolded log records into the inventory and
/// the stored pools, in one transaction that also moves the mark. Returns
/// the records folded (0 when there were none).
///
/// With `keep_records`, the same transaction also trims the log's head past
/// `keep_records`, by at most twice the records folded: the log keeps its
/// length in small steps instead of one large delete now and then.
pub fn fold(conn: &mut Connection, max: i64, keep_records: Option<u64>) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let tail = read_tail(&tx, folded_upto(&tx)?, max)?;
    if tail.records == 0 {
        return Ok(0);
    }
    {
        let mut client = tx.prepare_cached(
            "INSERT INTO clients (cmid, app_id, first_seen_ms, last_seen_ms, workstation, sku_id,
                                  address, requests, last_hresult, last_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(cmid, app_id) DO UPDATE SET
                 last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),
                 workstation = excluded.workstation, sku_id = excluded.sku_id,
                 address = excluded.address, requests = requests + excluded.requests,
                 last_hresult = excluded.last_hresult, last_count = excluded.last_count",
        )?;
        for ((cmid, app), c) in &tail.clients {
            client.execute(params![
                &cmid.0[..],
                &app.0[..],
                c.first_ms,
                c.last_ms,
                c.workstation,
                &c.sku_id.0[..],
                c.address,
                c.requests as i64,
                c.last_hresult,
                c.last_count
            ])?;
        }
        // A pool keeps its newest `capacity` CMIDs, so the stored pool is
        // rewritten whole: a few dozen rows on a page or two, where an
        // upsert per CMID dirtied a random page each.
        for pool in Pool::ALL {
            if !tail.pool_entries.keys().any(|(p, _)| *p == pool) {
                continue;
            }
            let entries = newest_entries(&tx, pool, capacity(&tx, pool)?, i64::MIN, &tail)?;
            tx.prepare_cached("DELETE FROM pool_entries WHERE pool = ?1")?
                .execute([pool.name()])?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO pool_entries (pool, cmid, last_seen_ms) VALUES (?1, ?2, ?3)",
            )?;
            for (cmid, t) in entries {
                insert.execute(params![pool.name(), &cmid.0[..], t])?;
            }
        }
        tx.prepare_cached("UPDATE folded SET upto = ?1 WHERE id = 1")?
            .execute([tail.upto])?;
        if let Some(keep) = keep_records {
            trim_log(&tx, keep, 2 * tail.records as i64)?;
        }
    }
    tx.commit()?;
    Ok(tail.records)
}

/// [`fold`] without waiting for the disk: everything it writes can be
/// folded again from the log, and the next synchronous commit (WAL frames
/// are written in order) makes it durable too.
/// The caller must not commit a record while this fails: its commits would
/// no longer wait for the disk.
fn fold_unsynced(conn: &mut Connection, max: i64, keep_records: u64) -> Result<u64, StoreError> {
    conn.execute_batch("PRAGMA synchronous=OFF")?;
    let folded = fold(conn, max, Some(keep_records));
    full_sync(conn)?;
    folded
}

/// Sets `synchronous=FULL` and checks that it took: a record is only
/// acknowledged after a commit that waited for the disk.
fn full_sync(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    let level: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    if level == 2 {
        Ok(())
    } else {
        Err(StoreError::Sqlite(format!(
            "synchronous is {level} where FULL (2) was set"
        )))
    }
}

/// Folds the whole unfolded tail (at start-up and shutdown).
pub fn fold_all(conn: &mut Connection) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let n = fold(conn, FOLD_MAX, None)?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// Writes a batch in one transaction: per record the activation record
/// (an append); per batch the pools' capacities and the running totals (one
/// statement per distinct key, not per record).
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
        self.ask(|done| Job::Write(Box::new(record), done)).await
    }

    /// Commits everything queued so far, folds the log tail into the
    /// inventory and stops the writer (a clean shutdown). Writes after this
    /// fail with [`StoreError::Closed`].
    pub async fn close(&self) -> Result<(), StoreError> {
        self.ask(Job::Close).await
    }

    /// Waits until everything queued so far is committed.
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.ask(Job::Barrier).await
    }

    /// Queues a job and waits for the writer's answer to it.
    async fn ask(&self, job: impl FnOnce(Reply) -> Job) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(job(done))
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
    let mut unfolded = 0u64;
    // False when a fold may have left the connection not syncing commits.
    let mut synced = true;
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
                Job::Barrier(_) | Job::Close(_) => None,
            })
            .collect();
        let result = if records.is_empty() {
            Ok(())
        } else if !synced && let Err(e) = full_sync(&conn) {
            // Never acknowledge a record from a commit that did not wait
            // for the disk.
            Err(e)
        } else {
            synced = true;
            let t = Instant::now();
            let r = commit_batch(&mut conn, &records);
            metrics
                .store_commit_latency
                .observe(t.elapsed().as_secs_f64());
            metrics.store_batch_size.observe(records.len() as f64);
            r
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, records = records.len(), "store commit failed; these clients get an error answer");
        } else {
            tracing::trace!(records = records.len(), "store batch committed");
            since_prune += records.len() as u64;
            unfolded += records.len() as u64;
        }
        let mut close = None;
        for j in jobs.drain(..) {
            let reply = match j {
                Job::Write(_, r) | Job::Barrier(r) => r,
                Job::Close(r) => {
                    close = Some(r);
                    continue;
                }
            };
            let _ = reply.send(result.clone());
        }
        if let Some(reply) = close {
            let _ = reply.send(fold_all(&mut conn).map(|n| {
                tracing::debug!(records = n, "log tail folded at shutdown");
            }));
            return;
        }
        // Folding and pruning run after the replies, so the clients whose
        // records were just committed do not wait for them. One fold chunk
        // per commit at most: a short one when no commit is waiting, a
        // longer one once the tail has grown long (or before a prune, which
        // only deletes folded records).
        let prune_due = since_prune >= 10_000 || last_prune.elapsed().as_secs() >= 3600;
        let chunk = if unfolded >= FOLD_BACKLOG || prune_due {
            FOLD_CHUNK
        } else if unfolded > 0 && rx.is_empty() {
            FOLD_IDLE_CHUNK
        } else {
            0
        };
        if chunk > 0 {
            match fold_unsynced(&mut conn, chunk, keep_records) {
                Ok(n) if n < chunk as u64 => unfolded = 0, // the whole tail
                Ok(n) => unfolded = unfolded.saturating_sub(n),
                Err(e) => {
                    // Checked again before the next commit.
                    synced = false;
                    tracing::warn!(error = %e, "folding the activation log failed; will retry")
                }
            }
        }
        if prune_due {
            let now = super::unix_ms_now();
            if let Err(e) = prune(&conn, now, keep_records) {
                tracing::warn!(error = %e, "store pruning failed; will retry later");
            }
            since_prune = 0;
            last_prune = Instant::now();
        }
    }
    // Every sender is gone without a Close: leave the tables folded anyway.
    if let Err(e) = fold_all(&mut conn) {
        tracing::warn!(error = %e, "folding the activation log at shutdown failed; the next start folds it");
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
        // v1 wrote the inventory per record: all of the log counts as folded.
        assert_eq!(folded_upto(&conn).unwrap(), 3);
        let mut conn = conn;
        assert_eq!(fold_all(&mut conn).unwrap(), 0);
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
        fold_all(&mut conn).unwrap();
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
        fold_all(&mut conn).unwrap();
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

    fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            Ok((0..n)
                .map(|i| match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Blob(b) => format!("{b:02x?}"),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                    v => format!("{v:?}"),
                })
                .collect())
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// What the inventory and pool tables hold after `records`, written the
    /// way schema v2 did: one upsert per record, in order.
    fn per_record_oracle(records: &[Record]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn, 0).unwrap();
        for r in records {
            if let Some(pool) = r.counted_in {
                conn.execute(
                    "INSERT INTO pool_entries (pool, cmid, last_seen_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT(pool, cmid) DO UPDATE SET last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
                    params![pool.name(), &r.cmid.0[..], r.time_ms],
                )
                .unwrap();
            }
            conn.execute(
                "INSERT INTO clients (cmid, app_id, first_seen_ms, last_seen_ms, workstation, sku_id,
                                      address, requests, last_hresult, last_count)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, 1, ?7, ?8)
                 ON CONFLICT(cmid, app_id) DO UPDATE SET
                     last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),
                     workstation = excluded.workstation, sku_id = excluded.sku_id,
                     address = excluded.address, requests = requests + 1,
                     last_hresult = excluded.last_hresult, last_count = excluded.last_count",
                params![
                    &r.cmid.0[..],
                    &r.app_id.0[..],
                    r.time_ms,
                    r.workstation,
                    &r.sku_id.0[..],
                    r.address,
                    r.hresult,
                    r.count
                ],
            )
            .unwrap();
        }
        (
            rows(&conn, "SELECT * FROM clients ORDER BY cmid, app_id"),
            rows(&conn, "SELECT * FROM pool_entries ORDER BY pool, cmid"),
        )
    }

    /// Repeat visits, a clock step backwards, a refusal, two applications
    /// for one CMID: the mix that folding must get right.
    fn mixed_records() -> Vec<Record> {
        let mut out = Vec::new();
        for i in 0..40u128 {
            let mut r = record(i % 7, if i % 11 == 10 { 0xC004_F042 } else { 0 });
            r.time_ms = 10_000 + (i as i64) * 100 - if i % 5 == 4 { 950 } else { 0 };
            r.workstation = format!("ws{i}");
            r.address = format!("10.0.0.{i}");
            r.count = i as u32;
            if i % 9 == 8 {
                r.app_id = Pool::Office2013Plus.app_id();
                r.counted_in = r.counted_in.map(|_| Pool::Office2013Plus);
            }
            out.push(r);
        }
        out
    }

    #[test]
    fn folding_in_any_chunks_equals_writing_each_record() {
        let records = mixed_records();
        let (clients, entries) = per_record_oracle(&records);
        for (batch_len, chunk) in [(5, 1), (5, 3), (5, 16), (5, 1000), (40, 1000), (40, 7)] {
            let dir = tempfile::tempdir().unwrap();
            let mut conn = open_rw(&dir.path().join("db")).unwrap();
            // Committed in batches, folded `chunk` records at a time after
            // each batch, the way the writer interleaves them.
            for batch in records.chunks(batch_len) {
                let refs: Vec<&Record> = batch.iter().collect();
                commit_batch(&mut conn, &refs).unwrap();
                fold_unsynced(&mut conn, chunk, 1_000_000).unwrap();
            }
            fold_all(&mut conn).unwrap();
            assert_eq!(
                rows(&conn, "SELECT * FROM clients ORDER BY cmid, app_id"),
                clients,
                "inventory, chunk {chunk}"
            );
            assert_eq!(
                rows(&conn, "SELECT * FROM pool_entries ORDER BY pool, cmid"),
                entries,
                "pool entries, chunk {chunk}"
            );
            assert_eq!(folded_upto(&conn).unwrap(), records.len() as i64);
        }
    }

    #[test]
    fn a_folded_pool_keeps_its_newest_capacity_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("db")).unwrap();
        // 20 CMIDs, capacity 4, visited out of order and twice.
        let records: Vec<Record> = (0..40u128)
            .map(|i| Record {
                time_ms: 1_000 + ((i * 7) % 40) as i64,
                capacity: 4,
                ..record(i % 20, 0)
            })
            .collect();
        for batch in records.chunks(6) {
            let refs: Vec<&Record> = batch.iter().collect();
            commit_batch(&mut conn, &refs).unwrap();
            fold(&mut conn, 3, None).unwrap();
        }
        fold_all(&mut conn).unwrap();
        let mut want: HashMap<Guid, i64> = HashMap::new();
        for r in &records {
            let t = want.entry(r.cmid).or_insert(r.time_ms);
            *t = (*t).max(r.time_ms);
        }
        let mut want: Vec<(Guid, i64)> = want.into_iter().collect();
        want.sort_by_key(|&(g, t)| std::cmp::Reverse((t, g.0)));
        want.truncate(4);
        let loaded = load(&conn, 2_000).unwrap();
        let windows = loaded
            .pools
            .iter()
            .find(|p| p.pool == Pool::Windows)
            .unwrap();
        assert_eq!(windows.entries, want);
        let stored: i64 = conn
            .query_row("SELECT COUNT(*) FROM pool_entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 4, "the stored pool holds no more than its capacity");
    }

    #[test]
    fn readers_see_the_unfolded_tail() {
        let records = mixed_records();
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("db")).unwrap();
        let refs: Vec<&Record> = records.iter().collect();
        let (first, rest) = refs.split_at(17);
        commit_batch(&mut conn, first).unwrap();
        fold_all(&mut conn).unwrap();
        commit_batch(&mut conn, rest).unwrap();
        // Half folded, half in the tail: the pools a start-up would load
        // are those of the fully folded tables.
        let now = 20_000;
        let before = load(&conn, now).unwrap();
        let tail = read_tail(&conn, folded_upto(&conn).unwrap(), i64::MAX).unwrap();
        assert_eq!(tail.records, rest.len() as u64);
        fold_all(&mut conn).unwrap();
        let after = load(&conn, now).unwrap();
        assert_eq!(before.pools, after.pools);
        assert!(after.pools.iter().any(|p| !p.entries.is_empty()));
        // And the tail folded per machine like the per-record writes.
        let last = rest
            .iter()
            .rev()
            .find(|r| r.cmid == Guid::from_u128(3))
            .unwrap();
        let t = &tail.clients[&(Guid::from_u128(3), last.app_id)];
        assert_eq!(
            (t.workstation.as_str(), t.last_count),
            (last.workstation.as_str(), last.count)
        );
    }

    #[test]
    fn prune_never_deletes_unfolded_records_nor_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("db")).unwrap();
        let records: Vec<Record> = (0..100u128).map(|i| record(i, 0)).collect();
        let refs: Vec<&Record> = records.iter().collect();
        commit_batch(&mut conn, &refs).unwrap();
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT COUNT(*) FROM activations", [], |r| r.get(0))
                .unwrap()
        };
        prune(&conn, 2_000, 0).unwrap();
        assert_eq!(count(&conn), 100, "nothing folded yet, nothing pruned");
        fold(&mut conn, 40, None).unwrap();
        prune(&conn, 2_000, 0).unwrap();
        assert_eq!(count(&conn), 60, "only the 40 folded ones");
        fold_all(&mut conn).unwrap();
        prune(&conn, 2_000, 0).unwrap();
        assert_eq!(count(&conn), 1, "keep_records 0 still keeps the newest");
        // Ids keep rising, so a new record is never taken as folded.
        commit_batch(&mut conn, &[&record(500, 0)]).unwrap();
        assert_eq!(fold_all(&mut conn).unwrap(), 1);
    }

    #[test]
    fn folding_trims_the_log_head_in_small_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("db")).unwrap();
        let records: Vec<Record> = (0..100u128).map(|i| record(i, 0)).collect();
        let refs: Vec<&Record> = records.iter().collect();
        commit_batch(&mut conn, &refs).unwrap();
        let span = |c: &Connection| -> (i64, i64) {
            c.query_row("SELECT MIN(id), COUNT(*) FROM activations", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
        };
        // 20 folded, so only those 20 may go (keep 10 would allow 90).
        fold_unsynced(&mut conn, 20, 10).unwrap();
        assert_eq!(span(&conn), (21, 80));
        // 30 more folded: at most twice that trimmed, still only folded ones.
        fold_unsynced(&mut conn, 30, 10).unwrap();
        assert_eq!(span(&conn), (51, 50));
        fold_unsynced(&mut conn, 50, 10).unwrap();
        assert_eq!(span(&conn), (91, 10), "keeps keep_records");
    }

    #[test]
    fn commits_after_a_fold_wait_for_the_disk_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("db")).unwrap();
        let level = |c: &Connection| -> i64 {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
        };
        assert_eq!(level(&conn), 2);
        commit_batch(&mut conn, &[&record(1, 0)]).unwrap();
        fold_unsynced(&mut conn, 64, 1_000_000).unwrap();
        assert_eq!(level(&conn), 2, "FULL again after an unsynced fold");
        conn.execute_batch("PRAGMA synchronous=OFF").unwrap();
        full_sync(&conn).unwrap();
        assert_eq!(level(&conn), 2);
    }

    #[tokio::test]
    async fn close_commits_and_folds_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = open_rw(&path).unwrap();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let durable = Durable::start(conn, path.clone(), 1_000_000, metrics).unwrap();
        for r in mixed_records() {
            durable.write(r).await.unwrap();
        }
        durable.close().await.unwrap();
        assert!(matches!(
            durable.write(record(1, 0)).await,
            Err(StoreError::Closed)
        ));
        let conn = open_ro(&path).unwrap();
        assert_eq!(folded_upto(&conn).unwrap(), 40);
        let (clients, _) = per_record_oracle(&mixed_records());
        assert_eq!(
            rows(&conn, "SELECT * FROM clients ORDER BY cmid, app_id"),
            clients
        );
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
        conn.execute_batch(
            "DROP TABLE meta; DROP TABLE totals; DROP TABLE folded;
             ALTER TABLE activations DROP COLUMN pool; PRAGMA user_version = 1;",
        )
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
