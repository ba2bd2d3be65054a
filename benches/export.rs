//! `queuectl export --sqlite` of 100,000 jobs: `cargo bench --bench export`.
//!
//! The jobs are built in memory (mixed states, some optional fields empty) and cloned outside
//! the timing; each iteration writes a whole file, including the fsyncs and the rename over the
//! previous iteration's file (`force`). The file lives under Cargo's target tmp directory (or
//! `QUEUECTL_BENCH_DIR`), not `/tmp`, which may be a RAM disk where fsync costs nothing.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use queuectl::export::export_sqlite;
use queuectl::model::{Config, Job, JobState};

const JOBS: u64 = 100_000;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("QUEUECTL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    tempfile::Builder::new()
        .prefix("bench-export-")
        .tempdir_in(base)
        .unwrap()
}

fn synthetic_jobs(n: u64) -> Vec<Job> {
    let start = 1_762_676_473_456;
    (0..n)
        .map(|i| {
            let state = JobState::ALL[(i % 5) as usize];
            let t = start + i * 37;
            let running = state == JobState::Processing;
            let waiting = matches!(state, JobState::Pending | JobState::Failed);
            Job {
                id: format!("01JC{i:022}"),
                command: format!("sh -c 'echo job {i} && sleep 0'"),
                state,
                attempts: (i % 4) as u32,
                max_retries: 3,
                created_at: t,
                updated_at: t + 1_000,
                available_at: (waiting || running).then_some(t + 2_000),
                locked_by: running.then(|| format!("worker-{}", i % 8)),
                locked_at: running.then_some(t + 2_500),
                last_error: (i % 3 == 0).then(|| format!("exit code {}", i % 128)),
                priority: if i % 100 == 0 { 10 } else { 0 },
                timeout_ms: (i % 2 == 0).then_some(30_000),
                seq: i,
                pgid: None,
                runs: (i % 4) as u32,
                cwd: None,
                env: Vec::new(),
            }
        })
        .collect()
}

fn export(c: &mut Criterion) {
    let dir = bench_dir();
    let path = dir.path().join("jobs.db");
    let jobs = synthetic_jobs(JOBS);
    let config = Config::default();

    let mut group = c.benchmark_group("export");
    group.sample_size(10);
    group.bench_function("sqlite/100000", |b| {
        b.iter_batched(
            || jobs.clone(),
            |jobs| export_sqlite(&path, true, jobs, &config).unwrap(),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, export);
criterion_main!(benches);
