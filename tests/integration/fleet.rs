//! The fleet: hosts sharing one count on a real PostgreSQL (the cluster
//! scripts/test starts; each test gets a fresh database). Counts are exactly
//! those of one host under concurrency across hosts and isolation levels;
//! ePIDs are shared; a configured ePID that differs is refused; a host
//! killed with SIGKILL loses no acknowledged activation; the database
//! stopped and started under load loses nothing and reveals nothing that
//! was not committed; start-up errors say what is wrong.

use crate::common::*;
use kmsd::client::{ClientError, ClientOptions, Connection};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::Version;
use kmsd::protocol::kms::products;
use kmsd::store::Backend;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

async fn one(addr: SocketAddr, opts: &ClientOptions, cmid: Guid) -> Result<u32, ClientError> {
    let mut c = Connection::open(addr, opts.clone()).await?;
    Ok(c.activate(cmid).await?.response.count)
}

/// `n` hosts on the database `url`, each with its own data dir.
async fn fleet(url: &str, n: usize, isolation: &str) -> Vec<TestServer> {
    let mut hosts = Vec::new();
    for _ in 0..n {
        let (url, iso) = (url.to_owned(), isolation.to_owned());
        hosts.push(
            start_server_with_clock(
                tempfile::tempdir().unwrap(),
                kmsd::host::system_clock(),
                move |c| {
                    c.store = Backend::Postgres(url);
                    c.store_isolation = iso.parse().unwrap();
                },
            )
            .await,
        );
    }
    hosts
}

async fn stop_all(hosts: Vec<TestServer>) {
    for h in hosts {
        h.stop().await;
    }
}

fn win10() -> ClientOptions {
    client_options("Windows 10/11 Enterprise", Version::V6)
}

fn server() -> ClientOptions {
    client_options("Windows Server 2022 Standard", Version::V6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_activations_over_three_hosts_count_as_one_host() {
    let Some(url) = pg_database().await else {
        return;
    };
    let hosts = fleet(&url, 3, "read-committed").await;
    let opts = win10();
    let mut ids = Vec::new();
    for i in 0..9 {
        let id = new_cmid();
        ids.push(id);
        let got = one(hosts[i % 3].addr, &opts, id).await.unwrap();
        assert_eq!(got, i as u32 + 1, "machine {i} through host {}", i % 3);
    }
    // A machine that asks again, through another host, is not counted again.
    assert_eq!(one(hosts[2].addr, &opts, ids[0]).await.unwrap(), 9);
    // Every host holds the fleet's ePIDs.
    for g in products::epid_groups() {
        let e: HashSet<String> = hosts
            .iter()
            .map(|h| h.host.epid(g.name).unwrap().to_string())
            .collect();
        assert_eq!(e.len(), 1, "one ePID for {} across the fleet", g.name);
    }
    // The shared status lists three hosts, all alive, and the pool.
    let st = hosts[0].status().await;
    assert_eq!(st.hosts.len(), 3);
    assert!(st.hosts.iter().all(|h| h.alive && !h.listen.is_empty()));
    assert_eq!(st.hosts.iter().map(|h| h.requests).sum::<u64>(), 10);
    let w = st.pools.iter().find(|p| p.pool == "windows").unwrap();
    assert_eq!((w.count, w.capacity), (9, 50));
    assert_eq!(hosts[1].clients(100).await.len(), 9);
    stop_all(hosts).await;
}

/// 48 distinct machines at once over three hosts: every count from 1 to
/// 48 handed out exactly once (no lost update, no double count).
async fn burst_is_exact(isolation: &str) {
    let Some(url) = pg_database().await else {
        return;
    };
    let hosts = fleet(&url, 3, isolation).await;
    let addrs: Vec<SocketAddr> = hosts.iter().map(|h| h.addr).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..48 {
        let addr = addrs[i % 3];
        tasks.spawn(async move { one(addr, &win10(), new_cmid()).await });
    }
    let mut counts = Vec::new();
    while let Some(r) = tasks.join_next().await {
        counts.push(r.unwrap().expect("every activation answered"));
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=48).collect::<Vec<u32>>(), "{isolation}");
    stop_all(hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_burst_is_counted_exactly_under_read_committed() {
    burst_is_exact("read-committed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_burst_is_counted_exactly_under_repeatable_read() {
    burst_is_exact("repeatable-read").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_burst_is_counted_exactly_under_serializable() {
    burst_is_exact("serializable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_and_eviction_hold_across_hosts() {
    let Some(url) = pg_database().await else {
        return;
    };
    let hosts = fleet(&url, 3, "read-committed").await;
    let opts = server();
    let mut ids = Vec::new();
    for i in 0..12 {
        let id = new_cmid();
        ids.push(id);
        let want = (i as u32 + 1).min(10);
        assert_eq!(one(hosts[i % 3].addr, &opts, id).await.unwrap(), want);
    }
    // The two seen longest ago made room: asking again they are new.
    let pools = kmsd::store::StoreReader::open(&Backend::Postgres(url.clone()), "/".as_ref())
        .unwrap()
        .pools(0)
        .await
        .unwrap();
    let w = pools
        .iter()
        .find(|p| p.pool == products::Pool::Windows)
        .unwrap();
    let live: HashSet<Guid> = w.entries.iter().map(|(g, _)| *g).collect();
    assert_eq!(w.capacity, 10);
    assert_eq!(live, ids[2..].iter().copied().collect::<HashSet<_>>());
    // A client OS raises the capacity for the whole fleet.
    assert_eq!(one(hosts[1].addr, &win10(), new_cmid()).await.unwrap(), 11);
    assert_eq!(one(hosts[2].addr, &opts, ids[0]).await.unwrap(), 12);
    stop_all(hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_on_the_database_clock() {
    let Some(url) = pg_database().await else {
        return;
    };
    let hosts = fleet(&url, 2, "read-committed").await;
    let opts = server();
    for h in &hosts {
        one(h.addr, &opts, new_cmid()).await.unwrap();
    }
    // Age both entries by 31 days in the database itself (the fleet's one
    // clock decides; the hosts' clocks play no part), as a writer does:
    // with the pool's version moved, so hosts reload it.
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    c.batch_execute(
        "UPDATE pool_entries SET last_seen_ms = last_seen_ms - 31 * 86400000::BIGINT;
         UPDATE pools SET version = version + 1;",
    )
    .await
    .unwrap();
    drop(c);
    let _ = task.await;
    assert_eq!(one(hosts[1].addr, &opts, new_cmid()).await.unwrap(), 1);
    stop_all(hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_epid_that_differs_from_the_fleets_is_refused() {
    let Some(url) = pg_database().await else {
        return;
    };
    let hosts = fleet(&url, 1, "read-committed").await;
    let fleet_epid = hosts[0].host.epid("Windows").unwrap().to_string();
    let other = "03612-04918-000-000001-03-1033-26100.0000-0012026".to_owned();
    assert_ne!(fleet_epid, other);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.store = Backend::Postgres(url.clone());
    cfg.epids.insert("Windows".into(), other.clone());
    let err = kmsd::app::App::start(cfg, Default::default())
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains(&other) && msg.contains(&fleet_epid), "{msg}");
    // The same ePID as the fleet's is fine.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.store = Backend::Postgres(url);
    cfg.epids.insert("Windows".into(), fleet_epid);
    kmsd::app::App::start(cfg, Default::default())
        .await
        .unwrap()
        .stop()
        .await
        .unwrap();
    stop_all(hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_name_what_is_wrong() {
    let Some(admin) = pg_admin() else {
        return;
    };
    let base = admin.rsplit_once('/').unwrap().0.to_owned();
    let start = |store: &str| {
        let store = store.to_owned();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = test_config(dir.path());
            cfg.store = store.parse().map_err(|e: String| e)?;
            kmsd::app::App::start(cfg, Default::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let missing = start(&format!("{base}/no_such_db_kmsd")).await.unwrap_err();
    assert!(
        missing.contains("no_such_db_kmsd") && missing.contains("does not exist"),
        "{missing}"
    );
    // Nothing listens on port 1 of loopback.
    let refused = start("postgres://kmsd:secret@127.0.0.1:1/fleet")
        .await
        .unwrap_err();
    assert!(refused.contains("127.0.0.1:1"), "{refused}");
    assert!(
        !refused.contains("secret"),
        "no password in messages: {refused}"
    );
    let bad = start("postgres://kmsd@127.0.0.1/fleet?sslmode=sometimes")
        .await
        .unwrap_err();
    assert!(bad.contains("sslmode"), "{bad}");
    // A schema newer than this kmsd is refused, untouched.
    let url = pg_database().await.unwrap();
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    c.batch_execute(
        "CREATE TABLE kmsd_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO kmsd_meta VALUES ('schema_version', '99');",
    )
    .await
    .unwrap();
    let newer = start(&url).await.unwrap_err();
    assert!(newer.contains("newer than this kmsd"), "{newer}");
    let tables: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "nothing created");
    drop(c);
    let _ = task.await;
}

/// Runs the real binary on `url` and loads it until `stop` says so;
/// returns every CMID acknowledged.
fn acked_under_load(
    addr: SocketAddr,
    until: Instant,
) -> tokio::task::JoinHandle<(Vec<Guid>, BTreeMap<String, u64>)> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut set = tokio::task::JoinSet::new();
        while Instant::now() < until {
            while set.len() < 8 {
                set.spawn(async move {
                    let id = new_cmid();
                    let r = tokio::time::timeout(Duration::from_secs(10), one(addr, &win10(), id))
                        .await;
                    (id, r)
                });
            }
            if let Some(Ok((id, r))) = set.join_next().await {
                match r {
                    Ok(Ok(_)) => acked.push(id),
                    Ok(Err(e)) => {
                        *errors
                            .entry(format!("{e:?}").chars().take(40).collect())
                            .or_default() += 1
                    }
                    Err(_) => *errors.entry("timeout".into()).or_default() += 1,
                }
            }
        }
        while let Some(Ok((id, Ok(Ok(_))))) = set.join_next().await {
            acked.push(id);
        }
        (acked, errors)
    })
}

async fn stored_cmids(url: &str) -> HashSet<Guid> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let rows = c
        .query("SELECT cmid FROM activations WHERE hresult = 0", &[])
        .await
        .unwrap();
    drop(c);
    let _ = task.await;
    rows.iter()
        .map(|r| Guid(<[u8; 16]>::try_from(r.get::<_, &[u8]>(0)).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_under_load_loses_no_acknowledged_activation() {
    let Some(url) = pg_database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_host_with(dir.path(), 0, &["--store", &url]);
    let load = acked_under_load(addr, Instant::now() + Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let (acked, _) = load.await.unwrap();
    assert!(
        acked.len() >= 10,
        "the load ran ({} acknowledged)",
        acked.len()
    );
    let stored = stored_cmids(&url).await;
    for id in &acked {
        assert!(
            stored.contains(id),
            "acknowledged {id} missing from the fleet"
        );
    }
    // Another host carries on with the same count.
    let hosts = fleet(&url, 1, "read-committed").await;
    let next = one(hosts[0].addr, &win10(), new_cmid()).await.unwrap();
    assert_eq!(next as usize, (stored.len() + 1).min(50));
    stop_all(hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarted_under_load_loses_nothing_and_the_host_recovers() {
    if pg_admin().is_none() {
        return;
    }
    // Its own cluster: stopping the shared one would break other tests.
    let cluster = OwnCluster::start(false);
    let url = cluster.admin.clone();
    let hosts = fleet(&url, 1, "read-committed").await;
    let h = &hosts[0];
    let load = acked_under_load(h.addr, Instant::now() + Duration::from_secs(6));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.run(&["stop"]);
    // While it is down: a request is answered (an error) within the bounded
    // time, the health probe says why.
    let t = Instant::now();
    let down = one(h.addr, &win10(), new_cmid()).await;
    assert!(
        matches!(down, Err(ClientError::Hresult(0x8000_4005))),
        "{down:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "answered within the store timeout"
    );
    assert!(h.host.store().probe().await.is_err());
    // Restart it on the same port: the host recovers by itself.
    cluster.run(&["resume", &cluster.port().to_string()]);
    let (acked, errors) = load.await.unwrap();
    assert!(!errors.is_empty(), "the outage was seen by clients");
    let stored = stored_cmids(&url).await;
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} lost in the restart");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(n) = one(h.addr, &win10(), new_cmid()).await {
            assert!(n >= 1);
            break;
        }
        assert!(Instant::now() < deadline, "the host did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(h.host.store().probe().await.is_ok());
    stop_all(hosts).await;
}

/// A PostgreSQL cluster of one test's own (stopping the shared one would
/// break the others), from scripts/pg; stopped when dropped, even when the
/// test fails.
struct OwnCluster {
    dir: tempfile::TempDir,
    admin: String,
}

impl OwnCluster {
    fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(Self::SCRIPT);
        if tls {
            cmd.env("PG_TLS", "1");
        }
        let out = cmd
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { dir, admin }
    }

    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg");

    /// The cluster's own directory (data, socket, TLS files).
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("pg")
    }

    fn port(&self) -> u16 {
        let hostport = self.admin.rsplit('@').next().unwrap();
        hostport.split(['/', ':']).nth(1).unwrap().parse().unwrap()
    }

    /// `scripts/pg ACTION DIR [ARGS]`, which must succeed.
    fn run(&self, args: &[&str]) {
        let (action, rest) = args.split_first().unwrap();
        let ok = std::process::Command::new(Self::SCRIPT)
            .arg(action)
            .arg(self.path())
            .args(rest)
            .status()
            .unwrap();
        assert!(ok.success(), "scripts/pg {args:?}");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::SCRIPT)
            .arg("stop")
            .arg(self.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_single_host_into_a_fleet_and_can_run_again() {
    let Some(url) = pg_database().await else {
        return;
    };
    // A single host on SQLite: three servers counted, one refusal.
    let srv = start_server_with_clock(
        tempfile::tempdir().unwrap(),
        kmsd::host::system_clock(),
        |_| {},
    )
    .await;
    let ids: Vec<Guid> = (0..3).map(|_| new_cmid()).collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(one(srv.addr, &server(), *id).await.unwrap(), i as u32 + 1);
    }
    let mut retail = server();
    retail.kms_id = Guid::from_u128(0x1234);
    assert!(one(srv.addr, &retail, new_cmid()).await.is_err());
    let windows_epid = srv.host.epid("Windows").unwrap().to_string();
    let dir = srv.stop().await;

    // What a progress bar would be told: each stage's total, then rows.
    use kmsd::store::postgres::import::Progress;
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |p: Progress| seen.lock().unwrap().push(p);
    let first = kmsd::store::postgres::import::copy(dir.path(), &url, false, &progress)
        .await
        .unwrap();
    let stages: Vec<(&str, u64, u64)> = seen.lock().unwrap().iter().fold(Vec::new(), |mut v, p| {
        match *p {
            Progress::Stage { what, total } => v.push((what, total, 0)),
            Progress::Done(n) => v.last_mut().unwrap().2 += n,
        }
        v
    });
    assert_eq!(
        stages,
        vec![("inventory", 4, 4), ("activation log", 4, 4)],
        "the bar's totals and steps"
    );
    assert_eq!(
        (
            first.records_copied,
            first.inventory,
            first.epids_added,
            first.pool_entries
        ),
        (4, 4, 8, 3),
        "{first}"
    );
    let again = kmsd::store::postgres::import::copy(dir.path(), &url, false, &|_| {})
        .await
        .unwrap();
    assert_eq!(
        (again.records_copied, again.records_already_there),
        (0, 4),
        "{again}"
    );
    assert_eq!(again.epids_added, 0);

    // A fleet host on the copy carries on where the single host stopped.
    let hosts = fleet(&url, 1, "read-committed").await;
    assert_eq!(
        hosts[0].host.epid("Windows").unwrap().to_string(),
        windows_epid
    );
    assert_eq!(
        one(hosts[0].addr, &server(), ids[1]).await.unwrap(),
        3,
        "known machine"
    );
    assert_eq!(one(hosts[0].addr, &server(), new_cmid()).await.unwrap(), 4);
    let st = hosts[0].status().await;
    let answered: u64 = st
        .totals
        .iter()
        .filter(|t| t.result == "answered")
        .map(|t| t.requests)
        .sum();
    assert_eq!(answered, 5, "totals copied once, not twice");
    assert!(
        st.hosts.iter().all(|h| !h.id.starts_with("copied:")),
        "a copy is no host: {:?}",
        st.hosts
    );
    assert_eq!(st.imports.len(), 1, "the copy is listed as an import");
    assert!(
        dir.path()
            .canonicalize()
            .is_ok_and(|d| st.imports[0].source.starts_with(&d.display().to_string())),
        "{:?}",
        st.imports
    );
    assert!(st.imports[0].first_copied <= st.imports[0].last_copied);
    assert_eq!(hosts[0].clients(100).await.len(), 5);

    // Another single host into the same database: refused unless --merge
    // (through the real binary's command line).
    let other = tempfile::tempdir().unwrap();
    let srv = start_server_in(other, |c| c.store = Backend::Sqlite).await;
    one(srv.addr, &server(), new_cmid()).await.unwrap();
    let other = srv.stop().await;
    let run = |merge: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"));
        cmd.args(["store", "copy", "--from"])
            .arg(other.path())
            .args(["--to", &url]);
        if merge {
            cmd.arg("--merge");
        }
        cmd.output().unwrap()
    };
    let refused = run(false);
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("already holds a fleet") && msg.contains("--merge"),
        "{msg}"
    );
    let merged = run(true);
    assert!(
        merged.status.success(),
        "{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    let out = String::from_utf8_lossy(&merged.stdout);
    assert!(
        out.contains("0 ePIDs added (8 kept from the fleet)"),
        "{out}"
    );
    // Run again on a database that has the schema: no server notices.
    let again = run(true);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(again.status.success(), "{all}");
    assert!(
        !all.contains("NOTICE") && !all.contains("already exists"),
        "{all}"
    );
    assert_eq!(one(hosts[0].addr, &server(), new_cmid()).await.unwrap(), 6);
    stop_all(hosts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_works_and_a_wrong_ca_is_refused_by_name() {
    if pg_admin().is_none() {
        return;
    }
    // Its own cluster with TLS on (scripts/pg makes a CA and a certificate
    // for 127.0.0.1 with openssl).
    let cluster = OwnCluster::start(true);
    let admin = cluster.admin.clone();
    let ca = cluster.path().join("tls/ca.pem");
    let url = format!("{admin}?sslmode=verify-full&sslrootcert={}", ca.display());
    let hosts = fleet(&url, 1, "read-committed").await;
    assert_eq!(one(hosts[0].addr, &server(), new_cmid()).await.unwrap(), 1);
    assert!(
        hosts[0]
            .host
            .store()
            .location()
            .starts_with("postgres://postgres@127.0.0.1")
    );
    stop_all(hosts).await;
    // A CA that did not sign the server's certificate.
    let other = cluster.path().join("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other",
        ])
        .arg("-keyout")
        .arg(cluster.path().join("other.key"))
        .arg("-out")
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.store = format!(
        "{admin}?sslmode=verify-full&sslrootcert={}",
        other.display()
    )
    .parse()
    .unwrap();
    let err = kmsd::app::App::start(cfg, Default::default())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("is unavailable") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

/// Retention keeps the fleet's activation log at `keep_records`: the trim
/// runs against the real database (it once failed on every run, typing
/// its bound as int4) and leaves exactly the newest records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_the_activation_log_to_keep_records() {
    let Some(url) = pg_database().await else {
        return;
    };
    let host = fleet(&url, 1, "read-committed").await.remove(0);
    let opts = server();
    for _ in 0..300 {
        one(host.addr, &opts, new_cmid()).await.unwrap();
    }
    assert_eq!(host.status().await.records_kept, 300);
    let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let trimmed = kmsd::store::postgres::trim(&mut c, 50).await.unwrap();
    assert_eq!(trimmed, 250, "one chunk trims everything past 50");
    assert_eq!(kmsd::store::postgres::trim(&mut c, 50).await.unwrap(), 0);
    let newest: i64 = c
        .query_one("SELECT MAX(id) - MIN(id) + 1 FROM activations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(newest, 50, "the newest 50 are kept, contiguous");
    drop(c);
    let _ = task.await;
    assert_eq!(host.status().await.records_kept, 50);
    host.stop().await;
}

/// A fleet host reading through its own store sees its own notes (the
/// status page's header, the DNS publisher's previous records); the CLI's
/// reader of the fleet sees every host's, per host, and none store-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_host_reads_its_own_notes() {
    let Some(url) = pg_database().await else {
        return;
    };
    let hosts = fleet(&url, 2, "read-committed").await;
    let own = hosts[1]
        .host
        .store()
        .status(hosts[1].host.now_ms())
        .await
        .unwrap();
    let listen = hosts[1].addr.to_string();
    assert_eq!(own.notes.listen, vec![listen.clone()], "{:?}", own.notes);
    let notes = hosts[1].host.store().reader().notes().await.unwrap();
    assert_eq!(notes.listen, vec![listen]);
    assert!(
        notes.version.is_some() && notes.started_ms.is_some(),
        "{notes:?}"
    );
    let cli = kmsd::store::StoreReader::open(&Backend::Postgres(url.clone()), "/".as_ref())
        .unwrap()
        .status(0)
        .await
        .unwrap();
    assert_eq!(cli.notes, kmsd::store::HostNotes::default());
    assert_eq!(cli.hosts.len(), 2);
    stop_all(hosts).await;
}
