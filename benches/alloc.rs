//! Allocation check (not a timing bench): counts heap allocations made by
//! the host's per-request path with a counting global allocator.
//!
//! The claim checked: once a connection is bound, answering a request
//! (`protocol::server::handle_pdu`: RPC session step, stub unmarshalling, KMS
//! decode + MAC/AES check, the response build with its SHA-256 / HMAC / AES)
//! allocates nothing when the response buffer already has room. It exits
//! non-zero if that is not so. The bind path and the client side are
//! counted too, for information.
//!
//! Run: `cargo bench --bench alloc`
// The counting allocator is the one place kmsd needs `unsafe`.
#![allow(unsafe_code)]

mod common;

use kmsd::protocol::kms::{self, ResponseRandom, SentRequest};
use kmsd::protocol::rpc::bind::BindPolicy;
use kmsd::protocol::rpc::session::Session;
use kmsd::protocol::server::{self, Verdict};
use rand::SeedableRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUNDS: u64 = 1000;

/// Allocations and bytes per call of `f`, over ROUNDS calls after one warm-up.
fn per_call(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (a0, b0) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    for _ in 0..ROUNDS {
        f();
    }
    let (a1, b1) = (ALLOCS.load(Ordering::SeqCst), BYTES.load(Ordering::SeqCst));
    (
        (a1 - a0) as f64 / ROUNDS as f64,
        (b1 - b0) as f64 / ROUNDS as f64,
    )
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let epid = common::epid();
    let answer = common::answer(&epid);
    let rnd = ResponseRandom {
        salt: [1; 16],
        iv_seed: [2; 16],
    };
    let mut failed = false;
    println!("{:<44} {:>10} {:>10}", "path", "allocs", "bytes");
    let mut line = |what: String, (a, b): (f64, f64), must_be_zero: bool| {
        let verdict = match (must_be_zero, a == 0.0) {
            (true, true) => "ok",
            (true, false) => "FAIL",
            (false, _) => "(info)",
        };
        failed |= must_be_zero && a != 0.0;
        println!("{what:<44} {a:>10.2} {b:>10.1}  {verdict}");
    };
    for major in [4u16, 5, 6] {
        let pdus = common::pdus(common::scenario_for(major));
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut out = Vec::with_capacity(512);
        let mut session = Session::new(BindPolicy::default(), 1688, 0x55);
        line(
            format!("v{major} bind + alter_context (handle_pdu)"),
            per_call(|| {
                session = Session::new(BindPolicy::default(), 1688, 0x55);
                for pdu in &pdus[..2] {
                    out.clear();
                    let _ = black_box(server::handle_pdu(
                        &mut session,
                        pdu,
                        |_| Verdict::Answer(answer),
                        &mut rng,
                        &mut out,
                    ));
                }
            }),
            false,
        );
        for (name, pdu) in [("NDR32", &pdus[2]), ("NDR64", &pdus[3])] {
            line(
                format!("v{major} {name} request -> response (handle_pdu)"),
                per_call(|| {
                    out.clear();
                    let o = server::handle_pdu(
                        &mut session,
                        black_box(pdu),
                        |_| Verdict::Answer(answer),
                        &mut rng,
                        &mut out,
                    );
                    assert!(matches!(o, Ok(server::Outcome::Answered { .. })));
                }),
                true,
            );
        }
        let (req_bytes, resp_bytes) = common::kms_exchange(common::scenario_for(major));
        line(
            format!("v{major} kms::decode_request"),
            per_call(|| {
                black_box(kms::decode_request(black_box(&req_bytes)).is_ok());
            }),
            true,
        );
        let req = kms::decode_request(&req_bytes).expect("verifies");
        line(
            format!("v{major} kms::encode_response"),
            per_call(|| {
                out.clear();
                kms::encode_response(black_box(&req), &answer, &rnd, &mut out);
            }),
            true,
        );
        let sent = SentRequest {
            base: req.base,
            iv: req.iv,
            decrypted_iv: req.decrypted_iv,
        };
        line(
            format!("v{major} client: encode_request"),
            per_call(|| {
                black_box(kms::encode_request(&req.base, [9; 16]));
            }),
            false,
        );
        line(
            format!("v{major} client: verify_response"),
            per_call(|| {
                black_box(kms::verify_response(&sent, &resp_bytes).is_ok());
            }),
            false,
        );
        // The response buffer itself: a fresh Vec per request.
        line(
            format!("v{major} handle_pdu into a new Vec"),
            per_call(|| {
                let mut fresh = Vec::new();
                let _ = black_box(server::handle_pdu(
                    &mut session,
                    &pdus[2],
                    |_| Verdict::Answer(answer),
                    &mut rng,
                    &mut fresh,
                ));
            }),
            false,
        );
    }
    if failed {
        eprintln!("allocation on the per-request crypto path: see FAIL lines");
        std::process::exit(1);
    }
    println!("per-request host path: no allocation beyond the response buffer");
}
