//! The host's own facts: its notes for reports and its ePIDs.

use crate::store::StoreError;
use rusqlite::{Connection, params};

/// Records facts about the running host (listen addresses, served groups...).
pub fn set_meta(conn: &Connection, entries: &[(&str, String)]) -> Result<(), StoreError> {
    for (k, v) in entries {
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![k, v],
        )?;
    }
    Ok(())
}

/// Stores an ePID for `group` unless one is there; returns the stored one.
pub fn ensure_epid(
    conn: &Connection,
    group: &str,
    epid: &str,
    now_ms: i64,
) -> Result<String, StoreError> {
    conn.execute(
        "INSERT INTO epids (grp, epid, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT(grp) DO NOTHING",
        params![group, epid, now_ms],
    )?;
    Ok(
        conn.query_row("SELECT epid FROM epids WHERE grp = ?1", [group], |r| {
            r.get(0)
        })?,
    )
}

/// Replaces the stored ePID for `group` (an operator override).
pub fn set_epid(conn: &Connection, group: &str, epid: &str, now_ms: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO epids (grp, epid, created_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(grp) DO UPDATE SET epid = excluded.epid, created_ms = excluded.created_ms",
        params![group, epid, now_ms],
    )?;
    Ok(())
}
