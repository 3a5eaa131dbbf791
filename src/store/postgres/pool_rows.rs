//! The fleet's stored pools: a pool's row (capacity and version) and its
//! entries, loaded into the counting core under the pool's row lock, and
//! the core's [`PoolDelta`] written back. No pool rule is written in SQL.

use crate::protocol::guid::Guid;
use crate::protocol::kms::products::Pool;
use crate::store::window::{PoolDelta, Window};
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// A pool as loaded under its lock.
pub struct Locked {
    pub version: i64,
    pub capacity: usize,
}

/// Locks `pool`'s row for the rest of the transaction (hosts counting in
/// one pool take turns) and reads its capacity and version.
pub async fn lock(c: &impl GenericClient, pool: Pool) -> Result<Locked, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT capacity, version FROM pools WHERE pool = $1 FOR UPDATE",
            &[&pool.name()],
        )
        .await?;
    Ok(Locked {
        capacity: usize::try_from(row.get::<_, i32>(0)).unwrap_or(0),
        version: row.get(1),
    })
}

/// Every stored entry of `pool`.
pub async fn rows(
    c: &impl GenericClient,
    pool: Pool,
) -> Result<Vec<(Guid, i64)>, tokio_postgres::Error> {
    Ok(c.query(
        "SELECT cmid, last_seen_ms FROM pool_entries WHERE pool = $1",
        &[&pool.name()],
    )
    .await?
    .iter()
    .filter_map(|r| {
        let b = <[u8; 16]>::try_from(r.get::<_, &[u8]>(0)).ok()?;
        Some((Guid(b), r.get(1)))
    })
    .collect())
}

/// `pool` as the counting core holds it, from its stored rows; the rows
/// the core does not keep (beyond the capacity) come back for deletion.
pub async fn load(
    c: &impl GenericClient,
    pool: Pool,
    locked: &Locked,
) -> Result<(Window, Vec<Guid>), tokio_postgres::Error> {
    Ok(Window::load(locked.capacity, &rows(c, pool).await?))
}

/// Writes `delta` for `pool` and moves its version on (so other hosts
/// know their copy is stale); returns the new version. The three
/// statements are pipelined: one round trip.
pub async fn persist(
    c: &impl GenericClient,
    pool: Pool,
    delta: &PoolDelta,
    capacity: usize,
) -> Result<i64, tokio_postgres::Error> {
    let name = pool.name();
    let (cmids, times): (Vec<Vec<u8>>, Vec<i64>) = delta
        .upserted
        .iter()
        .map(|(g, t)| (g.0.to_vec(), *t))
        .unzip();
    let gone: Vec<Vec<u8>> = delta.removed.iter().map(|g| g.0.to_vec()).collect();
    let capacity = i32::try_from(capacity).unwrap_or(i32::MAX);
    let upsert: [&(dyn ToSql + Sync); 3] = [&name, &cmids, &times];
    let delete: [&(dyn ToSql + Sync); 2] = [&name, &gone];
    let bump: [&(dyn ToSql + Sync); 2] = [&name, &capacity];
    let (upserted, deleted, bumped) = tokio::join!(
        c.execute(
            "INSERT INTO pool_entries (pool, cmid, last_seen_ms)
             SELECT $1, c, t FROM UNNEST($2::BYTEA[], $3::BIGINT[]) AS x(c, t)
             ON CONFLICT (pool, cmid) DO UPDATE SET last_seen_ms = EXCLUDED.last_seen_ms",
            &upsert,
        ),
        c.execute(
            "DELETE FROM pool_entries WHERE pool = $1 AND cmid = ANY($2::BYTEA[])",
            &delete,
        ),
        c.query_one(
            "UPDATE pools SET capacity = $2, version = version + 1
             WHERE pool = $1 RETURNING version",
            &bump,
        )
    );
    upserted?;
    deleted?;
    Ok(bumped?.get(0))
}
