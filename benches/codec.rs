//! PDU framing: the header check that finds a PDU's length, and the tokio
//! decoder splitting a captured client stream into PDUs.

mod common;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmsd::codec::RpcPduCodec;
use kmsd::protocol::rpc::pdu::{DEFAULT_MAX_PDU_LEN, pdu_len};
use std::hint::black_box;
use tokio_util::codec::Decoder;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let stream = common::c2s("v6_win10");
    let pdus = common::split_pdus(&stream);
    g.bench_function("pdu_len", |b| {
        b.iter(|| pdu_len(black_box(&pdus[2]), DEFAULT_MAX_PDU_LEN))
    });
    for scenario in ["v6_win10", "v4_win7"] {
        let stream = common::c2s(scenario);
        let n = common::split_pdus(&stream).len();
        g.throughput(Throughput::Elements(n as u64));
        // The whole stream arrives in one read.
        g.bench_function(format!("decode_stream_{scenario}"), |b| {
            let mut codec = RpcPduCodec::new(DEFAULT_MAX_PDU_LEN);
            let mut buf = BytesMut::with_capacity(stream.len());
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(&stream));
                let mut got = 0;
                while let Some(pdu) = codec.decode(&mut buf).expect("frames") {
                    black_box(&pdu);
                    got += 1;
                }
                assert_eq!(got, n);
            })
        });
    }
    // Worst realistic case: each PDU arrives in two reads (header, rest).
    let n = pdus.len();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("decode_split_reads_v6_win10", |b| {
        let mut codec = RpcPduCodec::new(DEFAULT_MAX_PDU_LEN);
        let mut buf = BytesMut::with_capacity(1024);
        b.iter(|| {
            for pdu in &pdus {
                buf.extend_from_slice(&pdu[..16]);
                assert!(codec.decode(&mut buf).expect("frames").is_none());
                buf.extend_from_slice(&pdu[16..]);
                black_box(codec.decode(&mut buf).expect("frames"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
