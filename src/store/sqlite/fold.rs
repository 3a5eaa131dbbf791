//! Folding the activation log into the inventory (`clients`) and the
//! stored pools (`pool_entries`), and reading its unfolded tail.

use super::prune::trim_log;
use super::reads::{capacity, newest_entries};
use crate::protocol::guid::Guid;
use crate::protocol::kms::products::Pool;
use crate::store::{Durability, StoreError};
use rusqlite::{Connection, params};
use std::collections::HashMap;

/// Most log records one fold transaction reads at start-up and shutdown.
const FOLD_MAX: i64 = 65_536;
/// Most log records one fold reads while serving (commits that arrive
/// meanwhile wait for it, so it is kept short).
pub(super) const FOLD_CHUNK: i64 = 512;
/// Unfolded records from which a fold runs whenever no commit is waiting.
pub(super) const FOLD_EVERY: u64 = 256;
/// Unfolded records past which folding no longer waits for a gap.
pub const FOLD_BACKLOG: u64 = 4096;

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
    /// Records per (result, license state): what the running totals gain.
    pub totals: HashMap<(u32, u32), u64>,
}

/// How far the inventory and stored pools reflect the activation log.
pub fn folded_upto(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT upto FROM folded WHERE id = 1", [], |r| r.get(0))
}

/// Reads and folds at most `limit` activation records after id `after`.
pub fn read_tail(conn: &Connection, after: i64, limit: i64) -> rusqlite::Result<Tail> {
    let mut tail = Tail {
        upto: after,
        ..Tail::default()
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, time_ms, address, workstation, cmid, app_id, sku_id, count, hresult, pool,
                license_status
         FROM activations WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after, limit])?;
    while let Some(row) = rows.next()? {
        let time: i64 = row.get(1)?;
        let cmid = row.get::<_, Guid>(4)?;
        let app = row.get::<_, Guid>(5)?;
        let update = TailClient {
            first_ms: time,
            last_ms: time,
            requests: 1,
            address: row.get(2)?,
            workstation: row.get(3)?,
            sku_id: row.get::<_, Guid>(6)?,
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
        *tail
            .totals
            .entry((update.last_hresult, row.get(10)?))
            .or_default() += 1;
        tail.upto = row.get(0)?;
        tail.records += 1;
    }
    Ok(tail)
}

/// Folds at most `max` unfolded log records into the inventory, the
/// stored pools and the running totals, in one transaction that also moves
/// the mark. Returns the records folded (0 when there were none).
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
                cmid,
                app,
                c.first_ms,
                c.last_ms,
                c.workstation,
                c.sku_id,
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
                insert.execute(params![pool.name(), cmid, t])?;
            }
        }
        let mut total = tx.prepare_cached(
            "INSERT INTO totals (hresult, license_status, n) VALUES (?1, ?2, ?3)
             ON CONFLICT(hresult, license_status) DO UPDATE SET n = n + excluded.n",
        )?;
        for (&(hresult, status), &n) in &tail.totals {
            total.execute(params![hresult, status, n as i64])?;
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
/// are written in order) makes it durable too. Then puts back the commits'
/// level for `durability`.
/// The caller must not commit a record while this fails: its commits would
/// no longer wait for the disk.
pub(super) fn fold_unsynced(
    conn: &mut Connection,
    max: i64,
    keep_records: u64,
    durability: Durability,
) -> Result<u64, StoreError> {
    conn.execute_batch("PRAGMA synchronous=OFF")?;
    let folded = fold(conn, max, Some(keep_records));
    commit_level(conn, durability)?;
    folded
}

/// Sets the `synchronous` level of commits for `durability` and checks
/// that it took: with [`Durability::Full`] (FULL, 2) a commit waits for the
/// disk; with [`Durability::Os`] (NORMAL, 1) a WAL commit is written but
/// flushed only at checkpoints. A record is only acknowledged after a
/// commit at that level.
pub(super) fn commit_level(conn: &Connection, durability: Durability) -> Result<(), StoreError> {
    let want: i64 = match durability {
        Durability::Full => 2,
        Durability::Os => 1,
    };
    conn.execute_batch(&format!("PRAGMA synchronous={want}"))?;
    let level: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    if level == want {
        Ok(())
    } else {
        Err(StoreError::Sqlite(format!(
            "synchronous is {level} where {want} was set"
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
