//! Our client against our host over loopback TCP, every protocol version
//! through every RPC path, several requests per connection; and bad input
//! over a real socket. (Interop with an independent client is in
//! vlmcs_interop.rs; with captured traffic in vectors.rs.)

use crate::common::*;
use kmsd::client::Connection;
use kmsd::protocol::kms::Version;
use kmsd::protocol::rpc::Syntax;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy)]
enum Path {
    /// Client offers NDR32 only (no BTFN): NDR32 accepted in the bind.
    Ndr32Only,
    /// Client offers NDR32 + NDR64 + BTFN and the host prefers NDR64: alter_context
    /// to NDR32 for the first request, NDR64 after.
    Ndr64WithAlter,
    /// Host with NDR64 off (a Windows 7-era host): NDR32 accepted in the bind.
    HostWithoutNdr64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_through_every_rpc_path() {
    for path in [
        Path::Ndr32Only,
        Path::Ndr64WithAlter,
        Path::HostWithoutNdr64,
    ] {
        let srv = start_server(|c| {
            if let Path::HostWithoutNdr64 = path {
                c.ndr64 = false;
            }
        })
        .await;
        let epid = srv.host.epid("Windows").unwrap().to_string();
        let mut seen = 0;
        for version in Version::ALL {
            for requests in [1usize, 3] {
                let mut opts = client_options("Windows Server 2022 Datacenter", version);
                if let Path::Ndr32Only = path {
                    opts.ndr64 = false;
                    opts.btfn = false;
                }
                let mut conn = Connection::open(srv.addr, opts).await.unwrap();
                for i in 0..requests {
                    let cmid = new_cmid();
                    let x = conn
                        .activate(cmid)
                        .await
                        .unwrap_or_else(|e| panic!("{path:?} {version:?} request {i}: {e}"));
                    seen += 1;
                    assert_eq!(x.response.version, version);
                    assert_eq!(x.response.cmid, cmid);
                    assert_eq!(x.response.epid, epid);
                    assert_eq!(
                        x.response.count,
                        seen.min(10),
                        "distinct servers counted up to capacity 10"
                    );
                    assert_eq!(
                        (x.response.activation_interval, x.response.renewal_interval),
                        (120, 10080)
                    );
                    assert_eq!(x.response.hwid.is_some(), version == Version::V6);
                    let want = match (path, i) {
                        (Path::Ndr64WithAlter, 0) => Syntax::Ndr32,
                        (Path::Ndr64WithAlter, _) => Syntax::Ndr64,
                        _ => Syntax::Ndr32,
                    };
                    assert_eq!(x.syntax, want, "{path:?} request {i}");
                }
            }
        }
        srv.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndr64_only_client_is_served_in_ndr64() {
    let srv = start_server(|_| {}).await;
    let mut opts = client_options("Windows 11 Pro", Version::V6);
    opts.alter_context = false;
    let mut conn = Connection::open(srv.addr, opts).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            conn.activate(new_cmid()).await.unwrap().syntax,
            Syntax::Ndr64
        );
    }
    srv.stop().await;
}

async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (got, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_case_probes_over_a_socket_leave_the_host_serving() {
    let srv = start_server(|_| {}).await;
    let probes = probes();
    for (name, p) in probes["probes"].as_object().unwrap() {
        let sent: Vec<u8> = p["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["dir"] == "c2s")
            .flat_map(|c| hex(c["hex"].as_str().unwrap()))
            .collect();
        let (got, closed) = exchange(srv.addr, &sent).await;
        let must_close = matches!(
            name.as_str(),
            "unknown_ptype_5" | "frag_length_too_small" | "frag_length_too_big_1000"
        );
        assert_eq!(closed, must_close, "{name}");
        if must_close {
            assert!(got.is_empty(), "{name}: nothing is answered before closing");
        } else {
            // Every answer is a well-formed PDU sequence with auth_length 0.
            let pdus = split_pdus(&got);
            assert!(!pdus.is_empty(), "{name}");
            for pdu in pdus {
                assert_eq!(pdu[..2], [5, 0], "{name}");
                assert_eq!(pdu[10..12], [0, 0], "{name}");
            }
        }
        // The host still serves a legitimate client.
        let mut conn = Connection::open(srv.addr, client_options("Windows 11 Pro", Version::V6))
            .await
            .unwrap();
        conn.activate(new_cmid()).await.unwrap();
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_and_dribbled_pdus_are_answered_alike() {
    let srv = start_server(|_| {}).await;
    // The whole captured v6 client stream in one write, then byte by byte.
    let stream = read_bin("v6_win10.c2s.bin");
    let (once, _) = exchange(srv.addr, &stream).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    for b in &stream {
        s.write_all(&[*b]).await.unwrap();
    }
    let mut dribbled = Vec::new();
    let mut buf = [0u8; 2048];
    while split_pdus(&dribbled).len() < 4 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        dribbled.extend_from_slice(&buf[..n]);
    }
    let (a, b) = (split_pdus(&once), split_pdus(&dribbled));
    assert_eq!(a.len(), 4);
    assert_eq!(b.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        // Same types, lengths and call ids; the bodies carry fresh randomness.
        assert_eq!(x[..16], y[..16]);
    }
    srv.stop().await;
}
