//! Soak: the real binary under mixed valid and invalid traffic with a
//! restart in the middle. Reports resident memory over time, errors seen by
//! valid clients and acknowledged records lost; asserts the last two are
//! zero and memory stays flat. CI runs it briefly; `scripts/soak` runs it
//! for minutes (KMSD_SOAK_SECS).

use crate::common::*;
use kmsd::client::{ClientError, Connection};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::Version;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_with_a_restart() {
    let secs: u64 = std::env::var("KMSD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
        .max(4);
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_host(dir.path(), 0);
    let child = Arc::new(Mutex::new(child));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<Guid>::new()));
    let valid_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let invalid_sent = Arc::new(AtomicU64::new(0));
    // When (seconds into the soak) a valid client had to retry.
    let retries = Arc::new(Mutex::new(Vec::<f64>::new()));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    // Valid clients: fresh connection per activation. A client retries a
    // connection refused or reset during the restart (as Windows clients
    // retry); any other failure (an error answer, a bad or truncated
    // response) counts.
    for w in 0..4usize {
        let (stop, acked, errors) = (stop.clone(), acked.clone(), valid_errors.clone());
        let retries = retries.clone();
        tasks.push(tokio::spawn(async move {
            let opts = client_options(
                [
                    "Windows 10/11 Enterprise",
                    "Windows Server 2022 Standard",
                    "Office Professional Plus 2019",
                ][w % 3],
                Version::ALL[w % 3],
            );
            while !stop.load(Ordering::SeqCst) {
                let cmid = new_cmid();
                let started = Instant::now();
                loop {
                    let r = async {
                        let mut c = Connection::open(addr, opts.clone()).await?;
                        c.activate(cmid).await
                    }
                    .await;
                    match r {
                        Ok(_) => {
                            acked.lock().unwrap().push(cmid);
                            break;
                        }
                        Err(
                            ClientError::Connect { .. }
                            | ClientError::Closed(_)
                            | ClientError::Io(_),
                        ) if started.elapsed() < Duration::from_secs(10) => {
                            retries.lock().unwrap().push(t0.elapsed().as_secs_f64());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(e.to_string());
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Invalid traffic: garbage, bad MACs, half-sent PDUs.
    let bad_mac = {
        let mut pdus = split_pdus(&read_bin("v4_win7.c2s.bin"));
        for p in pdus.iter_mut().skip(2) {
            let n = p.len();
            p[n - 1] ^= 1;
        }
        pdus.concat()
    };
    for w in 0..3usize {
        let (stop, sent, bad_mac) = (stop.clone(), invalid_sent.clone(), bad_mac.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    let payload: Vec<u8> = match (w + i as usize) % 3 {
                        0 => (0..300).map(|k| (k as u8) ^ (i as u8)).collect(),
                        1 => bad_mac.clone(),
                        _ => bad_mac[..40].to_vec(),
                    };
                    let _ = s.write_all(&payload).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    // Sample memory every 500 ms; restart half way.
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let start = Instant::now();
    let mut restarted = false;
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = child.lock().unwrap().id();
        if let Some(kib) = rss_kib(pid) {
            samples.push((start.elapsed().as_secs_f64(), kib));
        }
        if !restarted && start.elapsed() >= Duration::from_secs(secs / 2) {
            restarted = true;
            let mut c = child.lock().unwrap();
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            assert!(c.wait().unwrap().success(), "clean exit on SIGTERM");
            let (new, _) = spawn_host(dir.path(), addr.port());
            *c = new;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = child.lock().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    assert!(c.wait().unwrap().success());

    let acked = acked.lock().unwrap().clone();
    let errors = valid_errors.lock().unwrap().clone();
    let conn = kmsd::store::sqlite::open_ro(&dir.path().join(kmsd::store::DB_FILE)).unwrap();
    let stored: std::collections::HashSet<Vec<u8>> = conn
        .prepare("SELECT cmid FROM clients")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let lost = acked
        .iter()
        .filter(|g| !stored.contains(g.0.as_slice()))
        .count();
    eprintln!(
        "soak {secs}s: {} valid activations, {} invalid connections, {} valid-client errors, {lost} acknowledged records lost",
        acked.len(),
        invalid_sent.load(Ordering::Relaxed),
        errors.len()
    );
    eprintln!("resident memory (s, KiB): {samples:?}");
    assert!(acked.len() > 50, "the soak ran");
    // Retries happen only around the restart, never in steady state.
    let restart_at = (secs / 2) as f64;
    let stray: Vec<f64> = retries
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t < restart_at - 0.5 || *t > restart_at + 5.0)
        .collect();
    assert!(
        stray.is_empty(),
        "valid clients had to retry outside the restart: {stray:?}"
    );
    assert!(errors.is_empty(), "valid clients saw errors: {errors:?}");
    assert_eq!(lost, 0);
    // Flat memory: after warm-up, the second life's last sample stays
    // within 1.5x (+8 MiB) of its first.
    let second: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t > (secs / 2) as f64 + 1.0)
        .map(|s| s.1)
        .collect();
    if let (Some(first), Some(last)) = (second.first(), second.last()) {
        assert!(
            *last <= first * 3 / 2 + 8192,
            "memory grew from {first} KiB to {last} KiB"
        );
    }
}
