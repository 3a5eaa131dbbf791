//! The durable store's group commit: N records written concurrently and
//! awaited, as N clients' responses wait for their records (SQLite WAL, one
//! writer thread batching what is queued), with the default durability
//! (`synchronous=FULL`: every commit flushed) and with `durability = "os"`
//! (`NORMAL`: written, flushed only at checkpoints). Reported as records per
//! second.
//!
//! The records cycle over 1,000 client machine IDs. With ever-new IDs the
//! writer's prune (every 10,000 records) costs seconds and dominates; that
//! is measured on its own by `examples/bigdata.rs prune`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmsd::protocol::guid::Guid;
use kmsd::protocol::kms::products::{self, Pool};
use kmsd::store::sqlite::{self, Writer};
use kmsd::store::{self, Durability, Record};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinct client machine IDs the records cycle over.
const CMIDS: u64 = 1000;

fn record(n: u64, now: i64) -> Record {
    let sku = products::find_sku("Windows 10/11 Enterprise").expect("catalog SKU");
    Record {
        time_ms: now,
        address: "127.0.0.1".into(),
        workstation: "kmsd-load".into(),
        cmid: Guid::from_u128(0x2000_0000_0000_4000_8000_0000_0000_0000 | u128::from(n % CMIDS)),
        app_id: sku.app_id,
        sku_id: sku.id,
        kms_id: sku.kms_id,
        counted_in: Some(Pool::Windows),
        capacity: 50,
        n_policy: 25,
        license_status: 2,
        binding_expiration: 43200,
        vm: false,
        protocol: 6,
        count: 50,
        hresult: kmsd::protocol::kms::Hresult::ANSWERED,
    }
}

fn group_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("store");
    // `group_commit_N`: the default, every commit flushed; `os_group_commit_N`:
    // `durability = "os"`, written but not flushed.
    for durability in [Durability::Full, Durability::Os] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(store::DB_FILE);
        let conn = sqlite::open_rw(&path).expect("database");
        let metrics = std::sync::Arc::new(kmsd::metrics::Metrics::default());
        let durable = Writer::start(
            conn,
            kmsd::store::sqlite::writer::Upkeep {
                keep_records: 1_000_000,
                durability,
                prune_every: std::time::Duration::from_secs(3600),
                clock: kmsd::clock::system_clock(),
                host: "bench".to_owned(),
            },
            metrics,
        )
        .expect("writer thread");
        let next = AtomicU64::new(0);
        let prefix = match durability {
            Durability::Full => "",
            Durability::Os => "os_",
        };
        for n in [1u64, 64, 512] {
            g.throughput(Throughput::Elements(n));
            g.sample_size(if n > 64 { 20 } else { 50 });
            g.bench_function(format!("{prefix}group_commit_{n}"), |b| {
                b.iter(|| {
                    let now = store::unix_ms_now();
                    rt.block_on(async {
                        let mut set = tokio::task::JoinSet::new();
                        for _ in 0..n {
                            let d = durable.clone();
                            let r = record(next.fetch_add(1, Ordering::Relaxed), now);
                            set.spawn(async move { d.write(r).await });
                        }
                        while let Some(r) = set.join_next().await {
                            r.expect("task").expect("committed");
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
