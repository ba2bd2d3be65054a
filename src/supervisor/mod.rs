//! The supervisor: the one process that owns the store while workers run, and its event loop.
//!
//! One thread owns every state change. Worker pipe readers, the spool's wake FIFO and the
//! signal handler feed it [`Event`]s over one crossbeam channel; between events it sleeps until
//! the next scheduled job is due (at most `poll_interval_ms`). Completions are flushed in groups
//! by a flusher thread; anything acknowledged to a user (spool writes) is flushed before the
//! reply. Invariants:
//! - a worker runs at most one job, and a job is sent to one worker only after the store moved
//!   it to `processing`;
//! - the process group of an attempt is killed before its job may run again;
//! - the lock is released only after the last worker is gone and the store is flushed.

pub mod schedule;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nix::sys::signal::Signal;

use crate::datadir::{DataDir, DataDirError, Holder};
use crate::model::{now_ms, AttemptOutput, Config, Job, Outcome};
use crate::owner::{log_failure, Owner, OwnerError};
use crate::spool::request::OwnerInfo;
use crate::store::{AttemptEnd, FailOrDone, JobStore};
use crate::worker;
use crate::worker::process;
use crate::worker::protocol::{self, FromWorker, ToWorker};

/// How long completions may wait before they are flushed.
const GROUP_COMMIT: Duration = Duration::from_millis(10);
/// A process group is written to the store once its job has run this long. It only matters
/// to a later owner after a crash, and a crash sooner than this after the start would also
/// lose the unflushed reservation (the group commit is longer), so short jobs skip the write.
const PGID_RECORD_AFTER: Duration = Duration::from_millis(5);
/// How long `worker start` waits for the supervisor and its workers to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A worker that dies this many times in a row before it is ready stops the supervisor.
const MAX_SPAWN_FAILURES: u32 = 5;

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
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
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
        process::spawn_detached(&exe, &args).map_err(io_err("start the supervisor"))?;
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
            let _ = child.kill();
            let _ = child.wait();
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
    let signal = |pid: u32| {
        process::signal_process(pid, Signal::SIGTERM)
            .map_err(|source| SupervisorError::Signal { pid, source })
    };
    signal(pid)?;
    let deadline = Instant::now() + timeout;
    let mut resent = Instant::now();
    loop {
        match dir.holder()? {
            Holder::Supervisor(p) if p == pid => {}
            _ => return Ok(format!("Supervisor {pid} stopped")),
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

/// The hidden `worker-child` command: a worker talking to its supervisor over stdin/stdout.
pub fn worker_child(dir: &DataDir) -> Result<(), SupervisorError> {
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err("use stdin"))?;
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err("use stdout"))?;
    worker::run(
        std::fs::File::from(stdin),
        std::fs::File::from(stdout),
        Some(&dir.workers_lock_path()),
    )?;
    Ok(())
}

/// Who hears that the supervisor is ready.
enum Ready {
    Nobody,
    /// The detaching parent, through our stdout (then pointed at /dev/null).
    Stdout,
}

/// What the event loop reacts to.
enum Event {
    Worker {
        slot: usize,
        gen: u64,
        msg: FromWorker,
    },
    WorkerGone {
        slot: usize,
        gen: u64,
    },
    Spool,
    Signal,
}

/// How an attempt ended, as the worker reported it.
struct AttemptRecord {
    outcome: Outcome,
    duration_ms: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// One running attempt.
struct Running {
    job: Job,
    pgid: Option<i32>,
    /// When the worker reported the process group, until it is written to the store.
    pgid_unrecorded_since: Option<Instant>,
}

/// One worker process.
struct Slot {
    gen: u64,
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    ready: bool,
    running: Option<Running>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Running,
    /// Let running jobs finish, dispatch nothing.
    Stopping,
    /// Running jobs were killed and requeued.
    Forced,
}

struct Supervisor {
    /// Declared before `owner`, so dropped first: its handle on the store is gone before the
    /// owner's lock is released.
    dirty: Flusher,
    owner: Owner,
    exe: PathBuf,
    root: PathBuf,
    config: Config,
    slots: Vec<Slot>,
    next_gen: u64,
    tx: Sender<Event>,
    phase: Phase,
    signals: u32,
    spawn_failures: u32,
}

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
    if let Err(e) = owner.spool.remove_stale_replies(Duration::from_secs(300)) {
        tracing::warn!("could not clean the spool's old replies: {e}");
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
    owner.spool.listen(wake_tx).map_err(OwnerError::from)?;
    forward(wake_rx, tx.clone(), || Event::Spool);
    let sig_tx = tx.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = sig_tx.send(Event::Signal);
    }) {
        tracing::warn!("cannot handle SIGINT/SIGTERM: {e}");
    }
    let dirty = start_flusher(owner.store.clone());
    let config = owner.store.config().map_err(OwnerError::from)?;
    let exe = std::env::current_exe().map_err(io_err("find the queuectl executable"))?;
    let mut sup = Supervisor {
        root: dir.root().to_path_buf(),
        owner,
        exe,
        config,
        slots: Vec::new(),
        next_gen: 0,
        tx,
        dirty,
        phase: Phase::Running,
        signals: 0,
        spawn_failures: 0,
    };
    for i in 0..count as usize {
        sup.slots.push(Slot {
            gen: 0,
            name: String::new(),
            child: None,
            stdin: None,
            ready: false,
            running: None,
        });
        sup.spawn(i)?;
    }
    let pid = std::process::id();
    // Requests that arrived while we were starting.
    sup.drain_spool();
    sup.event_loop(&rx, count, ready, pid)
}

/// Relays one channel into the event channel.
fn forward<T: Send + 'static>(rx: Receiver<T>, tx: Sender<Event>, make: fn() -> Event) {
    thread::spawn(move || {
        for _ in rx {
            if tx.send(make()).is_err() {
                break;
            }
        }
    });
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
            let _ = t.join();
        }
    }
}

/// Flushes the store at most `GROUP_COMMIT` after it was last marked dirty; idle otherwise.
fn start_flusher(store: Arc<dyn JobStore>) -> Flusher {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let thread = thread::spawn(move || {
        while rx.recv().is_ok() {
            thread::sleep(GROUP_COMMIT);
            let _ = rx.try_recv();
            if let Err(e) = store.flush() {
                tracing::error!("flushing the store failed: {e}");
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
        let alive = self.slots.iter().filter(|s| s.child.is_some()).count();
        let busy = self.slots.iter().filter(|s| s.running.is_some()).count();
        OwnerInfo {
            workers: u32::try_from(alive).unwrap_or(u32::MAX),
            busy_workers: u32::try_from(busy).unwrap_or(u32::MAX),
            supervisor_pid: Some(std::process::id()),
        }
    }

    fn mark_dirty(&self) {
        if let Some(tx) = &self.dirty.tx {
            let _ = tx.try_send(());
        }
    }

    /// Starts (or restarts) the worker of slot `i`.
    fn spawn(&mut self, i: usize) -> Result<(), SupervisorError> {
        let args: Vec<OsString> = vec![
            "--data-dir".into(),
            self.root.clone().into_os_string(),
            "worker-child".into(),
        ];
        let w = process::spawn_worker(&self.exe, &args).map_err(io_err("start a worker"))?;
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
                        if tx.send(Event::Worker { slot: i, gen, msg }).is_err() {
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
            let _ = tx.send(Event::WorkerGone { slot: i, gen });
        });
        let slot = &mut self.slots[i];
        slot.gen = gen;
        slot.name = format!("worker-{}:{pid}", i + 1);
        slot.child = Some(w.child);
        slot.stdin = Some(w.stdin);
        slot.ready = false;
        slot.running = None;
        Ok(())
    }

    fn event_loop(
        &mut self,
        rx: &Receiver<Event>,
        count: u32,
        mut ready: Ready,
        pid: u32,
    ) -> Result<(), SupervisorError> {
        let started = Instant::now();
        let mut announced = false;
        loop {
            let now = now_ms();
            let next = self.owner.store.next_wakeup().unwrap_or(None);
            let mut wait = if self.phase == Phase::Running {
                schedule::sleep_for(now, next, self.config.poll_interval_ms)
            } else {
                Duration::from_millis(self.config.poll_interval_ms.max(1))
            };
            if let Some(due) = self.record_pgids() {
                wait = wait.min(due);
            }
            match rx.recv_timeout(wait) {
                Ok(ev) => {
                    self.handle(ev);
                    // Take everything already waiting before dispatching.
                    while let Ok(ev) = rx.try_recv() {
                        self.handle(ev);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !announced && self.slots.iter().all(|s| s.ready) {
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
            if self.phase == Phase::Running {
                self.dispatch();
            } else if self.slots.iter().all(|s| s.child.is_none()) {
                break;
            }
        }
        self.finish(pid)
    }

    /// The last steps of a stop: answer late requests, flush. The lock keeps naming this
    /// process until it is let go (when the supervisor is dropped), so `worker stop` waits until
    /// the store is really free.
    fn finish(&mut self, pid: u32) -> Result<(), SupervisorError> {
        let info = OwnerInfo {
            workers: 0,
            busy_workers: 0,
            supervisor_pid: None,
        };
        if let Err(e) = self.owner.drain(info) {
            tracing::error!("could not answer the last requests: {e}");
        }
        self.owner.store.flush().map_err(OwnerError::from)?;
        if let Err(e) = self.owner.store.forget_applied() {
            tracing::warn!("could not forget applied requests: {e}");
        }
        self.owner.store.flush().map_err(OwnerError::from)?;
        tracing::info!("Supervisor {pid} stopped");
        Ok(())
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Worker { slot, gen, msg } if self.slots[slot].gen == gen => {
                self.on_worker_message(slot, msg)
            }
            Event::WorkerGone { slot, gen } if self.slots[slot].gen == gen => {
                self.on_worker_gone(slot)
            }
            Event::Worker { .. } | Event::WorkerGone { .. } => {} // an old worker of the slot
            Event::Spool => self.drain_spool(),
            Event::Signal => self.on_signal(),
        }
    }

    fn drain_spool(&mut self) {
        match self.owner.drain(self.info()) {
            Ok(d) if d.writes > 0 => match self.owner.store.config() {
                Ok(c) => self.config = c,
                Err(e) => tracing::error!("cannot read the config: {e}"),
            },
            Ok(_) => {}
            Err(e) => tracing::error!("cannot apply requests: {e}"),
        }
    }

    fn on_worker_message(&mut self, i: usize, msg: FromWorker) {
        match msg {
            FromWorker::Ready { .. } => {
                self.slots[i].ready = true;
                self.spawn_failures = 0;
                if self.phase != Phase::Running {
                    self.shut_down_worker(i);
                }
            }
            FromWorker::Started { job_id, pgid } => {
                let Some(run) = self.slots[i].running.as_mut() else {
                    return;
                };
                if run.job.id != job_id {
                    return;
                }
                run.pgid = Some(pgid);
                run.pgid_unrecorded_since = Some(Instant::now());
            }
            FromWorker::Finished(f) => {
                let matches = self.slots[i]
                    .running
                    .as_ref()
                    .is_some_and(|r| r.job.id == f.job_id);
                if !matches {
                    return; // a job we already gave up on (forced stop)
                }
                let Some(run) = self.slots[i].running.take() else {
                    return;
                };
                let end = AttemptRecord {
                    outcome: f.outcome,
                    duration_ms: f.duration_ms,
                    stdout: f.stdout_tail,
                    stderr: f.stderr_tail,
                };
                let next_for =
                    (self.phase == Phase::Running && self.slots[i].stdin.is_some()).then_some(i);
                if let Some(next) = self.record(run.job, end, next_for) {
                    self.send_run(i, next);
                }
                if self.phase != Phase::Running {
                    self.shut_down_worker(i);
                }
            }
        }
    }

    /// Writes the process groups of jobs that have run for `PGID_RECORD_AFTER`; returns how
    /// soon the next one is due, if any.
    fn record_pgids(&mut self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut wrote = false;
        for slot in &mut self.slots {
            let Some(run) = slot.running.as_mut() else {
                continue;
            };
            let (Some(pgid), Some(since)) = (run.pgid, run.pgid_unrecorded_since) else {
                continue;
            };
            let age = since.elapsed();
            if age < PGID_RECORD_AFTER {
                let left = PGID_RECORD_AFTER - age;
                next = Some(next.map_or(left, |n| n.min(left)));
                continue;
            }
            run.pgid_unrecorded_since = None;
            if let Err(e) = self.owner.store.set_pgid(&run.job.id, pgid) {
                tracing::warn!("cannot record the process group of job {}: {e}", run.job.id);
            }
            wrote = true;
        }
        if wrote {
            self.mark_dirty();
        }
        next
    }

    /// Stores the end of an attempt and logs it. With `next_for`, the next due job is
    /// reserved for that worker in the same transaction and returned.
    fn record(&mut self, job: Job, end: AttemptRecord, next_for: Option<usize>) -> Option<Job> {
        let now = now_ms();
        let store = &self.owner.store;
        let error = schedule::last_error(&end.outcome, &end.stderr);
        let success = end.outcome.is_success();
        // A successful attempt that printed nothing leaves nothing to keep.
        if !(success && end.stdout.is_empty() && end.stderr.is_empty()) {
            let output = AttemptOutput {
                run: job.runs,
                outcome: end.outcome,
                finished_at: now,
                duration_ms: end.duration_ms,
                stdout: end.stdout,
                stderr: end.stderr,
            };
            if let Err(e) = store.put_output(&job.id, &output) {
                tracing::warn!("cannot store the output of job {}: {e}", job.id);
            }
        }
        let attempt = if success {
            AttemptEnd::Succeeded
        } else {
            AttemptEnd::Failed {
                error: &error,
                backoff_base: self.config.backoff_base,
            }
        };
        let result = match next_for {
            // Scheduled jobs are promoted by `dispatch` on every turn of the loop, which wakes
            // when the first of them falls due.
            Some(i) => store.finish_and_reserve(&job.id, &attempt, &self.slots[i].name, now),
            None => store
                .finish(&job.id, &attempt, now)
                .map(|done| (done, None)),
        };
        self.mark_dirty();
        match result {
            Ok((FailOrDone::Done(_), next)) => {
                tracing::info!(
                    "Job {} completed successfully in {:.2}s",
                    job.id,
                    end.duration_ms as f64 / 1000.0
                );
                next
            }
            Ok((FailOrDone::Failed(r), next)) => {
                log_failure(&r.job, r.decision, &format!("failed ({error})"));
                next
            }
            Err(e) => {
                tracing::error!("cannot record the end of job {}: {e}", job.id);
                None
            }
        }
    }

    fn on_worker_gone(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.stdin = None;
        if let Some(mut child) = slot.child.take() {
            let _ = child.wait();
        }
        let was_ready = slot.ready;
        slot.ready = false;
        if let Some(run) = slot.running.take() {
            // The command may outlive its worker: kill its group before the job can run again.
            if let Some(pgid) = run.pgid {
                if let Err(e) = process::kill_group(pgid, Signal::SIGKILL) {
                    tracing::warn!("cannot kill process group {pgid}: {e}");
                }
            }
            if self.phase == Phase::Forced {
                self.release(run.job);
            } else {
                tracing::warn!(
                    "Worker {} exited unexpectedly while running job {}",
                    slot.name,
                    run.job.id
                );
                self.record(
                    run.job,
                    AttemptRecord {
                        outcome: Outcome::WorkerLost,
                        duration_ms: 0,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                    },
                    None,
                );
            }
        } else if self.phase == Phase::Running {
            tracing::warn!("Worker {} exited unexpectedly", self.slots[i].name);
        }
        if self.phase != Phase::Running {
            return;
        }
        if !was_ready {
            self.spawn_failures += 1;
        }
        if self.spawn_failures >= MAX_SPAWN_FAILURES {
            tracing::error!("workers keep dying before they are ready; stopping");
            self.begin_stop();
            return;
        }
        if let Err(e) = self.spawn(i) {
            tracing::error!("cannot restart worker {}: {e}", i + 1);
            self.spawn_failures += 1;
        }
    }

    fn release(&self, job: Job) {
        match self.owner.store.release(&job.id, now_ms()) {
            Ok(_) => tracing::info!("Job {} returned to pending (forced stop)", job.id),
            Err(e) => tracing::error!("cannot return job {} to pending: {e}", job.id),
        }
        self.mark_dirty();
    }

    fn on_signal(&mut self) {
        self.signals += 1;
        if self.signals == 1 {
            self.begin_stop();
        } else if self.phase != Phase::Forced {
            self.force_stop();
        }
    }

    fn begin_stop(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        self.phase = Phase::Stopping;
        let busy = self.slots.iter().filter(|s| s.running.is_some()).count();
        tracing::info!(
            "Supervisor {} stopping: waiting for {busy} running job{} to finish",
            std::process::id(),
            if busy == 1 { "" } else { "s" }
        );
        for i in 0..self.slots.len() {
            if self.slots[i].running.is_none() {
                self.shut_down_worker(i);
            }
        }
    }

    /// Kills running jobs' process groups, returns the jobs to pending, closes every worker's
    /// pipe (a worker kills what it started when its pipe closes).
    fn force_stop(&mut self) {
        self.phase = Phase::Forced;
        tracing::warn!(
            "Supervisor {} forced to stop: killing running jobs",
            std::process::id()
        );
        for i in 0..self.slots.len() {
            if let Some(run) = self.slots[i].running.take() {
                if let Some(pgid) = run.pgid {
                    if let Err(e) = process::kill_group(pgid, Signal::SIGKILL) {
                        tracing::warn!("cannot kill process group {pgid}: {e}");
                    }
                }
                self.release(run.job);
            }
            self.slots[i].stdin = None;
        }
    }

    /// Asks an idle worker to exit.
    fn shut_down_worker(&mut self, i: usize) {
        if let Some(mut stdin) = self.slots[i].stdin.take() {
            let _ = protocol::write_frame(&mut stdin, &ToWorker::Shutdown);
            let _ = stdin.flush();
        }
    }

    /// Gives every idle worker the next due job.
    fn dispatch(&mut self) {
        let now = now_ms();
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if !slot.ready || slot.running.is_some() || slot.stdin.is_none() {
                continue;
            }
            let job = match self.owner.store.reserve(&slot.name, now) {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!("cannot reserve a job: {e}");
                    return;
                }
            };
            self.mark_dirty();
            self.send_run(i, job);
        }
    }

    /// Hands a reserved job to worker `i`; if the worker is gone, the job goes back to pending
    /// (it never started).
    fn send_run(&mut self, i: usize, job: Job) {
        let msg = ToWorker::Run(protocol::RunJob {
            job_id: job.id.clone(),
            command: job.command.clone(),
            timeout_ms: job.timeout_ms,
        });
        let slot = &mut self.slots[i];
        let sent = match slot.stdin.as_mut() {
            Some(stdin) => protocol::write_frame(stdin, &msg).is_ok() && stdin.flush().is_ok(),
            None => false,
        };
        if sent {
            slot.running = Some(Running {
                job,
                pgid: None,
                pgid_unrecorded_since: None,
            });
        } else {
            slot.stdin = None;
            self.release(job);
        }
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
