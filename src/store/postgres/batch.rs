//! One group commit on the fleet database: the requests a host has waiting
//! go into one transaction that
//!
//! 1. reads the database's clock (one clock for the fleet: hosts with
//!    skewed clocks cannot shorten or stretch the 30-day window) and adds
//!    the totals;
//! 2. locks the batch's pool rows in a fixed order (`SELECT … FOR UPDATE`),
//!    so two hosts counting in one pool take turns;
//! 3. reloads a pool's entries only when its version moved since this host
//!    last wrote it, and replays the batch through the counting core a
//!    single host uses ([`Window`]), in arrival order;
//! 4. writes the core's delta for each pool (changed entries, evictions,
//!    expiries, capacity; bumping its version), the records and the
//!    inventory, in one round trip;
//! 5. commits. Only then are the counts handed back.
//!
//! Serialization failures and deadlocks (SQLSTATE 40001, 40P01) are
//! retried by the caller; the replay works on copies of the cached pools,
//! so a failed attempt leaves nothing behind.

use super::{ledger, pool_rows};
use crate::licenses::{Book, Day, Seat, SeatRow};
use crate::protocol::guid::Guid;
use crate::protocol::kms::hresult;
use crate::protocol::kms::products::Pool;
use crate::store::window::{PoolDelta, Window};
use crate::store::{CountMode, Counted, Record};
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
    /// Asks for a license seat (a pack covers its product).
    pub seat: bool,
}

/// Runs one attempt. On success the cache holds the pools as committed and
/// the result has one entry per item, in order.
///
/// The pool rows stay locked from their `FOR UPDATE` to the commit, so
/// what can run before the lock does: the clock and the totals (which need
/// no count) go first, in one round trip. Under the lock: the pools'
/// loads (only when another host moved them), then every write in one
/// pipelined round trip, then the commit. A batch with seat requests
/// takes the license ledger's lock first (before any pool's, in every
/// host), decides seats in arrival order as it counts, and adds its totals
/// once the refusals are known.
pub async fn run(
    client: &mut tokio_postgres::Client,
    isolation: IsolationLevel,
    host_id: &str,
    mode: CountMode,
    items: &[Item],
    cache: &mut HashMap<Pool, Cached>,
    books: &mut Option<(i64, Book)>,
) -> Result<Vec<Counted>, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(isolation)
        .start()
        .await?;
    let mut records: Vec<Record> = items.iter().map(|i| i.record.clone()).collect();
    let seated = items.iter().any(|i| i.seat);
    let now = clock_and_totals(&tx, host_id, &records, !seated).await?;
    for r in &mut records {
        r.time_ms = now;
    }
    let mut book = match seated {
        true => Some(open_book(&tx, items, books.as_ref()).await?),
        false => None,
    };
    let mut counted = vec![Counted::default(); items.len()];
    let fixed = mode.fixed();
    // The pools this batch counts in, locked in a fixed order.
    let pools: BTreeSet<Pool> = match fixed {
        None => items.iter().filter_map(|i| i.pool).collect(),
        Some(_) => BTreeSet::new(),
    };
    let mut committed: Vec<(Pool, Window, PoolDelta)> = Vec::new();
    for pool in pools {
        let locked = pool_rows::lock(&tx, pool).await?;
        let (before, dropped) = match cache.get(&pool) {
            Some(c) if c.version == locked.version => (c.window.clone(), Vec::new()),
            _ => pool_rows::load(&tx, pool, &locked).await?,
        };
        // Replay in arrival order, through the pool rules.
        let mut window = before.clone();
        for (k, item) in items.iter().enumerate() {
            if item.pool == Some(pool) {
                let b = book.as_mut().map(|(_, b)| b);
                counted[k] = count_one(&mut window, item, &mut records[k], b, now);
            }
        }
        let mut delta = window.delta_from(&before);
        delta.removed.extend(dropped);
        committed.push((pool, window, delta));
    }
    if let Some(c) = fixed {
        for (k, item) in items.iter().enumerate() {
            if item.pool.is_some() {
                counted[k] = c;
                records[k].count = c.count;
                if let Some((_, b)) = book.as_mut().filter(|_| item.seat) {
                    counted[k].seat = seat_of(b, &mut records[k], c.count, now);
                }
            }
        }
    }
    if seated {
        add_totals(&tx, host_id, &records).await?;
    }
    if let Some((_, b)) = &book {
        persist_seats(&tx, b, items, &records, &counted, host_id).await?;
    }
    // Every write in one round trip: the pools' deltas (each bumping its
    // version), the records and the inventory.
    let persists = futures_util::future::try_join_all(
        committed
            .iter()
            .map(|(pool, w, d)| pool_rows::persist(&tx, *pool, d, w.capacity())),
    );
    let (versions, a, b) = tokio::join!(
        persists,
        insert_records(&tx, host_id, &records),
        upsert_inventory(&tx, host_id, &records)
    );
    let versions = versions?;
    a?;
    b?;
    tx.commit().await?;
    for ((pool, window, _), version) in committed.into_iter().zip(versions) {
        cache.insert(pool, Cached { version, window });
    }
    if book.is_some() {
        *books = book;
    }
    Ok(counted)
}

/// The database's clock (one clock for the fleet), and with `totals` the
/// batch's totals added in the same round trip.
async fn clock_and_totals(
    tx: &tokio_postgres::Transaction<'_>,
    host_id: &str,
    records: &[Record],
    totals: bool,
) -> Result<i64, tokio_postgres::Error> {
    let clock = tx.query_one(
        "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        &[],
    );
    if !totals {
        return Ok(clock.await?.get(0));
    }
    let (clock, totals) = tokio::join!(clock, add_totals(tx, host_id, records));
    totals?;
    Ok(clock?.get(0))
}

/// Writes the seats the batch's requests came to.
async fn persist_seats(
    tx: &tokio_postgres::Transaction<'_>,
    book: &Book,
    items: &[Item],
    records: &[Record],
    counted: &[Counted],
    host_id: &str,
) -> Result<(), tokio_postgres::Error> {
    // Pipelined: one round trip for the batch's seats.
    let rows: Vec<(Seat, SeatRow)> = (0..items.len())
        .filter(|&k| items[k].seat)
        .map(|k| (counted[k].seat, records[k].seat_row(host_id)))
        .collect();
    futures_util::future::try_join_all(
        rows.iter()
            .map(|(seat, row)| ledger::persist_seat(tx, *seat, row)),
    )
    .await?;
    let seats: Vec<Seat> = counted.iter().map(|c| c.seat).collect();
    let day = Day::of_ms(records.first().map_or(0, |r| r.time_ms));
    ledger::raise_peaks(tx, book, day, &seats).await
}

/// Takes the license ledger's lock and the book the batch's seats are
/// decided with.
async fn open_book(
    tx: &tokio_postgres::Transaction<'_>,
    items: &[Item],
    cached: Option<&(i64, Book)>,
) -> Result<(i64, Book), tokio_postgres::Error> {
    let version = ledger::lock(tx).await?;
    let cmids: Vec<Guid> = items
        .iter()
        .filter(|i| i.seat)
        .map(|i| i.record.cmid)
        .collect();
    let book = ledger::load_book(tx, &cmids, version, cached).await?;
    Ok((version, book))
}

/// Counts one item in its pool's window; with a seat to decide, a machine
/// refused for want of one is taken out again and its record becomes the
/// refusal.
fn count_one(
    window: &mut Window,
    item: &Item,
    record: &mut Record,
    book: Option<&mut Book>,
    now: i64,
) -> Counted {
    let o = window.observe(item.record.cmid, now, item.record.n_policy);
    record.count = o.count;
    record.capacity = window.capacity() as u32;
    record.counted_in = item.pool;
    let mut c = Counted {
        count: o.count,
        capacity: record.capacity,
        seat: Seat::None,
    };
    if let Some(b) = book.filter(|_| item.seat) {
        c.seat = seat_of(b, record, o.count, now);
        if let Seat::Refused(_) = c.seat {
            window.undo(item.record.cmid, &o);
            c.count = 0;
            c.capacity = 0;
        }
    }
    c
}

/// The seat of a counted `record` given `count`; a refused record is
/// rewritten as the refusal it is.
fn seat_of(book: &mut Book, record: &mut Record, count: u32, now: i64) -> Seat {
    let seat = book.decide(
        &record.sku_id,
        record.cmid,
        count >= record.n_policy,
        Day::of_ms(now),
    );
    if let Seat::Refused(_) = seat {
        record.counted_in = None;
        record.capacity = 0;
        record.count = 0;
        record.hresult = crate::protocol::kms::Hresult(hresult::KMS_ID_MISMATCH);
    }
    seat
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
            &col(|r| i64_of(r.hresult.0)),
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
        hr.push(i64_of(m.latest.hresult.0));
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
            .entry((i64_of(r.hresult.0), i64_of(r.license_status)))
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
