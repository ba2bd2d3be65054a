//! The storage comparison: one reserve + complete cycle against a queue of due jobs, in the sled
//! store queuectl uses and in SQLite laid out like the Node.js queuectl.
//!
//! Run: `cargo bench --bench reserve` (a few minutes; add a filter such as
//! `cargo bench --bench reserve -- queue_10000/` to run part of it). The databases live under
//! Cargo's target tmp directory, or under `QUEUECTL_BENCH_DIR` if set; keep them off tmpfs, or
//! every fsync is free and the durable variants mean nothing.
//!
//! One group per queue size (`queue_10000`, `queue_100000`, `queue_1000000`: that many due jobs
//! pre-loaded, all priority 0 with increasing `available_at` in the past, except every 1000th at
//! priority 5). Each function measures one cycle: take the next due job (moving it to
//! `processing`), then mark it `completed`; a batched function reports the time per job. The
//! cost per cycle must stay flat from 10,000 to 1,000,000 queued. At 1,000,000 only the sled
//! rows and `(b)-normal` run (`(a)` sorts every pending job per reserve, a few cycles a second;
//! loading a million jobs into every variant would take most of the run):
//! `cargo bench --bench reserve -- queue_1000000/` alone takes a few minutes.
//!
//! - `sled/unflushed`: `Store::reserve` + `Store::complete`, no flush (sled writes its log in the
//!   background; a crash may lose the last moments).
//! - `sled/flushed`: the same plus `Store::flush()` every cycle, so the completion is on disk
//!   when the cycle ends.
//! - `sled/fused-unflushed`, `sled/fused-flushed`: a supervisor's turn with one run ended: the
//!   running job ends and the next is reserved in one transaction
//!   (`JobStore::finish_and_reserve`), the same work per job (one completed, one reserved) in
//!   one commit instead of two.
//! - `sled/batched4-unflushed`, `sled/batched4-flushed`: one turn of a supervisor loop with 4
//!   workers batched: the 4 running jobs end and 4 are reserved in one transaction
//!   (`JobStore::finish_and_reserve_batch`, what the supervisor does at the end of each turn of
//!   its loop); the time is per job (a quarter of a turn).
//! - `sqlite_nodejs/(a)`: the Node.js queuectl's storage: index `(state, available_at)`, WAL,
//!   `synchronous=NORMAL`. `BEGIN IMMEDIATE; SELECT id ... WHERE state='pending' AND
//!   available_at <= now ORDER BY priority DESC, available_at LIMIT 1; UPDATE ... 'processing';
//!   COMMIT`, then the `UPDATE ... 'completed'` in its own transaction. The index cannot serve
//!   the ORDER BY, so every reserve reads and sorts all pending jobs: slow (about 20 cycles/s at
//!   100,000), hence few samples and flat sampling.
//! - `sqlite_indexed/(b)-full`, `(b)-normal`, `(b)-off`: the same statements with the index
//!   `(state, priority DESC, available_at)`, which the ORDER BY walks, at WAL
//!   `synchronous=FULL`, `NORMAL` and `OFF`.
//!
//! - `postgres/fused`, `postgres/reserve+finish`: the PostgreSQL store (`--database-url`) on the
//!   server named by `QUEUECTL_TEST_DATABASE_URL` (skipped, saying so, without one), in a
//!   database of its own: one job ended and the next reserved in one statement, and the two
//!   statements separately. Every statement commits before it returns; whether that commit
//!   waits for the disk is the server's `synchronous_commit` (and `fsync`): start the server
//!   with `QUEUECTL_PG_DURABLE=1 .ci/postgres.sh start DIR` for PostgreSQL's durable defaults
//!   (`synchronous_commit=on`, `fsync=on`), the setting the figures are quoted for.
//! - `postgres/batched-4`, `-16`, `-64`: a turn of a supervisor's loop with that many
//!   workers in one statement (`JobStore::finish_and_reserve_batch`): every worker's job ends
//!   and each gets the next, one commit for all of them (one cycle counted per job).
//!
//! Equal durability: `sled/flushed` ≈ `(b)-full` (each cycle is on disk when it returns).
//! Unflushed: `sled/unflushed` is compared with `(b)-normal` and `(b)-off`; it is the least
//! durable of them (sled loses its unflushed tail on a process crash too, which is why the
//! supervisor flushes completions every 10 ms and everything it acknowledges at once).
//! Not quite equal: `(b)-full` syncs twice per cycle (reserve and completion commit separately,
//! as in the Node.js queuectl) where `sled/flushed` syncs once, after the completion.
//!
//! Every SQLite database uses WAL and the exact exported schema (`queuectl::export::SCHEMA_SQL`)
//! plus its index; rows are loaded in one transaction before timing.
//!
//! The clock: wall time by default. With `QUEUECTL_BENCH_CLOCK=cpu`, the CPU time of the whole
//! process (every thread, sled's own included) over the timed cycles instead: on a machine busy
//! with other work, wall time counts the time other processes held the CPU, CPU time does not
//! (it leaves out waiting for the disk, so compare the unflushed rows with it).
//!
//! Keeping the queue full: each function gets its own store, built and pre-loaded once per
//! size, outside the timing. Timing uses `iter_custom`: the cycles run in chunks, and between
//! chunks (not timed) the jobs consumed are enqueued again in one batch whenever 100 have been
//! used (`REFILL`, the same at every size), so the queue never runs dry however many iterations
//! criterion asks for, and its size stays within 1% of the nominal one. Completed jobs stay in the store, as in real use.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use queuectl::export::SCHEMA_SQL;
use queuectl::model::{format_ts, Config, Millis, NewJob};
use queuectl::store::postgres::scratch::{ScratchDatabase, SERVER_ENV};
use queuectl::store::postgres::PgStore;
use queuectl::store::sled::SledStore as Store;
use queuectl::store::{JobStore, RunEnd};
use rusqlite::{params, Connection, TransactionBehavior};

/// Queue sizes: one benchmark group each.
const SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];
/// From this size on, only the rows that matter for flatness run (see the module doc).
const LARGE: u64 = 1_000_000;
/// Workers per turn of the batched variant.
const BATCH_WORKERS: usize = 4;
/// The clock of the benchmark: every job is due before it.
const NOW: Millis = 1_800_000_000_000;
/// Job `seq` is due at `FIRST_DUE + seq` ms: increasing, and in the past for 10^9 jobs.
const FIRST_DUE: Millis = NOW - 1_000_000_000;
const WORKER: &str = "bench-worker";

fn priority_of(seq: u64) -> i64 {
    if seq.is_multiple_of(1000) {
        5
    } else {
        0
    }
}

fn job_id(seq: u64) -> String {
    format!("job-{seq:012}")
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("QUEUECTL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    tempfile::Builder::new()
        .prefix("bench-reserve-")
        .tempdir_in(base)
        .unwrap()
}

/// What the timed parts are measured with (see the module doc).
#[derive(Clone, Copy)]
enum Clock {
    Wall,
    ProcessCpu,
}

impl Clock {
    fn from_env() -> Clock {
        match std::env::var("QUEUECTL_BENCH_CLOCK").as_deref() {
            Ok("cpu") => Clock::ProcessCpu,
            _ => Clock::Wall,
        }
    }

    /// A reading of this clock, as time since an arbitrary start.
    fn now(self) -> Duration {
        match self {
            Clock::Wall => {
                static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
                START.get_or_init(Instant::now).elapsed()
            }
            Clock::ProcessCpu => {
                let mut ts = nix::libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: `ts` is a valid timespec for the call to fill; the clock id is a
                // constant every Linux has.
                let rc = unsafe {
                    nix::libc::clock_gettime(nix::libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts)
                };
                assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
                Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
            }
        }
    }
}

/// A queue under test.
trait Queue {
    /// Enqueues jobs `seqs` (due, pending). Never timed.
    fn add(&mut self, seqs: Range<u64>);
    /// One reserve + complete cycle. Panics if no job is due.
    fn cycle(&mut self);
    /// Jobs one cycle reserves and completes.
    fn jobs_per_cycle(&self) -> u64 {
        1
    }
}

/// Jobs consumed between two refills: the same at every size, so that the (untimed) refill and
/// the background writing it leaves to sled cost each cycle the same whatever the queue's size
/// (with a refill of 1% of the queue, a million-job queue paid for 10,000-job batches); within
/// 1% of the nominal size from 10,000 queued up.
const REFILL: u64 = 100;

/// Keeps a [`Queue`] at its nominal size while criterion runs cycles on it.
struct Fed<Q> {
    queue: Q,
    next_seq: u64,
    /// Refill once this many jobs have been consumed.
    batch: u64,
    consumed: u64,
    clock: Clock,
}

impl<Q: Queue> Fed<Q> {
    fn new(mut queue: Q, size: u64) -> Self {
        const CHUNK: u64 = 10_000;
        let mut seq = 0;
        while seq < size {
            let end = (seq + CHUNK).min(size);
            queue.add(seq..end);
            seq = end;
        }
        Fed {
            queue,
            next_seq: size,
            batch: REFILL.min(size),
            consumed: 0,
            clock: Clock::from_env(),
        }
    }

    /// For `iter_custom`: runs cycles for `iters` jobs, timing only the cycles (the time of
    /// `iters` jobs: a cycle of k jobs counts as k iterations).
    fn run(&mut self, iters: u64) -> Duration {
        let per = self.queue.jobs_per_cycle();
        let mut timed = Duration::ZERO;
        let mut jobs = 0;
        let mut left = iters.div_ceil(per);
        while left > 0 {
            if self.consumed >= self.batch {
                self.queue.add(self.next_seq..self.next_seq + self.consumed);
                self.next_seq += self.consumed;
                self.consumed = 0;
            }
            let chunk = left.min((self.batch - self.consumed).div_ceil(per));
            let start = self.clock.now();
            for _ in 0..chunk {
                self.queue.cycle();
            }
            timed += self.clock.now().saturating_sub(start);
            self.consumed += chunk * per;
            jobs += chunk * per;
            left -= chunk;
        }
        // The time of exactly `iters` jobs.
        timed.mul_f64(iters as f64 / jobs.max(1) as f64)
    }
}

// ---- sled: queuectl's store ---------------------------------------------------------------

struct SledQueue {
    store: Store,
    flush: bool,
    /// End the running job and reserve the next in one transaction
    /// (`JobStore::finish_and_reserve`), instead of two calls.
    fused: bool,
    /// The job reserved by the previous cycle (fused variant only).
    running: Option<String>,
    /// Batched: this many workers end and reserve in one transaction per cycle.
    batch: usize,
    /// The jobs the workers run (batched variant only).
    batch_running: Vec<String>,
    config: Config,
    _dir: tempfile::TempDir,
}

impl SledQueue {
    fn new(flush: bool, fused: bool) -> Self {
        let dir = bench_dir();
        let store = Store::open(&dir.path().join("store")).unwrap();
        SledQueue {
            store,
            flush,
            fused,
            running: None,
            batch: 0,
            batch_running: Vec::new(),
            config: Config::default(),
            _dir: dir,
        }
    }

    /// The batched variant: `workers` jobs end and as many are reserved per transaction.
    fn batched(flush: bool, workers: usize) -> Self {
        SledQueue {
            batch: workers,
            ..SledQueue::new(flush, false)
        }
    }
}

impl Queue for SledQueue {
    fn add(&mut self, seqs: Range<u64>) {
        let jobs: Vec<NewJob> = seqs
            .map(|seq| NewJob {
                id: job_id(seq),
                command: "true".to_string(),
                max_retries: None,
                priority: priority_of(seq),
                run_at: Some(FIRST_DUE + seq),
                timeout_ms: None,
                cwd: None,
                env: Vec::new(),
            })
            .collect();
        self.store.enqueue(&jobs, &self.config, NOW, None).unwrap();
        // Start every timed chunk from the same state, whatever the variant.
        self.store.flush().unwrap();
    }

    fn jobs_per_cycle(&self) -> u64 {
        self.batch.max(1) as u64
    }

    fn cycle(&mut self) {
        if self.batch > 0 {
            // One loop turn: every worker's job ends, and each worker gets the next.
            let workers = vec![WORKER; self.batch];
            if self.batch_running.is_empty() {
                let (_, jobs) = self
                    .store
                    .finish_and_reserve_batch(&[], &workers, NOW)
                    .unwrap();
                self.batch_running = jobs.into_iter().map(|j| j.id).collect();
            }
            let ends: Vec<(&str, RunEnd<'_>)> = self
                .batch_running
                .iter()
                .map(|id| (id.as_str(), RunEnd::Succeeded))
                .collect();
            let (done, jobs) = self
                .store
                .finish_and_reserve_batch(&ends, &workers, NOW)
                .unwrap();
            assert!(done.iter().all(Result::is_ok), "an end was refused");
            assert_eq!(jobs.len(), self.batch, "the queue ran dry");
            self.batch_running = jobs.into_iter().map(|j| j.id).collect();
        } else if self.fused {
            // One job ends and the next is reserved: the same work as reserve + complete.
            let next = match self.running.take() {
                Some(id) => {
                    self.store
                        .finish_and_reserve(&id, &RunEnd::Succeeded, WORKER, NOW)
                        .unwrap()
                        .1
                }
                None => self.store.reserve(WORKER, NOW).unwrap(),
            };
            self.running = Some(next.expect("the queue ran dry").id);
        } else {
            let job = self
                .store
                .reserve(WORKER, NOW)
                .unwrap()
                .expect("the queue ran dry");
            self.store.complete(&job.id, NOW).unwrap();
        }
        if self.flush {
            self.store.flush().unwrap();
        }
    }
}

// ---- PostgreSQL: the shared store ----------------------------------------------------------

struct PgQueue {
    store: PgStore,
    fused: bool,
    running: Option<String>,
    /// Batched variant: this many workers, their jobs ended and the next reserved in one
    /// statement (`JobStore::finish_and_reserve_batch`) every that many cycles.
    batch: Option<Vec<String>>,
    batch_running: Vec<String>,
    cycles_due: usize,
    config: Config,
    _db: ScratchDatabase,
}

impl PgQueue {
    fn batched(server: &str, workers: usize) -> Self {
        let mut q = PgQueue::new(server, false);
        q.batch = Some((1..=workers).map(|i| format!("worker-{i}")).collect());
        q
    }

    fn new(server: &str, fused: bool) -> Self {
        let db = ScratchDatabase::create(server).expect("a database on the benchmark server");
        // The fixed times of this benchmark, not the database's clock (the same statements).
        let store = PgStore::open(&db.url, "bench-host")
            .unwrap()
            .use_caller_clock();
        PgQueue {
            store,
            fused,
            running: None,
            batch: None,
            batch_running: Vec::new(),
            cycles_due: 0,
            config: Config::default(),
            _db: db,
        }
    }
}

impl Queue for PgQueue {
    fn add(&mut self, seqs: Range<u64>) {
        let jobs: Vec<NewJob> = seqs
            .map(|seq| NewJob {
                id: job_id(seq),
                command: "true".to_string(),
                max_retries: None,
                priority: priority_of(seq),
                run_at: Some(FIRST_DUE + seq),
                timeout_ms: None,
                cwd: None,
                env: Vec::new(),
            })
            .collect();
        self.store.enqueue(&jobs, &self.config, NOW, None).unwrap();
    }

    fn cycle(&mut self) {
        if let Some(workers) = &self.batch {
            // Every `workers.len()` cycles: that many jobs end and as many are reserved.
            self.cycles_due += 1;
            if self.cycles_due < workers.len() {
                return;
            }
            self.cycles_due = 0;
            let ends: Vec<(&str, RunEnd<'_>)> = self
                .batch_running
                .iter()
                .map(|id| (id.as_str(), RunEnd::Succeeded))
                .collect();
            let names: Vec<&str> = workers.iter().map(String::as_str).collect();
            let (done, next) = self
                .store
                .finish_and_reserve_batch(&ends, &names, NOW)
                .unwrap();
            assert!(done.iter().all(Result::is_ok), "an end was refused");
            assert_eq!(next.len(), names.len(), "the queue ran dry");
            self.batch_running = next.into_iter().map(|j| j.id).collect();
        } else if self.fused {
            let next = match self.running.take() {
                Some(id) => {
                    self.store
                        .finish_and_reserve(&id, &RunEnd::Succeeded, WORKER, NOW)
                        .unwrap()
                        .1
                }
                None => self.store.reserve(WORKER, NOW).unwrap(),
            };
            self.running = Some(next.expect("the queue ran dry").id);
        } else {
            let job = self
                .store
                .reserve(WORKER, NOW)
                .unwrap()
                .expect("the queue ran dry");
            self.store.finish(&job.id, &RunEnd::Succeeded, NOW).unwrap();
        }
    }
}

// ---- SQLite: the Node.js queuectl's layout --------------------------------------------------------------

const NODE_INDEX: &str = "CREATE INDEX idx_jobs_state_available ON jobs(state, available_at)";
const PRIORITY_INDEX: &str =
    "CREATE INDEX idx_jobs_state_priority_available ON jobs(state, priority DESC, available_at)";

const INSERT: &str = "INSERT INTO jobs(id, command, state, attempts, max_retries, created_at, \
     updated_at, available_at, priority) VALUES (?1, 'true', 'pending', 0, 3, ?2, ?2, ?3, ?4)";
const SELECT_NEXT: &str = "SELECT id FROM jobs WHERE state='pending' AND available_at <= ?1 \
     ORDER BY priority DESC, available_at LIMIT 1";
const MARK_PROCESSING: &str = "UPDATE jobs SET state='processing', locked_by=?1, locked_at=?2, \
     updated_at=?2 WHERE id=?3";
const MARK_COMPLETED: &str = "UPDATE jobs SET state='completed', locked_by=NULL, \
     locked_at=NULL, available_at=NULL, updated_at=?1 WHERE id=?2";

struct SqliteQueue {
    conn: Connection,
    now: String,
    _dir: tempfile::TempDir,
}

impl SqliteQueue {
    fn new(index: &str, synchronous: &str) -> Self {
        let dir = bench_dir();
        let conn = Connection::open(dir.path().join("queue.db")).unwrap();
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "synchronous", synchronous)
            .unwrap();
        conn.execute_batch(SCHEMA_SQL).unwrap();
        conn.execute_batch(index).unwrap();
        SqliteQueue {
            conn,
            now: format_ts(NOW),
            _dir: dir,
        }
    }
}

impl Queue for SqliteQueue {
    fn add(&mut self, seqs: Range<u64>) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut insert = tx.prepare_cached(INSERT).unwrap();
            for seq in seqs {
                let due = format_ts(FIRST_DUE + seq);
                insert
                    .execute(params![job_id(seq), due, due, priority_of(seq)])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn cycle(&mut self) {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let id: String = tx
            .prepare_cached(SELECT_NEXT)
            .unwrap()
            .query_row(params![self.now], |r| r.get(0))
            .expect("the queue ran dry");
        tx.prepare_cached(MARK_PROCESSING)
            .unwrap()
            .execute(params![WORKER, self.now, id])
            .unwrap();
        tx.commit().unwrap();

        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        tx.prepare_cached(MARK_COMPLETED)
            .unwrap()
            .execute(params![self.now, id])
            .unwrap();
        tx.commit().unwrap();
    }
}

// ---- the benchmarks -------------------------------------------------------------------------

/// Benchmarks the cycle of the queue `make` builds. The queue is built and pre-loaded (not
/// timed) on first use, so a filtered-out benchmark costs nothing, and dropped afterwards.
fn bench_queue<Q: Queue>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    size: u64,
    make: impl FnOnce() -> Q,
) {
    let mut make = Some(make);
    let mut fed = None;
    group.bench_function(name, |b| {
        let fed = fed.get_or_insert_with(|| {
            let make = make.take().expect("built once");
            Fed::new(make(), size)
        });
        b.iter_custom(|iters| fed.run(iters))
    });
}

fn reserve(c: &mut Criterion) {
    for size in SIZES {
        let mut group = c.benchmark_group(format!("queue_{size}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));

        bench_queue(&mut group, "sled/unflushed", size, || {
            SledQueue::new(false, false)
        });
        bench_queue(&mut group, "sled/flushed", size, || {
            SledQueue::new(true, false)
        });
        bench_queue(&mut group, "sled/fused-unflushed", size, || {
            SledQueue::new(false, true)
        });
        bench_queue(&mut group, "sled/fused-flushed", size, || {
            SledQueue::new(true, true)
        });
        bench_queue(&mut group, "sled/batched4-unflushed", size, || {
            SledQueue::batched(false, BATCH_WORKERS)
        });
        bench_queue(&mut group, "sled/batched4-flushed", size, || {
            SledQueue::batched(true, BATCH_WORKERS)
        });
        if size >= LARGE {
            bench_queue(&mut group, "sqlite_indexed/(b)-normal", size, || {
                SqliteQueue::new(PRIORITY_INDEX, "NORMAL")
            });
            group.finish();
            continue;
        }

        match std::env::var(SERVER_ENV).ok().filter(|u| !u.is_empty()) {
            Some(server) => {
                let s = server.clone();
                bench_queue(&mut group, "postgres/fused", size, move || {
                    PgQueue::new(&s, true)
                });
                let s = server.clone();
                bench_queue(&mut group, "postgres/reserve+finish", size, move || {
                    PgQueue::new(&s, false)
                });
                for workers in [4, 16, 64] {
                    let s = server.clone();
                    let name = format!("postgres/batched-{workers}");
                    bench_queue(&mut group, &name, size, move || {
                        PgQueue::batched(&s, workers)
                    });
                }
            }
            None => eprintln!("SKIPPED: the postgres rows ({SERVER_ENV} names no server)"),
        }

        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs(3));
        bench_queue(&mut group, "sqlite_nodejs/(a)", size, || {
            SqliteQueue::new(NODE_INDEX, "NORMAL")
        });

        group.sample_size(20).sampling_mode(SamplingMode::Auto);
        for (name, synchronous) in [
            ("sqlite_indexed/(b)-full", "FULL"),
            ("sqlite_indexed/(b)-normal", "NORMAL"),
            ("sqlite_indexed/(b)-off", "OFF"),
        ] {
            bench_queue(&mut group, name, size, || {
                SqliteQueue::new(PRIORITY_INDEX, synchronous)
            });
        }
        group.finish();
    }
}

criterion_group!(benches, reserve);
criterion_main!(benches);
