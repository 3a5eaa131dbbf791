//! The activation log's unfolded tail: the records after `folded.upto`,
//! folded in memory per machine, per pool entry and per total, for the
//! fold to write and for readers to add to what is folded.

use crate::protocol::guid::Guid;
use crate::protocol::kms::products::Pool;
use rusqlite::{Connection, params};
use std::collections::HashMap;

/// One machine's requests in the unfolded tail of the log, in log order:
/// what its inventory row gains when the tail is folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailClient {
    pub first_ms: i64,
    pub last_ms: i64,
    pub requests: u64,
    pub workstation: String,
    pub sku_id: Guid,
    pub address: String,
    pub last_hresult: u32,
    pub last_count: u32,
}

/// The activation records after some id, folded per machine (CMID and
/// application) and per pool entry.
#[derive(Debug, Default)]
pub struct Tail {
    /// The last record id read (the fold's new mark), or the start id.
    pub upto: i64,
    /// Records read.
    pub records: u64,
    pub clients: HashMap<(Guid, Guid), TailClient>,
    /// Last seen ms per (pool, CMID), for the requests that were counted.
    pub pool_entries: HashMap<(Pool, Guid), i64>,
    /// Records per (result, license state): what the running totals gain.
    pub totals: HashMap<(u32, u32), u64>,
}

/// How far the inventory and stored pools reflect the activation log.
pub fn folded_upto(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT upto FROM folded WHERE id = 1", [], |r| r.get(0))
}

/// Reads and folds at most `limit` activation records after id `after`.
pub fn read_tail(conn: &Connection, after: i64, limit: i64) -> rusqlite::Result<Tail> {
    let mut tail = Tail {
        upto: after,
        ..Tail::default()
    };
    let mut stmt = conn.prepare_cached(
        "SELECT id, time_ms, address, workstation, cmid, app_id, sku_id, count, hresult, pool,
                license_status
         FROM activations WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![after, limit])?;
    while let Some(row) = rows.next()? {
        let time: i64 = row.get(1)?;
        let cmid = row.get::<_, Guid>(4)?;
        let app = row.get::<_, Guid>(5)?;
        let update = TailClient {
            first_ms: time,
            last_ms: time,
            requests: 1,
            address: row.get(2)?,
            workstation: row.get(3)?,
            sku_id: row.get::<_, Guid>(6)?,
            last_count: row.get(7)?,
            last_hresult: row.get(8)?,
        };
        tail.clients
            .entry((cmid, app))
            .and_modify(|c| {
                // Like one upsert per record: the first record's time
                // stays first seen, even if a later one says earlier.
                *c = TailClient {
                    first_ms: c.first_ms,
                    last_ms: c.last_ms.max(time),
                    requests: c.requests + 1,
                    ..update.clone()
                }
            })
            .or_insert_with(|| update.clone());
        if let Some(pool) = row
            .get::<_, Option<String>>(9)?
            .as_deref()
            .and_then(Pool::from_name)
        {
            let t = tail.pool_entries.entry((pool, cmid)).or_insert(time);
            *t = (*t).max(time);
        }
        *tail
            .totals
            .entry((update.last_hresult, row.get(10)?))
            .or_default() += 1;
        tail.upto = row.get(0)?;
        tail.records += 1;
    }
    Ok(tail)
}
