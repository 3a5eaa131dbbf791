//! The fleet's typed queries: status (with every host), the inventory, the
//! recent activations, the pools. Times come from the database's clock.

use super::schema::SCHEMA_VERSION;
use super::{pg_err, pool_rows};
use crate::protocol::guid::Guid;
use crate::protocol::kms::Hresult;
use crate::protocol::kms::products::Pool;
use crate::store::{
    Client, ClientQuery, HostNotes, HostStatus, Import, LoadedPool, Note, PoolStatus, StoreError,
    StoreStatus, StoredActivation, Total, live,
};
use tokio_postgres::Client as Pg;

fn guid(b: &[u8]) -> Guid {
    Guid(<[u8; 16]>::try_from(b).unwrap_or([0; 16]))
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Refuses a database that holds no kmsd schema yet, in words.
pub async fn has_schema(c: &Pg, shown: &str) -> Result<(), StoreError> {
    let there: bool = c
        .query_one("SELECT to_regclass('pools') IS NOT NULL", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if there {
        Ok(())
    } else {
        Err(StoreError::misconfigured(
            shown,
            "holds no kmsd fleet yet: start a host with --store on it, or run kmsd store copy",
        ))
    }
}

/// The database clock, unix milliseconds.
pub async fn db_now(c: &Pg) -> Result<i64, StoreError> {
    Ok(c.query_one(
        "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        &[],
    )
    .await
    .map_err(pg_err)?
    .get(0))
}

/// Live count and capacity of every pool (at `now_ms`, else the
/// database's now), as the pool rules hold them.
pub async fn pool_status(c: &Pg, now_ms: Option<i64>) -> Result<Vec<PoolStatus>, StoreError> {
    let now = match now_ms {
        Some(n) => n,
        None => db_now(c).await?,
    };
    Ok(pools_at(c, now)
        .await?
        .into_iter()
        .map(|p| PoolStatus {
            pool: p.pool,
            count: p.entries.len() as u32,
            capacity: p.capacity,
        })
        .collect())
}

/// The pools with their live entries at `now_ms`, newest first.
async fn pools_at(c: &Pg, now_ms: i64) -> Result<Vec<LoadedPool>, StoreError> {
    let mut out = Vec::new();
    for pool in Pool::ALL {
        let capacity: i32 = c
            .query_opt(
                "SELECT capacity FROM pools WHERE pool = $1",
                &[&pool.name()],
            )
            .await
            .map_err(pg_err)?
            .map_or(0, |r| r.get(0));
        let rows = pool_rows::rows(c, pool).await.map_err(pg_err)?;
        out.push(live(
            pool,
            u32::try_from(capacity).unwrap_or(0),
            &rows,
            now_ms,
        ));
    }
    Ok(out)
}

/// The pools with their live entries, newest first (the database's now).
pub async fn pools(c: &Pg) -> Result<Vec<LoadedPool>, StoreError> {
    pools_at(c, db_now(c).await?).await
}

/// Single-host stores copied in, oldest first.
async fn imports(c: &Pg) -> Result<Vec<Import>, StoreError> {
    Ok(c.query(
        "SELECT source, first_ms, last_ms, upto FROM copies ORDER BY first_ms, source",
        &[],
    )
    .await
    .map_err(pg_err)?
    .iter()
    .map(|r| Import {
        source: r
            .get::<_, String>(0)
            .trim_start_matches("copied:")
            .to_owned(),
        first_ms: r.get(1),
        last_ms: r.get(2),
        copied_upto: r.get(3),
    })
    .collect())
}

/// What `kmsd status --store URL` shows: the shared pools, ePIDs, totals
/// and inventory, and every host with its notes and last heartbeat.
pub async fn status(c: &Pg, shown: &str) -> Result<StoreStatus, StoreError> {
    let now = db_now(c).await?;
    let pools = pool_status(c, Some(now)).await?;
    let epids = c
        .query("SELECT grp, epid FROM epids ORDER BY grp", &[])
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let totals = c
        .query(
            "SELECT hresult, license_status, SUM(n)::BIGINT FROM totals
             GROUP BY hresult, license_status ORDER BY hresult, license_status",
            &[],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| Total {
            hresult: Hresult(u32_of(r.get(0))),
            license_status: u32_of(r.get(1)),
            requests: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
        })
        .collect();
    let inventory: i64 = c
        .query_one("SELECT COUNT(*) FROM clients", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    let records_kept: i64 = c
        .query_one(
            "SELECT COALESCE((SELECT MAX(id) FROM activations) - (SELECT MIN(id) FROM activations) + 1, 0)",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    let mut hosts: Vec<HostStatus> = Vec::new();
    for r in c
        .query(
            "SELECT h.host_id, h.started_ms, h.heartbeat_ms,
                    COALESCE((SELECT SUM(n) FROM totals t WHERE t.host_id = h.host_id), 0)::BIGINT
             FROM hosts h ORDER BY h.host_id",
            &[],
        )
        .await
        .map_err(pg_err)?
    {
        hosts.push(HostStatus {
            id: r.get(0),
            started_ms: r.get(1),
            heartbeat_ms: r.get(2),
            requests: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            notes: HostNotes::default(),
        });
    }
    let mut stored: Vec<(String, Note, String)> = Vec::new();
    for r in c
        .query("SELECT host_id, key, value FROM host_notes", &[])
        .await
        .map_err(pg_err)?
    {
        let id: &str = r.get(0);
        let key: &str = r.get(1);
        if let Some(n) = Note::ALL.iter().find(|n| n.key() == key) {
            stored.push((id.to_owned(), *n, r.get(2)));
        }
    }
    for h in &mut hosts {
        h.notes = HostNotes::parse(
            stored
                .iter()
                .filter(|(id, _, _)| *id == h.id)
                .map(|(_, n, v)| (*n, v.clone())),
        );
    }
    Ok(StoreStatus {
        location: shown.to_owned(),
        schema_version: SCHEMA_VERSION,
        now_ms: now,
        notes: HostNotes::default(),
        hosts,
        imports: imports(c).await?,
        pools,
        epids,
        totals,
        inventory: u64::try_from(inventory).unwrap_or(0),
        records_kept: u64::try_from(records_kept).unwrap_or(0),
    })
}

/// The notes of the host `id`.
pub async fn host_notes(c: &Pg, id: &str) -> Result<Vec<(Note, String)>, StoreError> {
    Ok(c.query(
        "SELECT key, value FROM host_notes WHERE host_id = $1",
        &[&id],
    )
    .await
    .map_err(pg_err)?
    .iter()
    .filter_map(|r| {
        let key: &str = r.get(0);
        let n = Note::ALL.iter().find(|n| n.key() == key)?;
        Some((*n, r.get(1)))
    })
    .collect())
}

/// The inventory, newest first.
pub async fn clients(c: &Pg, q: &ClientQuery) -> Result<Vec<Client>, StoreError> {
    let now = db_now(c).await?;
    let app: Option<Vec<u8>> = q.pool.map(|p| p.app_id().0.to_vec());
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT cmid, app_id, workstation, sku_id, address, first_seen_ms, last_seen_ms,
                    requests, last_hresult, last_count
             FROM clients
             WHERE last_seen_ms >= $1 AND ($2::BYTEA IS NULL OR app_id = $2)
             ORDER BY last_seen_ms DESC LIMIT $3",
            &[&q.since_ms.unwrap_or(i64::MIN), &app, &limit],
        )
        .await
        .map_err(pg_err)?;
    let live = pools_at(c, now).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let cmid = guid(r.get(0));
            let app_id = guid(r.get(1));
            let last: i64 = r.get(6);
            Client {
                cmid,
                app_id,
                workstation: r.get(2),
                sku_id: guid(r.get(3)),
                address: r.get(4),
                first_seen_ms: r.get(5),
                last_seen_ms: last,
                requests: u64::try_from(r.get::<_, i64>(7)).unwrap_or(0),
                last_result: Hresult(u32_of(r.get(8))),
                last_count: u32_of(r.get(9)),
                // Live: held by its pool as the pool rules stand now.
                live: live.iter().any(|lp| {
                    Some(lp.pool) == Pool::from_app_id(&app_id)
                        && lp.entries.iter().any(|(g, _)| *g == cmid)
                }),
            }
        })
        .collect())
}

/// The `limit` most recent activation records, newest first.
pub async fn recent(c: &Pg, limit: usize) -> Result<Vec<StoredActivation>, StoreError> {
    let rows = c
        .query(
            "SELECT id, time_ms, address, workstation, cmid, app_id, sku_id, kms_id, n_policy,
                    license_status, vm, protocol, count, hresult
             FROM activations ORDER BY id DESC LIMIT $1",
            &[&i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows
        .iter()
        .map(|r| StoredActivation {
            id: r.get(0),
            time_ms: r.get(1),
            address: r.get(2),
            workstation: r.get(3),
            cmid: guid(r.get(4)),
            app_id: guid(r.get(5)),
            sku_id: guid(r.get(6)),
            kms_id: guid(r.get(7)),
            n_policy: u32_of(r.get(8)),
            license_status: u32_of(r.get(9)),
            vm: r.get(10),
            protocol: u16::try_from(r.get::<_, i32>(11)).unwrap_or(0),
            count: u32_of(r.get(12)),
            result: Hresult(u32_of(r.get(13))),
        })
        .collect())
}
