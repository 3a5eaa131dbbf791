//! Folding the activation log's tail into the inventory (`clients`), the
//! stored pools (through the counting core) and the running totals.

use super::pool_rows::settle;
use super::prune::trim_log;
use super::tail::{folded_upto, read_tail};
use crate::protocol::kms::products::Pool;
use crate::store::{Durability, StoreError};
use rusqlite::{Connection, params};

/// Most log records one fold transaction reads at start-up and shutdown.
const FOLD_MAX: i64 = 65_536;
/// Most log records one fold reads while serving (commits that arrive
/// meanwhile wait for it, so it is kept short).
pub(super) const FOLD_CHUNK: i64 = 512;
/// Unfolded records from which a fold runs whenever no commit is waiting.
pub(super) const FOLD_EVERY: u64 = 256;
/// Unfolded records past which folding no longer waits for a gap.
pub const FOLD_BACKLOG: u64 = 4096;

/// Folds at most `max` unfolded log records into the inventory, the
/// stored pools (as the pool rules hold them at `now_ms`) and the running
/// totals, in one transaction that also moves the mark. Returns the
/// records folded (0 when there were none).
///
/// With `keep_records`, the same transaction also trims the log's head past
/// `keep_records`, by at most twice the records folded: the log keeps its
/// length in small steps instead of one large delete now and then.
pub fn fold(
    conn: &mut Connection,
    max: i64,
    keep_records: Option<u64>,
    now_ms: i64,
) -> Result<u64, StoreError> {
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
        for pool in Pool::ALL {
            let seen: Vec<_> = tail
                .pool_entries
                .iter()
                .filter(|((p, _), _)| *p == pool)
                .map(|(&(_, g), &t)| (g, t))
                .collect();
            if !seen.is_empty() {
                settle(&tx, pool, seen, now_ms)?;
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
    now_ms: i64,
) -> Result<u64, StoreError> {
    conn.execute_batch("PRAGMA synchronous=OFF")?;
    let folded = fold(conn, max, Some(keep_records), now_ms);
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
        Err(StoreError::failed(
            "the SQLite store",
            format!("synchronous is {level} where {want} was set"),
        ))
    }
}

/// Folds the whole unfolded tail (at start-up and shutdown).
pub fn fold_all(conn: &mut Connection, now_ms: i64) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let n = fold(conn, FOLD_MAX, None, now_ms)?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}
