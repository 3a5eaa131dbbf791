//! The fleet's schema in PostgreSQL, versioned like the SQLite store's:
//! `kmsd_meta.schema_version` says which migrations ran. Hosts starting at
//! once take an advisory lock, so one of them migrates and the others wait.

use super::pg_err_at;
use crate::store::StoreError;
use crate::store::window::MAX_N_POLICY;
use tokio_postgres::Client;

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 3;

/// The advisory lock key migrations hold ("kmsd" in ASCII, then 1).
const MIGRATE_LOCK: i64 = 0x6b6d_7364_0000_0001;

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a newer one untouched.
/// `shown` names the database in errors.
pub async fn migrate(client: &mut Client, shown: &str) -> Result<(), StoreError> {
    let pg_err = |e| pg_err_at(shown, e);
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(pg_err)?;
    // Created only when missing: `IF NOT EXISTS` would have the server
    // send a notice on every start and every `store copy`.
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('kmsd_meta') IS NOT NULL", &[])
        .await
        .map_err(pg_err)?
        .get(0);
    if !has_meta {
        tx.batch_execute("CREATE TABLE kmsd_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .await
            .map_err(pg_err)?;
    }
    let version: i64 = tx
        .query_opt(
            "SELECT value FROM kmsd_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .map_err(pg_err)?
        .map(|r| r.get::<_, String>(0))
        .map_or(Ok(0), |v| v.parse())
        .map_err(|_| StoreError::Corrupt {
            store: shown.to_owned(),
            source: crate::store::error::cause("kmsd_meta.schema_version is not a number"),
        })?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            store: shown.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 1 {
        tx.batch_execute(&format!(
            "CREATE TABLE pools (
                 pool TEXT PRIMARY KEY,
                 capacity INTEGER NOT NULL CHECK (capacity BETWEEN 0 AND {cap}),
                 version BIGINT NOT NULL
             );
             INSERT INTO pools (pool, capacity, version)
                 VALUES ('windows', 0, 0), ('office2010', 0, 0), ('office2013+', 0, 0);
             CREATE TABLE pool_entries (
                 pool TEXT NOT NULL REFERENCES pools (pool),
                 cmid BYTEA NOT NULL,
                 last_seen_ms BIGINT NOT NULL,
                 PRIMARY KEY (pool, cmid)
             );
             CREATE TABLE epids (
                 grp TEXT PRIMARY KEY,
                 epid TEXT NOT NULL,
                 created_ms BIGINT NOT NULL
             );
             CREATE TABLE hosts (
                 host_id TEXT PRIMARY KEY,
                 started_ms BIGINT NOT NULL,
                 heartbeat_ms BIGINT NOT NULL
             );
             CREATE TABLE host_notes (
                 host_id TEXT NOT NULL REFERENCES hosts (host_id),
                 key TEXT NOT NULL,
                 value TEXT NOT NULL,
                 PRIMARY KEY (host_id, key)
             );
             CREATE TABLE clients (
                 cmid BYTEA NOT NULL,
                 app_id BYTEA NOT NULL,
                 first_seen_ms BIGINT NOT NULL,
                 last_seen_ms BIGINT NOT NULL,
                 workstation TEXT NOT NULL,
                 sku_id BYTEA NOT NULL,
                 address TEXT NOT NULL,
                 host_id TEXT NOT NULL,
                 requests BIGINT NOT NULL,
                 last_hresult BIGINT NOT NULL,
                 last_count BIGINT NOT NULL,
                 PRIMARY KEY (cmid, app_id)
             );
             CREATE INDEX clients_by_last_seen ON clients (last_seen_ms);
             CREATE TABLE activations (
                 id BIGSERIAL PRIMARY KEY,
                 time_ms BIGINT NOT NULL,
                 host_id TEXT NOT NULL,
                 address TEXT NOT NULL,
                 workstation TEXT NOT NULL,
                 cmid BYTEA NOT NULL,
                 app_id BYTEA NOT NULL,
                 sku_id BYTEA NOT NULL,
                 kms_id BYTEA NOT NULL,
                 n_policy BIGINT NOT NULL,
                 license_status BIGINT NOT NULL,
                 binding_expiration BIGINT NOT NULL,
                 vm BOOLEAN NOT NULL,
                 protocol INTEGER NOT NULL,
                 count BIGINT NOT NULL,
                 hresult BIGINT NOT NULL,
                 pool TEXT
             );
             CREATE TABLE totals (
                 host_id TEXT NOT NULL,
                 hresult BIGINT NOT NULL,
                 license_status BIGINT NOT NULL,
                 n BIGINT NOT NULL,
                 PRIMARY KEY (host_id, hresult, license_status)
             );
             CREATE TABLE copies (
                 source TEXT PRIMARY KEY,
                 upto BIGINT NOT NULL
             );",
            cap = 2 * MAX_N_POLICY
        ))
        .await
        .map_err(pg_err)?;
    }
    if version < 2 {
        // v2: a copied single-host store is an import with its dates, not
        // a host in `hosts` (where it looked alive for minutes).
        tx.batch_execute(
            "ALTER TABLE copies ADD COLUMN first_ms BIGINT NOT NULL DEFAULT 0,
                                ADD COLUMN last_ms BIGINT NOT NULL DEFAULT 0;
             UPDATE copies SET first_ms = h.started_ms, last_ms = h.started_ms
                 FROM hosts h WHERE h.host_id = copies.source;
             DELETE FROM host_notes WHERE host_id IN (SELECT source FROM copies);
             DELETE FROM hosts WHERE host_id IN (SELECT source FROM copies);",
        )
        .await
        .map_err(pg_err)?;
    }
    if version < 3 {
        // v3: license packs, seats, daily peaks, the audit trail, and the
        // one-row lock every ledger writer moves on (see `ledger`).
        tx.batch_execute(
            "CREATE TABLE license_lock (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
             INSERT INTO license_lock (id, version) VALUES (1, 0);
             CREATE TABLE license_packs (
                 id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                 product BYTEA NOT NULL,
                 covers TEXT NOT NULL,
                 quantity BIGINT NOT NULL CHECK (quantity >= 0),
                 enforce TEXT NOT NULL CHECK (enforce IN ('off', 'warn', 'hard')),
                 agreement TEXT NOT NULL,
                 starts_day BIGINT,
                 expires_day BIGINT,
                 note TEXT NOT NULL,
                 created_ms BIGINT NOT NULL,
                 retired_ms BIGINT
             );
             CREATE TABLE license_seats (
                 cmid BYTEA PRIMARY KEY,
                 pack BIGINT NOT NULL REFERENCES license_packs (id),
                 sku BYTEA NOT NULL,
                 workstation TEXT NOT NULL,
                 address TEXT NOT NULL,
                 host TEXT NOT NULL,
                 first_ms BIGINT NOT NULL,
                 last_ms BIGINT NOT NULL
             );
             CREATE INDEX license_seats_by_pack ON license_seats (pack);
             CREATE TABLE license_peaks (
                 day BIGINT NOT NULL,
                 pack BIGINT NOT NULL,
                 quantity BIGINT NOT NULL,
                 peak BIGINT NOT NULL,
                 PRIMARY KEY (day, pack)
             );
             CREATE TABLE license_audit (
                 id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                 time_ms BIGINT NOT NULL,
                 actor TEXT NOT NULL,
                 action TEXT NOT NULL,
                 pack BIGINT,
                 detail TEXT NOT NULL
             );",
        )
        .await
        .map_err(pg_err)?;
    }
    tx.execute(
        "INSERT INTO kmsd_meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&SCHEMA_VERSION.to_string()],
    )
    .await
    .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)
}
