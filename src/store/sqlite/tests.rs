//! The SQLite store's tests: migrations, folding, pruning, the writer.

use super::fold::{commit_level, fold_unsynced};
use super::schema::migrate;
use super::writer::commit_batch;
use super::*;
use crate::protocol::kms::products::Pool;
use crate::store::{Durability, StoreError};
use rusqlite::{Connection, params};
use std::collections::HashMap;

/// The clock the tests fold at: after every record they write, within 30
/// days of all of them.
const T: i64 = 2_000_000;

fn record(cmid: u128, hresult: u32) -> Record {
    Record {
        time_ms: 1_000,
        address: "127.0.0.1".into(),
        workstation: "ws".into(),
        cmid: Guid::from_u128(cmid),
        app_id: Pool::Windows.app_id(),
        sku_id: Guid::NIL,
        kms_id: Guid::NIL,
        counted_in: (hresult == 0).then_some(Pool::Windows),
        capacity: 10,
        n_policy: 5,
        license_status: 2,
        binding_expiration: 43200,
        vm: false,
        protocol: 6,
        count: 1,
        hresult: crate::protocol::kms::Hresult(hresult),
    }
}

#[test]
fn a_v1_database_migrates_to_v2_keeping_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let conn = Connection::open(&path).unwrap();
        migrate_to_v1_only(&conn);
        let mut conn = conn;
        commit_batch_v1(
            &mut conn,
            &[record(1, 0), record(2, 0), record(3, 0xC004_F042)],
        );
    }
    let conn = open_rw(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let totals: Vec<(u32, i64)> = conn
        .prepare("SELECT hresult, n FROM totals ORDER BY hresult")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        totals,
        vec![(0, 2), (0xC004_F042, 1)],
        "totals rebuilt from v1 records"
    );
    let loaded = load(&conn, 2_000).unwrap();
    let w = loaded.iter().find(|p| p.pool == Pool::Windows).unwrap();
    assert_eq!((w.capacity, w.entries.len()), (10, 2));
    // v1 wrote the inventory per record: all of the log counts as folded.
    assert_eq!(folded_upto(&conn).unwrap(), 3);
    let mut conn = conn;
    assert_eq!(fold_all(&mut conn, T).unwrap(), 0);
}

#[test]
fn prune_keeps_what_can_still_be_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    let now = 100 * 86_400_000;
    let mut records: Vec<Record> = (0..15u128)
        .map(|i| Record {
            time_ms: now - 1000 + i as i64,
            ..record(i, 0)
        })
        .collect();
    // One expired entry.
    records.push(Record {
        time_ms: now - 31 * 86_400_000,
        ..record(99, 0)
    });
    let refs: Vec<&Record> = records.iter().collect();
    commit_batch(&mut conn, &refs).unwrap();
    fold_all(&mut conn, now).unwrap();
    prune(&conn, now, 5).unwrap();
    let left: Vec<Vec<u8>> = conn
        .prepare("SELECT cmid FROM pool_entries ORDER BY last_seen_ms")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let want: Vec<Vec<u8>> = (5..15u128).map(|i| Guid::from_u128(i).0.to_vec()).collect();
    assert_eq!(left, want, "the 10 most recent (capacity 10) remain");
    let kept: i64 = conn
        .query_row("SELECT COUNT(*) FROM activations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 5);
}

#[test]
fn prune_of_a_large_pool_keeps_exactly_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    let records: Vec<Record> = (0..5000u128)
        .map(|i| Record {
            time_ms: 1_000_000 + i as i64,
            capacity: 50,
            ..record(i, 0)
        })
        .collect();
    let refs: Vec<&Record> = records.iter().collect();
    commit_batch(&mut conn, &refs).unwrap();
    fold_all(&mut conn, T).unwrap();
    prune(&conn, 2_000_000, 1_000_000).unwrap();
    let (n, oldest): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), MIN(last_seen_ms) FROM pool_entries",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, oldest), (50, 1_000_000 + 4950));
    let total: i64 = conn
        .query_row("SELECT n FROM totals", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 5000, "totals aggregated per batch");
}

fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Blob(b) => format!("{b:02x?}"),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
                v => format!("{v:?}"),
            })
            .collect())
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// What the inventory and pool tables hold after `records`, written the
/// way schema v2 did: one upsert per record, in order.
fn per_record_oracle(records: &[Record]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let conn = Connection::open_in_memory().unwrap();
    migrate(&conn, 0).unwrap();
    for r in records {
        if let Some(pool) = r.counted_in {
            conn.execute(
                "INSERT INTO pool_entries (pool, cmid, last_seen_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(pool, cmid) DO UPDATE SET last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
                params![pool.name(), &r.cmid.0[..], r.time_ms],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO clients (cmid, app_id, first_seen_ms, last_seen_ms, workstation, sku_id,
                                  address, requests, last_hresult, last_count)
             VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, 1, ?7, ?8)
             ON CONFLICT(cmid, app_id) DO UPDATE SET
                 last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),
                 workstation = excluded.workstation, sku_id = excluded.sku_id,
                 address = excluded.address, requests = requests + 1,
                 last_hresult = excluded.last_hresult, last_count = excluded.last_count",
            params![
                &r.cmid.0[..],
                &r.app_id.0[..],
                r.time_ms,
                r.workstation,
                &r.sku_id.0[..],
                r.address,
                r.hresult.0,
                r.count
            ],
        )
        .unwrap();
    }
    (
        rows(&conn, "SELECT * FROM clients ORDER BY cmid, app_id"),
        rows(&conn, "SELECT * FROM pool_entries ORDER BY pool, cmid"),
    )
}

/// Repeat visits, a clock step backwards, a refusal, two applications
/// for one CMID: the mix that folding must get right.
fn mixed_records() -> Vec<Record> {
    let mut out = Vec::new();
    for i in 0..40u128 {
        let mut r = record(i % 7, if i % 11 == 10 { 0xC004_F042 } else { 0 });
        r.time_ms = 10_000 + (i as i64) * 100 - if i % 5 == 4 { 950 } else { 0 };
        r.workstation = format!("ws{i}");
        r.address = format!("10.0.0.{i}");
        r.count = i as u32;
        if i % 9 == 8 {
            r.app_id = Pool::Office2013Plus.app_id();
            r.counted_in = r.counted_in.map(|_| Pool::Office2013Plus);
        }
        out.push(r);
    }
    out
}

#[test]
fn folding_in_any_chunks_equals_writing_each_record() {
    let records = mixed_records();
    let (clients, entries) = per_record_oracle(&records);
    for (batch_len, chunk) in [(5, 1), (5, 3), (5, 16), (5, 1000), (40, 1000), (40, 7)] {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_rw(&dir.path().join("db")).unwrap();
        // Committed in batches, folded `chunk` records at a time after
        // each batch, the way the writer interleaves them.
        for batch in records.chunks(batch_len) {
            let refs: Vec<&Record> = batch.iter().collect();
            commit_batch(&mut conn, &refs).unwrap();
            fold_unsynced(&mut conn, chunk, 1_000_000, Durability::Full, T).unwrap();
        }
        fold_all(&mut conn, T).unwrap();
        assert_eq!(
            rows(&conn, "SELECT * FROM clients ORDER BY cmid, app_id"),
            clients,
            "inventory, chunk {chunk}"
        );
        assert_eq!(
            rows(&conn, "SELECT * FROM pool_entries ORDER BY pool, cmid"),
            entries,
            "pool entries, chunk {chunk}"
        );
        assert_eq!(folded_upto(&conn).unwrap(), records.len() as i64);
    }
}

#[test]
fn a_folded_pool_keeps_its_newest_capacity_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    // 20 CMIDs, capacity 4, visited out of order and twice.
    let records: Vec<Record> = (0..40u128)
        .map(|i| Record {
            time_ms: 1_000 + ((i * 7) % 40) as i64,
            capacity: 4,
            ..record(i % 20, 0)
        })
        .collect();
    for batch in records.chunks(6) {
        let refs: Vec<&Record> = batch.iter().collect();
        commit_batch(&mut conn, &refs).unwrap();
        fold(&mut conn, 3, None, T).unwrap();
    }
    fold_all(&mut conn, T).unwrap();
    let mut want: HashMap<Guid, i64> = HashMap::new();
    for r in &records {
        let t = want.entry(r.cmid).or_insert(r.time_ms);
        *t = (*t).max(r.time_ms);
    }
    let mut want: Vec<(Guid, i64)> = want.into_iter().collect();
    want.sort_by_key(|&(g, t)| std::cmp::Reverse((t, g.0)));
    want.truncate(4);
    let loaded = load(&conn, 2_000).unwrap();
    let windows = loaded.iter().find(|p| p.pool == Pool::Windows).unwrap();
    assert_eq!(windows.entries, want);
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM pool_entries", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 4, "the stored pool holds no more than its capacity");
}

#[test]
fn readers_see_the_unfolded_tail() {
    let records = mixed_records();
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    let refs: Vec<&Record> = records.iter().collect();
    let (first, rest) = refs.split_at(17);
    commit_batch(&mut conn, first).unwrap();
    fold_all(&mut conn, T).unwrap();
    commit_batch(&mut conn, rest).unwrap();
    // Half folded, half in the tail: the pools a start-up would load
    // are those of the fully folded tables.
    let now = 20_000;
    let before = load(&conn, now).unwrap();
    let tail = read_tail(&conn, folded_upto(&conn).unwrap(), i64::MAX).unwrap();
    assert_eq!(tail.records, rest.len() as u64);
    fold_all(&mut conn, T).unwrap();
    let after = load(&conn, now).unwrap();
    assert_eq!(before, after);
    assert!(after.iter().any(|p| !p.entries.is_empty()));
    // And the tail folded per machine like the per-record writes.
    let last = rest
        .iter()
        .rev()
        .find(|r| r.cmid == Guid::from_u128(3))
        .unwrap();
    let t = &tail.clients[&(Guid::from_u128(3), last.app_id)];
    assert_eq!(
        (t.workstation.as_str(), t.last_count),
        (last.workstation.as_str(), last.count)
    );
}

#[test]
fn prune_never_deletes_unfolded_records_nor_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    let records: Vec<Record> = (0..100u128).map(|i| record(i, 0)).collect();
    let refs: Vec<&Record> = records.iter().collect();
    commit_batch(&mut conn, &refs).unwrap();
    let count = |c: &Connection| -> i64 {
        c.query_row("SELECT COUNT(*) FROM activations", [], |r| r.get(0))
            .unwrap()
    };
    prune(&conn, 2_000, 0).unwrap();
    assert_eq!(count(&conn), 100, "nothing folded yet, nothing pruned");
    fold(&mut conn, 40, None, T).unwrap();
    prune(&conn, 2_000, 0).unwrap();
    assert_eq!(count(&conn), 60, "only the 40 folded ones");
    fold_all(&mut conn, T).unwrap();
    prune(&conn, 2_000, 0).unwrap();
    assert_eq!(count(&conn), 1, "keep_records 0 still keeps the newest");
    // Ids keep rising, so a new record is never taken as folded.
    commit_batch(&mut conn, &[&record(500, 0)]).unwrap();
    assert_eq!(fold_all(&mut conn, T).unwrap(), 1);
}

#[test]
fn folding_trims_the_log_head_in_small_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    let records: Vec<Record> = (0..100u128).map(|i| record(i, 0)).collect();
    let refs: Vec<&Record> = records.iter().collect();
    commit_batch(&mut conn, &refs).unwrap();
    let span = |c: &Connection| -> (i64, i64) {
        c.query_row("SELECT MIN(id), COUNT(*) FROM activations", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    };
    // 20 folded, so only those 20 may go (keep 10 would allow 90).
    fold_unsynced(&mut conn, 20, 10, Durability::Full, T).unwrap();
    assert_eq!(span(&conn), (21, 80));
    // 30 more folded: at most twice that trimmed, still only folded ones.
    fold_unsynced(&mut conn, 30, 10, Durability::Full, T).unwrap();
    assert_eq!(span(&conn), (51, 50));
    fold_unsynced(&mut conn, 50, 10, Durability::Full, T).unwrap();
    assert_eq!(span(&conn), (91, 10), "keeps keep_records");
}

#[test]
fn commits_after_a_fold_wait_for_the_disk_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    let level =
        |c: &Connection| -> i64 { c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap() };
    assert_eq!(level(&conn), 2);
    commit_batch(&mut conn, &[&record(1, 0)]).unwrap();
    fold_unsynced(&mut conn, 64, 1_000_000, Durability::Full, T).unwrap();
    assert_eq!(level(&conn), 2, "FULL again after an unsynced fold");
    conn.execute_batch("PRAGMA synchronous=OFF").unwrap();
    commit_level(&conn, Durability::Full).unwrap();
    assert_eq!(level(&conn), 2);
}

#[test]
fn with_durability_os_commits_stay_unflushed_after_a_fold() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    let level =
        |c: &Connection| -> i64 { c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap() };
    commit_level(&conn, Durability::Os).unwrap();
    assert_eq!(level(&conn), 1, "NORMAL: WAL commits are not flushed");
    commit_batch(&mut conn, &[&record(1, 0)]).unwrap();
    fold_unsynced(&mut conn, 64, 1_000_000, Durability::Os, T).unwrap();
    assert_eq!(level(&conn), 1, "the fold puts back NORMAL, not FULL");
}

#[tokio::test]
async fn close_commits_and_folds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let conn = open_rw(&path).unwrap();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let durable = Writer::start(
        conn,
        writer::Upkeep {
            keep_records: 1_000_000,
            durability: Durability::Full,
            prune_every: std::time::Duration::from_secs(3600),
            clock: std::sync::Arc::new(|| T),
            host: "test".to_owned(),
        },
        metrics,
    )
    .unwrap();
    for r in mixed_records() {
        durable.write(r).await.unwrap();
    }
    durable.close().await.unwrap();
    assert!(matches!(
        durable.write(record(1, 0)).await,
        Err(StoreError::Closed)
    ));
    let conn = open_ro(&path).unwrap();
    assert_eq!(folded_upto(&conn).unwrap(), 40);
    let (clients, _) = per_record_oracle(&mixed_records());
    assert_eq!(
        rows(&conn, "SELECT * FROM clients ORDER BY cmid, app_id"),
        clients
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99;")
        .unwrap();
    let err = open_rw(&path).unwrap_err().to_string();
    assert!(err.contains("newer than this kmsd"), "{err}");
}

/// The v1 schema exactly as the first release created it.
fn migrate_to_v1_only(conn: &Connection) {
    migrate(conn, 0).unwrap();
    conn.execute_batch(
        "DROP TABLE meta; DROP TABLE totals; DROP TABLE folded;
         ALTER TABLE activations DROP COLUMN pool; PRAGMA user_version = 1;",
    )
    .unwrap();
}

/// Writes records the way v1 did (no totals table).
fn commit_batch_v1(conn: &mut Connection, records: &[Record]) {
    let tx = conn.transaction().unwrap();
    for r in records {
        tx.execute(
            "INSERT INTO pool_entries (pool, cmid, last_seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![r.counted_in.map(Pool::name), &r.cmid.0[..], r.time_ms],
        )
        .ok();
        tx.execute(
            "INSERT INTO pools (pool, capacity) VALUES ('windows', ?1) ON CONFLICT DO NOTHING",
            [r.capacity],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO activations (time_ms, address, workstation, cmid, app_id, sku_id, kms_id,
                 n_policy, license_status, binding_expiration, vm, protocol, count, hresult)
             VALUES (?1, '', '', ?2, x'', x'', x'', 5, ?3, 0, 0, 6, 1, ?4)",
            params![r.time_ms, &r.cmid.0[..], r.license_status, r.hresult.0],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn totals_of(conn: &Connection) -> Vec<(u32, u32, i64)> {
    reads::totals(conn).unwrap()
}

fn totals_table(conn: &Connection) -> Vec<(u32, u32, i64)> {
    conn.prepare("SELECT hresult, license_status, n FROM totals ORDER BY hresult, license_status")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn totals_count_the_unfolded_tail_once_and_the_fold_moves_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_rw(&dir.path().join("db")).unwrap();
    let mut refused = record(9, 0xC004_F042);
    refused.license_status = 1;
    let batch = [record(1, 0), record(2, 0), refused];
    commit_batch(&mut conn, &batch.iter().collect::<Vec<_>>()).unwrap();
    let want = vec![(0, 2, 2), (0xC004_F042, 1, 1)];
    assert_eq!(
        totals_table(&conn),
        vec![],
        "the hot commit leaves totals alone"
    );
    assert_eq!(totals_of(&conn), want, "readers add the unfolded tail");
    fold_all(&mut conn, T).unwrap();
    assert_eq!(
        totals_table(&conn),
        want,
        "the fold moves them into the table"
    );
    assert_eq!(
        totals_of(&conn),
        want,
        "and readers do not count them twice"
    );
    commit_batch(&mut conn, &[&record(3, 0)]).unwrap();
    assert_eq!(totals_of(&conn), vec![(0, 2, 3), (0xC004_F042, 1, 1)]);
}

#[test]
fn a_v3_database_keeps_its_totals_exact_across_the_v4_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let mut conn = open_rw(&path).unwrap();
        let batch = [record(1, 0), record(2, 0), record(3, 0xC004_F042)];
        commit_batch(&mut conn, &batch.iter().collect::<Vec<_>>()).unwrap();
        fold_all(&mut conn, T).unwrap();
        // Two more records left unfolded, their totals already added by the
        // hot commit, as v3 did.
        commit_batch(&mut conn, &[&record(4, 0), &record(5, 0)]).unwrap();
        conn.execute_batch(
            "UPDATE totals SET n = n + 2 WHERE hresult = 0; PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let mut conn = open_rw(&path).unwrap();
    let want = vec![(0, 2, 4), (0xC004_F042, 2, 1)];
    assert_eq!(totals_of(&conn), want, "the tail is counted once");
    fold_all(&mut conn, T).unwrap();
    assert_eq!(totals_table(&conn), want);
}
