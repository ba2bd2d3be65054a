//! Signals: to a job's process group ([`kill_group`]), to one process ([`signal_process`]), and
//! cancelling running jobs when their cancel receiver delivers or disconnects (one watcher
//! thread for every job). The only module that sends signals (tests/tidy.rs checks it).

use std::io::{self, ErrorKind};
use std::sync::{Arc, Mutex, Weak};
use std::thread;

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{Id, WaitPidFlag};
use nix::unistd::{getpgrp, Pid};

use super::command::ProcessError;
use super::lock;

/// Sends `signal` to every process in group `pgid`. A group that no longer exists is not an
/// error; group ids <= 1 and our own group are refused.
pub fn kill_group(pgid: i32, signal: Signal) -> io::Result<()> {
    if pgid <= 1 {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            ProcessError::InvalidGroup(pgid),
        ));
    }
    let group = Pid::from_raw(pgid);
    if group == getpgrp() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            ProcessError::OwnGroup(pgid),
        ));
    }
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` to one process (not a group). A process that is already gone is not an error.
pub fn signal_process(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process id"))?;
    match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Kills a job's whole process group (SIGKILL), as [`kill_group`] does.
pub fn kill_job_group(pgid: i32) -> io::Result<()> {
    kill_group(pgid, Signal::SIGKILL)
}

/// Asks every process of a job's group to stop (SIGTERM), as [`kill_group`] does.
pub fn term_job_group(pgid: i32) -> io::Result<()> {
    kill_group(pgid, Signal::SIGTERM)
}

/// Asks process `pid` to stop (SIGTERM), as [`signal_process`] does.
pub fn terminate(pid: u32) -> io::Result<()> {
    signal_process(pid, Signal::SIGTERM)
}

/// Kills a child process (SIGKILL) and waits for it.
pub fn kill_and_reap(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The fields of `/proc/PID/stat` after the command name (which may hold any byte): the
/// state is the first of them, the parent's pid the second, the start time the twentieth.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// When process `pid` started, in clock ticks since boot: with the pid, it names one process
/// for good (a pid is reused, a pid and a start time are not).
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`), so
/// that a job's daemons, which leave its process group, become our children when their
/// parent exits, and [`kill_descendants`] can find them.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Kills and reaps every child of this process whose pid is above `after` (every job's
/// descendant was started after the job's shell; a worker has no other children), until none
/// is left: each one killed may leave orphans that become our children in turn. Returns how
/// many were killed.
pub fn kill_descendants(after: i32) -> usize {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut killed = 0;
    // A bound on the rounds, against a descendant that forks as fast as we kill.
    for _ in 0..100 {
        // The common case, a job that left nothing behind, costs one system call: with no
        // child at all, `waitid` says so (ECHILD) without reaping anything (WNOWAIT).
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        if nix::sys::wait::waitid(Id::All, flags) == Err(Errno::ECHILD) {
            break;
        }
        let children: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid > after && *pid != me)
            .filter(|pid| {
                stat_fields(*pid).is_some_and(|f| f.get(1).and_then(|p| p.parse().ok()) == Some(me))
            })
            .collect();
        if children.is_empty() {
            break;
        }
        for pid in children {
            let pid = Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            killed += 1;
        }
    }
    killed
}

/// Whether process `pid` still runs (a zombie, which has exited, does not).
pub fn process_runs(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A job's process group, for everyone who may kill it: `Some` from the spawn until
/// [`Shell::wait`](super::command) disarms it, which happens before the shell is reaped.
/// Killing under this lock
/// therefore never hits a group id that was reused.
pub(super) struct Target {
    pgid: Mutex<Option<i32>>,
}

impl Target {
    /// The group of a shell just spawned (and not reaped).
    pub(super) fn new(pgid: i32) -> Target {
        Target {
            pgid: Mutex::new(Some(pgid)),
        }
    }

    pub(super) fn kill(&self, why: &'static str) {
        if let Some(pgid) = *lock(&self.pgid) {
            if let Err(e) = kill_group(pgid, Signal::SIGKILL) {
                tracing::warn!(pgid, error = %e, "could not kill a job ({why})");
            }
        }
    }

    pub(super) fn disarm(&self) {
        lock(&self.pgid).take();
    }

    fn is_armed(&self) -> bool {
        lock(&self.pgid).is_some()
    }
}

/// One cancel receiver and the jobs it cancels.
struct Watched {
    cancel: Receiver<()>,
    jobs: Vec<Weak<Target>>,
    /// A message is pending while no job runs: left out of the watcher's select (it would be
    /// ready at once, forever) until a job registers.
    parked: bool,
}

/// The receivers the cancel watcher thread selects on, and how to wake it.
struct Watchers {
    watched: Vec<Watched>,
    wake: Option<Sender<()>>,
}

static WATCHERS: Mutex<Watchers> = Mutex::new(Watchers {
    watched: Vec::new(),
    wake: None,
});

/// Has the cancel watcher kill `target`'s group when `cancel` delivers or disconnects while the
/// job runs. A receiver already watched costs no wake-up; the thread starts on first use.
pub(super) fn watch_cancel(cancel: &Receiver<()>, target: &Arc<Target>) -> io::Result<()> {
    let job = Arc::downgrade(target);
    let mut watchers = lock(&WATCHERS);
    let wake_needed = match watchers
        .watched
        .iter_mut()
        .find(|w| w.cancel.same_channel(cancel))
    {
        Some(w) => {
            w.jobs.retain(|j| j.strong_count() > 0);
            w.jobs.push(job);
            std::mem::take(&mut w.parked)
        }
        None => {
            // Forget receivers without jobs, so that one-off receivers do not pile up.
            watchers
                .watched
                .retain(|w| w.jobs.iter().any(|j| j.strong_count() > 0));
            watchers.watched.push(Watched {
                cancel: cancel.clone(),
                jobs: vec![job],
                parked: false,
            });
            true
        }
    };
    if !wake_needed {
        return Ok(());
    }
    if let Some(wake) = &watchers.wake {
        match wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => return Ok(()),
            // The watcher thread is gone (it cannot panic, but be safe): start another.
            Err(TrySendError::Disconnected(())) => {}
        }
    }
    let (wake, woken) = crossbeam_channel::bounded(1);
    thread::Builder::new()
        .name("queuectl-cancel".into())
        .spawn(move || cancel_watcher(woken))?;
    watchers.wake = Some(wake);
    Ok(())
}

/// The cancel watcher thread: blocks until a watched receiver is ready or it is woken to
/// select on a new set.
fn cancel_watcher(woken: Receiver<()>) {
    loop {
        let receivers: Vec<Receiver<()>> = lock(&WATCHERS)
            .watched
            .iter()
            .filter(|w| !w.parked)
            .map(|w| w.cancel.clone())
            .collect();
        let ready = {
            let mut select = Select::new();
            select.recv(&woken);
            for r in &receivers {
                select.recv(r);
            }
            select.ready()
        };
        if ready == 0 {
            if woken.try_recv() == Err(TryRecvError::Disconnected) {
                return;
            }
        } else {
            cancel_jobs(&receivers[ready - 1]);
        }
    }
}

/// Acts on a receiver that looks ready: a message kills one running job (the oldest), a
/// disconnection kills them all.
fn cancel_jobs(cancel: &Receiver<()>) {
    let mut watchers = lock(&WATCHERS);
    let Some(pos) = watchers
        .watched
        .iter()
        .position(|w| w.cancel.same_channel(cancel))
    else {
        return; // forgotten since the select began
    };
    let w = &mut watchers.watched[pos];
    w.jobs.retain(|j| j.upgrade().is_some_and(|t| t.is_armed()));
    if w.jobs.is_empty() {
        // Nothing to cancel: keep a pending message for the next job, but stop selecting on it.
        if cancel.is_empty() {
            watchers.watched.swap_remove(pos); // disconnected
        } else {
            w.parked = true;
        }
        return;
    }
    match cancel.try_recv() {
        Err(TryRecvError::Empty) => {} // a spurious wake-up
        Ok(()) => {
            if let Some(target) = w.jobs.remove(0).upgrade() {
                target.kill("cancelled");
            }
        }
        Err(TryRecvError::Disconnected) => {
            for target in w.jobs.drain(..).filter_map(|j| j.upgrade()) {
                target.kill("cancelled");
            }
            watchers.watched.swap_remove(pos);
        }
    }
}
