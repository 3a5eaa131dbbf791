//! Pruning: pool entries that can no longer be live, and activation
//! records past the retention, in small steps.

use crate::protocol::kms::products::Pool;
use crate::store::StoreError;
use rusqlite::{Connection, OptionalExtension, params};

/// Deletes pool entries that can no longer be live (expired, or beyond each
/// pool's capacity) and activation records past the retention.
pub fn prune(conn: &Connection, now_ms: i64, keep_records: u64) -> Result<(), StoreError> {
    let cutoff = now_ms - crate::store::window::TTL_MS;
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
pub(super) fn trim_log(conn: &Connection, keep_records: u64, most: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM activations WHERE id <= MIN(
             (SELECT MAX(id) FROM activations) - MAX(?1, 1),
             (SELECT MIN(id) FROM activations) + ?2 - 1,
             (SELECT upto FROM folded WHERE id = 1))",
    )?
    .execute(params![keep_records.min(i64::MAX as u64) as i64, most])
}
