//! The count pool (30-day window of distinct CMIDs): insert into an empty
//! pool, refresh an entry, insert into a pool full at 50 (evicting the
//! least recently seen), and the same through the host's sharded `Pools`.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::products::Pool;
use kmsd::store::window::Window;
use kmsd::store::{CountMode, Pools};
use std::hint::black_box;

const NOW: i64 = 1_750_000_000_000;

fn id(n: u64) -> Guid {
    Guid::from_u128(0x1000_0000_0000_4000_8000_0000_0000_0000 | u128::from(n))
}

/// A Windows pool (N_Policy 25, capacity 50) holding 50 entries.
fn full() -> Window {
    let mut w = Window::default();
    for n in 0..50 {
        w.observe(id(n), NOW + n as i64, 25);
    }
    assert_eq!(w.len(), 50);
    w
}

fn pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    g.bench_function("insert_empty", |b| {
        b.iter_batched(
            Window::default,
            |mut w| {
                black_box(w.observe(black_box(id(1)), NOW, 25));
                w
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("refresh_full", |b| {
        let mut w = full();
        let mut t = NOW + 100;
        let mut n = 0u64;
        b.iter(|| {
            t += 1;
            n = (n + 1) % 50;
            black_box(w.observe(black_box(id(n)), t, 25))
        })
    });
    g.bench_function("insert_full_evict", |b| {
        let mut w = full();
        let mut t = NOW + 100;
        let mut n = 1000u64;
        b.iter(|| {
            t += 1;
            n += 1;
            let o = w.observe(black_box(id(n)), t, 25);
            debug_assert!(o.evicted.is_some());
            black_box(o)
        })
    });
    g.bench_function("pools_insert_full_evict", |b| {
        let pools = Pools::new(CountMode::Real);
        for n in 0..50 {
            pools.observe(Pool::Windows, id(n), NOW + n as i64, 25);
        }
        let mut t = NOW + 100;
        let mut n = 1000u64;
        b.iter(|| {
            t += 1;
            n += 1;
            black_box(pools.observe(Pool::Windows, black_box(id(n)), t, 25))
        })
    });
    g.finish();
}

criterion_group!(benches, pool);
criterion_main!(benches);
