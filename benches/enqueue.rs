//! Enqueue cost at the store level (criterion): `cargo bench --bench enqueue`.
//!
//! - `single/flushed`: one job per transaction, flushed before the next (what a user's
//!   `queuectl enqueue` pays for durability, without process start-up);
//! - `single/unflushed`: one job per transaction, no flush;
//! - `batch_1000/flushed`: 1,000 jobs in one all-or-nothing transaction, then one flush
//!   (`enqueue --file`); throughput is reported per job.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use queuectl::model::{Config, NewJob};
use queuectl::store::sled::SledStore as Store;
use queuectl::store::JobStore;

fn job(i: u64) -> NewJob {
    NewJob {
        id: format!("job-{i:012}"),
        command: format!("echo {i}"),
        max_retries: None,
        priority: 0,
        run_at: None,
        timeout_ms: None,
        cwd: None,
        env: Vec::new(),
    }
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("QUEUECTL_BENCH_DIR").unwrap_or_else(|| "target".into());
    tempfile::Builder::new()
        .prefix("queuectl-bench-")
        .tempdir_in(base)
        .expect("temp dir")
}

fn enqueue(c: &mut Criterion) {
    let cfg = Config::default();
    let mut g = c.benchmark_group("enqueue");
    for flush in [true, false] {
        let dir = bench_dir();
        let store = Store::open(&dir.path().join("db")).expect("open");
        let mut next = 0u64;
        let name = if flush {
            "single/flushed"
        } else {
            "single/unflushed"
        };
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter(|| {
                next += 1;
                store
                    .enqueue(&[job(next)], &cfg, next, None)
                    .expect("enqueue");
                if flush {
                    store.flush().expect("flush");
                }
            })
        });
    }
    let dir = bench_dir();
    let store = Store::open(&dir.path().join("db")).expect("open");
    let mut next = 0u64;
    g.throughput(Throughput::Elements(1000));
    g.sample_size(20);
    g.bench_function("batch_1000/flushed", |b| {
        b.iter_batched(
            || {
                let batch: Vec<NewJob> = (0..1000).map(|i| job(next + i)).collect();
                next += 1000;
                batch
            },
            |batch| {
                store.enqueue(&batch, &cfg, 1, None).expect("enqueue");
                store.flush().expect("flush");
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, enqueue);
criterion_main!(benches);
