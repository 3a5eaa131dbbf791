//! Host semantics over loopback with our client: distinct-client counting,
//! thresholds, the 30-day window and 2N capacity (with an injected clock),
//! restarts, product policy with the right HRESULTs, the fixed-count mode,
//! and the status and inventory reports.

use crate::common::{self, *};
use kmsd::client::{ClientError, ClientOptions, Connection};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::{Version, products};
use kmsd::store::CountMode;
use std::net::SocketAddr;

async fn one(addr: SocketAddr, opts: &ClientOptions, cmid: Guid) -> Result<u32, ClientError> {
    let mut c = Connection::open(addr, opts.clone()).await?;
    Ok(c.activate(cmid).await?.response.count)
}

fn server_opts() -> ClientOptions {
    client_options("Windows Server 2022 Standard", Version::V6)
}

fn win10_opts() -> ClientOptions {
    client_options("Windows 10/11 Enterprise", Version::V6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_activate_at_five_and_repeats_do_not_count() {
    let srv = start_server(|_| {}).await;
    let opts = server_opts();
    assert_eq!(opts.n_policy, 5);
    let first = new_cmid();
    assert_eq!(one(srv.addr, &opts, first).await.unwrap(), 1);
    for _ in 0..3 {
        assert_eq!(
            one(srv.addr, &opts, first).await.unwrap(),
            1,
            "same CMID again"
        );
    }
    for want in 2..=4 {
        let count = one(srv.addr, &opts, new_cmid()).await.unwrap();
        assert_eq!(count, want);
        assert!(count < opts.n_policy, "client {want} stays unactivated");
    }
    let fifth = one(srv.addr, &opts, new_cmid()).await.unwrap();
    assert_eq!(fifth, 5);
    assert!(fifth >= opts.n_policy, "the fifth server activates");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_os_needs_twenty_five_and_shares_the_pool_with_servers() {
    let srv = start_server(|_| {}).await;
    // 3 Windows 7 + 2 Server 2008 R2: the servers activate at 5, the clients do not.
    let win7 = client_options("Windows 7 Professional", Version::V4);
    let s2008 = client_options("Windows Server 2008 R2 Standard", Version::V4);
    for _ in 0..3 {
        one(srv.addr, &win7, new_cmid()).await.unwrap();
    }
    one(srv.addr, &s2008, new_cmid()).await.unwrap();
    let c = one(srv.addr, &s2008, new_cmid()).await.unwrap();
    assert_eq!(c, 5);
    assert!(c >= s2008.n_policy && c < win7.n_policy);
    let opts = win10_opts();
    assert_eq!(opts.n_policy, 25);
    for want in 6..25 {
        assert_eq!(one(srv.addr, &opts, new_cmid()).await.unwrap(), want);
    }
    assert_eq!(
        one(srv.addr, &opts, new_cmid()).await.unwrap(),
        25,
        "the 25th machine activates"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_twice_the_highest_threshold_and_entries_expire_after_thirty_days() {
    let clock = TestClock::default();
    let srv = start_server_with_clock(tempfile::tempdir().unwrap(), clock.clock(), |_| {}).await;
    let opts = server_opts();
    let mut old = Vec::new();
    for _ in 0..12 {
        let id = new_cmid();
        old.push(id);
        one(srv.addr, &opts, id).await.unwrap();
    }
    assert_eq!(
        one(srv.addr, &opts, new_cmid()).await.unwrap(),
        10,
        "servers only: capacity 10"
    );
    // A client OS raises the capacity to 50 for good.
    assert_eq!(one(srv.addr, &win10_opts(), new_cmid()).await.unwrap(), 11);
    assert_eq!(one(srv.addr, &opts, new_cmid()).await.unwrap(), 12);
    // 20 days on: renew one, add one.
    clock.advance_days(20);
    let renewed = old[11];
    assert_eq!(one(srv.addr, &opts, renewed).await.unwrap(), 12);
    assert_eq!(one(srv.addr, &opts, new_cmid()).await.unwrap(), 13);
    // 31 days after the start everything but the last two has aged out.
    clock.advance_days(11);
    assert_eq!(one(srv.addr, &opts, new_cmid()).await.unwrap(), 3);
    srv.host.flush().await.unwrap();
    // `kmsd status` reads the same pools from disk.
    let status = common::status(srv.dir.path(), clock.clock()());
    let w = status.pools.iter().find(|p| p.pool == "windows").unwrap();
    assert_eq!((w.count, w.capacity), (3, 50));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_identity_survive_a_restart() {
    let srv = start_server(|_| {}).await;
    let opts = server_opts();
    let ids: Vec<Guid> = (0..4).map(|_| new_cmid()).collect();
    for id in &ids {
        one(srv.addr, &opts, *id).await.unwrap();
    }
    let epids: Vec<String> = products::epid_groups()
        .iter()
        .map(|g| srv.host.epid(g.name).unwrap().to_string())
        .collect();
    let dir = srv.stop().await;
    let srv = start_server_in(dir, |_| {}).await;
    if std::env::var("KMSD_TEST_STORE").as_deref() == Ok("memory") {
        // A memory store forgets at exit, by design: the restarted host
        // counts from scratch.
        assert_eq!(one(srv.addr, &opts, ids[2]).await.unwrap(), 1);
        srv.stop().await;
        return;
    }
    let again: Vec<String> = products::epid_groups()
        .iter()
        .map(|g| srv.host.epid(g.name).unwrap().to_string())
        .collect();
    assert_eq!(epids, again, "ePIDs are stable across restarts");
    assert_eq!(
        one(srv.addr, &opts, ids[2]).await.unwrap(),
        4,
        "known CMID after restart"
    );
    assert_eq!(one(srv.addr, &opts, new_cmid()).await.unwrap(), 5);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_policy_refusals_carry_the_right_hresult_and_count_nothing() {
    let srv = start_server(|c| {
        c.served_groups = vec!["Windows".into()];
        c.max_clock_skew = Some(std::time::Duration::from_secs(4 * 3600));
    })
    .await;
    let refused = |r: Result<u32, ClientError>| match r {
        Err(ClientError::Hresult(h)) => h,
        other => panic!("expected an HRESULT, got {other:?}"),
    };
    // Office is not served by this host.
    let office = client_options("Office LTSC Professional Plus 2021", Version::V6);
    assert_eq!(
        refused(one(srv.addr, &office, new_cmid()).await),
        0xC004_F042
    );
    // A retail KMS counted ID.
    let mut retail = win10_opts();
    retail.kms_id = "e1c51358-fe3e-4203-a4a2-3b6b20c9734e".parse().unwrap();
    assert_eq!(
        refused(one(srv.addr, &retail, new_cmid()).await),
        0xC004_F042
    );
    // Application ID that does not match the KMS counted ID.
    let mut mismatch = win10_opts();
    mismatch.app_id = products::Pool::Office2013Plus.app_id();
    assert_eq!(
        refused(one(srv.addr, &mismatch, new_cmid()).await),
        0xC004_F042
    );
    // An unknown KMS counted ID (strict by default).
    let mut unknown = win10_opts();
    unknown.kms_id = "00000000-1111-2222-3333-444444444444".parse().unwrap();
    assert_eq!(
        refused(one(srv.addr, &unknown, new_cmid()).await),
        0xC004_F042
    );
    // N_Policy beyond any real threshold.
    let mut greedy = win10_opts();
    greedy.n_policy = 1001;
    assert_eq!(
        refused(one(srv.addr, &greedy, new_cmid()).await),
        0x8007_000D
    );
    // A client clock five hours off.
    let mut skewed = win10_opts();
    skewed.clock_offset_ms = 5 * 3_600_000;
    assert_eq!(
        refused(one(srv.addr, &skewed, new_cmid()).await),
        0xC004_F06C
    );
    // None of that was counted.
    assert_eq!(one(srv.addr, &win10_opts(), new_cmid()).await.unwrap(), 1);
    srv.host.flush().await.unwrap();
    let status = srv.status().await;
    let refusals: u64 = status
        .totals
        .iter()
        .filter(|t| t.result != "answered")
        .map(|t| t.requests)
        .sum();
    assert_eq!(refusals, 6, "{status:#?}");
    assert!(
        status
            .epids
            .iter()
            .all(|e| e.served == (e.group == "Windows"))
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_hosts_serve_unknown_products_as_windows() {
    let srv = start_server(|c| c.strict_products = false).await;
    let mut unknown = win10_opts();
    unknown.kms_id = "00000000-1111-2222-3333-444444444444".parse().unwrap();
    let mut c = Connection::open(srv.addr, unknown).await.unwrap();
    let x = c.activate(new_cmid()).await.unwrap();
    assert_eq!(
        x.response.epid,
        srv.host.epid("Windows").unwrap().to_string()
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_count_mode_answers_the_same_count_to_everyone() {
    let srv = start_server(|c| c.count_mode = CountMode::Fixed(50)).await;
    for _ in 0..3 {
        assert_eq!(one(srv.addr, &server_opts(), new_cmid()).await.unwrap(), 50);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_separate_per_application() {
    let srv = start_server(|_| {}).await;
    let o2010 = client_options("Office Professional Plus 2010", Version::V4);
    let o2019 = client_options("Office Professional Plus 2019", Version::V6);
    assert_eq!(one(srv.addr, &server_opts(), new_cmid()).await.unwrap(), 1);
    assert_eq!(one(srv.addr, &o2010, new_cmid()).await.unwrap(), 1);
    assert_eq!(one(srv.addr, &o2019, new_cmid()).await.unwrap(), 1);
    assert_eq!(one(srv.addr, &o2019, new_cmid()).await.unwrap(), 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_lists_every_machine_with_its_live_flag() {
    let clock = TestClock::default();
    let srv = start_server_with_clock(tempfile::tempdir().unwrap(), clock.clock(), |_| {}).await;
    let mut opts = server_opts();
    opts.workstation = "lab-ws-01".into();
    let a = new_cmid();
    one(srv.addr, &opts, a).await.unwrap();
    one(srv.addr, &opts, a).await.unwrap();
    clock.advance_days(31);
    let b = new_cmid();
    one(srv.addr, &opts, b).await.unwrap();
    srv.host.flush().await.unwrap();
    let rows = common::clients(srv.dir.path(), clock.clock()(), 100);
    assert_eq!(rows.len(), 2);
    let row = |g: Guid| rows.iter().find(|r| r.cmid == g.to_string()).unwrap();
    assert_eq!(row(a).requests, 2);
    assert!(!row(a).live, "aged out of the pool, still in the inventory");
    assert!(row(b).live);
    assert_eq!(row(b).workstation, "lab-ws-01");
    assert_eq!(row(b).product, "Windows Server 2022 Standard");
    srv.stop().await;
}

#[tokio::test]
async fn a_corrupt_database_is_a_clear_error_not_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(kmsd::store::DB_FILE);
    std::fs::write(&db, vec![0x42u8; 8192]).unwrap();
    let cfg = test_config(dir.path());
    let err = kmsd::host::Host::open(&cfg, kmsd::host::system_clock(), Default::default())
        .await
        .err()
        .expect("must refuse");
    let msg = err.to_string();
    assert!(msg.contains("kmsd.sqlite3"), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        vec![0x42u8; 8192],
        "left untouched"
    );
}
