//! The supervisor: the one process that owns the store while workers run, and its event loop.
//!
//! This module is the shell: channels, pipes, the store, flushes, signals and the log. Every
//! decision is taken by [`core::Core`], which has no I/O: the shell turns what it hears into
//! [`core::Event`]s and carries out the [`core::Action`]s the core returns.
//!
//! One thread owns every state change. Worker pipe readers, the spool's wake FIFO and the
//! signal handler feed it over one crossbeam channel; between events it sleeps until the next
//! scheduled job is due (at most `poll_interval_ms`). Completions are flushed in groups by a
//! flusher thread; anything acknowledged to a user (spool writes) is flushed before the reply.
//! Invariants:
//! - a worker runs at most one job, and a job is sent to one worker only after the store moved
//!   it to `processing`;
//! - the process group of a run is killed before its job may run again;
//! - the lock is released only after the last worker is gone and the store is flushed.
//!
//! A bulk enqueue is stored by a thread of its own ([`BulkRun`]), one at a time, so that the
//! event loop keeps giving out jobs meanwhile; the store orders its writes against the loop's.

pub mod core;

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::datadir::{free_space, DataDir, DataDirError, Holder, LOW_ROOM};
use crate::logging::log_failure;
use crate::model::{now_ms, Config, Job, JobState, RunOutput, RunResult};
use crate::owner::{Handled, Owner, OwnerError};
use crate::spool::request::{self, OwnerInfo, Reply, Request};
use crate::spool::PendingRequest;
use crate::store::postgres::listen::{Listener, Notice};
use crate::store::postgres::PgStore;
use crate::store::{lease_ms, FailOrDone, JobStore, RunEnd, StoreError};
use crate::worker::protocol::{self, FromWorker, ToWorker};
use crate::worker::{kill, spawn};

use self::core::{Action, Core, Event, Note, Phase};

/// How long completions may wait before they are flushed.
const GROUP_COMMIT: Duration = Duration::from_millis(10);
/// How long `worker stop` waits for the supervisor's process to end once it let go of the lock.
const EXIT_AFTER_UNLOCK: Duration = Duration::from_secs(5);
/// How often the `queuectl wait`s left unanswered are checked for commands that are gone.
const ABANDONED_WAITS_CHECK: Duration = Duration::from_secs(1);
/// How long `worker start` waits for the supervisor and its workers to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// With the disk full: the first pause before trying the store again, and the longest.
const FULL_RETRY_FIRST: Duration = Duration::from_millis(100);
const FULL_RETRY_MAX: Duration = Duration::from_secs(5);
/// Free space the disk needs before the supervisor writes again.
const RESUME_ROOM: u64 = 2 * 1024 * 1024;

/// Errors of starting, running and stopping the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("a supervisor is already running (pid {pid})")]
    AlreadyRunning { pid: u32 },
    #[error("the store is busy (another queuectl command holds it); try again")]
    Busy,
    #[error("the supervisor did not start: {0}")]
    StartFailed(String),
    #[error("supervisor {pid} is still running after {secs}s (its running jobs have not finished; `worker stop --force` kills them)")]
    StopTimeout { pid: u32, secs: u64 },
    #[error("cannot signal supervisor {pid}: {source}")]
    Signal { pid: u32, source: std::io::Error },
    #[error("cannot {doing}: {source}")]
    Io {
        doing: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
}

impl SupervisorError {
    pub fn is_user_error(&self) -> bool {
        matches!(self, SupervisorError::AlreadyRunning { .. })
    }
}

fn io_err(doing: &'static str) -> impl FnOnce(std::io::Error) -> SupervisorError {
    move |source| SupervisorError::Io { doing, source }
}

/// `queuectl worker start`: detaches a supervisor and returns once it is ready (a message for
/// the user), or runs it here with `foreground` / `notify_ready`.
pub fn start(
    dir: &DataDir,
    count: u32,
    foreground: bool,
    notify_ready: bool,
) -> Result<Option<String>, SupervisorError> {
    if let Holder::Supervisor(pid) = dir.holder()? {
        return Err(SupervisorError::AlreadyRunning { pid });
    }
    if foreground || notify_ready {
        let ready = if notify_ready {
            Ready::Stdout
        } else {
            Ready::Nobody
        };
        let result = run(dir, count, foreground, ready);
        if let (Err(e), true) = (&result, notify_ready) {
            // The parent is waiting for a line: tell it why.
            println!("error {e}");
        }
        return result.map(|()| None);
    }
    let exe = std::env::current_exe().map_err(io_err("find the queuectl executable"))?;
    let root = std::path::absolute(dir.root()).map_err(io_err("resolve the data directory"))?;
    let args: Vec<OsString> = vec![
        "--data-dir".into(),
        root.into_os_string(),
        "worker".into(),
        "start".into(),
        "--count".into(),
        count.to_string().into(),
        "--notify-ready".into(),
    ];
    let (mut child, stdout) =
        spawn::spawn_detached(&exe, &args).map_err(io_err("start the supervisor"))?;
    // The child writes one line: "ready PID WORKERS" or "error MESSAGE".
    let (tx, rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) => line,
        Err(_) => {
            kill::kill_and_reap(&mut child);
            return Err(SupervisorError::StartFailed(
                "it was not ready in time".into(),
            ));
        }
    };
    let mut words = line.split_whitespace();
    match words.next() {
        Some("ready") => {
            let pid = words.next().unwrap_or("?");
            let n = words.next().unwrap_or("?");
            Ok(Some(format!(
                "Supervisor started (pid {pid}) with {n} worker{}",
                if n == "1" { "" } else { "s" }
            )))
        }
        Some("error") => {
            let _ = child.wait();
            let msg = line.trim_start().trim_start_matches("error").trim();
            if let Holder::Supervisor(pid) = dir.holder()? {
                return Err(SupervisorError::AlreadyRunning { pid });
            }
            Err(SupervisorError::StartFailed(msg.to_string()))
        }
        _ => {
            let status = child.wait().map_err(io_err("wait for the supervisor"))?;
            Err(SupervisorError::StartFailed(format!(
                "it exited ({status})"
            )))
        }
    }
}

/// `queuectl worker stop`: SIGTERM to the supervisor, then wait until it has exited. With
/// `force`, keep signalling: every signal after the first kills running jobs and requeues them.
pub fn stop(dir: &DataDir, timeout: Duration, force: bool) -> Result<String, SupervisorError> {
    let pid = match dir.holder()? {
        Holder::Supervisor(pid) => pid,
        Holder::Free | Holder::Busy => return Ok("No supervisor is running".into()),
    };
    let signal =
        |pid: u32| kill::terminate(pid).map_err(|source| SupervisorError::Signal { pid, source });
    signal(pid)?;
    let deadline = Instant::now() + timeout;
    let mut resent = Instant::now();
    loop {
        match dir.holder()? {
            Holder::Supervisor(p) if p == pid => {}
            _ => {
                // The lock is let go just before the process exits: wait for the exit too (a
                // little, in case the pid was reused at once).
                let gone_by = Instant::now() + EXIT_AFTER_UNLOCK;
                while kill::process_runs(pid) && Instant::now() < gone_by {
                    thread::sleep(Duration::from_millis(2));
                }
                return Ok(format!("Supervisor {pid} stopped"));
            }
        }
        if Instant::now() >= deadline {
            return Err(SupervisorError::StopTimeout {
                pid,
                secs: timeout.as_secs(),
            });
        }
        if force && resent.elapsed() >= Duration::from_millis(100) {
            signal(pid)?;
            resent = Instant::now();
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Who hears that the supervisor is ready.
enum Ready {
    Nobody,
    /// The detaching parent, through our stdout (then pointed at /dev/null).
    Stdout,
}

/// What the event loop's channel carries.
enum Input {
    Worker {
        worker: usize,
        gen: u64,
        msg: FromWorker,
    },
    WorkerGone {
        worker: usize,
        gen: u64,
    },
    Spool,
    Signal,
    /// With a shared queue: news from the database.
    Db(Notice),
    /// The flusher could not flush: the disk is full.
    DiskFull,
}

/// One worker's current process and the pipe to it (its state is the core's).
struct Worker {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

struct Supervisor {
    /// Declared before `owner`, so dropped first: its handle on the store is gone before the
    /// owner's lock is released.
    dirty: Flusher,
    /// Exports being written (each on its own thread, holding the store): also dropped before
    /// `owner`, which waits for them.
    exports: Exports,
    owner: Owner,
    exe: PathBuf,
    root: PathBuf,
    config: Config,
    /// `queuectl wait` requests left unanswered until their jobs are finished.
    waits: Vec<Wait>,
    /// When `waits` was last checked for commands that are gone.
    waits_checked: Instant,
    core: Core,
    workers: Vec<Worker>,
    /// Actions still to carry out (kept to reuse its buffer).
    actions: VecDeque<Action>,
    next_gen: u64,
    tx: Sender<Input>,
    retention: Retention,
    /// With a shared queue: the leases of the jobs this supervisor runs.
    leases: Option<Leases>,
    /// Added to each worker's environment.
    worker_env: Vec<(&'static str, String)>,
    /// Numbers the ends of runs; the flusher says up to which one they are durable.
    marks: Arc<FlushMarks>,
    seq: u64,
    /// Ends of runs stored but perhaps not yet flushed (a full disk may lose them).
    journal: VecDeque<Unstored>,
    /// Set while the disk is full.
    full: Option<Full>,
    /// Ends of runs not stored because the disk is full, oldest first.
    held: Vec<Unstored>,
    /// Ends of runs reported during this turn of the event loop, stored at its end (see
    /// [`Supervisor::settle`]).
    ended: Vec<Unstored>,
    /// The bulk enqueue being stored (or the last one stored).
    bulk: Option<BulkRun>,
}

/// How far the ends of runs are written and flushed (see [`Unstored::seq`]).
#[derive(Default)]
struct FlushMarks {
    /// The last end written to the store.
    written: AtomicU64,
    /// The last end a flush made durable.
    durable: AtomicU64,
}

/// The end of a run, as it is to be stored.
struct Unstored {
    /// Increasing, one per end.
    seq: u64,
    /// The job as it ran.
    job: Job,
    cancelled: bool,
    success: bool,
    error: String,
    duration_ms: u64,
    output: Option<RunOutput>,
}

impl Unstored {
    fn end(&self, backoff_base: u64) -> RunEnd<'_> {
        if self.cancelled {
            RunEnd::Cancelled
        } else if self.success {
            RunEnd::Succeeded
        } else {
            RunEnd::Failed {
                error: &self.error,
                backoff_base,
            }
        }
    }
}

/// A `queuectl wait` left unanswered until its jobs are finished.
struct Wait {
    req: PendingRequest,
    ids: Vec<String>,
    /// The ids not seen finished yet. The ends of a turn's runs are taken off as they are
    /// stored, so that a wait costs the supervisor nothing per turn until this is empty, and
    /// then one read per id to answer (not one per id and turn).
    open: HashSet<String>,
}

/// The disk is full: nothing is reserved, the ends of runs wait in memory, the store is tried
/// again after `pause` (doubling up to [`FULL_RETRY_MAX`]).
struct Full {
    since: Instant,
    next_try: Instant,
    pause: Duration,
    /// A write failed: the store must be opened again.
    failed: bool,
    /// The store could not be opened again, and the log said so.
    stuck_said: bool,
}

/// A bulk enqueue stored beside the event loop: the thread stages the jobs chunk by chunk,
/// publishes them, flushes, answers the request and wakes the loop.
struct BulkRun {
    /// The spool request (also the batch's id).
    id: String,
    /// Asks the thread to give up before its next chunk (the supervisor is stopping): the
    /// request stays in the spool for the next owner.
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BulkRun {
    fn start(
        store: Arc<dyn JobStore>,
        spool: crate::spool::Spool,
        req: PendingRequest,
        batch: String,
        wake: Sender<Input>,
    ) -> BulkRun {
        let stop = Arc::new(AtomicBool::new(false));
        let id = req.id.clone();
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let stop = || stopped.load(Ordering::Relaxed);
            let Some(reply) =
                request::enqueue_bulk_unless(&*store, &spool, &batch, now_ms(), &stop)
            else {
                tracing::info!("bulk enqueue {batch} left to the next owner of the store");
                return;
            };
            if let Err(e) = store.flush() {
                tracing::error!("flushing the store failed: {e}");
                return;
            }
            request::answer(&spool, &req, &reply);
            // New jobs to give out, and requests that waited for this one.
            let _ = wake.send(Input::Spool);
            drop(store);
            give_back_memory();
        });
        BulkRun {
            id,
            stop,
            thread: Some(thread),
        }
    }

    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Asks the thread to stop and waits for it.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Keeping the leases of a shared queue (PostgreSQL): renewed every third of their length with
/// the heartbeat; jobs this supervisor no longer holds are killed at once, and when renewing
/// fails for two thirds of a lease every running job is killed, before another supervisor
/// may take it over (self-fencing).
struct Leases {
    pg: Arc<PgStore>,
    lease_ms: u64,
    next_beat: Instant,
    /// When the last successful renewal was sent.
    renewed: Instant,
    /// Running jobs were killed because renewing failed.
    fenced: bool,
    /// Wakes the event loop when any host enqueues, retries or cancels (dropped with it).
    _listener: Listener,
    /// Ends of runs not recorded yet (the database could not be reached): sent again until
    /// they are. Their jobs stay this supervisor's, their leases renewed, meanwhile.
    unrecorded: Vec<Unrecorded>,
    /// The last look found fewer jobs than it asked for: busy workers get no next job ahead
    /// until a notice says jobs came, or a poll interval passed.
    dry: bool,
}

impl Leases {
    /// Whether the leases may have expired already: no renewal for two thirds of a lease
    /// (what the workers fence themselves at).
    fn stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.renewed) >= self.fence_after()
    }

    fn fence_after(&self) -> Duration {
        crate::worker::fence::fence_after(self.lease_ms)
    }
}

/// The end of a run still to be recorded.
struct Unrecorded {
    job: Job,
    end: OwnedEnd,
}

/// [`RunEnd`] owning its error.
enum OwnedEnd {
    Succeeded,
    Failed { error: String, backoff_base: u64 },
    Cancelled,
}

impl OwnedEnd {
    fn as_end(&self) -> RunEnd<'_> {
        match self {
            OwnedEnd::Succeeded => RunEnd::Succeeded,
            OwnedEnd::Failed {
                error,
                backoff_base,
            } => RunEnd::Failed {
                error,
                backoff_base: *backoff_base,
            },
            OwnedEnd::Cancelled => RunEnd::Cancelled,
        }
    }
}

/// How often ends of runs that could not be recorded are sent again.
const RECORD_RETRY: Duration = Duration::from_millis(200);
/// With a shared queue, a busy worker's next job is reserved while its run is younger than
/// this, and given back once the run is older (see `Core::reserve_ahead`).
const AHEAD_KEEP: Duration = Duration::from_millis(100);

/// Where the sweeps of retention are (completed, then dead jobs), and when the next step is.
struct Retention {
    next_at: Instant,
    after: [Option<String>; 2],
}

/// Jobs examined per retention step: a few milliseconds of the event loop.
const RETENTION_STEP: usize = 1_000;
/// Pause between two steps of a sweep.
const RETENTION_STEP_PAUSE: Duration = Duration::from_millis(200);
/// Pause between two sweeps.
const RETENTION_SWEEP_PAUSE: Duration = Duration::from_secs(60);

/// Runs the supervisor in this process until it is stopped.
fn run(dir: &DataDir, count: u32, console: bool, ready: Ready) -> Result<(), SupervisorError> {
    crate::logging::init(&dir.log_path(), console);
    // A command working directly may hold the store for a moment: wait for it, not for a
    // supervisor.
    let deadline = Instant::now() + START_TIMEOUT;
    let owner = loop {
        if let Some(owner) = Owner::try_acquire(dir)? {
            break owner;
        }
        match dir.holder()? {
            Holder::Supervisor(pid) => return Err(SupervisorError::AlreadyRunning { pid }),
            _ if Instant::now() >= deadline => return Err(SupervisorError::Busy),
            _ => thread::sleep(Duration::from_millis(20)),
        }
    };
    owner.lock().write_pid()?;
    if let Err(e) = dir.reset_live_dir() {
        tracing::warn!("jobs' output cannot be followed while they run: {e}");
    }
    if let Err(e) = owner.spool.remove_stale_replies(Duration::from_secs(300)) {
        tracing::warn!("could not clean the spool's old replies: {e}");
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    // Straight into the event channel: a relay thread would cost a wake-up per request.
    owner
        .spool
        .listen_with(tx.clone(), || Input::Spool)
        .map_err(OwnerError::from)?;
    let sig_tx = tx.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = sig_tx.send(Input::Signal);
    }) {
        tracing::warn!("cannot handle SIGINT/SIGTERM: {e}");
    }
    let marks = Arc::new(FlushMarks::default());
    let dirty = start_flusher(owner.store.clone(), marks.clone(), tx.clone());
    let config = owner.store.config().map_err(OwnerError::from)?;
    let exe = std::env::current_exe().map_err(io_err("find the queuectl executable"))?;
    // With a shared queue each worker fences itself: told where the lease file is and how
    // stale it may get.
    let mut worker_env = Vec::new();
    if owner.shared.is_some() {
        let lease = dir.root().join(LEASE_FILE);
        let _ = std::fs::remove_file(&lease);
        worker_env.push((
            crate::worker::fence::FILE_ENV,
            lease.to_string_lossy().into_owned(),
        ));
        worker_env.push((
            crate::worker::fence::MS_ENV,
            crate::worker::fence::fence_after(lease_ms(&config))
                .as_millis()
                .to_string(),
        ));
    }
    let mut sup = Supervisor {
        worker_env,
        root: dir.root().to_path_buf(),
        owner,
        exe,
        config,
        waits: Vec::new(),
        waits_checked: Instant::now(),
        core: Core::new(count as usize),
        workers: (0..count)
            .map(|_| Worker {
                name: String::new(),
                child: None,
                stdin: None,
            })
            .collect(),
        actions: VecDeque::new(),
        retention: Retention {
            next_at: Instant::now() + RETENTION_STEP_PAUSE,
            after: [None, None],
        },
        next_gen: 0,
        tx,
        dirty,
        exports: Exports::default(),
        leases: None,
        marks,
        seq: 0,
        journal: VecDeque::new(),
        full: None,
        held: Vec::new(),
        ended: Vec::new(),
        bulk: None,
    };
    for i in 0..count as usize {
        sup.spawn(i)?;
    }
    let pid = std::process::id();
    if let Some(pg) = sup.owner.shared.clone() {
        pg.register(pid, count).map_err(OwnerError::from)?;
        touch_lease_file(&sup.root.join(LEASE_FILE), std::time::SystemTime::now());
        let now = Instant::now();
        let db_tx = sup.tx.clone();
        let listener = pg.listen(move |notice| db_tx.send(Input::Db(notice)).is_ok());
        sup.leases = Some(Leases {
            pg,
            lease_ms: lease_ms(&sup.config),
            next_beat: now,
            renewed: now,
            fenced: false,
            _listener: listener,
            unrecorded: Vec::new(),
            dry: false,
        });
        sup.core.reserve_ahead(AHEAD_KEEP);
    }
    // Requests that arrived while we were starting.
    sup.drain_spool();
    sup.event_loop(&rx, count, ready, pid)
}

/// `queuectl export` requests being answered, each by a thread of its own that reads the store
/// page by page while the event loop goes on (see [`crate::export::export_store`]).
#[derive(Default)]
struct Exports {
    /// Ids of the requests whose thread has not yet answered (a drain leaves them alone).
    running: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Exports {
    /// Starts answering `req` on a thread; `false` if it already is being answered.
    fn start(
        &mut self,
        req: &PendingRequest,
        r: &Request,
        store: &Arc<dyn JobStore>,
        spool: &crate::spool::Spool,
    ) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if !running.insert(req.id.clone()) {
            return false;
        }
        drop(running);
        self.threads.retain(|t| !t.is_finished());
        let (req, r, store, spool) = (req.clone(), r.clone(), store.clone(), spool.clone());
        let running = self.running.clone();
        self.threads.push(thread::spawn(move || {
            let started = Instant::now();
            let reply = request::apply(
                &*store,
                &spool,
                &r,
                OwnerInfo::default(),
                now_ms(),
                Some(&req.id),
            );
            match &reply {
                Reply::Exported { jobs, .. } => tracing::info!(
                    "exported {jobs} jobs in {:.1}s",
                    started.elapsed().as_secs_f64()
                ),
                Reply::Error { message, .. } => tracing::warn!("export failed: {message}"),
                _ => {}
            }
            request::answer(&spool, &req, &reply);
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.id);
        }));
        true
    }
}

impl Drop for Exports {
    fn drop(&mut self) {
        // An export under way is finished (and answered) before the store is let go.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The flusher thread, which holds a handle on the store. Dropping this waits for the thread to
/// end, so that the store is closed (sled's own lock on it released) before the owner lets go of
/// the data directory's lock: the next owner must be able to open it.
struct Flusher {
    tx: Option<Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.tx = None; // ends the thread's loop
        if let Some(t) = self.thread.take() {
            // The store engine may wait forever inside a flush that a full disk failed
            // ([`Flusher::stop`] wakes it): that thread is left to the process's end.
            let deadline = Instant::now() + FLUSHER_STOP;
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("the store's flusher did not return; leaving it");
            }
        }
    }
}

/// How long stopping the flusher may take.
const FLUSHER_STOP: Duration = Duration::from_secs(2);

impl Flusher {
    /// Ends the thread, so that it holds no handle on the store. On a full disk the store
    /// engine (sled) can wait forever inside a flush for a write that failed; another flush,
    /// which sees the failure, wakes it: such pokes come from a thread of their own, so that
    /// this one never blocks. `false` if the thread (or a poke) is still there after
    /// [`FLUSHER_STOP`].
    fn stop(&mut self, store: &Arc<dyn JobStore>) -> bool {
        self.tx = None;
        let deadline = Instant::now() + FLUSHER_STOP;
        let mut poke: Option<thread::JoinHandle<()>> = None;
        let mut poked = Instant::now();
        loop {
            let flusher_done = self.thread.as_ref().is_none_or(|t| t.is_finished());
            let poke_done = poke.as_ref().is_none_or(|t| t.is_finished());
            if flusher_done && poke_done {
                for t in [self.thread.take(), poke.take()].into_iter().flatten() {
                    let _ = t.join();
                }
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if !flusher_done && poke_done && poked.elapsed() >= Duration::from_millis(20) {
                let store = Arc::clone(store);
                poke = thread::Builder::new()
                    .name("store-poke".into())
                    .spawn(move || {
                        let _ = store.flush();
                    })
                    .ok();
                poked = Instant::now();
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Flushes the store at most `GROUP_COMMIT` after it was last marked dirty; idle otherwise.
/// A full disk is told to the event loop, which says so once.
fn start_flusher(
    store: Arc<dyn JobStore>,
    marks: Arc<FlushMarks>,
    events: Sender<Input>,
) -> Flusher {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let thread = thread::spawn(move || {
        while rx.recv().is_ok() {
            thread::sleep(GROUP_COMMIT);
            let _ = rx.try_recv();
            let upto = marks.written.load(Ordering::Acquire);
            match store.flush() {
                Ok(()) => marks.durable.store(upto, Ordering::Release),
                Err(StoreError::NoSpace) => {
                    let _ = events.send(Input::DiskFull);
                }
                Err(e) => tracing::error!("flushing the store failed: {e}"),
            }
        }
    });
    Flusher {
        tx: Some(tx),
        thread: Some(thread),
    }
}

impl Supervisor {
    fn info(&self) -> OwnerInfo {
        OwnerInfo {
            workers: u32::try_from(self.core.alive()).unwrap_or(u32::MAX),
            busy_workers: u32::try_from(self.core.busy()).unwrap_or(u32::MAX),
            supervisor_pid: Some(std::process::id()),
            paused: self.core.paused(),
            stopping: self.core.phase() != Phase::Running,
            out_of_space: self.full.is_some(),
            unstored: u32::try_from(self.held.len()).unwrap_or(u32::MAX),
        }
    }

    /// Retention, off the hot path: at most one small step of [`JobStore::purge`] per state
    /// now and then, after the loop turn's dispatching; a sweep over all finished jobs goes
    /// step by step, and the next sweep starts a minute after one ends.
    fn retention_step(&mut self) {
        if self.full.is_some() || Instant::now() < self.retention.next_at {
            return;
        }
        let now = now_ms();
        let mut more = false;
        for (i, (state, retention)) in [
            (
                crate::model::JobState::Completed,
                self.config.retention_completed,
            ),
            (crate::model::JobState::Dead, self.config.retention_dead),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(cutoff) = request::retention_cutoff(retention, now) else {
                self.retention.after[i] = None;
                continue;
            };
            let after = self.retention.after[i].take();
            match self
                .owner
                .store
                .purge(state, cutoff, after.as_deref(), RETENTION_STEP)
            {
                Ok(step) => {
                    if step.removed > 0 {
                        tracing::debug!("retention removed {} {state} jobs", step.removed);
                        self.mark_dirty();
                    }
                    more |= step.next.is_some();
                    self.retention.after[i] = step.next;
                }
                Err(e) => tracing::warn!("retention of {state} jobs failed: {e}"),
            }
        }
        self.retention.next_at = Instant::now()
            + if more {
                RETENTION_STEP_PAUSE
            } else {
                RETENTION_SWEEP_PAUSE
            };
    }

    fn mark_dirty(&self) {
        if let Some(tx) = &self.dirty.tx {
            let _ = tx.try_send(());
        }
    }

    /// Starts (or restarts) a process for worker `i`.
    fn spawn(&mut self, i: usize) -> Result<(), SupervisorError> {
        let args: Vec<OsString> = vec![
            "--data-dir".into(),
            self.root.clone().into_os_string(),
            "worker-child".into(),
        ];
        let w = spawn::spawn_worker(&self.exe, &args, &self.worker_env)
            .map_err(io_err("start a worker"))?;
        self.next_gen += 1;
        let gen = self.next_gen;
        let pid = w.child.id();
        let tx = self.tx.clone();
        let stdout = w.stdout;
        thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                match protocol::read_frame::<_, FromWorker>(&mut r) {
                    Ok(Some(msg)) => {
                        if tx
                            .send(Input::Worker {
                                worker: i,
                                gen,
                                msg,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("bad frame from worker {pid}: {e}");
                        break;
                    }
                }
            }
            let _ = tx.send(Input::WorkerGone { worker: i, gen });
        });
        let worker = &mut self.workers[i];
        worker.name = format!("worker-{}:{pid}", i + 1);
        worker.child = Some(w.child);
        worker.stdin = Some(w.stdin);
        self.core
            .handle(Event::Spawned { worker: i, gen }, &mut self.actions);
        Ok(())
    }

    fn event_loop(
        &mut self,
        rx: &Receiver<Input>,
        count: u32,
        mut ready: Ready,
        pid: u32,
    ) -> Result<(), SupervisorError> {
        let started = Instant::now();
        let mut announced = false;
        loop {
            self.tend_leases();
            self.apply(Event::Timer {
                now: Instant::now(),
            });
            // The next scheduled job only matters to an idle worker: a busy one reserves what
            // fell due when it reports (no store read per event while all are busy).
            let next = if self.core.idle_worker(0).is_some() {
                self.owner.store.next_wakeup().unwrap_or(None)
            } else {
                None
            };
            let mut wait =
                self.core
                    .sleep_for(now_ms(), next, self.config.poll_interval_ms, Instant::now());
            if let Some(l) = &self.leases {
                // Leases are renewed in time however long the poll interval; unrecorded ends
                // are sent again soon.
                wait = wait.min(l.next_beat.saturating_duration_since(Instant::now()));
                if !l.unrecorded.is_empty() {
                    wait = wait.min(RECORD_RETRY);
                }
            }
            if let Some(full) = &self.full {
                wait = wait.min(full.next_try.saturating_duration_since(Instant::now()));
            }
            match rx.recv_timeout(wait) {
                Ok(input) => {
                    // Take everything already waiting before dispatching; however many wake-ups
                    // came, the spool is read once.
                    let mut spool = self.handle(input);
                    while let Ok(input) = rx.try_recv() {
                        spool |= self.handle(input);
                    }
                    if spool {
                        self.drain_spool();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(l) = &mut self.leases {
                        l.dry = false;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !announced && self.core.all_ready() {
                announced = true;
                tracing::info!(
                    "Supervisor {pid} started with {count} worker{} (poll interval {}ms)",
                    if count == 1 { "" } else { "s" },
                    self.config.poll_interval_ms
                );
                if let Ready::Stdout = ready {
                    notify_parent(pid, count);
                    ready = Ready::Nobody;
                }
            } else if !announced && started.elapsed() > START_TIMEOUT {
                return Err(SupervisorError::StartFailed(
                    "workers did not start in time".into(),
                ));
            }
            self.try_resume();
            self.drop_abandoned_waits();
            self.settle();
            if self.core.phase() == Phase::Running {
                self.retention_step();
            } else if self.core.all_gone() {
                break;
            }
        }
        self.finish(pid)
    }

    /// The last steps of a stop: answer late requests, flush. The lock keeps naming this
    /// process until it is let go (when the supervisor is dropped), so `worker stop` waits until
    /// the store is really free.
    fn finish(&mut self, pid: u32) -> Result<(), SupervisorError> {
        self.settle();
        if let Some(bulk) = &mut self.bulk {
            bulk.stop();
        }
        let info = OwnerInfo::default();
        if let Some(full) = &mut self.full {
            full.next_try = Instant::now();
            self.try_resume();
        }
        // A bulk enqueue not stored yet is left to the next owner (its client, when it is
        // waiting): storing it now would hold the stop up.
        let mut later = |_: &PendingRequest, r: &Request| match r {
            Request::EnqueueBulk { .. } => Handled::Defer,
            _ => Handled::Apply,
        };
        if let Err(e) = self.owner.drain_with(info, &mut later) {
            tracing::error!("could not answer the last requests: {e}");
        }
        if !self.held.is_empty() || self.full.is_some() {
            self.dirty.stop(&self.owner.store);
            tracing::error!(
                "Supervisor {pid} stopped with the disk full: the ends of {} runs could not be stored; those jobs count as interrupted runs at the next start",
                self.held.len()
            );
            return Ok(());
        }
        self.owner.store.flush().map_err(OwnerError::from)?;
        if let Err(e) = self.owner.store.forget_applied() {
            tracing::warn!("could not forget applied requests: {e}");
        }
        self.owner.store.flush().map_err(OwnerError::from)?;
        if let Some(l) = &self.leases {
            if let Err(e) = l.pg.unregister() {
                tracing::warn!("could not leave the list of supervisors: {e}");
            }
        }
        tracing::info!("Supervisor {pid} stopped");
        Ok(())
    }

    /// With a shared queue: heartbeat and lease renewal when due, then the reaping of every
    /// supervisor's expired leases.
    fn tend_leases(&mut self) {
        self.record_again();
        let Some(l) = &mut self.leases else {
            return;
        };
        let now = Instant::now();
        if now < l.next_beat {
            return;
        }
        l.next_beat = now + Duration::from_millis(l.lease_ms / 3);
        let pg = Arc::clone(&l.pg);
        let lease_ms = l.lease_ms;
        let workers = u32::try_from(self.core.alive()).unwrap_or(u32::MAX);
        let busy = u32::try_from(self.core.busy()).unwrap_or(u32::MAX);
        let running: Vec<(String, Option<i32>)> = (0..self.workers.len())
            .filter_map(|w| self.core.running(w).map(|r| (r.job.id.clone(), r.pgid)))
            .collect();
        let sent = std::time::SystemTime::now();
        match pg.heartbeat(workers, busy, lease_ms) {
            Ok(held) => {
                // Cancels asked for while the notification was missed.
                for (id, _) in held.iter().filter(|(_, cancel)| **cancel) {
                    self.cancel_here(id);
                }
                // Held but neither running, held ahead nor waiting to be recorded: reserved by
                // a statement whose answer was lost with the connection; it never started, so
                // it goes back.
                let mut known: HashSet<&str> =
                    self.leases.as_ref().map_or_else(HashSet::new, |l| {
                        l.unrecorded.iter().map(|u| u.job.id.as_str()).collect()
                    });
                known.extend(self.core.ahead().map(|j| j.id.as_str()));
                for id in held.keys() {
                    if running.iter().any(|(r, _)| r == id) || known.contains(id.as_str()) {
                        continue;
                    }
                    match pg.release(id, now_ms()) {
                        Ok(_) => tracing::warn!(
                            "job {id} was reserved here but never started (the answer was lost \
                             with the connection): returned to pending"
                        ),
                        Err(e) => tracing::warn!("cannot return job {id} to pending: {e}"),
                    }
                }
                touch_lease_file(&self.root.join(LEASE_FILE), sent);
                if let Some(l) = &mut self.leases {
                    l.renewed = now;
                    if l.fenced {
                        tracing::info!("the database answers again");
                        l.fenced = false;
                    }
                }
                // Held ahead but taken over: never started here.
                let lost: Vec<String> = self
                    .core
                    .ahead()
                    .filter(|j| !held.contains_key(&j.id))
                    .map(|j| j.id.clone())
                    .collect();
                for id in &lost {
                    self.core.drop_ahead(Some(id));
                }
                for (id, pgid) in running.iter().filter(|(id, _)| !held.contains_key(id)) {
                    tracing::warn!(
                        "job {id} was taken over by another supervisor: killing it here"
                    );
                    if let Some(pgid) = pgid {
                        kill_quietly(*pgid, id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot renew the leases of running jobs: {e}");
                let Some(l) = &mut self.leases else {
                    return;
                };
                let silent = now.saturating_duration_since(l.renewed);
                if !l.fenced && l.stale(now) {
                    l.fenced = true;
                    self.core.drop_ahead(None);
                    tracing::error!(
                        "no lease renewed for {}ms: killing the {} running jobs before another \
                         supervisor takes them over",
                        silent.as_millis(),
                        running.len()
                    );
                    for (id, pgid) in &running {
                        if let Some(pgid) = pgid {
                            kill_quietly(*pgid, id);
                        }
                    }
                }
                return;
            }
        }
        match pg.reap_expired(self.config.backoff_base) {
            Ok(reaped) => {
                for r in reaped {
                    log_failure(&r.job, r.decision, "lost its supervisor (lease expired)");
                }
            }
            Err(e) => tracing::warn!("cannot reap expired leases: {e}"),
        }
    }

    /// Turns `input` into an event for the core; `true` for a spool wake-up, which the caller
    /// answers once all waiting input is handled.
    fn handle(&mut self, input: Input) -> bool {
        let ev = match input {
            Input::Worker { worker, gen, msg } => match msg {
                FromWorker::Ready { .. } => Event::Ready { worker, gen },
                FromWorker::Started { job_id, pgid } => Event::Started {
                    worker,
                    gen,
                    job_id,
                    pgid,
                    at: Instant::now(),
                },
                FromWorker::Finished { job_id, result } => {
                    // A next job reserved ahead starts with the report: not when this
                    // supervisor's leases may have lapsed (it was stopped or hung), as another
                    // host may have taken it over.
                    if self
                        .leases
                        .as_ref()
                        .is_some_and(|l| l.stale(Instant::now()))
                    {
                        self.core.drop_ahead(None);
                    }
                    Event::Finished {
                        worker,
                        gen,
                        job_id,
                        result,
                    }
                }
            },
            Input::WorkerGone { worker, gen } => Event::Gone { worker, gen },
            Input::Spool => return true,
            Input::Signal => Event::Signal,
            Input::Db(notice) => {
                match notice {
                    // Jobs are looked for after every turn.
                    Notice::Jobs => {
                        if let Some(l) = &mut self.leases {
                            l.dry = false;
                        }
                    }
                    // Notices may have been missed: renew (which brings missed cancels) now.
                    Notice::Listening => {
                        if let Some(l) = &mut self.leases {
                            l.next_beat = Instant::now();
                        }
                    }
                    Notice::Cancel(id) => self.cancel_here(&id),
                }
                return false;
            }
            Input::DiskFull => {
                self.enter_full(true);
                return false;
            }
        };
        self.apply(ev);
        false
    }

    /// Hands `ev` to the core and carries out what it decides, including what follows from
    /// carrying it out.
    fn apply(&mut self, ev: Event) {
        self.core.handle(ev, &mut self.actions);
        while let Some(action) = self.actions.pop_front() {
            self.perform(action);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Run { worker, mut job } => {
                if let Some(run) = self.core.running(worker) {
                    let (out, err) = self.owner.dir.live_paths(&job.job_id, run.job.runs);
                    job.live = Some((
                        out.to_string_lossy().into_owned(),
                        err.to_string_lossy().into_owned(),
                    ));
                }
                let msg = ToWorker::Run(job);
                let sent = match self.workers[worker].stdin.as_mut() {
                    Some(stdin) => {
                        protocol::write_frame(stdin, &msg).is_ok() && stdin.flush().is_ok()
                    }
                    None => false,
                };
                if !sent {
                    self.workers[worker].stdin = None;
                    self.core
                        .handle(Event::SendFailed { worker }, &mut self.actions);
                }
            }
            Action::Shutdown { worker } => {
                if let Some(mut stdin) = self.workers[worker].stdin.take() {
                    let _ = protocol::write_frame(&mut stdin, &ToWorker::Shutdown);
                    let _ = stdin.flush();
                }
            }
            Action::ClosePipe { worker } => self.workers[worker].stdin = None,
            Action::Reap { worker } => {
                let w = &mut self.workers[worker];
                w.stdin = None;
                if let Some(mut child) = w.child.take() {
                    let _ = child.wait();
                }
            }
            Action::KillGroup { pgid } => {
                if let Err(e) = kill::kill_job_group(pgid) {
                    tracing::warn!("cannot kill process group {pgid}: {e}");
                }
            }
            Action::TermGroup { pgid } => {
                if let Err(e) = kill::term_job_group(pgid) {
                    tracing::warn!("cannot stop process group {pgid}: {e}");
                }
            }
            Action::Record {
                job,
                result,
                cancelled,
                ..
            } => self.end_run(job, result, cancelled),
            Action::Release { job } => self.release(job),
            Action::Unreserve { job } => self.unreserve(job),
            Action::RecordPgid { worker, pgid } => {
                // On a full disk the attempt record (see `worker::attempt`) is what a new
                // owner kills by.
                if let (Some(run), None) = (self.core.running(worker), &self.full) {
                    match self.owner.store.set_pgid(&run.job.id, pgid) {
                        Ok(()) => self.mark_dirty(),
                        Err(StoreError::NoSpace) => self.enter_full(true),
                        Err(e) => tracing::warn!(
                            "cannot record the process group of job {}: {e}",
                            run.job.id
                        ),
                    }
                }
            }
            Action::Spawn { worker } => {
                if let Err(e) = self.spawn(worker) {
                    tracing::error!("cannot restart worker {}: {e}", worker + 1);
                    self.core
                        .handle(Event::SpawnFailed { worker }, &mut self.actions);
                }
            }
            Action::Note(note) => self.note(note),
        }
    }

    fn note(&self, note: Note) {
        let pid = std::process::id();
        match note {
            Note::WorkerLost { worker, job_id } => tracing::warn!(
                "Worker {} exited unexpectedly while running job {job_id}",
                self.workers[worker].name
            ),
            Note::WorkerExited { worker } => {
                tracing::warn!("Worker {} exited unexpectedly", self.workers[worker].name)
            }
            Note::KeepsDying => {
                tracing::error!("workers keep dying before they are ready; stopping")
            }
            Note::Stopping { busy } => tracing::info!(
                "Supervisor {pid} stopping: waiting for {busy} running job{} to finish",
                if busy == 1 { "" } else { "s" }
            ),
            Note::Forced => {
                tracing::warn!("Supervisor {pid} forced to stop: killing running jobs")
            }
        }
    }

    fn drain_spool(&mut self) {
        // On a full disk the store is read, never written (writes are refused with that).
        let full = self.short_of_room();
        let info = self.info();
        let Supervisor {
            owner,
            core,
            actions,
            waits,
            workers,
            exports,
            bulk,
            tx,
            ..
        } = self;
        let store = &owner.store;
        let spool = &owner.spool;
        let mut hook = |req: &PendingRequest, r: &Request| match r {
            // Written by a thread of its own, which answers: the loop goes on meanwhile.
            Request::Export { .. } => {
                exports.start(req, r, store, spool);
                Handled::Defer
            }
            // Stored by a thread of its own, one at a time; the others wait in the spool (on a
            // full disk it is refused, as every write).
            Request::EnqueueBulk { batch } if !full => {
                let busy = bulk.as_ref().is_some_and(|b| b.running() || b.id == req.id);
                if !busy && core.phase() == Phase::Running {
                    if let Some(mut done) = bulk.take() {
                        done.stop();
                    }
                    *bulk = Some(BulkRun::start(
                        store.clone(),
                        spool.clone(),
                        req.clone(),
                        batch.clone(),
                        tx.clone(),
                    ));
                }
                Handled::Defer
            }
            // A job a worker runs is stopped here; the others as any owner would.
            Request::Cancel { ids } => {
                let now = now_ms();
                let results = ids
                    .iter()
                    .map(|id| {
                        let result = match core.cancel(id, Instant::now(), actions) {
                            Some(job) => Ok(job),
                            None if full => Err(StoreError::NoSpace),
                            None => request::cancel_one(&**store, id, now),
                        };
                        (id.clone(), result.map_err(|e| e.to_string()))
                    })
                    .collect::<Vec<_>>();
                // A waiting job cancelled here is finished for every wait at once.
                for (id, r) in &results {
                    if r.as_ref().is_ok_and(|j| j.state.is_finished()) {
                        for w in waits.iter_mut() {
                            w.open.remove(id);
                        }
                    }
                }
                Handled::Reply(Box::new(Reply::Each(results)))
            }
            Request::Wait { ids } => {
                if waits.iter().any(|w| w.req.id == req.id) {
                    return Handled::Defer;
                }
                let now = wait_results(&**store, ids);
                if request::all_finished(&now) {
                    Handled::Reply(Box::new(Reply::Each(now)))
                } else {
                    waits.push(Wait {
                        req: req.clone(),
                        ids: ids.clone(),
                        open: unfinished(&now),
                    });
                    Handled::Defer
                }
            }
            Request::Pause { paused } => {
                core.set_paused(*paused);
                tracing::info!(
                    "{}",
                    if *paused {
                        "Paused: running jobs go on, no new job starts"
                    } else {
                        "Resumed"
                    }
                );
                Handled::Reply(Box::new(Reply::Done))
            }
            Request::Scale { count } => {
                if core.phase() != Phase::Running {
                    return Handled::Reply(Box::new(Reply::Error {
                        kind: request::ErrorKind::Invalid,
                        message: "the supervisor is stopping".into(),
                    }));
                }
                core.scale(*count as usize, actions);
                while workers.len() < core.places() {
                    workers.push(Worker {
                        name: String::new(),
                        child: None,
                        stdin: None,
                    });
                }
                tracing::info!(
                    "Scaling to {count} worker{}",
                    if *count == 1 { "" } else { "s" }
                );
                Handled::Reply(Box::new(Reply::Done))
            }
            r if full && r.is_write() => Handled::Reply(Box::new(Reply::Error {
                kind: request::ErrorKind::Internal,
                message: format!("the change was not stored: {}", StoreError::NoSpace),
            })),
            _ => Handled::Apply,
        };
        let drained = owner.drain_with(info, &mut hook);
        while let Some(action) = self.actions.pop_front() {
            self.perform(action);
        }
        match drained {
            Ok(d) if d.no_space => self.enter_full(true),
            Ok(d) if d.writes > 0 => {
                match self.owner.store.config() {
                    Ok(c) => self.config = c,
                    Err(e) => tracing::error!("cannot read the config: {e}"),
                }
                // A cancel may have finished what a wait waits for (taken off above).
                self.answer_waits();
            }
            Ok(_) => {}
            Err(e) => tracing::error!("cannot apply requests: {e}"),
        }
    }

    /// Forgets each `queuectl wait` whose command is gone (killed, or gave up waiting), and
    /// removes its request, at most once a second.
    fn drop_abandoned_waits(&mut self) {
        if self.waits.is_empty() || self.waits_checked.elapsed() < ABANDONED_WAITS_CHECK {
            return;
        }
        self.waits_checked = Instant::now();
        let spool = &self.owner.spool;
        self.waits.retain(|w| {
            if !spool.client_gone(&w.req.id) {
                return true;
            }
            tracing::debug!("request {} dropped: nobody waits for its answer", w.req.id);
            if let Err(e) = spool.finish(&w.req) {
                tracing::warn!("could not remove request {}: {e}", w.req.id);
            }
            false
        });
    }

    /// Takes job `id`, just finished (completed or dead), off what every wait waits for.
    fn finished_id(&mut self, id: &str) {
        for w in &mut self.waits {
            w.open.remove(id);
        }
    }

    /// Looks again at every job the waits wait for (after ends stored late: a full disk, a
    /// lost connection), then answers.
    fn recheck_waits(&mut self) {
        let store = &self.owner.store;
        for w in &mut self.waits {
            w.open.retain(|id| match store.get(id) {
                Ok(Some(j)) => !j.state.is_finished(),
                // Removed: the answer says there is no such job.
                Ok(None) => false,
                Err(_) => true,
            });
        }
        self.answer_waits();
    }

    /// Answers each waiting `queuectl wait` whose jobs are all finished.
    fn answer_waits(&mut self) {
        if self.waits.is_empty() || self.full.is_some() {
            return;
        }
        let store = &self.owner.store;
        let spool = &self.owner.spool;
        self.waits.retain_mut(|w| {
            if !w.open.is_empty() {
                return true;
            }
            let results = wait_results(&**store, &w.ids);
            if !request::all_finished(&results) {
                // One went back to waiting (a dead job retried) meanwhile.
                w.open = unfinished(&results);
                return true;
            }
            // What the answer reports must be durable first.
            if let Err(e) = store.flush() {
                tracing::error!("cannot flush the store: {e}");
                return true;
            }
            request::answer(spool, &w.req, &Reply::Each(results));
            false
        });
    }

    /// Takes the end of a run as the worker reported it: the live output files go (the stored
    /// output replaces them) and the end waits for the end of the loop turn to be stored.
    fn end_run(&mut self, job: Job, result: RunResult, cancelled: bool) {
        let now = now_ms();
        let success = result.outcome.is_success() && !cancelled;
        let error = if success {
            String::new()
        } else {
            result.last_error()
        };
        let duration_ms = result.duration_ms;
        // A worker creates a live file only once the stream printed something.
        let (printed_out, printed_err) = (!result.stdout.is_empty(), !result.stderr.is_empty());
        let output = result
            .has_output_to_keep()
            .then(|| result.into_output(job.runs, now));
        // The stored output replaces the live copy (kept in memory on a full disk).
        if printed_out || printed_err {
            let (out, err) = self.owner.dir.live_paths(&job.id, job.runs);
            if printed_out {
                let _ = std::fs::remove_file(out);
            }
            if printed_err {
                let _ = std::fs::remove_file(err);
            }
        }
        self.seq += 1;
        self.ended.push(Unstored {
            seq: self.seq,
            job,
            cancelled,
            success,
            error,
            duration_ms,
            output,
        });
    }

    /// The end of a loop turn: stores the ends of the runs reported during it and reserves the
    /// next due job for every idle worker, in one step of the store
    /// ([`JobStore::finish_and_reserve_batch`]: one transaction, on PostgreSQL one commit, for
    /// the whole turn), then hands the reserved jobs out. An end the store refuses (another
    /// supervisor reaped the attempt) is logged. When the whole step fails: a full disk keeps
    /// the ends in memory; a lost connection to a shared queue keeps them to be sent again;
    /// otherwise each end is stored on its own and the idle workers reserve one by one.
    fn settle(&mut self) {
        let now_at = Instant::now();
        let ahead: Vec<usize> = if self.leases.as_ref().is_some_and(|l| !l.dry) {
            (0..self.workers.len())
                .filter(|&w| self.core.wants_ahead(w, now_at))
                .collect()
        } else {
            Vec::new()
        };
        if self.ended.is_empty() && self.core.idle_worker(0).is_none() && ahead.is_empty() {
            return;
        }
        let ended = std::mem::take(&mut self.ended);
        if self.short_of_room() {
            for run in ended {
                tracing::info!(
                    "Job {} ended; its result is kept in memory until the disk has room",
                    run.job.id
                );
                self.held.push(run);
            }
            return;
        }
        let now = now_ms();
        let store = Arc::clone(&self.owner.store);
        for run in &ended {
            if store_output(&*store, run).is_err() {
                self.held.extend(ended);
                self.enter_full(true);
                return;
            }
        }
        // Idle workers first: the jobs due now go to them before any is held ahead.
        let mut takers = Vec::new();
        let mut from = 0;
        while let Some(i) = self.core.idle_worker(from) {
            takers.push(i);
            from = i + 1;
        }
        takers.extend(ahead);
        let names: Vec<&str> = takers
            .iter()
            .map(|&i| self.workers[i].name.as_str())
            .collect();
        let base = self.config.backoff_base;
        let ends: Vec<(&str, RunEnd<'_>)> = ended
            .iter()
            .map(|run| (run.job.id.as_str(), run.end(base)))
            .collect();
        let res = store.finish_and_reserve_batch(&ends, &names, now);
        let names_len = names.len();
        drop(ends);
        match res {
            Ok((done, taken)) => {
                for (run, done) in ended.into_iter().zip(done) {
                    match done {
                        Ok(done) => {
                            log_end(&run, &done);
                            if finished(&done) {
                                self.finished_id(&run.job.id);
                            }
                            self.stored(run);
                        }
                        // Another supervisor reaped the attempt, which counted it.
                        Err(e) => {
                            tracing::error!("cannot record the end of job {}: {e}", run.job.id)
                        }
                    }
                }
                if !taken.is_empty() {
                    self.mark_dirty();
                }
                if let Some(l) = &mut self.leases {
                    l.dry = taken.len() < names_len;
                }
                for job in taken {
                    let worker = takers
                        .iter()
                        .copied()
                        .find(|&i| job.locked_by.as_deref() == Some(self.workers[i].name.as_str()));
                    match worker {
                        Some(worker) => self.apply(Event::Reserved { worker, job }),
                        None => self.unreserve(job),
                    }
                }
            }
            Err(StoreError::NoSpace) => {
                self.held.extend(ended);
                self.enter_full(true);
            }
            Err(e) => {
                tracing::debug!("cannot store the turn's ends in one step: {e}");
                let lost = !e.is_user_error() && self.leases.is_some();
                for run in ended {
                    if lost {
                        self.record_later(run);
                    } else {
                        self.record(run, now);
                    }
                }
                if !lost {
                    self.dispatch();
                }
            }
        }
        self.answer_waits();
    }

    /// Stores the end of one run on its own (its output already stored).
    fn record(&mut self, run: Unstored, now: u64) {
        let end = run.end(self.config.backoff_base);
        match self.owner.store.finish(&run.job.id, &end, now) {
            Ok(done) => {
                log_end(&run, &done);
                if finished(&done) {
                    self.finished_id(&run.job.id);
                }
                self.stored(run);
            }
            Err(StoreError::NoSpace) => {
                self.held.push(run);
                self.enter_full(true);
            }
            Err(e) if !e.is_user_error() && self.leases.is_some() => {
                tracing::warn!(
                    "cannot record the end of job {} yet: {e}; trying again",
                    run.job.id
                );
                self.record_later(run);
            }
            Err(e) => tracing::error!("cannot record the end of job {}: {e}", run.job.id),
        }
    }

    /// With a shared queue: keeps the end of a run to be sent again soon (the connection is
    /// lost; the lease is kept meanwhile).
    fn record_later(&mut self, run: Unstored) {
        let end = if run.cancelled {
            OwnedEnd::Cancelled
        } else if run.success {
            OwnedEnd::Succeeded
        } else {
            OwnedEnd::Failed {
                error: run.error,
                backoff_base: self.config.backoff_base,
            }
        };
        if let Some(l) = &mut self.leases {
            l.unrecorded.push(Unrecorded { job: run.job, end });
        }
    }

    /// Notes an end written to the store: it stays in the journal until a flush made it
    /// durable (a full disk may lose what is not).
    fn stored(&mut self, run: Unstored) {
        self.marks.written.store(run.seq, Ordering::Release);
        self.mark_dirty();
        let durable = self.marks.durable.load(Ordering::Acquire);
        while self.journal.front().is_some_and(|r| r.seq <= durable) {
            self.journal.pop_front();
        }
        self.journal.push_back(run);
    }

    /// Whether the disk is too full to write to the store (entering the full state when it
    /// just became so). A shared store is on another machine's disk.
    fn short_of_room(&mut self) -> bool {
        if self.full.is_some() {
            return true;
        }
        if self.owner.shared.is_some() {
            return false;
        }
        match free_space(&self.root) {
            Some(room) if room < LOW_ROOM => {
                self.enter_full(false);
                true
            }
            _ => false,
        }
    }

    /// The disk is full (`failed`: a write to the store failed): stop starting jobs, keep the
    /// ends of runs in memory (after a failed write, with those stored since the last flush,
    /// which opening the store again may lose), and say so once.
    fn enter_full(&mut self, failed: bool) {
        if failed && !self.full.as_ref().is_some_and(|f| f.failed) {
            let durable = self.marks.durable.load(Ordering::Acquire);
            self.held
                .extend(self.journal.drain(..).filter(|r| r.seq > durable));
            self.held.sort_by_key(|r| r.seq);
            if let Some(full) = &mut self.full {
                full.failed = true;
            }
        }
        if self.full.is_some() {
            return;
        }
        let now = Instant::now();
        self.full = Some(Full {
            since: now,
            next_try: now + FULL_RETRY_FIRST,
            pause: FULL_RETRY_FIRST,
            failed,
            stuck_said: false,
        });
        // The reserved space stays for the first command that cannot write its request.
        tracing::error!(
            "the disk is full: no new job starts, and the results of running jobs are kept in memory until the store can take them (trying again until there is room)"
        );
    }

    /// With the disk full, when the pause is over: once there is room, opens the store again,
    /// stores the results kept in memory, checks the running jobs' reservations survived,
    /// makes the reserved space again and lets jobs start. Failures wait for a longer pause.
    fn try_resume(&mut self) {
        let Some(full) = &self.full else {
            return;
        };
        let now = Instant::now();
        if now < full.next_try {
            return;
        }
        let since = full.since;
        match self.resume() {
            Ok(stored) => {
                self.full = None;
                self.owner.dir.ensure_ballast();
                match self.owner.store.config() {
                    Ok(c) => self.config = c,
                    Err(e) => tracing::error!("cannot read the config: {e}"),
                }
                tracing::info!(
                    "the disk has room again after {:.1}s: stored {stored} results kept in memory; jobs start again",
                    since.elapsed().as_secs_f64()
                );
                self.recheck_waits();
            }
            Err(why) => {
                tracing::debug!("the store cannot be written yet: {why}");
                if let Some(full) = &mut self.full {
                    if why.starts_with(STUCK) && !full.stuck_said {
                        full.stuck_said = true;
                        tracing::error!(
                            "the disk has room again, but the store does not recover in this process: `worker stop` and `worker start` (the jobs whose results are kept in memory then run again)"
                        );
                    }
                    full.pause = (full.pause * 2).min(FULL_RETRY_MAX);
                    full.next_try = Instant::now() + full.pause;
                }
            }
        }
    }

    /// Sends again the ends of runs that could not be recorded (shared queue).
    fn record_again(&mut self) {
        let Some(l) = &mut self.leases else {
            return;
        };
        if l.unrecorded.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut l.unrecorded);
        let mut kept = Vec::new();
        let mut recorded = false;
        for u in pending {
            match self
                .owner
                .store
                .finish(&u.job.id, &u.end.as_end(), now_ms())
            {
                Ok(FailOrDone::Done(_)) => {
                    recorded = true;
                    tracing::info!("Job {} completed successfully (recorded late)", u.job.id)
                }
                Ok(FailOrDone::Failed(r)) => {
                    recorded = true;
                    log_failure(&r.job, r.decision, "failed (recorded late)")
                }
                Err(e) if e.is_user_error() => {
                    recorded = true;
                    tracing::warn!(
                        "the end of job {} cannot be recorded: {e} (another supervisor took it \
                         over)",
                        u.job.id
                    )
                }
                Err(e) => {
                    tracing::debug!("cannot record the end of job {} yet: {e}", u.job.id);
                    kept.push(u);
                }
            }
        }
        if let Some(l) = &mut self.leases {
            l.unrecorded.extend(kept);
        }
        if recorded {
            self.recheck_waits();
        }
    }

    /// Stops job `id` if it runs here (a cancel from any host); ignored otherwise.
    fn cancel_here(&mut self, id: &str) {
        if let Some(job) = self.core.cancel(id, Instant::now(), &mut self.actions) {
            tracing::info!("Job {} cancelled: stopping it", job.id);
        }
        while let Some(action) = self.actions.pop_front() {
            self.perform(action);
        }
    }

    /// The work of [`Supervisor::try_resume`]: how many results were stored, or why not.
    fn resume(&mut self) -> Result<usize, String> {
        let room = free_space(&self.root).unwrap_or(0);
        if room < RESUME_ROOM {
            return Err(format!("{room} bytes free"));
        }
        if self.full.as_ref().is_some_and(|f| f.failed) && self.owner.shared.is_none() {
            // The embedded store keeps failing once a write failed: open it again (the
            // flusher's handle first let go).
            if !self.dirty.stop(&self.owner.store) {
                return Err(format!(
                    "{STUCK}: the store's flusher is still inside a flush"
                ));
            }
            let reopened = self.owner.reopen_store();
            self.dirty = start_flusher(
                self.owner.store.clone(),
                self.marks.clone(),
                self.tx.clone(),
            );
            reopened.map_err(|e| match e {
                // An export still reading it: next time.
                OwnerError::StoreInUse => e.to_string(),
                e => format!("{STUCK}: {e}"),
            })?;
        }
        let store = Arc::clone(&self.owner.store);
        let now = now_ms();
        // The reopened store has what was flushed: a reservation or an end stored after the
        // last flush may be gone. A run under way whose reservation is gone takes its job
        // again (it must not run a second time beside it).
        for w in 0..self.workers.len() {
            let Some(run) = self.core.running(w) else {
                continue;
            };
            let worker = &self.workers[w].name;
            if !ensure_reserved(&*store, &run.job, worker, now).map_err(|e| e.to_string())? {
                tracing::warn!(
                    "job {} is no longer this run's in the store: stopping the run",
                    run.job.id
                );
                if let Some(pgid) = run.pgid {
                    kill_quietly(pgid, &run.job.id);
                }
            }
        }
        let held = std::mem::take(&mut self.held);
        let mut stored = Vec::new();
        let mut failed = None;
        let mut rest = held.into_iter();
        for run in rest.by_ref() {
            let worker = run.job.locked_by.clone().unwrap_or_default();
            // Stored before the disk filled (or the job moved on): nothing to do.
            match ensure_reserved(&*store, &run.job, &worker, now) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    failed = Some((run, e));
                    break;
                }
            }
            match store_run(&*store, &run, self.config.backoff_base, now) {
                Ok(done) => {
                    log_end(&run, &done);
                    stored.push(run);
                }
                Err(e) => {
                    failed = Some((run, e));
                    break;
                }
            }
        }
        let result = match failed {
            Some((run, e)) => {
                stored.push(run);
                Err(e)
            }
            None => store.flush(),
        };
        if let Err(e) = result {
            // Not durable: everything stays in memory for the next try.
            stored.extend(rest);
            self.held = stored;
            return Err(e.to_string());
        }
        Ok(stored.len())
    }

    fn release(&mut self, job: Job) {
        let res = match self.full {
            Some(_) => Err(StoreError::NoSpace),
            None => self.owner.store.release(&job.id, now_ms()),
        };
        match res {
            Ok(j) if j.state == JobState::Dead => {
                tracing::info!("Job {} cancelled (asked for while it ran)", job.id)
            }
            Ok(_) => tracing::info!("Job {} returned to pending (forced stop)", job.id),
            Err(StoreError::NoSpace) => {
                tracing::warn!(
                    "job {} cannot return to pending while the disk is full: it counts as an interrupted run at the next start",
                    job.id
                );
                self.enter_full(true);
            }
            Err(e) => tracing::error!("cannot return job {} to pending: {e}", job.id),
        }
        self.mark_dirty();
    }

    /// Gives back a job reserved for a worker that will not start it (held ahead: a stop, its
    /// run grew long, the worker died): pending again, neither its run nor an attempt counted.
    /// Only a shared queue reserves ahead; the embedded store returns it as a forced stop does.
    fn unreserve(&mut self, job: Job) {
        let Some(l) = &self.leases else {
            self.release(job);
            return;
        };
        match l.pg.unreserve(&job.id, now_ms()) {
            Ok(j) if j.state == JobState::Dead => {
                tracing::info!("Job {} cancelled (asked for before it started)", job.id)
            }
            Ok(_) => tracing::debug!("job {} reserved ahead goes back to the queue", job.id),
            // Taken over (this host's leases lapsed) or the database is out of reach: the
            // next renewal gives back what is still held here.
            Err(e) => tracing::debug!("cannot give job {} back yet: {e}", job.id),
        }
    }

    /// Gives every idle worker the next due job.
    fn dispatch(&mut self) {
        if self.short_of_room() {
            return;
        }
        let now = now_ms();
        let mut from = 0;
        while let Some(i) = self.core.idle_worker(from) {
            from = i + 1;
            let job = match self.owner.store.reserve(&self.workers[i].name, now) {
                Ok(Some(job)) => job,
                Ok(None) => return,
                // The store says when the database is lost and found again.
                Err(e @ StoreError::Unavailable(_)) => {
                    tracing::debug!("cannot reserve a job: {e}");
                    return;
                }
                Err(StoreError::NoSpace) => {
                    self.enter_full(true);
                    return;
                }
                Err(e) => {
                    tracing::error!("cannot reserve a job: {e}");
                    return;
                }
            };
            self.mark_dirty();
            self.apply(Event::Reserved { worker: i, job });
        }
    }
}

/// How [`Supervisor::resume`] says the store could not be opened again.
const STUCK: &str = "stuck";

/// Stores the output of `run`, if it has one to keep. Only a full disk is an error (the end
/// is then kept in memory); any other failure is logged and the end is stored without it.
fn store_output(store: &dyn JobStore, run: &Unstored) -> Result<(), StoreError> {
    if let Some(output) = &run.output {
        match store.put_output(&run.job.id, output) {
            Ok(()) => {}
            Err(StoreError::NoSpace) => return Err(StoreError::NoSpace),
            Err(e) => tracing::warn!("cannot store the output of job {}: {e}", run.job.id),
        }
    }
    Ok(())
}

/// Stores the end of `run` on its own: its output, then the job's new state.
fn store_run(
    store: &dyn JobStore,
    run: &Unstored,
    backoff_base: u64,
    now: u64,
) -> Result<FailOrDone, StoreError> {
    store_output(store, run)?;
    store.finish(&run.job.id, &run.end(backoff_base), now)
}

/// Whether the store has `job`'s run (`job.runs`) under way, taking the job again when the
/// store lost that reservation (it waits, one run short).
fn ensure_reserved(
    store: &dyn JobStore,
    job: &Job,
    worker: &str,
    now: u64,
) -> Result<bool, StoreError> {
    Ok(match store.get(&job.id)? {
        Some(j) if j.state == JobState::Processing => j.runs == job.runs,
        Some(j)
            if matches!(j.state, JobState::Pending | JobState::Failed)
                && j.runs.saturating_add(1) == job.runs =>
        {
            tracing::info!(
                "job {} was started just before the disk filled: its start is stored again",
                job.id
            );
            store.reserve_id(&job.id, worker, now)?.is_some()
        }
        _ => false,
    })
}

/// Logs the stored end of a run.
fn log_end(run: &Unstored, done: &FailOrDone) {
    match done {
        FailOrDone::Done(_) => tracing::info!(
            "Job {} completed successfully in {:.2}s",
            run.job.id,
            run.duration_ms as f64 / 1000.0
        ),
        FailOrDone::Failed(r) if run.cancelled => {
            tracing::warn!("Job {} cancelled ({}) - moved to DLQ", r.job.id, run.error)
        }
        FailOrDone::Failed(r) => {
            log_failure(&r.job, r.decision, &format!("failed ({})", run.error))
        }
    }
}

/// The jobs a `queuectl wait` asks about, as they are now (an unknown id is an error).
/// Whether a run's end finished its job (completed or dead, not waiting for a retry).
fn finished(done: &FailOrDone) -> bool {
    match done {
        FailOrDone::Done(_) => true,
        FailOrDone::Failed(r) => r.job.state == JobState::Dead,
    }
}

/// The ids of `results` whose jobs are not finished.
fn unfinished(results: &[(String, Result<Job, String>)]) -> HashSet<String> {
    results
        .iter()
        .filter(|(_, r)| r.as_ref().is_ok_and(|j| !j.state.is_finished()))
        .map(|(id, _)| id.clone())
        .collect()
}

fn wait_results(store: &dyn JobStore, ids: &[String]) -> Vec<(String, Result<Job, String>)> {
    ids.iter()
        .map(|id| {
            let r = match store.get(id) {
                Ok(Some(job)) => Ok(job),
                Ok(None) => Err(format!("no job with id `{id}`")),
                Err(e) => Err(e.to_string()),
            };
            (id.clone(), r)
        })
        .collect()
}

/// Returns to the system the memory a bulk enqueue freed: the C allocator keeps what this
/// thread's arena held (chunks of parsed jobs, sled's node copies) for reuse, which a
/// supervisor that goes on for days would carry as resident memory.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Tells the detaching parent we are ready, then points stdout at /dev/null.
fn notify_parent(pid: u32, count: u32) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {pid} {count}");
    let _ = out.flush();
    match std::fs::OpenOptions::new().write(true).open("/dev/null") {
        Ok(null) => {
            if let Err(e) = nix::unistd::dup2_stdout(&null) {
                tracing::warn!("cannot detach stdout: {e}");
            }
        }
        Err(e) => tracing::warn!("cannot open /dev/null: {e}"),
    }
}

/// SIGKILL to a job's process group, logging a failure.
fn kill_quietly(pgid: i32, id: &str) {
    if let Err(e) = kill::kill_job_group(pgid) {
        tracing::warn!("cannot kill process group {pgid} of job {id}: {e}");
    }
}

/// The file whose modification time tells this supervisor's workers when the leases were last
/// renewed (see [`crate::worker::fence`]).
const LEASE_FILE: &str = "lease";

/// Sets the lease file's time to `at` (creating it).
fn touch_lease_file(path: &std::path::Path, at: std::time::SystemTime) {
    let res = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .and_then(|f| f.set_modified(at));
    if let Err(e) = res {
        tracing::warn!("cannot update {}: {e}", path.display());
    }
}
