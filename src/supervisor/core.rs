//! The supervisor's decisions, without I/O: which worker gets a job, what the end of an run,
//! a worker's death, a timer or a stop signal leads to. [`Core::handle`] takes one [`Event`] and
//! appends the [`Action`]s the shell (`supervisor/mod.rs`) must carry out; the shell reports
//! back what it learns by carrying them out (a reserved job, a failed send) as further events.
//! No clock is read here: times come in with the events.
//!
//! Invariants (each has a unit test below):
//! - a worker is sent a job only when it is ready, idle and its pipe is open, and only one;
//! - a job taken from a worker (its death, a forced stop) has its process group killed before
//!   it is recorded or released, so it can never run twice at once;
//! - after a stop began nothing is dispatched, and every idle worker is asked to exit;
//! - events of an earlier worker of the same worker (an older generation) change nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::model::RunResult;
use crate::model::{Job, Millis, Outcome};
use crate::worker::protocol::RunJob;

/// A process group is written to the store once its job has run this long. It only matters
/// to a later owner after a crash, and a crash sooner than this after the start would also
/// lose the unflushed reservation (the group commit is longer), so short jobs skip the write.
pub const PGID_RECORD_AFTER: Duration = Duration::from_millis(5);
/// A cancelled job's process group gets SIGTERM, then SIGKILL after this long.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// A worker that dies this many times in a row before it is ready stops the supervisor.
pub const MAX_SPAWN_FAILURES: u32 = 5;

/// Where the supervisor is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Running,
    /// Let running jobs finish, dispatch nothing.
    Stopping,
    /// Running jobs were killed and requeued.
    Forced,
}

/// What happened. `worker` is a worker's index (it keeps it across restarts); `gen` tells the
/// worker's successive processes apart.
#[derive(Debug)]
pub enum Event {
    /// The shell started a (new) process for the worker.
    Spawned { worker: usize, gen: u64 },
    /// The shell could not restart the worker.
    SpawnFailed { worker: usize },
    /// The worker said it is ready for jobs.
    Ready { worker: usize, gen: u64 },
    /// The worker started a job's shell in process group `pgid`.
    Started {
        worker: usize,
        gen: u64,
        job_id: String,
        pgid: i32,
        at: Instant,
    },
    /// The worker reported the end of an run.
    Finished {
        worker: usize,
        gen: u64,
        job_id: String,
        result: RunResult,
    },
    /// The worker's output ended: the process is gone.
    Gone { worker: usize, gen: u64 },
    /// The store reserved `job` for the worker.
    Reserved { worker: usize, job: Job },
    /// A job could not be sent to the worker (its pipe broke).
    SendFailed { worker: usize },
    /// SIGINT or SIGTERM.
    Signal,
    /// Time passed (one turn of the event loop).
    Timer { now: Instant },
}

/// What the shell must do, in order.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send the run to the worker; on failure report [`Event::SendFailed`].
    Run { worker: usize, job: RunJob },
    /// Ask the worker to exit once idle, and close its pipe.
    Shutdown { worker: usize },
    /// Close the worker's pipe without a word (a worker kills its job when the pipe closes).
    ClosePipe { worker: usize },
    /// Wait for the worker's exited process.
    Reap { worker: usize },
    /// SIGKILL a job's process group.
    KillGroup { pgid: i32 },
    /// SIGTERM a job's process group (a cancel; SIGKILL follows after [`CANCEL_GRACE`]).
    TermGroup { pgid: i32 },
    /// Store the end of the run. The shell stores the ends of one loop turn together with the
    /// reservation of the next job for each idle worker (see [`Core::idle_worker`]), in one
    /// step, and reports those as [`Event::Reserved`].
    Record {
        worker: usize,
        job: Job,
        result: RunResult,
        /// The job was cancelled: it goes to `dead` as "cancelled", whatever the result says.
        cancelled: bool,
    },
    /// Return a job that is not running (any more) to pending, without counting an run.
    Release { job: Job },
    /// Return a job reserved ahead for a worker, never started, to where it was: as
    /// [`Action::Release`], and its run is not counted either.
    Unreserve { job: Job },
    /// Write the process group of the worker's running job to the store.
    RecordPgid { worker: usize, pgid: i32 },
    /// Start a new process for the worker; report [`Event::Spawned`] or
    /// [`Event::SpawnFailed`].
    Spawn { worker: usize },
    /// Tell the log.
    Note(Note),
}

/// Things worth a log line.
#[derive(Debug, PartialEq, Eq)]
pub enum Note {
    /// A worker died while running a job.
    WorkerLost { worker: usize, job_id: String },
    /// An idle worker died.
    WorkerExited { worker: usize },
    /// Workers keep dying before they are ready: the supervisor stops.
    KeepsDying,
    /// A graceful stop began with `busy` jobs running.
    Stopping { busy: usize },
    /// A forced stop began.
    Forced,
}

/// The run a worker is running.
#[derive(Debug)]
pub struct Run {
    pub job: Job,
    pub pgid: Option<i32>,
    /// When the worker reported the process group, until it is written to the store.
    pgid_unrecorded_since: Option<Instant>,
    /// When `queuectl cancel` asked for it to stop, and whether SIGKILL was sent.
    cancel: Option<(Instant, bool)>,
    /// When the worker said it started.
    started_at: Option<Instant>,
}

/// What the core knows of one worker.
#[derive(Debug, Default)]
struct WorkerState {
    gen: u64,
    /// A process exists (spawned, not yet seen gone).
    alive: bool,
    /// Its pipe is open: it may be sent frames.
    pipe: bool,
    ready: bool,
    running: Option<Run>,
    /// Its next job, reserved while it runs `running` (see [`Core::reserve_ahead`]).
    ahead: Option<Job>,
    /// Let go by `worker scale`: it exits once idle and is not restarted.
    retired: bool,
}

/// The state of the supervisor's workers and its stop, and the rules that change it.
#[derive(Debug)]
pub struct Core {
    workers: Vec<WorkerState>,
    phase: Phase,
    signals: u32,
    spawn_failures: u32,
    /// `worker pause`: no job is given out until `worker resume`.
    paused: bool,
    /// With [`Core::reserve_ahead`]: how long a run may last and its worker still hold its
    /// next job.
    ahead_keep: Option<Duration>,
}

impl Core {
    /// `workers` workers, none of them spawned yet.
    pub fn new(workers: usize) -> Core {
        Core {
            workers: (0..workers).map(|_| WorkerState::default()).collect(),
            phase: Phase::Running,
            signals: 0,
            spawn_failures: 0,
            paused: false,
            ahead_keep: None,
        }
    }

    /// Lets a busy worker hold its next job, reserved while it runs the current one, so that it
    /// starts it as soon as it reports the end of the current one, without waiting for the
    /// store (a shared queue, where each step waits for the database's commit). A next job is
    /// held only while the current run is younger than `keep`, then given back (it would wait
    /// for a long run, where another worker or host could run it).
    pub fn reserve_ahead(&mut self, keep: Duration) {
        self.ahead_keep = Some(keep);
    }

    /// Whether busy `worker` should be given its next job now (see [`Core::reserve_ahead`]).
    pub fn wants_ahead(&self, worker: usize, now: Instant) -> bool {
        let Some(keep) = self.ahead_keep else {
            return false;
        };
        let s = &self.workers[worker];
        self.phase == Phase::Running
            && !self.paused
            && s.pipe
            && !s.retired
            && s.ahead.is_none()
            && s.running.as_ref().is_some_and(|r| {
                r.cancel.is_none()
                    && r.started_at
                        .is_none_or(|at| now.saturating_duration_since(at) < keep)
            })
    }

    /// The jobs reserved ahead, not started yet.
    pub fn ahead(&self) -> impl Iterator<Item = &Job> {
        self.workers.iter().filter_map(|s| s.ahead.as_ref())
    }

    /// Forgets the jobs reserved ahead (`id`: that one only), without a word to the store:
    /// they may not be this supervisor's any more (its leases were not renewed in time).
    pub fn drop_ahead(&mut self, id: Option<&str>) {
        for s in &mut self.workers {
            if s.ahead
                .as_ref()
                .is_some_and(|j| id.is_none_or(|id| j.id == id))
            {
                s.ahead = None;
            }
        }
    }

    /// Whether `worker pause` holds back new jobs.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// `worker pause` / `worker resume`: stop or restart giving out jobs; running jobs go on.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// How many workers there are, counting neither those let go nor those leaving.
    pub fn target(&self) -> usize {
        self.workers.iter().filter(|s| !s.retired).count()
    }

    /// `worker scale n`: more workers are started (first in the places of workers let go
    /// earlier, then new ones: the shell grows its table to [`Core::places`] before it carries out
    /// the spawns); fewer: idle workers are let go first, then busy ones, each exiting once
    /// its job is finished. Nothing changes once a stop began.
    pub fn scale(&mut self, n: usize, out: &mut VecDeque<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        let mut have = self.target();
        // Fewer: idle ones first, then the busy ones (from the end).
        let mut order: Vec<usize> = (0..self.workers.len()).rev().collect();
        order.sort_by_key(|&i| self.workers[i].running.is_some());
        for i in order {
            if have <= n {
                break;
            }
            if self.workers[i].retired {
                continue;
            }
            self.workers[i].retired = true;
            have -= 1;
            if self.workers[i].running.is_none() {
                self.shut_down(i, out);
            }
        }
        // More: reuse places of workers that are gone, then add new ones.
        for i in 0..self.workers.len() {
            if have >= n {
                break;
            }
            let s = &mut self.workers[i];
            if s.retired && !s.alive {
                s.retired = false;
                have += 1;
                out.push_back(Action::Spawn { worker: i });
            }
        }
        while have < n {
            self.workers.push(WorkerState::default());
            have += 1;
            out.push_back(Action::Spawn {
                worker: self.workers.len() - 1,
            });
        }
    }

    /// The size of the worker table (places let go included).
    pub fn places(&self) -> usize {
        self.workers.len()
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Every worker has said it is ready.
    pub fn all_ready(&self) -> bool {
        self.workers.iter().all(|s| s.ready || s.retired)
    }

    /// No worker process is left.
    pub fn all_gone(&self) -> bool {
        self.workers.iter().all(|s| !s.alive)
    }

    /// Worker processes alive.
    pub fn alive(&self) -> usize {
        self.workers.iter().filter(|s| s.alive).count()
    }

    /// Workers running a job.
    pub fn busy(&self) -> usize {
        self.workers.iter().filter(|s| s.running.is_some()).count()
    }

    /// The job the worker runs.
    pub fn running(&self, worker: usize) -> Option<&Run> {
        self.workers[worker].running.as_ref()
    }

    /// The first worker from `from` on whose worker may be given a job now (none once a stop
    /// began).
    pub fn idle_worker(&self, from: usize) -> Option<usize> {
        if self.phase != Phase::Running || self.paused {
            return None;
        }
        (from..self.workers.len()).find(|&i| {
            let s = &self.workers[i];
            s.ready && s.running.is_none() && s.pipe && !s.retired
        })
    }

    /// How long the event loop may sleep: until the next scheduled job is due (not once a stop
    /// began), the next process group is to be written or a next job held ahead is to be given
    /// back, and never longer than the poll interval.
    pub fn sleep_for(
        &self,
        now_ms: Millis,
        next_scheduled: Option<Millis>,
        poll_interval_ms: u64,
        now: Instant,
    ) -> Duration {
        let next = if self.phase == Phase::Running {
            next_scheduled
        } else {
            None
        };
        let wait = sleep_until(now_ms, next, poll_interval_ms);
        let wait = match self.pgid_due_in(now) {
            Some(due) => wait.min(due),
            None => wait,
        };
        let wait = match self.ahead_due_in(now) {
            Some(due) => wait.min(due),
            None => wait,
        };
        match self.kill_due_in(now) {
            Some(due) => wait.min(due),
            None => wait,
        }
    }

    /// How soon a next job held ahead is to be given back (its worker's run grew long).
    fn ahead_due_in(&self, now: Instant) -> Option<Duration> {
        let keep = self.ahead_keep?;
        self.workers
            .iter()
            .filter(|s| s.ahead.is_some())
            .filter_map(|s| s.running.as_ref()?.started_at)
            .map(|at| keep.saturating_sub(now.saturating_duration_since(at)))
            .min()
    }

    /// How soon a cancelled job's grace ends, if any is waiting for it.
    fn kill_due_in(&self, now: Instant) -> Option<Duration> {
        self.workers
            .iter()
            .filter_map(|s| s.running.as_ref())
            .filter_map(|r| match r.cancel {
                Some((since, false)) if r.pgid.is_some() => Some(since),
                _ => None,
            })
            .map(|since| CANCEL_GRACE.saturating_sub(now.saturating_duration_since(since)))
            .min()
    }

    /// `queuectl cancel` of job `job_id`: if a worker runs it, its process group gets SIGTERM
    /// (once the group is known), SIGKILL after [`CANCEL_GRACE`], and the end of the run
    /// is recorded as cancelled. Returns the job if a worker runs it.
    pub fn cancel(
        &mut self,
        job_id: &str,
        now: Instant,
        out: &mut VecDeque<Action>,
    ) -> Option<Job> {
        if let Some(worker) = self
            .workers
            .iter()
            .position(|s| s.ahead.as_ref().is_some_and(|j| j.id == job_id))
        {
            // Not started: it ends cancelled at once.
            let job = self.workers[worker].ahead.take()?;
            out.push_back(Action::Record {
                worker,
                job: job.clone(),
                result: RunResult::without_output(Outcome::SpawnFailed(
                    "cancelled before it started".into(),
                )),
                cancelled: true,
            });
            return Some(job);
        }
        let run = self
            .workers
            .iter_mut()
            .filter_map(|s| s.running.as_mut())
            .find(|r| r.job.id == job_id)?;
        if run.cancel.is_none() {
            run.cancel = Some((now, false));
            if let Some(pgid) = run.pgid {
                out.push_back(Action::TermGroup { pgid });
            }
        }
        Some(run.job.clone())
    }

    /// How soon a process group not yet written falls due, if any.
    fn pgid_due_in(&self, now: Instant) -> Option<Duration> {
        self.workers
            .iter()
            .filter_map(|s| s.running.as_ref())
            .filter(|r| r.pgid.is_some())
            .filter_map(|r| r.pgid_unrecorded_since)
            .map(|since| PGID_RECORD_AFTER.saturating_sub(now.saturating_duration_since(since)))
            .min()
    }

    /// Applies one event; appends what the shell must do to `out`.
    pub fn handle(&mut self, ev: Event, out: &mut VecDeque<Action>) {
        match ev {
            Event::Spawned { worker, gen } => {
                self.workers[worker] = WorkerState {
                    gen,
                    alive: true,
                    pipe: true,
                    ready: false,
                    running: None,
                    ahead: None,
                    retired: false,
                };
            }
            Event::SpawnFailed { .. } => self.spawn_failures += 1,
            Event::Ready { worker, gen } if self.current(worker, gen) => {
                self.workers[worker].ready = true;
                self.spawn_failures = 0;
                if self.phase != Phase::Running {
                    self.shut_down(worker, out);
                }
            }
            Event::Started {
                worker,
                gen,
                job_id,
                pgid,
                at,
            } if self.current(worker, gen) => {
                if let Some(run) = self.workers[worker].running.as_mut() {
                    if run.job.id == job_id {
                        run.pgid = Some(pgid);
                        run.started_at = Some(at);
                        run.pgid_unrecorded_since = Some(at);
                        if run.cancel.is_some() {
                            // Cancelled before it started: stop it now.
                            run.cancel = Some((at, false));
                            out.push_back(Action::TermGroup { pgid });
                        }
                    }
                }
            }
            Event::Finished {
                worker,
                gen,
                job_id,
                result,
            } if self.current(worker, gen) => self.finished(worker, &job_id, result, out),
            Event::Gone { worker, gen } if self.current(worker, gen) => self.gone(worker, out),
            // An earlier worker of the worker.
            Event::Ready { .. }
            | Event::Started { .. }
            | Event::Finished { .. }
            | Event::Gone { .. } => {}
            Event::Reserved { worker, job } => self.assign(worker, job, out),
            Event::SendFailed { worker } => {
                let s = &mut self.workers[worker];
                s.pipe = false;
                if let Some(run) = s.running.take() {
                    out.push_back(Action::Release { job: run.job });
                }
                if let Some(job) = s.ahead.take() {
                    out.push_back(Action::Unreserve { job });
                }
            }
            Event::Signal => {
                self.signals += 1;
                if self.signals == 1 {
                    self.begin_stop(out);
                } else if self.phase != Phase::Forced {
                    self.force_stop(out);
                }
            }
            Event::Timer { now } => {
                let keep = self.ahead_keep.unwrap_or(Duration::MAX);
                for s in &mut self.workers {
                    let long = s.running.as_ref().is_some_and(|r| {
                        r.started_at
                            .is_some_and(|at| now.saturating_duration_since(at) >= keep)
                    });
                    if long {
                        if let Some(job) = s.ahead.take() {
                            out.push_back(Action::Unreserve { job });
                        }
                    }
                }
                for (worker, s) in self.workers.iter_mut().enumerate() {
                    let Some(run) = s.running.as_mut() else {
                        continue;
                    };
                    if let (Some(pgid), Some((since, false))) = (run.pgid, run.cancel) {
                        if now.saturating_duration_since(since) >= CANCEL_GRACE {
                            run.cancel = Some((since, true));
                            out.push_back(Action::KillGroup { pgid });
                        }
                    }
                    let (Some(pgid), Some(since)) = (run.pgid, run.pgid_unrecorded_since) else {
                        continue;
                    };
                    if now.saturating_duration_since(since) >= PGID_RECORD_AFTER {
                        run.pgid_unrecorded_since = None;
                        out.push_back(Action::RecordPgid { worker, pgid });
                    }
                }
            }
        }
    }

    fn current(&self, worker: usize, gen: u64) -> bool {
        self.workers[worker].gen == gen
    }

    /// Hands a reserved job to the worker, or back if the worker cannot take it.
    fn assign(&mut self, worker: usize, job: Job, out: &mut VecDeque<Action>) {
        let ahead_ok = self.ahead_keep.is_some() && self.phase == Phase::Running && !self.paused;
        let s = &mut self.workers[worker];
        if s.pipe && s.running.is_some() && s.ahead.is_none() && !s.retired && ahead_ok {
            s.ahead = Some(job);
            return;
        }
        if !s.pipe || s.running.is_some() {
            out.push_back(if self.ahead_keep.is_some() {
                Action::Unreserve { job }
            } else {
                Action::Release { job }
            });
            return;
        }
        let run = RunJob {
            job_id: job.id.clone(),
            command: job.command.clone(),
            timeout_ms: job.timeout_ms,
            cwd: job.cwd.clone(),
            env: job.env.clone(),
            // The shell names the live output files; the core does no I/O.
            live: None,
        };
        s.running = Some(Run {
            job,
            pgid: None,
            pgid_unrecorded_since: None,
            cancel: None,
            started_at: None,
        });
        out.push_back(Action::Run { worker, job: run });
    }

    fn finished(
        &mut self,
        worker: usize,
        job_id: &str,
        result: RunResult,
        out: &mut VecDeque<Action>,
    ) {
        let s = &mut self.workers[worker];
        if s.running.as_ref().is_none_or(|r| r.job.id != job_id) {
            return; // a job we already gave up on (forced stop)
        }
        let Some(run) = s.running.take() else {
            return;
        };
        let retired = s.retired;
        let next = s.ahead.take();
        out.push_back(Action::Record {
            worker,
            job: run.job,
            result,
            cancelled: run.cancel.is_some(),
        });
        if let Some(job) = next {
            // Started at once, before anything is stored; or given back.
            if self.phase == Phase::Running && !retired && !self.paused {
                self.assign(worker, job, out);
            } else {
                out.push_back(Action::Unreserve { job });
            }
        }
        if self.phase != Phase::Running || retired {
            self.shut_down(worker, out);
        }
    }

    fn gone(&mut self, worker: usize, out: &mut VecDeque<Action>) {
        let s = &mut self.workers[worker];
        s.pipe = false;
        s.alive = false;
        out.push_back(Action::Reap { worker });
        let was_ready = std::mem::take(&mut s.ready);
        if let Some(job) = s.ahead.take() {
            out.push_back(Action::Unreserve { job });
        }
        if let Some(run) = s.running.take() {
            // The command may outlive its worker: kill its group before the job can run again.
            if let Some(pgid) = run.pgid {
                out.push_back(Action::KillGroup { pgid });
            }
            if self.phase == Phase::Forced && run.cancel.is_none() {
                out.push_back(Action::Release { job: run.job });
            } else {
                out.push_back(Action::Note(Note::WorkerLost {
                    worker,
                    job_id: run.job.id.clone(),
                }));
                out.push_back(Action::Record {
                    worker,
                    job: run.job,
                    result: RunResult::without_output(Outcome::WorkerLost),
                    cancelled: run.cancel.is_some(),
                });
            }
        } else if self.phase == Phase::Running && !s.retired {
            out.push_back(Action::Note(Note::WorkerExited { worker }));
        }
        if self.phase != Phase::Running || self.workers[worker].retired {
            return;
        }
        if !was_ready {
            self.spawn_failures += 1;
        }
        if self.spawn_failures >= MAX_SPAWN_FAILURES {
            out.push_back(Action::Note(Note::KeepsDying));
            self.begin_stop(out);
            return;
        }
        out.push_back(Action::Spawn { worker });
    }

    /// Asks an idle worker to exit.
    fn shut_down(&mut self, worker: usize, out: &mut VecDeque<Action>) {
        let s = &mut self.workers[worker];
        if s.pipe {
            s.pipe = false;
            out.push_back(Action::Shutdown { worker });
        }
    }

    fn begin_stop(&mut self, out: &mut VecDeque<Action>) {
        if self.phase != Phase::Running {
            return;
        }
        self.phase = Phase::Stopping;
        out.push_back(Action::Note(Note::Stopping { busy: self.busy() }));
        for s in &mut self.workers {
            if let Some(job) = s.ahead.take() {
                out.push_back(Action::Unreserve { job });
            }
        }
        for worker in 0..self.workers.len() {
            if self.workers[worker].running.is_none() {
                self.shut_down(worker, out);
            }
        }
    }

    /// Kills running jobs' process groups, returns the jobs to pending, closes every worker's
    /// pipe (a worker kills what it started when its pipe closes).
    fn force_stop(&mut self, out: &mut VecDeque<Action>) {
        self.phase = Phase::Forced;
        out.push_back(Action::Note(Note::Forced));
        for (worker, s) in self.workers.iter_mut().enumerate() {
            if let Some(job) = s.ahead.take() {
                out.push_back(Action::Unreserve { job });
            }
            if let Some(run) = s.running.take() {
                if let Some(pgid) = run.pgid {
                    out.push_back(Action::KillGroup { pgid });
                }
                if run.cancel.is_some() {
                    // A cancelled job is not given back: it ends as cancelled.
                    out.push_back(Action::Record {
                        worker,
                        job: run.job,
                        result: RunResult::without_output(Outcome::Signaled(9)),
                        cancelled: true,
                    });
                } else {
                    out.push_back(Action::Release { job: run.job });
                }
            }
            if std::mem::take(&mut s.pipe) {
                out.push_back(Action::ClosePipe { worker });
            }
        }
    }
}

/// How long to sleep: until the next scheduled job is due, and never longer than the poll
/// interval.
fn sleep_until(now: Millis, next_scheduled: Option<Millis>, poll_interval_ms: u64) -> Duration {
    let cap = poll_interval_ms.max(1);
    let ms = match next_scheduled {
        Some(at) => at.saturating_sub(now).min(cap),
        None => cap,
    };
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobState;

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            command: format!("echo {id}"),
            state: JobState::Processing,
            attempts: 0,
            max_retries: 3,
            created_at: 0,
            updated_at: 0,
            available_at: None,
            locked_by: None,
            locked_at: None,
            last_error: None,
            priority: 0,
            timeout_ms: Some(1000),
            seq: 0,
            pgid: None,
            runs: 1,
            cwd: None,
            env: Vec::new(),
        }
    }

    fn finished(worker: usize, gen: u64, id: &str, outcome: Outcome) -> Event {
        Event::Finished {
            worker,
            gen,
            job_id: id.into(),
            result: RunResult {
                outcome,
                duration_ms: 7,
                stdout: b"out".to_vec(),
                stderr: Vec::new(),
            },
        }
    }

    /// A core and the actions of its last step.
    struct T {
        core: Core,
        t0: Instant,
    }

    impl T {
        /// `n` workers, spawned (generation `worker + 1`) and ready.
        fn ready(n: usize) -> T {
            let mut t = T {
                core: Core::new(n),
                t0: Instant::now(),
            };
            for worker in 0..n {
                assert!(t
                    .on(Event::Spawned {
                        worker,
                        gen: gen(worker)
                    })
                    .is_empty());
                assert!(t
                    .on(Event::Ready {
                        worker,
                        gen: gen(worker)
                    })
                    .is_empty());
            }
            t
        }

        fn on(&mut self, ev: Event) -> Vec<Action> {
            let mut out = VecDeque::new();
            self.core.handle(ev, &mut out);
            out.into()
        }

        /// Gives the worker `id` and checks it is sent.
        fn run(&mut self, worker: usize, id: &str) {
            let actions = self.on(Event::Reserved {
                worker,
                job: job(id),
            });
            assert_eq!(
                actions,
                vec![Action::Run {
                    worker,
                    job: RunJob {
                        job_id: id.into(),
                        command: format!("echo {id}"),
                        timeout_ms: Some(1000),
                        cwd: None,
                        env: Vec::new(),
                        live: None,
                    }
                }]
            );
        }

        /// Gives busy `worker` job `id` to hold ahead, and checks it is only held.
        fn hold(&mut self, worker: usize, id: &str) {
            assert!(self
                .on(Event::Reserved {
                    worker,
                    job: job(id),
                })
                .is_empty());
        }

        fn started(&mut self, worker: usize, id: &str, pgid: i32) {
            let at = self.t0;
            assert!(self
                .on(Event::Started {
                    worker,
                    gen: gen(worker),
                    job_id: id.into(),
                    pgid,
                    at,
                })
                .is_empty());
        }
    }

    fn gen(worker: usize) -> u64 {
        worker as u64 + 1
    }

    fn record_of(a: &Action) -> (usize, &str, &Outcome) {
        match a {
            Action::Record {
                worker,
                job,
                result,
                ..
            } => (*worker, job.id.as_str(), &result.outcome),
            other => panic!("expected a record, got {other:?}"),
        }
    }

    fn released(a: &Action) -> &str {
        match a {
            Action::Release { job } => &job.id,
            other => panic!("expected a release, got {other:?}"),
        }
    }

    #[test]
    fn dispatch_picks_ready_idle_workers_with_an_open_pipe() {
        let mut t = T {
            core: Core::new(3),
            t0: Instant::now(),
        };
        for worker in 0..3 {
            t.on(Event::Spawned {
                worker,
                gen: gen(worker),
            });
        }
        assert_eq!(t.core.idle_worker(0), None, "nobody is ready yet");
        t.on(Event::Ready { worker: 1, gen: 2 });
        t.on(Event::Ready { worker: 2, gen: 3 });
        assert_eq!(t.core.idle_worker(0), Some(1));
        t.run(1, "a");
        assert_eq!(t.core.idle_worker(0), Some(2), "one job per worker");
        assert_eq!(t.core.idle_worker(3), None);
        assert_eq!(t.core.busy(), 1);
        assert_eq!(t.core.running(1).map(|r| r.job.id.as_str()), Some("a"));
    }

    #[test]
    fn a_job_for_a_worker_that_cannot_take_it_goes_back() {
        let mut t = T::ready(1);
        t.run(0, "a");
        let actions = t.on(Event::Reserved {
            worker: 0,
            job: job("b"),
        });
        assert_eq!(released(&actions[0]), "b", "already busy");
        let actions = t.on(Event::SendFailed { worker: 0 });
        assert_eq!(released(&actions[0]), "a");
        assert_eq!(t.core.idle_worker(0), None, "its pipe is broken");
        let actions = t.on(Event::Reserved {
            worker: 0,
            job: job("c"),
        });
        assert_eq!(released(&actions[0]), "c", "no pipe");
    }

    fn unreserved(a: &Action) -> &str {
        match a {
            Action::Unreserve { job } => &job.id,
            other => panic!("expected a job given back unstarted, got {other:?}"),
        }
    }

    fn run_of(a: &Action) -> (usize, &str) {
        match a {
            Action::Run { worker, job } => (*worker, job.job_id.as_str()),
            other => panic!("expected a run, got {other:?}"),
        }
    }

    const KEEP: Duration = Duration::from_millis(100);

    /// `n` ready workers that may hold their next job ahead.
    fn ahead(n: usize) -> T {
        let mut t = T::ready(n);
        t.core.reserve_ahead(KEEP);
        t
    }

    #[test]
    fn a_busy_worker_holds_its_next_job_and_starts_it_with_its_report() {
        let mut t = ahead(1);
        assert!(
            !t.core.wants_ahead(0, t.t0),
            "idle: it gets a job to run, not ahead"
        );
        t.run(0, "a");
        assert!(t.core.wants_ahead(0, t.t0), "not started yet");
        t.started(0, "a", 40);
        assert!(t.core.wants_ahead(0, t.t0 + KEEP / 2));
        assert!(
            !t.core.wants_ahead(0, t.t0 + KEEP),
            "a long run holds nothing ahead"
        );
        t.hold(0, "b");
        assert_eq!(
            t.core.ahead().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(!t.core.wants_ahead(0, t.t0), "one ahead at most");
        // A second one goes back, its run uncounted.
        let actions = t.on(Event::Reserved {
            worker: 0,
            job: job("c"),
        });
        assert_eq!(unreserved(&actions[0]), "c");
        // The report of a's end starts b at once, in the same step as a's record.
        let actions = t.on(finished(0, gen(0), "a", Outcome::Exited(0)));
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert_eq!(record_of(&actions[0]), (0, "a", &Outcome::Exited(0)));
        assert_eq!(run_of(&actions[1]), (0, "b"));
        assert_eq!(t.core.running(0).map(|r| r.job.id.as_str()), Some("b"));
        assert_eq!(t.core.ahead().count(), 0);
        // Without `reserve_ahead` (one machine), a busy worker holds nothing.
        let mut t = T::ready(1);
        t.run(0, "a");
        assert!(!t.core.wants_ahead(0, t.t0));
    }

    #[test]
    fn a_job_held_ahead_goes_back_unstarted_when_it_cannot_start() {
        // Its worker's run grows long.
        let mut t = ahead(1);
        t.run(0, "a");
        t.started(0, "a", 40);
        t.hold(0, "b");
        // (the process group is written first)
        let actions = t.on(Event::Timer {
            now: t.t0 + PGID_RECORD_AFTER,
        });
        assert!(
            matches!(&actions[..], [Action::RecordPgid { .. }]),
            "{actions:?}"
        );
        let ten = Duration::from_millis(10);
        assert_eq!(t.core.sleep_for(0, None, 1000, t.t0 + ten), KEEP - ten);
        let actions = t.on(Event::Timer { now: t.t0 + KEEP });
        assert_eq!(unreserved(&actions[0]), "b");
        // Paused meanwhile: a's end does not start it.
        let mut t = ahead(1);
        t.run(0, "a");
        t.hold(0, "b");
        t.core.set_paused(true);
        let actions = t.on(finished(0, gen(0), "a", Outcome::Exited(0)));
        assert_eq!(record_of(&actions[0]), (0, "a", &Outcome::Exited(0)));
        assert_eq!(unreserved(&actions[1]), "b");
        // A stop.
        let mut t = ahead(1);
        t.run(0, "a");
        t.hold(0, "b");
        let actions = t.on(Event::Signal);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Unreserve { job } if job.id == "b")));
        assert!(t.core.running(0).is_some(), "a goes on");
        // Its worker dies, or its pipe breaks.
        let mut t = ahead(2);
        t.run(0, "a");
        t.run(1, "c");
        t.hold(0, "b");
        t.hold(1, "d");
        let actions = t.on(Event::Gone {
            worker: 0,
            gen: gen(0),
        });
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Unreserve { job } if job.id == "b")));
        let actions = t.on(Event::SendFailed { worker: 1 });
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Unreserve { job } if job.id == "d")));
        // Forgotten without a word when this supervisor's leases may have lapsed.
        let mut t = ahead(1);
        t.run(0, "a");
        t.hold(0, "b");
        t.core.drop_ahead(None);
        let actions = t.on(finished(0, gen(0), "a", Outcome::Exited(0)));
        assert_eq!(actions.len(), 1, "only a's record: {actions:?}");
    }

    #[test]
    fn a_cancel_of_a_job_held_ahead_ends_it_cancelled_at_once() {
        let mut t = ahead(1);
        t.run(0, "a");
        t.hold(0, "b");
        let mut out = VecDeque::new();
        let job = t.core.cancel("b", t.t0, &mut out).expect("held here");
        assert_eq!(job.id, "b");
        let out: Vec<Action> = out.into();
        assert!(
            matches!(&out[..], [Action::Record { job, cancelled: true, .. }] if job.id == "b"),
            "{out:?}"
        );
        assert_eq!(t.core.ahead().count(), 0);
        assert_eq!(
            t.core.running(0).map(|r| r.job.id.as_str()),
            Some("a"),
            "a goes on"
        );
    }

    #[test]
    fn a_finished_run_is_recorded_and_the_next_job_reserved_in_the_same_step() {
        let mut t = T::ready(2);
        t.run(0, "a");
        let actions = t.on(finished(0, 1, "a", Outcome::Exited(0)));
        assert_eq!(actions.len(), 1);
        assert_eq!(record_of(&actions[0]), (0, "a", &Outcome::Exited(0)));
        assert_eq!(t.core.busy(), 0);
        assert_eq!(
            t.core.idle_worker(0),
            Some(0),
            "it takes its next job this turn"
        );
        // A failure is recorded the same way: the retry rule is the store's.
        t.run(1, "b");
        let actions = t.on(finished(1, 2, "b", Outcome::Exited(3)));
        assert_eq!(record_of(&actions[0]), (1, "b", &Outcome::Exited(3)));
        assert_eq!(t.core.idle_worker(1), Some(1));
    }

    #[test]
    fn reports_of_other_jobs_or_earlier_workers_change_nothing() {
        let mut t = T::ready(1);
        t.run(0, "a");
        let wrong_job = t.on(finished(0, 1, "zzz", Outcome::Exited(0)));
        assert!(wrong_job.is_empty());
        let old_gen = t.on(finished(0, 0, "a", Outcome::Exited(0)));
        assert!(old_gen.is_empty());
        assert!(t.on(Event::Gone { worker: 0, gen: 0 }).is_empty());
        assert_eq!(t.core.busy(), 1);
        assert_eq!(t.core.alive(), 1);
    }

    #[test]
    fn a_dead_worker_has_its_job_killed_then_failed_and_is_restarted() {
        let mut t = T::ready(1);
        t.run(0, "a");
        t.started(0, "a", 4242);
        let actions = t.on(Event::Gone { worker: 0, gen: 1 });
        assert_eq!(actions[0], Action::Reap { worker: 0 });
        assert_eq!(actions[1], Action::KillGroup { pgid: 4242 });
        assert_eq!(
            actions[2],
            Action::Note(Note::WorkerLost {
                worker: 0,
                job_id: "a".into()
            })
        );
        assert_eq!(record_of(&actions[3]), (0, "a", &Outcome::WorkerLost));
        assert_eq!(actions[4], Action::Spawn { worker: 0 });
        assert_eq!(actions.len(), 5);
        assert!(t.core.all_gone());
    }

    #[test]
    fn an_idle_dead_worker_is_restarted() {
        let mut t = T::ready(1);
        let actions = t.on(Event::Gone { worker: 0, gen: 1 });
        assert_eq!(
            actions,
            vec![
                Action::Reap { worker: 0 },
                Action::Note(Note::WorkerExited { worker: 0 }),
                Action::Spawn { worker: 0 },
            ]
        );
        t.on(Event::Spawned { worker: 0, gen: 7 });
        assert!(!t.core.all_ready());
        t.on(Event::Ready { worker: 0, gen: 7 });
        assert!(t.core.all_ready());
    }

    #[test]
    fn workers_dying_before_they_are_ready_stop_the_supervisor() {
        let mut t = T::ready(2);
        for round in 1..MAX_SPAWN_FAILURES {
            t.on(Event::Spawned {
                worker: 0,
                gen: 100 + u64::from(round),
            });
            let actions = t.on(Event::Gone {
                worker: 0,
                gen: 100 + u64::from(round),
            });
            assert_eq!(actions.last(), Some(&Action::Spawn { worker: 0 }));
        }
        t.on(Event::Spawned {
            worker: 0,
            gen: 200,
        });
        let actions = t.on(Event::Gone {
            worker: 0,
            gen: 200,
        });
        assert!(actions.contains(&Action::Note(Note::KeepsDying)));
        assert!(!actions.contains(&Action::Spawn { worker: 0 }));
        assert!(actions.contains(&Action::Shutdown { worker: 1 }));
        assert_eq!(t.core.phase(), Phase::Stopping);
    }

    #[test]
    fn a_ready_worker_resets_the_failure_count() {
        let mut t = T::ready(1);
        for round in 0..MAX_SPAWN_FAILURES * 2 {
            let gen = 100 + u64::from(round);
            t.on(Event::Spawned { worker: 0, gen });
            if round % 2 == 1 {
                t.on(Event::Ready { worker: 0, gen });
            }
            let actions = t.on(Event::Gone { worker: 0, gen });
            assert_eq!(actions.last(), Some(&Action::Spawn { worker: 0 }));
        }
        t.on(Event::SpawnFailed { worker: 0 });
        assert_eq!(t.core.phase(), Phase::Running);
    }

    #[test]
    fn first_signal_stops_gracefully() {
        let mut t = T::ready(3);
        t.run(1, "a");
        let actions = t.on(Event::Signal);
        assert_eq!(
            actions,
            vec![
                Action::Note(Note::Stopping { busy: 1 }),
                Action::Shutdown { worker: 0 },
                Action::Shutdown { worker: 2 },
            ]
        );
        assert_eq!(t.core.idle_worker(0), None, "nothing is dispatched");
        let actions = t.on(finished(1, 2, "a", Outcome::Exited(0)));
        assert_eq!(record_of(&actions[0]), (1, "a", &Outcome::Exited(0)));
        assert_eq!(t.core.idle_worker(0), None, "it takes no next job");
        assert_eq!(actions[1], Action::Shutdown { worker: 1 });
        // A worker restarted meanwhile is told to exit as soon as it is ready; one that dies
        // is not restarted.
        for worker in [0, 2] {
            let actions = t.on(Event::Gone {
                worker,
                gen: gen(worker),
            });
            assert_eq!(actions, vec![Action::Reap { worker }]);
        }
        assert!(!t.core.all_gone());
        t.on(Event::Gone { worker: 1, gen: 2 });
        assert!(t.core.all_gone());
    }

    #[test]
    fn a_worker_ready_after_the_stop_began_is_shut_down() {
        let mut t = T::ready(1);
        t.on(Event::Signal);
        t.on(Event::Spawned { worker: 0, gen: 9 });
        let actions = t.on(Event::Ready { worker: 0, gen: 9 });
        assert_eq!(actions, vec![Action::Shutdown { worker: 0 }]);
    }

    #[test]
    fn second_signal_kills_and_requeues_running_jobs() {
        let mut t = T::ready(2);
        t.run(0, "a");
        t.started(0, "a", 4242);
        t.run(1, "b"); // not started yet: no group to kill
        t.on(Event::Signal);
        let actions = t.on(Event::Signal);
        assert_eq!(actions[0], Action::Note(Note::Forced));
        assert_eq!(actions[1], Action::KillGroup { pgid: 4242 });
        assert_eq!(released(&actions[2]), "a");
        assert_eq!(actions[3], Action::ClosePipe { worker: 0 });
        assert_eq!(released(&actions[4]), "b");
        assert_eq!(actions[5], Action::ClosePipe { worker: 1 });
        assert_eq!(actions.len(), 6);
        assert_eq!(t.core.phase(), Phase::Forced);
        // The late report of a killed job is ignored; its worker is not restarted.
        let late = t.on(finished(0, 1, "a", Outcome::Signaled(9)));
        assert!(late.is_empty());
        assert_eq!(
            t.on(Event::Gone { worker: 0, gen: 1 }),
            vec![Action::Reap { worker: 0 }]
        );
        assert!(
            t.on(Event::Signal).is_empty(),
            "a third signal adds nothing"
        );
    }

    #[test]
    fn a_worker_dying_during_a_forced_stop_has_its_job_released() {
        let mut t = T::ready(1);
        t.on(Event::Signal);
        t.on(Event::Signal);
        // Nothing runs any more; a job reserved just before is handed back.
        let actions = t.on(Event::Reserved {
            worker: 0,
            job: job("x"),
        });
        assert_eq!(released(&actions[0]), "x");
    }

    #[test]
    fn a_cancelled_job_gets_term_then_kill_and_is_recorded_as_cancelled() {
        let mut t = T::ready(2);
        t.run(0, "a");
        t.run(1, "b");
        let t0 = t.t0;
        let mut out = VecDeque::new();
        assert!(t.core.cancel("zz", t0, &mut out).is_none(), "not running");
        // Not started yet: SIGTERM once its group is known.
        let b = t.core.cancel("b", t0, &mut out).map(|j| j.id);
        assert_eq!(b.as_deref(), Some("b"));
        assert!(out.is_empty());
        t.started(0, "a", 11);
        let a = t.core.cancel("a", t0, &mut out).map(|j| j.id);
        assert_eq!(a.as_deref(), Some("a"));
        assert_eq!(Vec::from(out), vec![Action::TermGroup { pgid: 11 }]);
        let actions = t.on(Event::Started {
            worker: 1,
            gen: gen(1),
            job_id: "b".into(),
            pgid: 12,
            at: t0,
        });
        assert_eq!(actions, vec![Action::TermGroup { pgid: 12 }]);
        // The grace period bounds the sleep; SIGKILL once it is over, once.
        let soon = t0 + Duration::from_secs(1);
        assert!(t.core.sleep_for(0, None, 60_000, soon) <= CANCEL_GRACE);
        let late = t0 + CANCEL_GRACE;
        let kills = |actions: Vec<Action>| -> Vec<Action> {
            actions
                .into_iter()
                .filter(|a| matches!(a, Action::KillGroup { .. }))
                .collect()
        };
        assert_eq!(
            kills(t.on(Event::Timer { now: late })),
            vec![
                Action::KillGroup { pgid: 11 },
                Action::KillGroup { pgid: 12 }
            ]
        );
        assert!(kills(t.on(Event::Timer { now: late })).is_empty(), "once");
        // The end of the run is recorded as cancelled, whatever the outcome.
        let actions = t.on(finished(0, gen(0), "a", Outcome::Signaled(15)));
        assert!(
            matches!(&actions[0], Action::Record { cancelled: true, job, .. } if job.id == "a"),
            "{actions:?}"
        );
        // A cancelled job is recorded, not released, by a forced stop.
        t.on(Event::Signal);
        let actions = t.on(Event::Signal);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Record { cancelled: true, job, .. } if job.id == "b")),
            "{actions:?}"
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::Release { .. })));
    }

    #[test]
    fn pause_holds_back_jobs_and_scale_lets_idle_workers_go_first() {
        let mut t = T::ready(3);
        t.core.set_paused(true);
        assert_eq!(t.core.idle_worker(0), None, "paused");
        t.core.set_paused(false);
        assert_eq!(t.core.idle_worker(0), Some(0));
        t.run(0, "a");
        // Down to 1: the two idle workers go; the busy one stays.
        let mut out = VecDeque::new();
        t.core.scale(1, &mut out);
        assert_eq!(
            Vec::from(std::mem::take(&mut out)),
            vec![
                Action::Shutdown { worker: 2 },
                Action::Shutdown { worker: 1 }
            ]
        );
        assert_eq!(t.core.target(), 1);
        assert_eq!(t.core.idle_worker(0), None);
        // Gone workers that were let go are not restarted.
        let gone = t.on(Event::Gone {
            worker: 1,
            gen: gen(1),
        });
        assert_eq!(gone, vec![Action::Reap { worker: 1 }]);
        // Down to... 1 of 1 busy, then up to 3: the place let go is reused, one is added.
        t.core.scale(3, &mut out);
        assert_eq!(
            Vec::from(std::mem::take(&mut out)),
            vec![Action::Spawn { worker: 1 }, Action::Spawn { worker: 3 }]
        );
        assert_eq!((t.core.places(), t.core.target()), (4, 3));
        // A busy worker let go finishes its job, is not given another, and leaves.
        let mut t = T::ready(1);
        t.run(0, "b");
        t.core.scale(0, &mut out);
        assert!(out.is_empty(), "it is busy");
        let actions = t.on(finished(0, gen(0), "b", Outcome::Exited(0)));
        assert!(matches!(&actions[0], Action::Record { .. }), "{actions:?}");
        assert_eq!(actions[1], Action::Shutdown { worker: 0 });
        assert_eq!(
            t.core.idle_worker(0),
            None,
            "a worker let go takes no next job"
        );
    }

    #[test]
    fn process_groups_are_written_once_a_job_has_run_a_while() {
        let mut t = T::ready(2);
        t.run(0, "a");
        t.run(1, "b");
        let t0 = t.t0;
        t.started(0, "a", 11);
        t.started(1, "wrong id", 12);
        assert_eq!(t.core.running(0).and_then(|r| r.pgid), Some(11));
        assert_eq!(t.core.running(1).and_then(|r| r.pgid), None);
        assert!(t.on(Event::Timer { now: t0 }).is_empty());
        let soon = t0 + Duration::from_millis(2);
        assert_eq!(
            t.core.sleep_for(0, None, 500, soon),
            Duration::from_millis(3)
        );
        let later = t0 + PGID_RECORD_AFTER;
        assert_eq!(
            t.on(Event::Timer { now: later }),
            vec![Action::RecordPgid {
                worker: 0,
                pgid: 11
            }]
        );
        assert!(t.on(Event::Timer { now: later }).is_empty(), "written once");
        assert_eq!(
            t.core.sleep_for(0, None, 500, later),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn sleeps_until_the_next_job_but_no_longer_than_the_poll_interval() {
        assert_eq!(sleep_until(1000, None, 500), Duration::from_millis(500));
        assert_eq!(
            sleep_until(1000, Some(1200), 500),
            Duration::from_millis(200)
        );
        assert_eq!(sleep_until(1000, Some(900), 500), Duration::ZERO);
        assert_eq!(
            sleep_until(1000, Some(99_999), 500),
            Duration::from_millis(500)
        );
        assert_eq!(sleep_until(0, None, 0), Duration::from_millis(1));
    }

    #[test]
    fn sleep_follows_the_schedule_only_while_running() {
        let mut t = T::ready(1);
        let now = t.t0;
        assert_eq!(
            t.core.sleep_for(1000, Some(1200), 500, now),
            Duration::from_millis(200)
        );
        t.on(Event::Signal);
        assert_eq!(
            t.core.sleep_for(1000, Some(1200), 500, now),
            Duration::from_millis(500)
        );
    }
}
