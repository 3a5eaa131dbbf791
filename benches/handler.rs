//! The full host step without sockets or store: a captured request PDU in,
//! the signed/encrypted response PDU out (`protocol::server::handle_pdu` with
//! a decision that answers at once). `handler/v6_ndr32` is the "< 10 µs per
//! v6 request on one core" figure.

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmsd::protocol::rpc::bind::BindPolicy;
use kmsd::protocol::rpc::session::Session;
use kmsd::protocol::server::{self, Outcome, Verdict};
use rand::SeedableRng;
use std::hint::black_box;

/// A session after the scenario's bind and alter_context.
fn bound(pdus: &[Vec<u8>]) -> Session {
    let mut session = Session::new(BindPolicy::default(), 1688, 0x1234_5679);
    let mut out = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for pdu in &pdus[..2] {
        out.clear();
        let o = server::handle_pdu(
            &mut session,
            pdu,
            |_| unreachable!("no request here"),
            &mut rng,
            &mut out,
        )
        .expect("bind accepted");
        assert!(matches!(o, Outcome::Negotiated { .. }), "{o:?}");
    }
    session
}

fn requests(c: &mut Criterion) {
    let epid = common::epid();
    let answer = common::answer(&epid);
    let mut g = c.benchmark_group("handler");
    g.throughput(Throughput::Elements(1));
    for major in [4u16, 5, 6] {
        let pdus = common::pdus(common::scenario_for(major));
        for (name, pdu) in [("ndr32", &pdus[2]), ("ndr64", &pdus[3])] {
            let mut session = bound(&pdus);
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut out = Vec::with_capacity(512);
            // Check once that this is an answered request.
            let o = server::handle_pdu(
                &mut session,
                pdu,
                |_| Verdict::Answer(answer),
                &mut rng,
                &mut out,
            )
            .expect("request handled");
            assert!(matches!(o, Outcome::Answered { .. }), "{o:?}");
            g.bench_function(format!("v{major}_{name}"), |b| {
                b.iter(|| {
                    out.clear();
                    let o = server::handle_pdu(
                        &mut session,
                        black_box(pdu),
                        |_| Verdict::Answer(answer),
                        &mut rng,
                        &mut out,
                    );
                    black_box((&o, out.len()));
                })
            });
        }
    }
    // A whole connection's protocol work: bind, alter_context, one request.
    for major in [4u16, 6] {
        let pdus = common::pdus(common::scenario_for(major));
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut out = Vec::with_capacity(512);
        g.bench_function(format!("v{major}_connection"), |b| {
            b.iter(|| {
                let mut session = Session::new(BindPolicy::default(), 1688, 0x1234_5679);
                for pdu in &pdus[..3] {
                    out.clear();
                    let o = server::handle_pdu(
                        &mut session,
                        black_box(pdu),
                        |_| Verdict::Answer(answer),
                        &mut rng,
                        &mut out,
                    );
                    black_box((&o, out.len()));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, requests);
criterion_main!(benches);
