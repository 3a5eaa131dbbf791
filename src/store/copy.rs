//! `kmsd store copy`: moves a single host's SQLite store into a fleet's
//! PostgreSQL database: the pools (merged, each kept to its capacity), the
//! ePIDs, the inventory, the running totals and the activation log.
//!
//! It can run again safely: the log is copied in chunks, each committed
//! with how far it got (`copies`), so a second run copies only what is new;
//! everything else merges idempotently (ePIDs are inserted if absent,
//! inventory rows and pool entries keep the later of the two, totals are
//! kept per source). A target that already holds a fleet (ePIDs of its
//! own) is refused unless `merge` is given; then the fleet's ePIDs win.

use super::postgres::{self, pg_err};
use super::sqlite;
use super::{Client, ClientQuery, StoreError};
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

/// Copies the store in `data_dir` into the fleet at `url`.
pub async fn copy(data_dir: &Path, url: &str, merge: bool) -> Result<CopyReport, StoreError> {
    let db = data_dir.join(super::DB_FILE);
    let path = db.clone();
    // Everything but the log, read in one go (small); the log in chunks.
    let (pools, epids, inventory, totals) = super::blocking(move || {
        let conn = sqlite::open_ro(&path)?;
        let now = super::unix_ms_now();
        let pools = sqlite::load(&conn, now)?;
        let epids = sqlite::reads::epids(&conn)?;
        let inventory: Vec<Client> = sqlite::reads::clients(
            &conn,
            &ClientQuery {
                now_ms: now,
                pool: None,
                since_ms: None,
                limit: usize::MAX,
            },
        )?;
        let totals = sqlite::reads::totals(&conn)?;
        Ok((pools, epids, inventory, totals))
    })
    .await?;
    let canonical = std::fs::canonicalize(&db).unwrap_or(db.clone());
    let source = format!("copied:{}", canonical.display());
    let u = postgres::url::parse(url)?;
    let shown = u.shown.clone();
    let conn_err = |e: StoreError| StoreError::Connect {
        url: shown.clone(),
        detail: e.to_string(),
    };
    let mut c = postgres::connect_one(&u).await.map_err(conn_err)?;
    postgres::schema::migrate(&mut c).await?;
    let mut report = CopyReport {
        source: source.clone(),
        ..CopyReport::default()
    };
    {
        let tx = c.transaction().await.map_err(pg_err)?;
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
            return Err(StoreError::Postgres(format!(
                "{shown} already holds a fleet ({fleet_epids} ePIDs of its own); \
                 pass --merge to add this host to it (the fleet's ePIDs are kept)"
            )));
        }
        let now = super::unix_ms_now();
        tx.execute(
            "INSERT INTO hosts (host_id, started_ms, heartbeat_ms) VALUES ($1, $2, $2)
             ON CONFLICT (host_id) DO NOTHING",
            &[&source, &now],
        )
        .await
        .map_err(pg_err)?;
        for (grp, epid, created) in &epids {
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
        for p in &pools {
            tx.query_one(
                "SELECT capacity FROM pools WHERE pool = $1 FOR UPDATE",
                &[&p.pool.name()],
            )
            .await
            .map_err(pg_err)?;
            let cmids: Vec<Vec<u8>> = p.entries.iter().map(|(g, _)| g.0.to_vec()).collect();
            let times: Vec<i64> = p.entries.iter().map(|(_, t)| *t).collect();
            tx.execute(
                "INSERT INTO pool_entries (pool, cmid, last_seen_ms)
                 SELECT $1, c, t FROM UNNEST($2::BYTEA[], $3::BIGINT[]) AS x(c, t)
                 ON CONFLICT (pool, cmid) DO UPDATE
                     SET last_seen_ms = GREATEST(pool_entries.last_seen_ms, EXCLUDED.last_seen_ms)",
                &[&p.pool.name(), &cmids, &times],
            )
            .await
            .map_err(pg_err)?;
            let capacity = i32::try_from(p.capacity).unwrap_or(i32::MAX);
            // Keep the pool within its capacity: the newest entries stay.
            tx.execute(
                "UPDATE pools SET capacity = GREATEST(capacity, $2), version = version + 1
                 WHERE pool = $1",
                &[&p.pool.name(), &capacity],
            )
            .await
            .map_err(pg_err)?;
            tx.execute(
                "DELETE FROM pool_entries WHERE pool = $1 AND cmid NOT IN (
                     SELECT cmid FROM pool_entries WHERE pool = $1
                     ORDER BY last_seen_ms DESC, cmid DESC
                     LIMIT (SELECT capacity FROM pools WHERE pool = $1))",
                &[&p.pool.name()],
            )
            .await
            .map_err(pg_err)?;
            report.pool_entries += p.entries.len() as u64;
        }
        for m in &inventory {
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
        report.inventory = inventory.len() as u64;
        for (hr, ls, n) in &totals {
            tx.execute(
                "INSERT INTO totals (host_id, hresult, license_status, n) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (host_id, hresult, license_status) DO UPDATE SET n = EXCLUDED.n",
                &[&source, &i64::from(*hr), &i64::from(*ls), n],
            )
            .await
            .map_err(pg_err)?;
        }
        tx.execute(
            "INSERT INTO copies (source, upto) VALUES ($1, 0) ON CONFLICT (source) DO NOTHING",
            &[&source],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        report.records_already_there = seen.unwrap_or(0);
    }
    // The log, chunk by chunk, each with its mark.
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
        let path = db.clone();
        let chunk = super::blocking(move || {
            sqlite::reads::records_after(&sqlite::open_ro(&path)?, upto, CHUNK)
        })
        .await?;
        let Some(last) = chunk.last().map(|r| r.id) else {
            break;
        };
        let records: Vec<super::Record> = chunk.into_iter().map(|r| r.record).collect();
        postgres::batch::insert_records(&tx, &source, &records)
            .await
            .map_err(pg_err)?;
        tx.execute(
            "UPDATE copies SET upto = $2 WHERE source = $1",
            &[&source, &last],
        )
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        report.records_copied += records.len() as u64;
    }
    Ok(report)
}
