//! Reads (nothing here writes): the typed queries behind `kmsd status`,
//! `kmsd clients`, the admin API and `kmsd store copy`, each in one read
//! transaction with the log's unfolded tail added.

use super::pool_rows::load;
use super::schema::SCHEMA_VERSION;
use super::tail::{folded_upto, read_tail};
use crate::protocol::guid::Guid;
use crate::protocol::kms::Hresult;
use crate::protocol::kms::products::Pool;
use crate::store::{
    Client, ClientQuery, HostNotes, Note, PoolStatus, StoreError, StoreStatus, StoredActivation,
    Total,
};
use rusqlite::{Connection, OptionalExtension, params};

/// Machines in the inventory, those only in the unfolded log tail included.
pub fn inventory_size(conn: &Connection) -> Result<u64, StoreError> {
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))?;
    let tail = read_tail(conn, folded_upto(conn)?, i64::MAX)?;
    let mut known = conn.prepare("SELECT 1 FROM clients WHERE cmid = ?1 AND app_id = ?2")?;
    let mut new = 0u64;
    for (cmid, app) in tail.clients.keys() {
        if !known.exists(params![cmid, app])? {
            new += 1;
        }
    }
    Ok(stored as u64 + new)
}

/// The host's notes.
pub fn notes(conn: &Connection) -> Result<Vec<(Note, String)>, StoreError> {
    let mut stmt = conn.prepare("SELECT key, value FROM meta")?;
    let mut out = Vec::new();
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (k, v) = row?;
        if let Some(n) = Note::ALL.iter().find(|n| n.key() == k) {
            out.push((*n, v));
        }
    }
    Ok(out)
}

/// What `kmsd status` shows, in one read transaction (the folded tables
/// and the log tail agree).
pub fn status(conn: &Connection, location: String, now_ms: i64) -> Result<StoreStatus, StoreError> {
    let _snapshot = conn.unchecked_transaction()?;
    let pools = load(conn, now_ms)?
        .into_iter()
        .map(|p| PoolStatus {
            pool: p.pool,
            count: p.entries.len() as u32,
            capacity: p.capacity,
        })
        .collect();
    let mut epids = Vec::new();
    let mut stmt = conn.prepare("SELECT grp, epid FROM epids ORDER BY grp")?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
        epids.push(row?);
    }
    let totals = totals(conn)?
        .into_iter()
        .map(|(hresult, license_status, n)| Total {
            hresult: Hresult(hresult),
            license_status,
            requests: n as u64,
        })
        .collect();
    let inventory = inventory_size(conn)?;
    let records_kept = conn.query_row(
        // Two sub-selects: SQLite answers each from the rowid b-tree's ends,
        // where MAX(id) - MIN(id) in one select scans the table.
        "SELECT COALESCE((SELECT MAX(id) FROM activations) - (SELECT MIN(id) FROM activations) + 1, 0)",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64;
    Ok(StoreStatus {
        location,
        schema_version: SCHEMA_VERSION,
        now_ms,
        notes: HostNotes::parse(notes(conn)?),
        hosts: Vec::new(),
        imports: Vec::new(),
        pools,
        epids,
        totals,
        inventory,
        records_kept,
    })
}

const CLIENT_COLUMNS: &str = "cmid, app_id, workstation, sku_id, address, first_seen_ms,
    last_seen_ms, requests, last_hresult, last_count";

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Client> {
    Ok(Client {
        cmid: r.get(0)?,
        app_id: r.get(1)?,
        workstation: r.get(2)?,
        sku_id: r.get(3)?,
        address: r.get(4)?,
        first_seen_ms: r.get(5)?,
        last_seen_ms: r.get(6)?,
        requests: r.get::<_, i64>(7)? as u64,
        last_result: Hresult(r.get(8)?),
        last_count: r.get(9)?,
        live: false,
    })
}

/// The inventory, newest first, the unfolded log tail merged in, in one
/// read transaction.
pub fn clients(conn: &Connection, q: &ClientQuery) -> Result<Vec<Client>, StoreError> {
    let _snapshot = conn.unchecked_transaction()?;
    let pools = load(conn, q.now_ms)?;
    let tail = read_tail(conn, folded_upto(conn)?, i64::MAX)?;
    let since = q.since_ms.unwrap_or(i64::MIN);
    let app_filter: Option<Guid> = q.pool.map(Pool::app_id);
    let wanted = |m: &Client| m.last_seen_ms >= since && app_filter.is_none_or(|a| a == m.app_id);
    // Stored rows, newest first; machines with requests in the tail are
    // taken from the merge below instead, so fetch that many more.
    let mut stmt = conn.prepare(&format!(
        "SELECT {CLIENT_COLUMNS} FROM clients
         WHERE last_seen_ms >= ?1 AND (?2 IS NULL OR app_id = ?2)
         ORDER BY last_seen_ms DESC LIMIT ?3"
    ))?;
    let fetch = q
        .limit
        .saturating_add(tail.clients.len())
        .min(i64::MAX as usize) as i64;
    let mut machines = Vec::new();
    for m in stmt.query_map(params![since, app_filter, fetch], client_row)? {
        let m = m?;
        if !tail.clients.contains_key(&(m.cmid, m.app_id)) {
            machines.push(m);
        }
    }
    let mut stored = conn.prepare(&format!(
        "SELECT {CLIENT_COLUMNS} FROM clients WHERE cmid = ?1 AND app_id = ?2"
    ))?;
    for ((cmid, app), t) in &tail.clients {
        let before = stored
            .query_row(params![cmid, app], client_row)
            .optional()?;
        let m = Client {
            cmid: *cmid,
            app_id: *app,
            workstation: t.workstation.clone(),
            sku_id: t.sku_id,
            address: t.address.clone(),
            first_seen_ms: before.as_ref().map_or(t.first_ms, |b| b.first_seen_ms),
            last_seen_ms: before
                .as_ref()
                .map_or(t.last_ms, |b| b.last_seen_ms.max(t.last_ms)),
            requests: before.as_ref().map_or(0, |b| b.requests) + t.requests,
            last_result: Hresult(t.last_hresult),
            last_count: t.last_count,
            live: false,
        };
        if wanted(&m) {
            machines.push(m);
        }
    }
    machines.sort_by_key(|m| std::cmp::Reverse(m.last_seen_ms));
    machines.truncate(q.limit);
    for m in &mut machines {
        let pool = Pool::from_app_id(&m.app_id);
        // Live: held by its pool as the pool rules stand at `now_ms`.
        m.live = pools
            .iter()
            .any(|lp| Some(lp.pool) == pool && lp.entries.iter().any(|(c, _)| *c == m.cmid));
    }
    Ok(machines)
}

/// The `limit` most recent activation records, newest first.
pub fn recent(conn: &Connection, limit: usize) -> Result<Vec<StoredActivation>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, time_ms, address, workstation, cmid, app_id, sku_id, kms_id, n_policy,
                license_status, vm, protocol, count, hresult
         FROM activations ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(StoredActivation {
            id: r.get(0)?,
            time_ms: r.get(1)?,
            address: r.get(2)?,
            workstation: r.get(3)?,
            cmid: r.get(4)?,
            app_id: r.get(5)?,
            sku_id: r.get(6)?,
            kms_id: r.get(7)?,
            n_policy: r.get(8)?,
            license_status: r.get(9)?,
            vm: r.get(10)?,
            protocol: r.get(11)?,
            count: r.get(12)?,
            result: Hresult(r.get(13)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One activation record with every column, for copying a store.
#[derive(Debug, Clone)]
pub struct FullRecord {
    pub id: i64,
    pub record: crate::store::Record,
}

/// At most `limit` activation records after id `after`, in id order.
pub fn records_after(
    conn: &Connection,
    after: i64,
    limit: i64,
) -> Result<Vec<FullRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, time_ms, address, workstation, cmid, app_id, sku_id, kms_id, n_policy,
                license_status, binding_expiration, vm, protocol, count, hresult, pool
         FROM activations WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |r| {
        Ok(FullRecord {
            id: r.get(0)?,
            record: crate::store::Record {
                time_ms: r.get(1)?,
                address: r.get(2)?,
                workstation: r.get(3)?,
                cmid: r.get(4)?,
                app_id: r.get(5)?,
                sku_id: r.get(6)?,
                kms_id: r.get(7)?,
                n_policy: r.get(8)?,
                license_status: r.get(9)?,
                binding_expiration: r.get(10)?,
                vm: r.get(11)?,
                protocol: r.get(12)?,
                count: r.get(13)?,
                hresult: Hresult(r.get(14)?),
                counted_in: r
                    .get::<_, Option<String>>(15)?
                    .as_deref()
                    .and_then(Pool::from_name),
                capacity: 0,
            },
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The stored ePIDs by group.
pub fn epids(conn: &Connection) -> Result<Vec<(String, String, i64)>, StoreError> {
    let mut stmt = conn.prepare("SELECT grp, epid, created_ms FROM epids ORDER BY grp")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The running totals by result and license state, ordered: the folded
/// ones plus the unfolded tail's (call inside one read transaction).
pub fn totals(conn: &Connection) -> Result<Vec<(u32, u32, i64)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT hresult, license_status, SUM(n) FROM (
             SELECT hresult, license_status, n FROM totals
             UNION ALL
             SELECT hresult, license_status, COUNT(*) FROM activations
             WHERE id > (SELECT upto FROM folded WHERE id = 1)
             GROUP BY hresult, license_status)
         GROUP BY hresult, license_status
         HAVING SUM(n) > 0
         ORDER BY hresult, license_status",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
