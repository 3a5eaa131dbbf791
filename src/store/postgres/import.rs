//! `kmsd store copy`: moves a single host's SQLite store into a fleet's
//! PostgreSQL database: the pools (merged through the counting core, the
//! same load and persist paths a batch uses), the ePIDs, the inventory,
//! the running totals and the activation log. The copy is listed as an
//! import (`copies`, with its dates), never as a host.
//!
//! It can run again safely: the log is copied in chunks, each committed
//! with how far it got (`copies`), so a second run copies only what is new;
//! everything else merges idempotently (ePIDs are inserted if absent,
//! inventory rows and pool entries keep the later of the two, totals are
//! kept per source). A target that already holds a fleet (ePIDs of its
//! own) is refused unless `merge` is given; then the fleet's ePIDs win.

use super::{pg_err, pool_rows};
use crate::store::sqlite;
use crate::store::{Client, ClientQuery, LoadedPool, StoreError};
use std::path::Path;

/// Records copied per transaction.
const CHUNK: i64 = 5_000;

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    /// The source's name in the fleet (its host id there).
    pub source: String,
    pub epids_added: u64,
    pub epids_kept_from_fleet: u64,
    pub pool_entries: u64,
    pub inventory: u64,
    pub records_copied: u64,
    /// Records the target already had from an earlier run.
    pub records_already_there: i64,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "copied as host {}: {} ePIDs added ({} kept from the fleet), {} pool entries, \
             {} machines in the inventory, {} activation records ({} were there from an earlier run)",
            self.source,
            self.epids_added,
            self.epids_kept_from_fleet,
            self.pool_entries,
            self.inventory,
            self.records_copied,
            self.records_already_there
        )
    }
}

/// What is read from the source at once (everything but the log).
struct Source {
    pools: Vec<LoadedPool>,
    epids: Vec<(String, String, i64)>,
    inventory: Vec<Client>,
    totals: Vec<(u32, u32, i64)>,
}

fn read_source(db: &Path) -> Result<Source, StoreError> {
    let conn = sqlite::open_ro(db)?;
    let now = crate::clock::unix_ms_now();
    Ok(Source {
        pools: sqlite::load(&conn, now)?,
        epids: sqlite::reads::epids(&conn)?,
        inventory: sqlite::reads::clients(
            &conn,
            &ClientQuery {
                now_ms: now,
                pool: None,
                since_ms: None,
                limit: usize::MAX,
            },
        )?,
        totals: sqlite::reads::totals(&conn)?,
    })
}

type Tx<'a> = tokio_postgres::Transaction<'a>;

/// Copies the store in `data_dir` into the fleet at `url`.
/// How far a copy is, for a progress bar: a stage begins with its total
/// (rows), then rows are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Stage { what: &'static str, total: u64 },
    Done(u64),
}

pub async fn copy(
    data_dir: &Path,
    url: &str,
    merge: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<CopyReport, StoreError> {
    let db = data_dir.join(sqlite::DB_FILE);
    let path = db.clone();
    let src = crate::store::blocking(move || read_source(&path)).await?;
    let canonical = std::fs::canonicalize(&db).unwrap_or(db.clone());
    let source = format!("copied:{}", canonical.display());
    let u = super::url::parse(url)?;
    let mut c = super::connect_one(&u).await?;
    super::schema::migrate(&mut c, &u.shown).await?;
    let mut report = CopyReport {
        source: source.clone(),
        ..CopyReport::default()
    };
    let tx = c.transaction().await.map_err(pg_err)?;
    report.records_already_there = register(&tx, &source, merge, &u.shown).await?;
    copy_epids(&tx, &src.epids, &mut report).await?;
    copy_pools(&tx, &src.pools, &mut report).await?;
    progress(Progress::Stage {
        what: "inventory",
        total: src.inventory.len() as u64,
    });
    copy_inventory(&tx, &source, &src.inventory, progress).await?;
    report.inventory = src.inventory.len() as u64;
    for (hr, ls, n) in &src.totals {
        tx.execute(
            "INSERT INTO totals (host_id, hresult, license_status, n) VALUES ($1, $2, $3, $4)
             ON CONFLICT (host_id, hresult, license_status) DO UPDATE SET n = EXCLUDED.n",
            &[&source, &i64::from(*hr), &i64::from(*ls), n],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    report.records_copied = copy_log(&mut c, &db, &source, progress).await?;
    Ok(report)
}

/// Refuses a target that holds a fleet of its own unless `merge`, and
/// notes the import (first and last copied, on the database's clock).
/// Returns how far an earlier run copied the log.
async fn register(tx: &Tx<'_>, source: &str, merge: bool, shown: &str) -> Result<i64, StoreError> {
    let seen: Option<i64> = tx
        .query_opt("SELECT upto FROM copies WHERE source = $1", &[&source])
        .await
        .map_err(pg_err)?
        .map(|r| r.get(0));
    let fleet_epids: i64 = tx
        .query_one("SELECT COUNT(*) FROM epids", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if seen.is_none() && fleet_epids > 0 && !merge {
        return Err(StoreError::Conflict {
            store: shown.to_owned(),
            what: format!(
                "already holds a fleet ({fleet_epids} ePIDs of its own); \
                 pass --merge to add this host to it (the fleet's ePIDs are kept)"
            ),
        });
    }
    tx.execute(
        "INSERT INTO copies (source, upto, first_ms, last_ms)
             SELECT $1, 0, t, t FROM (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS t) n
         ON CONFLICT (source) DO UPDATE SET last_ms = EXCLUDED.last_ms",
        &[&source],
    )
    .await
    .map_err(pg_err)?;
    Ok(seen.unwrap_or(0))
}

async fn copy_epids(
    tx: &Tx<'_>,
    epids: &[(String, String, i64)],
    report: &mut CopyReport,
) -> Result<(), StoreError> {
    for (grp, epid, created) in epids {
        let n = tx
            .execute(
                "INSERT INTO epids (grp, epid, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (grp) DO NOTHING",
                &[grp, epid, created],
            )
            .await
            .map_err(pg_err)?;
        if n == 1 {
            report.epids_added += 1;
        } else {
            let fleet: String = tx
                .query_one("SELECT epid FROM epids WHERE grp = $1", &[grp])
                .await
                .map_err(pg_err)?
                .get(0);
            if &fleet != epid {
                report.epids_kept_from_fleet += 1;
            }
        }
    }
    Ok(())
}

/// Merges each pool through the counting core, as a batch would: the
/// fleet's pool loaded under its lock, the copied entries restored into it
/// (the later time wins; the newest `capacity` stay), the delta written.
async fn copy_pools(
    tx: &Tx<'_>,
    pools: &[LoadedPool],
    report: &mut CopyReport,
) -> Result<(), StoreError> {
    for p in pools {
        let locked = pool_rows::lock(tx, p.pool).await.map_err(pg_err)?;
        let (before, dropped) = pool_rows::load(tx, p.pool, &locked).await.map_err(pg_err)?;
        let mut after = before.clone();
        after.grow_to(p.capacity as usize);
        for &(g, t) in &p.entries {
            after.restore(g, t);
        }
        let mut delta = after.delta_from(&before);
        delta.removed.extend(dropped);
        pool_rows::persist(tx, p.pool, &delta, after.capacity())
            .await
            .map_err(pg_err)?;
        report.pool_entries += p.entries.len() as u64;
    }
    Ok(())
}

async fn copy_inventory(
    tx: &Tx<'_>,
    source: &str,
    inventory: &[Client],
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(), StoreError> {
    for m in inventory {
        progress(Progress::Done(1));
        tx.execute(
            "INSERT INTO clients (cmid, app_id, first_seen_ms, last_seen_ms, workstation,
                 sku_id, address, host_id, requests, last_hresult, last_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (cmid, app_id) DO UPDATE SET
                 first_seen_ms = LEAST(clients.first_seen_ms, EXCLUDED.first_seen_ms),
                 requests = GREATEST(clients.requests, EXCLUDED.requests),
                 workstation = CASE WHEN EXCLUDED.last_seen_ms > clients.last_seen_ms
                     THEN EXCLUDED.workstation ELSE clients.workstation END,
                 address = CASE WHEN EXCLUDED.last_seen_ms > clients.last_seen_ms
                     THEN EXCLUDED.address ELSE clients.address END,
                 last_hresult = CASE WHEN EXCLUDED.last_seen_ms > clients.last_seen_ms
                     THEN EXCLUDED.last_hresult ELSE clients.last_hresult END,
                 last_count = CASE WHEN EXCLUDED.last_seen_ms > clients.last_seen_ms
                     THEN EXCLUDED.last_count ELSE clients.last_count END,
                 last_seen_ms = GREATEST(clients.last_seen_ms, EXCLUDED.last_seen_ms)",
            &[
                &m.cmid.0.to_vec(),
                &m.app_id.0.to_vec(),
                &m.first_seen_ms,
                &m.last_seen_ms,
                &m.workstation,
                &m.sku_id.0.to_vec(),
                &m.address,
                &source,
                &i64::try_from(m.requests).unwrap_or(i64::MAX),
                &i64::from(m.last_result.0),
                &i64::from(m.last_count),
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

/// The log, chunk by chunk, each committed with its mark; returns the
/// records copied by this run.
async fn copy_log(
    c: &mut tokio_postgres::Client,
    db: &Path,
    source: &str,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<u64, StoreError> {
    let mut copied = 0;
    let upto: i64 = c
        .query_one("SELECT upto FROM copies WHERE source = $1", &[&source])
        .await
        .map_err(pg_err)?
        .get(0);
    let path = db.to_owned();
    let left = crate::store::blocking(move || {
        sqlite::open_ro(&path)?
            .query_row(
                "SELECT COUNT(*) FROM activations WHERE id > ?1",
                [upto],
                |r| r.get::<_, i64>(0),
            )
            .map_err(StoreError::from)
    })
    .await?;
    progress(Progress::Stage {
        what: "activation log",
        total: u64::try_from(left).unwrap_or(0),
    });
    loop {
        let tx = c.transaction().await.map_err(pg_err)?;
        let upto: i64 = tx
            .query_one(
                "SELECT upto FROM copies WHERE source = $1 FOR UPDATE",
                &[&source],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        let path = db.to_owned();
        let chunk = crate::store::blocking(move || {
            sqlite::reads::records_after(&sqlite::open_ro(&path)?, upto, CHUNK)
        })
        .await?;
        let Some(last) = chunk.last().map(|r| r.id) else {
            return Ok(copied);
        };
        let records: Vec<crate::store::Record> = chunk.into_iter().map(|r| r.record).collect();
        super::batch::insert_records(&tx, source, &records)
            .await
            .map_err(pg_err)?;
        tx.execute(
            "UPDATE copies SET upto = $2 WHERE source = $1",
            &[&source, &last],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        copied += records.len() as u64;
        progress(Progress::Done(records.len() as u64));
    }
}
