//! Store failures: while the database cannot be written, no response
//! reveals an unpersisted count (the client gets E_FAIL and is not counted),
//! and the host recovers by itself once the database is writable again.

use crate::common::*;
use kmsd::client::{ClientError, Connection};
use kmsd::protocol::kms::Version;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_gets_an_error_answer_and_the_host_recovers() {
    let srv = start_server(|c| c.store_busy_timeout = Duration::from_millis(200)).await;
    let opts = client_options("Windows Server 2022 Standard", Version::V6);
    let activate = || async {
        let mut c = Connection::open(srv.addr, opts.clone()).await?;
        c.activate(new_cmid()).await.map(|x| x.response.count)
    };
    assert_eq!(activate().await.unwrap(), 1);

    // Another process holds the write lock.
    let locker = rusqlite::Connection::open(srv.dir.path().join(kmsd::store::DB_FILE)).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE;").unwrap();
    for _ in 0..3 {
        match activate().await {
            Err(ClientError::Hresult(0x8000_4005)) => {}
            other => panic!("expected E_FAIL while the store is locked, got {other:?}"),
        }
    }
    locker.execute_batch("COMMIT;").unwrap();
    drop(locker);

    // The three refused clients were never counted: the next one is second.
    assert_eq!(activate().await.unwrap(), 2);
    assert_eq!(
        srv.host
            .metrics()
            .requests_with(kmsd::metrics::RequestResult::StoreError),
        3
    );
    srv.host.flush().await.unwrap();
    let status = srv.status().await;
    let w = status.pools.iter().find(|p| p.pool == "windows").unwrap();
    assert_eq!(w.count, 2);
    srv.stop().await;
}
