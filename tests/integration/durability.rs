//! Crash safety of the real binary: every client that received a response
//! is on disk after `kill -9` during a load, and SIGTERM lets in-flight
//! exchanges finish.

use crate::common::{self, *};
use kmsd::client::{ClientError, Connection};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::Version;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `workers` clients, each making activations with fresh CMIDs on new
/// connections until `stop` is set; returns the CMIDs that got a verified
/// response and the errors seen.
async fn load(
    addr: SocketAddr,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<Guid>, Vec<String>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (acked, errors, stop) = (acked.clone(), errors.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let version = Version::ALL[w % 3];
            let mut opts = client_options("Windows 10/11 Enterprise", version);
            opts.timeout = Duration::from_secs(5);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let cmid = new_cmid();
                let r = async {
                    let mut c = Connection::open(addr, opts.clone()).await?;
                    c.activate(cmid).await
                }
                .await;
                match r {
                    Ok(x) => {
                        assert_eq!(x.response.cmid, cmid);
                        acked.lock().unwrap().push(cmid);
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        if matches!(e, ClientError::Connect { .. }) {
                            break;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let a = acked.lock().unwrap().clone();
    let e = errors.lock().unwrap().clone();
    (a, e)
}

fn stored(dir: &std::path::Path, table: &str) -> std::collections::HashSet<Guid> {
    let conn = kmsd::store::sqlite::open_ro(&dir.join(kmsd::store::DB_FILE)).unwrap();
    let mut stmt = conn.prepare(&format!("SELECT cmid FROM {table}")).unwrap();
    stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|b| Guid(b.unwrap().try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_load_loses_no_acknowledged_client() {
    kill_9_during_a_load(&[]).await;
}

/// `durability = "os"` commits without the flush: a `kill -9` of kmsd
/// still loses nothing (what was written is in the OS's page cache), only
/// a power cut or an OS crash could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_durability_os_loses_no_acknowledged_client_either() {
    kill_9_during_a_load(&["--durability", "os"]).await;
}

async fn kill_9_during_a_load(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_host_with(dir.path(), 0, flags);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(load(addr, 8, stop.clone()));
    // Let the load run, then kill the host mid-flight.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, _errors) = load.await.unwrap();
    eprintln!("{} activations acknowledged before the kill", acked.len());
    assert!(
        acked.len() >= 20,
        "the load did run ({} acknowledged)",
        acked.len()
    );
    // Straight after the kill: every acknowledged client is in the durable
    // activation log, and the reports (which fold the log's tail the host
    // had no time to fold) list it.
    let log = stored(dir.path(), "activations");
    let listed: std::collections::HashSet<String> =
        common::clients(dir.path(), kmsd::store::unix_ms_now(), usize::MAX)
            .into_iter()
            .map(|c| c.cmid)
            .collect();
    for c in &acked {
        assert!(log.contains(c), "acknowledged {c} missing from the log");
        assert!(
            listed.contains(&c.to_string()),
            "acknowledged {c} missing from `kmsd clients`"
        );
    }
    // Restart: the pool is full (50 live Windows clients), a known client
    // does not grow it, and the host answers as before.
    let (mut child, addr) = spawn_host_with(dir.path(), 0, flags);
    let opts = client_options("Windows 10/11 Enterprise", Version::V6);
    let mut c = Connection::open(addr, opts).await.unwrap();
    let expect = (acked.len().min(50)) as u32;
    let count = c
        .activate(*acked.last().unwrap())
        .await
        .unwrap()
        .response
        .count;
    assert!(
        count >= expect,
        "count {count} after restart, {expect} acknowledged"
    );
    assert!(count <= 50);
    // A clean stop after the restart leaves the inventory and the stored
    // pool holding every acknowledged client: the start-up folded the log
    // tail the kill left behind.
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.wait().unwrap().success(), "clean exit on SIGTERM");
    let inventory = stored(dir.path(), "clients");
    let pool = stored(dir.path(), "pool_entries");
    for c in &acked {
        assert!(
            inventory.contains(c),
            "acknowledged {c} missing from the inventory"
        );
    }
    let live = sqlite_reader(dir.path())
        .pools(kmsd::store::unix_ms_now())
        .unwrap();
    let windows = live
        .iter()
        .find(|p| p.pool == kmsd::protocol::kms::products::Pool::Windows)
        .unwrap();
    for (c, _) in &windows.entries {
        assert!(pool.contains(c), "live entry {c} not in the stored pool");
    }
    assert_eq!(windows.entries.len(), count as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_exchanges_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_host(dir.path(), 0);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(load(addr, 4, stop.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "host did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, errors) = load.await.unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    // Clients saw answers or closed connections, never a half-written PDU.
    for e in &errors {
        assert!(
            !e.contains("malformed") && !e.contains("verification"),
            "a client saw a broken answer: {e}"
        );
    }
    let inventory = stored(dir.path(), "clients");
    assert!(acked.iter().all(|c| inventory.contains(c)));
}
