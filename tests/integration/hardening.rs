//! Field hardening (issue 13): a burst from one address behind NAT, the
//! admin listener under descriptor pressure, and clock steps.

use crate::common::*;
use kmsd::client::load::{self, LoadOptions};
use kmsd::metrics::ConnEvent;
use kmsd::protocol::kms::{Version, products};
use std::time::Duration;

/// A lab behind one NAT gateway: 256 clients from one loopback address,
/// each activation on a fresh TCP connection (as Windows does), for four
/// seconds against a host with default settings (64 connections per
/// address). The connections over the limit wait for a slot; none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_256_clients_from_one_address_has_no_errors() {
    let srv = start_server(|_| {}).await;
    let sku = products::find_sku("Windows 10/11 Enterprise").unwrap();
    let mut opts = LoadOptions::new(Version::V6, sku);
    opts.concurrency = 256;
    opts.duration = Duration::from_secs(4);
    opts.sources = 1;
    let report = load::run_with(srv.addr, opts).await.unwrap();
    eprintln!(
        "single-address burst: {} activations, {} connections, {:.0}/s, p99 {} µs, max {} µs, errors {:?}",
        report.activations,
        report.connections,
        report.activations_per_sec,
        report.latency_us.p99,
        report.latency_us.max,
        report.errors
    );
    assert_eq!(report.error_total, 0, "errors: {:?}", report.errors);
    assert!(
        report.activations >= 256,
        "only {} activations",
        report.activations
    );
    let m = srv.host.metrics();
    assert_eq!(m.conn_events(ConnEvent::RefusedPerAddressLimit), 0);
    assert_eq!(m.conn_events(ConnEvent::RefusedQueueTimeout), 0);
    assert!(
        m.connections_accepted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= report.activations
    );
    srv.stop().await;
}

/// The real binary under `ulimit -n 1024` (soft and hard), with the admin
/// listener on; returns the child, the KMS and admin addresses, and the
/// start-up log lines.
fn spawn_limited(
    dir: &std::path::Path,
) -> (
    std::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
    Vec<serde_json::Value>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 1024 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_kmsd"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kmsd starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut kms, mut admin, mut seen) = (None, None, Vec::new());
    while kms.is_none() || admin.is_none() {
        let line = lines.next().expect("kmsd exited early").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let addr = || v["fields"]["addr"].as_str().unwrap().parse().unwrap();
        match v["fields"]["message"].as_str() {
            Some("listening") => kms = Some(addr()),
            Some("admin API listening") => admin = Some(addr()),
            _ => {}
        }
        seen.push(v);
    }
    std::thread::spawn(move || for _ in lines {});
    (child, kms.unwrap(), admin.unwrap(), seen)
}

/// `GET path` over a fresh connection: the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: kmsd\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_default();
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    Ok((code, body.to_owned()))
}

/// Under `ulimit -n 1024`, 1,500 connections that each send half a request
/// to the admin port: the host budgets its descriptors (the default 4096
/// connections do not fit, so it lowers the limit and says so), the admin
/// listener keeps a few dozen of them, and meanwhile a fresh `/healthz`
/// answers 200 and an activation on the KMS port completes. Bounds: the
/// best of three under 1 s, none over 5 s (a loaded 2-core box); without
/// the limits both hang until the crowd goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_half_requests_on_the_admin_port_starves_nothing() {
    use std::time::Instant;
    use tokio::io::AsyncWriteExt;
    // This process holds the 1,500 sockets.
    let soft = rlimit::increase_nofile_limit(4096).unwrap();
    assert!(soft >= 2000, "the test needs 2,000 descriptors, has {soft}");
    let dir = tempfile::tempdir().unwrap();
    let (mut child, kms, admin, log) = spawn_limited(dir.path());
    let warned = log.iter().find(|v| {
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not fit the descriptor limit"))
    });
    let effective =
        warned.expect("a warning that max_connections was lowered")["fields"]["effective"]
            .as_u64()
            .unwrap();
    assert!((512..1024).contains(&effective), "effective {effective}");

    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let crowd: Vec<_> = (0..1500)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _p = gate.acquire().await.unwrap();
                let c = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::net::TcpStream::connect(admin),
                )
                .await;
                let Ok(Ok(mut s)) = c else { return None };
                // The server may already have closed it: that is its right.
                let _ = s
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: kmsd\r\n")
                    .await;
                Some(s)
            })
        })
        .collect();
    let mut held = Vec::new();
    for t in crowd {
        held.extend(t.await.unwrap());
    }
    assert_eq!(held.len(), 1500, "every crowd connection was accepted");

    let (mut health, mut activation) = (Vec::new(), Vec::new());
    // Five tries: the claim is that a fresh client is served within a
    // second while the crowd holds on; a busy CI box may slow one try.
    // A crowd connection that the kernel completed while the listen queue
    // was full reaches the host later than a try; enough of them can
    // replace the try's connection before its headers are read (the
    // listener replaces the oldest one still waiting, by design), and the
    // client sees a reset: it asks again, and the time includes that.
    for _ in 0..5 {
        let t = Instant::now();
        let mut resets = 0;
        let (code, body) = loop {
            let got =
                tokio::time::timeout(Duration::from_secs(10), http_get(admin, "/healthz")).await;
            match got.expect("/healthz within 10 s") {
                Ok(r) => break r,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && resets < 3 => {
                    eprintln!("/healthz reset ({e}); asking again");
                    resets += 1;
                }
                Err(e) => panic!("/healthz: {e}"),
            }
        };
        assert_eq!(code, 200, "/healthz: {body}");
        health.push(t.elapsed());
        let t = Instant::now();
        let opts = client_options(
            "Windows Server 2022 Datacenter",
            kmsd::protocol::kms::Version::V6,
        );
        kmsd::client::activate(kms, opts, &[new_cmid()])
            .await
            .unwrap();
        activation.push(t.elapsed());
    }
    let (_, metrics) = http_get(admin, "/metrics").await.unwrap();
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("under the admin crowd: /healthz {health:?}, activation {activation:?}");
    for (what, lat) in [("/healthz", &health), ("activation", &activation)] {
        assert!(
            lat.iter().min().unwrap() < &Duration::from_secs(1),
            "{what}: {lat:?}"
        );
    }
    assert!(
        metrics.contains(&format!("kmsd_max_connections {effective}\n")),
        "/metrics shows the limit in force"
    );
    let status = status(dir.path(), kmsd::store::unix_ms_now());
    assert_eq!(status.max_connections, Some(effective.to_string()));
}

const HOUR_MS: i64 = 3_600_000;

/// Activates a new Windows Server machine at the host's clock; its count.
async fn activate_server(srv: &TestServer) -> u32 {
    let opts = client_options(
        "Windows Server 2022 Datacenter",
        kmsd::protocol::kms::Version::V6,
    );
    let mut c = kmsd::client::Connection::open(srv.addr, opts)
        .await
        .unwrap();
    c.activate(new_cmid()).await.unwrap().response.count
}

fn windows_count(srv: &TestServer) -> u32 {
    let pools = srv.host.pools_now();
    pools
        .iter()
        .find(|p| p.pool.name() == "windows")
        .unwrap()
        .count
}

/// A step back of a day: nothing breaks, and a machine seen before the
/// step still leaves the pool 30 days after it asked (by the time that
/// passed), not 30 days plus the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_step_back_keeps_the_thirty_day_window() {
    let clock = TestClock::default();
    let srv = start_server_with_clock(tempfile::tempdir().unwrap(), clock.clock(), |_| {}).await;
    assert_eq!(activate_server(&srv).await, 1, "A at day 0");
    clock.advance_days(10);
    assert_eq!(activate_server(&srv).await, 2, "B at day 10");
    clock.advance_days(-1);
    assert_eq!(activate_server(&srv).await, 3, "C after the step back");
    assert_eq!(windows_count(&srv), 3);
    // 29 days 23 hours have passed since A asked: still counted.
    clock.advance_days(19);
    clock
        .0
        .fetch_add(23 * HOUR_MS, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(windows_count(&srv), 3);
    // Two hours on, A is 30 days old: gone. (The clock reads 29 days since
    // A's stamp; without following the step A would stay another day.)
    clock
        .0
        .fetch_add(2 * HOUR_MS, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(windows_count(&srv), 2);
    // The inventory's last-seen times never move back, and the page
    // renders (no negative age).
    let now = srv.host.now_ms();
    let rows = clients(srv.dir.path(), now, 10);
    assert_eq!(rows.len(), 3);
    let state = kmsd::http::AdminState {
        host: srv.host.clone(),
        kms_addrs: vec![srv.addr],
    };
    let router = kmsd::http::router(state);
    let req = axum::http::Request::get("/")
        .body(axum::body::Body::empty())
        .unwrap();
    let page = tower_service::Service::call(&mut router.clone(), req)
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    srv.stop().await;
}

/// A step forward of 21 days expires what is then 30 days old, and nothing
/// else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_step_forward_expires_only_what_the_rules_expire() {
    let clock = TestClock::default();
    let srv = start_server_with_clock(tempfile::tempdir().unwrap(), clock.clock(), |_| {}).await;
    assert_eq!(activate_server(&srv).await, 1, "A at day 0");
    clock.advance_days(10);
    assert_eq!(activate_server(&srv).await, 2, "B at day 10");
    clock.advance_days(21);
    assert_eq!(windows_count(&srv), 1, "A (31 days) gone, B (21 days) kept");
    assert_eq!(activate_server(&srv).await, 2, "C counts with B");
    srv.stop().await;
}
