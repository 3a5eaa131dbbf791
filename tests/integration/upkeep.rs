//! Every background task of the store runs against the real backend and
//! does its work: SQLite's fold and prune, the fleet's retention, heartbeat
//! and pool refresh. Each test shortens the task's period (the store's
//! `Schedule`) and checks the task's effect in the database itself, not
//! only what the host says.

use crate::common::*;
use kmsd::client::{ClientOptions, Connection};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::Version;
use kmsd::store::{Backend, Schedule};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

async fn one(addr: SocketAddr, cmid: Guid) -> u32 {
    let opts: ClientOptions = client_options("Windows Server 2022 Standard", Version::V6);
    let mut c = Connection::open(addr, opts).await.unwrap();
    c.activate(cmid).await.unwrap().response.count
}

fn every(d: Duration) -> Schedule {
    Schedule {
        prune: d,
        retention: d,
        heartbeat: d,
        licenses: d,
        reclaim: d,
    }
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fold_and_prune_expire_pool_entries_and_trim_the_log() {
    let clock = TestClock::default();
    let opts = kmsd::app::Options {
        clock: clock.clock(),
        store_schedule: every(Duration::ZERO),
        ..Default::default()
    };
    let srv = start_server_with_options(tempfile::tempdir().unwrap(), opts, |c| {
        c.store = Backend::Sqlite;
        c.keep_records = 10;
    })
    .await;
    for n in 1..=20u32 {
        assert_eq!(one(srv.addr, new_cmid()).await, n.min(10));
    }
    clock.advance_days(31);
    assert_eq!(one(srv.addr, new_cmid()).await, 1, "the rest expired");
    srv.host.flush().await.unwrap();
    let db = rusqlite::Connection::open_with_flags(
        srv.dir.path().join(kmsd::store::DB_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let q = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(
        q("SELECT COUNT(*) FROM pool_entries WHERE pool = 'windows'"),
        1,
        "the stored pool holds what the rules hold: the expired entries are gone"
    );
    assert_eq!(
        q("SELECT MAX(id) - MIN(id) + 1 FROM activations"),
        10,
        "the log is trimmed to keep_records"
    );
    assert_eq!(
        q("SELECT upto FROM folded"),
        q("SELECT MAX(id) FROM activations"),
        "the whole log is folded"
    );
    srv.stop().await;
}

async fn pg_count(url: &str, sql: &str) -> i64 {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let n: i64 = c.query_one(sql, &[]).await.unwrap().get(0);
    drop(c);
    let _ = task.await;
    n
}

/// `keep_records = 50`, 300 activations: the retention task trims the
/// fleet's log to 50 (it once failed on every run, unseen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_retention_keeps_the_log_at_keep_records() {
    let Some(url) = pg_database().await else {
        return;
    };
    let opts = kmsd::app::Options {
        store_schedule: every(Duration::from_millis(200)),
        ..Default::default()
    };
    let u = url.clone();
    let srv = start_server_with_options(tempfile::tempdir().unwrap(), opts, move |c| {
        c.store = Backend::Postgres(u);
        c.keep_records = 50;
    })
    .await;
    for _ in 0..300 {
        one(srv.addr, new_cmid()).await;
    }
    let trimmed = eventually(Duration::from_secs(90), || async {
        srv.status().await.records_kept <= 50
    })
    .await;
    assert!(trimmed, "records kept: {}", srv.status().await.records_kept);
    assert_eq!(
        pg_count(&url, "SELECT MAX(id) - MIN(id) + 1 FROM activations").await,
        50
    );
    assert_eq!(pg_count(&url, "SELECT COUNT(*) FROM activations").await, 50);
    srv.stop().await;
}

/// The heartbeat moves this host's row on, and refreshes its copy of the
/// pool figures with what another host counted meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_heartbeat_and_pool_refresh_run() {
    let Some(url) = pg_database().await else {
        return;
    };
    let start = |sched: Schedule| {
        let u = url.clone();
        let opts = kmsd::app::Options {
            store_schedule: sched,
            ..Default::default()
        };
        start_server_with_options(tempfile::tempdir().unwrap(), opts, move |c| {
            c.store = Backend::Postgres(u)
        })
    };
    let quick = start(every(Duration::from_millis(200))).await;
    let other = start(Schedule::default()).await;
    let beat = "SELECT MAX(heartbeat_ms) FROM hosts";
    let first = pg_count(&url, beat).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            pg_count(&url, beat).await > first
        })
        .await,
        "the heartbeat never moved"
    );
    for _ in 0..3 {
        one(other.addr, new_cmid()).await;
    }
    let windows = |h: &TestServer| {
        h.host
            .pools_now()
            .iter()
            .find(|p| p.pool == kmsd::protocol::kms::products::Pool::Windows)
            .map_or(0, |p| p.count)
    };
    assert_eq!(windows(&quick), 0, "nothing counted through this host yet");
    assert!(
        eventually(Duration::from_secs(10), || async { windows(&quick) == 3 }).await,
        "the pool refresh never brought the other host's count"
    );
    quick.stop().await;
    other.stop().await;
}
