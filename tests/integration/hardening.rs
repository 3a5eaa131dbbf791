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
    let m = &srv.host.metrics;
    assert_eq!(m.conn_events(ConnEvent::RefusedPerAddressLimit), 0);
    assert_eq!(m.conn_events(ConnEvent::RefusedQueueTimeout), 0);
    assert!(
        m.connections_accepted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= report.activations
    );
    srv.stop().await;
}
