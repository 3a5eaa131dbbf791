//! The schema: opening (read-write with migrations, or read-only beside a
//! running host) and the versioned migrations.

use crate::store::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 5;

fn open_conn(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::open(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| StoreError::open(path, e))?;
    Ok(conn)
}

/// Opens (creating or migrating) the database at `path`.
pub fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_conn(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )?;
    let e = |err| StoreError::open(path, err);
    // Touch the file: a corrupt or foreign file fails here, never silently resets.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(e)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(e)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::unavailable(
            path.display().to_string(),
            format!("cannot switch to WAL journaling (got {mode})"),
        ));
    }
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
        .map_err(e)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            store: path.display().to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    migrate(&conn, version).map_err(|err| match err {
        StoreError::Failed { source, .. } => StoreError::Failed {
            store: path.display().to_string(),
            source,
        },
        other => other,
    })?;
    Ok(conn)
}

/// Opens the database read-only (for `kmsd status` beside a running host).
pub fn open_ro(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::misconfigured(
            path.display().to_string(),
            "no database here (has the host run with this data dir?)",
        ));
    }
    let conn = open_conn(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| StoreError::open(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            store: path.display().to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version != SCHEMA_VERSION {
        return Err(StoreError::misconfigured(
            path.display().to_string(),
            format!(
                "schema version {version}, this kmsd reads {SCHEMA_VERSION}: start the host once to migrate it"
            ),
        ));
    }
    Ok(conn)
}

pub(super) fn migrate(conn: &Connection, from: i64) -> Result<(), StoreError> {
    if from > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            store: super::NAME.to_owned(),
            found: from,
            supported: SCHEMA_VERSION,
        });
    }
    if from < 1 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE epids (
                 grp TEXT PRIMARY KEY,
                 epid TEXT NOT NULL,
                 created_ms INTEGER NOT NULL
             );
             CREATE TABLE pools (
                 pool TEXT PRIMARY KEY,
                 capacity INTEGER NOT NULL
             );
             CREATE TABLE pool_entries (
                 pool TEXT NOT NULL,
                 cmid BLOB NOT NULL,
                 last_seen_ms INTEGER NOT NULL,
                 PRIMARY KEY (pool, cmid)
             ) WITHOUT ROWID;
             CREATE INDEX pool_entries_by_time ON pool_entries (pool, last_seen_ms);
             CREATE TABLE clients (
                 cmid BLOB NOT NULL,
                 app_id BLOB NOT NULL,
                 first_seen_ms INTEGER NOT NULL,
                 last_seen_ms INTEGER NOT NULL,
                 workstation TEXT NOT NULL,
                 sku_id BLOB NOT NULL,
                 address TEXT NOT NULL,
                 requests INTEGER NOT NULL,
                 last_hresult INTEGER NOT NULL,
                 last_count INTEGER NOT NULL,
                 PRIMARY KEY (cmid, app_id)
             ) WITHOUT ROWID;
             CREATE INDEX clients_by_last_seen ON clients (last_seen_ms);
             CREATE TABLE activations (
                 id INTEGER PRIMARY KEY,
                 time_ms INTEGER NOT NULL,
                 address TEXT NOT NULL,
                 workstation TEXT NOT NULL,
                 cmid BLOB NOT NULL,
                 app_id BLOB NOT NULL,
                 sku_id BLOB NOT NULL,
                 kms_id BLOB NOT NULL,
                 n_policy INTEGER NOT NULL,
                 license_status INTEGER NOT NULL,
                 binding_expiration INTEGER NOT NULL,
                 vm INTEGER NOT NULL,
                 protocol INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 hresult INTEGER NOT NULL
             );
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    if from < 2 {
        // v2: facts about the running host for `kmsd status`, and running
        // totals by result and license state that survive record pruning.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE meta (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL
             );
             CREATE TABLE totals (
                 hresult INTEGER NOT NULL,
                 license_status INTEGER NOT NULL,
                 n INTEGER NOT NULL,
                 PRIMARY KEY (hresult, license_status)
             ) WITHOUT ROWID;
             INSERT INTO totals (hresult, license_status, n)
                 SELECT hresult, license_status, COUNT(*) FROM activations
                 GROUP BY hresult, license_status;
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    if from < 3 {
        // v3: the activation log names the pool a request was counted in,
        // and `folded` marks how much of it the inventory and the stored
        // pools reflect (v2 wrote those per record: all of it).
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE activations ADD COLUMN pool TEXT;
             CREATE TABLE folded (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 upto INTEGER NOT NULL
             );
             INSERT INTO folded (id, upto) SELECT 1, COALESCE(MAX(id), 0) FROM activations;
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
    }
    if from < 4 {
        // v4: the running totals are folded from the log like the
        // inventory (v3 added them in the hot commit), so they cover the
        // folded records only: take the unfolded tail's records out again.
        conn.execute_batch(
            "BEGIN;
             UPDATE totals SET n = n - (
                 SELECT COUNT(*) FROM activations a
                 WHERE a.id > (SELECT upto FROM folded WHERE id = 1)
                   AND a.hresult = totals.hresult
                   AND a.license_status = totals.license_status);
             PRAGMA user_version = 4;
             COMMIT;",
        )?;
    }
    if from < 5 {
        // v5: license packs, the seats machines hold in them, each pack's
        // daily peak (the true-up figure) and the audit trail of changes
        // (`IF NOT EXISTS`: a database set back to an older version by hand
        // keeps them).
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS license_packs (
                 id INTEGER PRIMARY KEY,
                 product BLOB NOT NULL,
                 covers TEXT NOT NULL,
                 quantity INTEGER NOT NULL CHECK (quantity >= 0),
                 enforce TEXT NOT NULL CHECK (enforce IN ('off', 'warn', 'hard')),
                 agreement TEXT NOT NULL,
                 starts_day INTEGER,
                 expires_day INTEGER,
                 note TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 retired_ms INTEGER
             );
             CREATE TABLE IF NOT EXISTS license_seats (
                 cmid BLOB PRIMARY KEY,
                 pack INTEGER NOT NULL REFERENCES license_packs (id),
                 sku BLOB NOT NULL,
                 workstation TEXT NOT NULL,
                 address TEXT NOT NULL,
                 host TEXT NOT NULL,
                 first_ms INTEGER NOT NULL,
                 last_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS license_seats_by_pack ON license_seats (pack);
             CREATE TABLE IF NOT EXISTS license_peaks (
                 day INTEGER NOT NULL,
                 pack INTEGER NOT NULL,
                 quantity INTEGER NOT NULL,
                 peak INTEGER NOT NULL,
                 PRIMARY KEY (day, pack)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS license_audit (
                 id INTEGER PRIMARY KEY,
                 time_ms INTEGER NOT NULL,
                 actor TEXT NOT NULL,
                 action TEXT NOT NULL,
                 pack INTEGER,
                 detail TEXT NOT NULL
             );
             PRAGMA user_version = 5;
             COMMIT;",
        )?;
    }
    Ok(())
}

impl StoreError {
    /// `e` while opening the database at `path`.
    pub(crate) fn open(path: &Path, e: rusqlite::Error) -> Self {
        super::classify(path.display().to_string(), e)
    }
}
