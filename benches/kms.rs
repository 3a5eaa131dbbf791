//! KMS message work per protocol version: a host's decode + verify of a
//! captured request, its response build, and a client's request build and
//! response verification (what `kmsd load` pays per activation).

mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use kmsd::protocol::kms::{self, ResponseRandom, SentRequest};
use std::hint::black_box;

fn kms_benches(c: &mut Criterion) {
    let epid = common::epid();
    let answer = common::answer(&epid);
    let rnd = ResponseRandom {
        salt: [0x5a; 16],
        iv_seed: [0xa5; 16],
    };
    let mut g = c.benchmark_group("kms");
    for major in [4u16, 5, 6] {
        let (req_bytes, resp_bytes) = common::kms_exchange(common::scenario_for(major));
        let req = kms::decode_request(&req_bytes).expect("captured request verifies");
        g.bench_function(format!("decode_v{major}"), |b| {
            b.iter(|| kms::decode_request(black_box(&req_bytes)))
        });
        let mut out = Vec::with_capacity(512);
        g.bench_function(format!("respond_v{major}"), |b| {
            b.iter(|| {
                out.clear();
                kms::encode_response(black_box(&req), &answer, &rnd, &mut out);
                black_box(out.len());
            })
        });
        let sent = SentRequest {
            base: req.base,
            iv: req.iv,
            decrypted_iv: req.decrypted_iv,
        };
        kms::verify_response(&sent, &resp_bytes).expect("captured response verifies");
        g.bench_function(format!("client_verify_v{major}"), |b| {
            b.iter(|| kms::verify_response(black_box(&sent), black_box(&resp_bytes)))
        });
        g.bench_function(format!("client_request_v{major}"), |b| {
            b.iter(|| kms::encode_request(black_box(&req.base), black_box([7; 16])))
        });
    }
    g.finish();
}

criterion_group!(benches, kms_benches);
criterion_main!(benches);
