//! The stored pools (`pools`, `pool_entries`): loaded into the counting
//! core, which decides what is live, and written back as the deltas it
//! reports. No rule of the pools is written here in SQL.

use super::tail::{Tail, folded_upto, read_tail};
use crate::protocol::guid::Guid;
use crate::protocol::kms::products::Pool;
use crate::store::window::{PoolDelta, Window};
use crate::store::{LoadedPool, StoreError, live};
use rusqlite::{Connection, OptionalExtension, params};

pub(super) fn capacity(conn: &Connection, pool: Pool) -> rusqlite::Result<u32> {
    Ok(conn
        .prepare_cached("SELECT capacity FROM pools WHERE pool = ?1")?
        .query_row([pool.name()], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Every stored row of `pool`, as stored.
fn rows(conn: &Connection, pool: Pool) -> rusqlite::Result<Vec<(Guid, i64)>> {
    conn.prepare_cached("SELECT cmid, last_seen_ms FROM pool_entries WHERE pool = ?1")?
        .query_map([pool.name()], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// The stored rows of `pool` with the unfolded tail's entries after them.
fn rows_with_tail(
    conn: &Connection,
    pool: Pool,
    tail: &Tail,
) -> rusqlite::Result<Vec<(Guid, i64)>> {
    let mut all = rows(conn, pool)?;
    all.extend(
        tail.pool_entries
            .iter()
            .filter(|((p, _), _)| *p == pool)
            .map(|(&(_, g), &t)| (g, t)),
    );
    Ok(all)
}

/// The pools live at `now_ms`, the unfolded log tail included, in one
/// read transaction (so the tail and the folded tables agree).
pub fn load(conn: &Connection, now_ms: i64) -> Result<Vec<LoadedPool>, StoreError> {
    // Inside the caller's transaction if there is one, else in our own.
    let _snapshot = if conn.is_autocommit() {
        Some(conn.unchecked_transaction()?)
    } else {
        None
    };
    let tail = read_tail(conn, folded_upto(conn)?, i64::MAX)?;
    let mut pools = Vec::new();
    for pool in Pool::ALL {
        let rows = rows_with_tail(conn, pool, &tail)?;
        pools.push(live(pool, capacity(conn, pool)?, &rows, now_ms));
    }
    Ok(pools)
}

/// Brings the stored `pool` up to date: its rows, then `seen` (entries
/// from the log), as the pool rules hold them at `now_ms`. Writes only
/// what changed.
pub(super) fn settle(
    conn: &Connection,
    pool: Pool,
    seen: impl IntoIterator<Item = (Guid, i64)>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let (before, dropped) = Window::load(capacity(conn, pool)? as usize, &rows(conn, pool)?);
    let mut after = before.clone();
    for (g, t) in seen {
        after.restore(g, t);
    }
    after.expire(now_ms);
    let mut delta = after.delta_from(&before);
    delta.removed.extend(dropped);
    persist(conn, pool, &delta)?;
    Ok(())
}

/// Writes what the counting core reported for `pool`.
pub(super) fn persist(conn: &Connection, pool: Pool, delta: &PoolDelta) -> rusqlite::Result<()> {
    let mut remove =
        conn.prepare_cached("DELETE FROM pool_entries WHERE pool = ?1 AND cmid = ?2")?;
    for g in &delta.removed {
        remove.execute(params![pool.name(), g])?;
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO pool_entries (pool, cmid, last_seen_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(pool, cmid) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
    )?;
    for (g, t) in &delta.upserted {
        upsert.execute(params![pool.name(), g, t])?;
    }
    if let Some(c) = delta.capacity {
        conn.prepare_cached(
            "INSERT INTO pools (pool, capacity) VALUES (?1, ?2)
             ON CONFLICT(pool) DO UPDATE SET capacity = MAX(capacity, excluded.capacity)",
        )?
        .execute(params![pool.name(), c])?;
    }
    Ok(())
}
