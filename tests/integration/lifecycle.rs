//! The serve lifecycle in process, through `App`: a reload applies the
//! live keys at once (served groups, limits) without dropping a connection
//! and names the keys that need a restart; a stop drains, closes the store
//! (the log folded into the inventory) and leaves the admin API down.

use crate::common::*;
use kmsd::app::{App, Options};
use kmsd::client::{ClientError, Connection};
use kmsd::config::LogFormat;
use kmsd::protocol::kms::Version;
use std::time::Duration;

#[tokio::test]
async fn reload_applies_live_keys_and_names_restart_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.http = Some("127.0.0.1:0".parse().unwrap());
    let app = App::start(cfg.clone(), Options::default()).await.unwrap();
    let addr = app.kms_addrs()[0];
    let admin = app.admin_addr().expect("admin API started by App");

    let opts = client_options("Windows Server 2022 Datacenter", Version::V6);
    let mut conn = Connection::open(addr, opts.clone()).await.unwrap();
    conn.activate(new_cmid())
        .await
        .expect("Windows served at start");

    // Live: stop serving Windows. The open connection stays and its next
    // request is refused by the new policy.
    let mut new = cfg.clone();
    new.served_groups = vec!["Office2016".into()];
    new.max_connections_per_ip = 7;
    assert!(app.reload(new.clone()).await.is_empty(), "all live keys");
    match conn.activate(new_cmid()).await {
        Err(ClientError::Hresult(h)) => assert_eq!(h, 0xC004_F042),
        other => panic!("expected 0xC004F042 after the reload, got {other:?}"),
    }
    assert_eq!(app.config().served_groups, vec!["Office2016".to_string()]);

    // Restart keys are named, not applied.
    let mut restart = new.clone();
    restart.log_format = LogFormat::Json;
    restart.listen = vec!["127.0.0.1:1".parse().unwrap()];
    let keys = app.reload(restart).await;
    assert!(keys.contains(&"log_format"), "{keys:?}");
    assert!(keys.contains(&"listen"), "{keys:?}");
    assert_eq!(app.kms_addrs(), &[addr], "listeners unchanged");

    let status = status(dir.path(), kmsd::store::unix_ms_now());
    assert_eq!(status.epids.iter().filter(|e| e.served).count(), 1);

    // Stop: every task ends, the store is closed (folded), the admin API
    // no longer accepts.
    tokio::time::timeout(Duration::from_secs(20), app.stop())
        .await
        .expect("stops in time")
        .expect("store closed cleanly");
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
    let rows = clients(dir.path(), kmsd::store::unix_ms_now(), 10);
    assert_eq!(rows.len(), 2, "both machines in the inventory");
}

/// The activation line (the Windows host's event 12290) reaches the log of
/// the real binary through the paced log thread without more log traffic
/// to push it out, and names the client's address itself (the connection
/// span is debug-level).
#[tokio::test]
async fn the_activation_line_names_the_client_and_is_written_promptly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kmsd"))
        .env_remove("RUST_LOG")
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kmsd starts");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx
                .send(serde_json::from_str(&line).unwrap_or_default())
                .is_err()
            {
                break;
            }
        }
    });
    let next = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| loop {
        let v = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("no {what} line: {e}"));
        if pred(&v) {
            break v;
        }
    };
    let listening = next("listening", &|v| v["fields"]["message"] == "listening");
    let addr: std::net::SocketAddr = listening["fields"]["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cmid = new_cmid();
    let mut c = Connection::open(
        addr,
        client_options("Windows 10/11 Enterprise", Version::V6),
    )
    .await
    .unwrap();
    let answered = c.activate(cmid).await.unwrap();
    let line = next("activation", &|v| {
        v["fields"]["message"] == "activation answered"
    });
    let _ = child.kill();
    let _ = child.wait();
    let f = &line["fields"];
    assert_eq!(f["cmid"], cmid.to_string());
    assert_eq!(f["count"], u64::from(answered.response.count));
    let peer: std::net::SocketAddr = f["peer"].as_str().expect("peer field").parse().unwrap();
    assert_eq!(peer.ip(), addr.ip(), "{line}");
    assert_ne!(
        peer.port(),
        addr.port(),
        "the client's port, not the host's"
    );
}
