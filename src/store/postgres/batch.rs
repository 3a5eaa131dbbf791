//! One group commit on the fleet database: the requests a host has waiting
//! go into one transaction that
//!
//! 1. reads the database's clock (one clock for the fleet: hosts with
//!    skewed clocks cannot shorten or stretch the 30-day window);
//! 2. locks the batch's pool rows in a fixed order (`SELECT … FOR UPDATE`),
//!    so two hosts counting in one pool take turns;
//! 3. reloads a pool's entries only when its version moved since this host
//!    last wrote it, and replays the batch through the same [`Window`]
//!    logic a single host uses, in arrival order;
//! 4. writes the changed entries, the evictions and expiries, the capacity,
//!    the records, the inventory and the totals, and bumps each pool's
//!    version;
//! 5. commits. Only then are the counts handed back.
//!
//! Serialization failures and deadlocks (SQLSTATE 40001, 40P01) are
//! retried by the caller; the replay works on copies of the cached pools,
//! so a failed attempt leaves nothing behind.

use super::pg_err;
use crate::protocol::guid::Guid;
use crate::protocol::kms::products::Pool;
use crate::store::window::{TTL_MS, Window};
use crate::store::{CountMode, Counted, Record, StoreError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio_postgres::IsolationLevel;

/// A pool as this host last wrote it: the version it left it at.
#[derive(Debug, Clone)]
pub struct Cached {
    pub version: i64,
    pub window: Window,
}

/// One waiting request: counted in a pool, or only recorded (a refusal).
#[derive(Debug)]
pub struct Item {
    pub pool: Option<Pool>,
    pub record: Record,
}

/// Runs one attempt. On success the cache holds the pools as committed and
/// the result has one entry per item, in order.
pub async fn run(
    client: &mut tokio_postgres::Client,
    isolation: IsolationLevel,
    host_id: &str,
    mode: CountMode,
    items: &[Item],
    cache: &mut HashMap<Pool, Cached>,
) -> Result<Vec<Counted>, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(isolation)
        .start()
        .await?;
    let now: i64 = tx
        .query_one(
            "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
            &[],
        )
        .await?
        .get(0);
    let cutoff = now - TTL_MS;
    let mut counted = vec![
        Counted {
            count: 0,
            capacity: 0
        };
        items.len()
    ];
    let mut records: Vec<Record> = items.iter().map(|i| i.record.clone()).collect();
    for r in &mut records {
        r.time_ms = now;
    }
    // The pools this batch counts in, locked in a fixed order.
    let pools: BTreeSet<&'static str> = match mode {
        CountMode::Real => items
            .iter()
            .filter_map(|i| i.pool.map(Pool::name))
            .collect(),
        CountMode::Fixed(_) => BTreeSet::new(),
    };
    let mut committed: Vec<(Pool, Cached)> = Vec::new();
    for name in pools {
        let Some(pool) = Pool::from_name(name) else {
            continue;
        };
        let row = tx
            .query_one(
                "SELECT capacity, version FROM pools WHERE pool = $1 FOR UPDATE",
                &[&name],
            )
            .await?;
        let capacity: i32 = row.get(0);
        let version: i64 = row.get(1);
        let mut window = match cache.get(&pool) {
            Some(c) if c.version == version => c.window.clone(),
            _ => {
                let mut w = Window::with_capacity(usize::try_from(capacity).unwrap_or(0));
                for r in tx
                    .query(
                        "SELECT cmid, last_seen_ms FROM pool_entries
                         WHERE pool = $1 AND last_seen_ms > $2",
                        &[&name, &cutoff],
                    )
                    .await?
                {
                    let cmid: Vec<u8> = r.get(0);
                    if let Ok(b) = <[u8; 16]>::try_from(cmid.as_slice()) {
                        w.restore(Guid(b), r.get(1));
                    }
                }
                w
            }
        };
        // Replay in arrival order.
        let mut touched: BTreeMap<Guid, i64> = BTreeMap::new();
        let mut evicted: BTreeSet<Guid> = BTreeSet::new();
        for (k, item) in items.iter().enumerate() {
            if item.pool != Some(pool) {
                continue;
            }
            let o = window.observe(item.record.cmid, now, item.record.n_policy);
            touched.insert(item.record.cmid, now.max(o.previous.unwrap_or(now)));
            if let Some((g, _)) = o.evicted {
                evicted.insert(g);
            }
            let cap = window.capacity() as u32;
            counted[k] = Counted {
                count: o.count,
                capacity: cap,
            };
            let r = &mut records[k];
            r.count = o.count;
            r.capacity = cap;
            r.counted_in = Some(pool);
        }
        evicted.retain(|g| !window.contains(g));
        touched.retain(|g, _| window.contains(g));
        let (cmids, times): (Vec<Vec<u8>>, Vec<i64>) =
            touched.iter().map(|(g, t)| (g.0.to_vec(), *t)).unzip();
        let gone: Vec<Vec<u8>> = evicted.iter().map(|g| g.0.to_vec()).collect();
        let capacity = i32::try_from(window.capacity()).unwrap_or(i32::MAX);
        // Pipelined: the server runs them in this order, in one round trip.
        let upsert_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&name, &cmids, &times];
        let delete_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&name, &gone, &cutoff];
        let bump_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&name, &capacity];
        let (upserted, deleted, bumped) = tokio::join!(
            tx.execute(
                "INSERT INTO pool_entries (pool, cmid, last_seen_ms)
                 SELECT $1, c, t FROM UNNEST($2::BYTEA[], $3::BIGINT[]) AS x(c, t)
                 ON CONFLICT (pool, cmid) DO UPDATE
                     SET last_seen_ms = GREATEST(pool_entries.last_seen_ms, EXCLUDED.last_seen_ms)",
                &upsert_params,
            ),
            tx.execute(
                "DELETE FROM pool_entries
                 WHERE pool = $1 AND (cmid = ANY($2::BYTEA[]) OR last_seen_ms <= $3)",
                &delete_params,
            ),
            tx.query_one(
                "UPDATE pools SET capacity = $2, version = version + 1
                 WHERE pool = $1 RETURNING version",
                &bump_params,
            )
        );
        upserted?;
        deleted?;
        let version: i64 = bumped?.get(0);
        committed.push((pool, Cached { version, window }));
    }
    if let CountMode::Fixed(n) = mode {
        for (k, item) in items.iter().enumerate() {
            if item.pool.is_some() {
                counted[k] = Counted {
                    count: n,
                    capacity: 0,
                };
                records[k].count = n;
            }
        }
    }
    // Three independent statements, pipelined on the one connection: one
    // round trip instead of three.
    let (a, b, c) = tokio::join!(
        insert_records(&tx, host_id, &records),
        upsert_inventory(&tx, host_id, &records),
        add_totals(&tx, host_id, &records)
    );
    a?;
    b?;
    c?;
    tx.commit().await?;
    for (pool, c) in committed {
        cache.insert(pool, c);
    }
    Ok(counted)
}

fn i64_of(v: u32) -> i64 {
    i64::from(v)
}

pub(crate) async fn insert_records(
    tx: &tokio_postgres::Transaction<'_>,
    host_id: &str,
    records: &[Record],
) -> Result<(), tokio_postgres::Error> {
    let col = |f: fn(&Record) -> i64| records.iter().map(f).collect::<Vec<i64>>();
    let guid = |f: fn(&Record) -> Guid| {
        records
            .iter()
            .map(|r| f(r).0.to_vec())
            .collect::<Vec<Vec<u8>>>()
    };
    let text = |f: fn(&Record) -> &str| records.iter().map(|r| f(r).to_owned()).collect::<Vec<_>>();
    let vm: Vec<bool> = records.iter().map(|r| r.vm).collect();
    let protocol: Vec<i32> = records.iter().map(|r| i32::from(r.protocol)).collect();
    let pool: Vec<Option<String>> = records
        .iter()
        .map(|r| r.counted_in.map(|p| p.name().to_owned()))
        .collect();
    tx.execute(
        "INSERT INTO activations (time_ms, host_id, address, workstation, cmid, app_id, sku_id,
             kms_id, n_policy, license_status, binding_expiration, vm, protocol, count, hresult, pool)
         SELECT t, $1, a, w, c, ap, s, k, np, ls, be, vm, pr, n, hr, p
         FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BYTEA[], $6::BYTEA[], $7::BYTEA[],
                     $8::BYTEA[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BOOLEAN[],
                     $13::INTEGER[], $14::BIGINT[], $15::BIGINT[], $16::TEXT[])
             AS x(t, a, w, c, ap, s, k, np, ls, be, vm, pr, n, hr, p)",
        &[
            &host_id,
            &col(|r| r.time_ms),
            &text(|r| &r.address),
            &text(|r| &r.workstation),
            &guid(|r| r.cmid),
            &guid(|r| r.app_id),
            &guid(|r| r.sku_id),
            &guid(|r| r.kms_id),
            &col(|r| i64_of(r.n_policy)),
            &col(|r| i64_of(r.license_status)),
            &col(|r| i64_of(r.binding_expiration)),
            &vm,
            &protocol,
            &col(|r| i64_of(r.count)),
            &col(|r| i64_of(r.hresult)),
            &pool,
        ],
    )
    .await?;
    Ok(())
}

/// One machine's requests in this batch, folded as one upsert per record
/// would leave its inventory row.
struct Machine<'a> {
    first: i64,
    last: i64,
    requests: i64,
    latest: &'a Record,
}

async fn upsert_inventory(
    tx: &tokio_postgres::Transaction<'_>,
    host_id: &str,
    records: &[Record],
) -> Result<(), tokio_postgres::Error> {
    // Sorted by key, so hosts upserting the same machines lock them in the
    // same order.
    let mut by_key: BTreeMap<(Guid, Guid), Machine<'_>> = BTreeMap::new();
    for r in records {
        by_key
            .entry((r.cmid, r.app_id))
            .and_modify(|m| {
                m.last = m.last.max(r.time_ms);
                m.requests += 1;
                m.latest = r;
            })
            .or_insert(Machine {
                first: r.time_ms,
                last: r.time_ms,
                requests: 1,
                latest: r,
            });
    }
    let mut c = Vec::new();
    let mut a = Vec::new();
    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut ws = Vec::new();
    let mut sku = Vec::new();
    let mut addr = Vec::new();
    let mut reqs = Vec::new();
    let mut hr = Vec::new();
    let mut count = Vec::new();
    for ((cmid, app), m) in &by_key {
        c.push(cmid.0.to_vec());
        a.push(app.0.to_vec());
        first.push(m.first);
        last.push(m.last);
        ws.push(m.latest.workstation.clone());
        sku.push(m.latest.sku_id.0.to_vec());
        addr.push(m.latest.address.clone());
        reqs.push(m.requests);
        hr.push(i64_of(m.latest.hresult));
        count.push(i64_of(m.latest.count));
    }
    tx.execute(
        "INSERT INTO clients (cmid, app_id, first_seen_ms, last_seen_ms, workstation, sku_id,
                              address, host_id, requests, last_hresult, last_count)
         SELECT c, a, f, l, w, s, ad, $1, r, h, n
         FROM UNNEST($2::BYTEA[], $3::BYTEA[], $4::BIGINT[], $5::BIGINT[], $6::TEXT[],
                     $7::BYTEA[], $8::TEXT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[])
             AS x(c, a, f, l, w, s, ad, r, h, n)
         ON CONFLICT (cmid, app_id) DO UPDATE SET
             last_seen_ms = GREATEST(clients.last_seen_ms, EXCLUDED.last_seen_ms),
             workstation = EXCLUDED.workstation, sku_id = EXCLUDED.sku_id,
             address = EXCLUDED.address, host_id = EXCLUDED.host_id,
             requests = clients.requests + EXCLUDED.requests,
             last_hresult = EXCLUDED.last_hresult, last_count = EXCLUDED.last_count",
        &[
            &host_id, &c, &a, &first, &last, &ws, &sku, &addr, &reqs, &hr, &count,
        ],
    )
    .await?;
    Ok(())
}

async fn add_totals(
    tx: &tokio_postgres::Transaction<'_>,
    host_id: &str,
    records: &[Record],
) -> Result<(), tokio_postgres::Error> {
    let mut totals: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for r in records {
        *totals
            .entry((i64_of(r.hresult), i64_of(r.license_status)))
            .or_default() += 1;
    }
    let (keys, n): (Vec<(i64, i64)>, Vec<i64>) = totals.into_iter().unzip();
    let (hr, ls): (Vec<i64>, Vec<i64>) = keys.into_iter().unzip();
    tx.execute(
        "INSERT INTO totals (host_id, hresult, license_status, n)
         SELECT $1, h, l, n FROM UNNEST($2::BIGINT[], $3::BIGINT[], $4::BIGINT[]) AS x(h, l, n)
         ON CONFLICT (host_id, hresult, license_status) DO UPDATE SET n = totals.n + EXCLUDED.n",
        &[&host_id, &hr, &ls, &n],
    )
    .await?;
    Ok(())
}

/// Whether a failed attempt may simply be tried again.
pub fn retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Maps a failure to the store's error.
pub fn store_error(e: tokio_postgres::Error) -> StoreError {
    pg_err(e)
}
