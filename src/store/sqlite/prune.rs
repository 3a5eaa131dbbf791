//! Pruning: pool entries that are no longer live (the counting core says
//! which), and activation records past the retention, in small steps.

use super::pool_rows::settle;
use crate::protocol::kms::products::Pool;
use crate::store::StoreError;
use rusqlite::{Connection, params};

/// Brings every stored pool to what the pool rules hold at `now_ms`
/// (expired entries go), and deletes activation records past the
/// retention, a chunk at a time.
pub fn prune(conn: &Connection, now_ms: i64, keep_records: u64) -> Result<(), StoreError> {
    for pool in Pool::ALL {
        settle(conn, pool, [], now_ms)?;
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
