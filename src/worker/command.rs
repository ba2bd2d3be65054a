//! One run of a job: [`run_command`] starts `sh -c COMMAND` in a process group of its own
//! (through [`spawn`](super::spawn)), hands its output to a collector ([`collect`](super::collect)),
//! registers it for cancellation ([`kill`](super::kill)), waits for the shell and reaps it.
//!
//! Invariants of [`run_command`]:
//! - the shell runs in a new process group whose id is the shell's pid, and nothing of that group
//!   survives the call: when the shell exits, times out or is cancelled, the whole group gets
//!   SIGKILL, always while the shell is still unreaped, so the group id cannot have been reused
//!   (every kill goes through [`Target`], which [`Shell::wait`] disarms before reaping);
//! - it never blocks forever on the output pipes: once the shell has exited, only what is already
//!   buffered in them is read, whoever else still holds them open;
//! - it waits on real events only, never on a timer: the calling thread blocks in `waitid` on
//!   the shell; one helper thread per running job (a "collector", taken from a pool because
//!   starting a thread costs more than everything else here) reads both pipes with `poll(2)`,
//!   whose timeout is the job's deadline; a cancel receiver is watched by one thread shared by
//!   every call, which only wakes when a receiver it did not watch yet is registered;
//! - only the last [`TAIL_BYTES`](super::collect::TAIL_BYTES) of each output stream are kept,
//!   in buffers that grow only as output arrives.

use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::{pipe2, Pid};

use super::collect::{start_collector, Capture, Collect, Collected, Handover, Live};
use super::kill::{watch_cancel, Target};
use super::millis;
use super::spawn::{spawn_shell, SHELL};
use crate::model::{Outcome, RunResult};

/// A child process could not be started or handled.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not start {SHELL}: {cause}")]
    Spawn { cause: io::Error },
    #[error("could not {action} for the shell (pid {pid}): {cause}")]
    Setup {
        action: &'static str,
        pid: u32,
        cause: io::Error,
    },
    #[error("lost track of the shell (pid {pid}): {cause}")]
    Wait { pid: u32, cause: io::Error },
    #[error("refusing to signal process group {0}: not a job's group")]
    InvalidGroup(i32),
    #[error("refusing to signal process group {0}: it is our own")]
    OwnGroup(i32),
    #[error("the {pipe} of child {pid} was not piped")]
    NotPiped { pipe: &'static str, pid: u32 },
    #[error("the working directory {} does not exist or is not a directory", dir.display())]
    NoDirectory { dir: PathBuf },
}

/// Runs `sh -c command` in a new process group and waits for it.
///
/// `on_start(pgid)` is called once the shell is running. The shell's stdin is `/dev/null`; the
/// last [`TAIL_BYTES`] of its stdout and stderr are returned. When `timeout` passes, or `cancel`
/// delivers a message or disconnects, the whole group is killed with SIGKILL (outcome `TimedOut`,
/// or `Signaled(9)` for a cancel). When the shell exits, whatever is left of its group is killed.
/// A cancel message is consumed by the job it kills; one pending when the call starts cancels it.
pub fn run_command(
    command: &str,
    timeout: Option<Duration>,
    cancel: &Receiver<()>,
    on_start: impl FnOnce(i32),
) -> RunResult {
    run_command_in(command, None, &[], None, timeout, cancel, on_start)
}

/// [`run_command`] in directory `cwd` (else the worker's own) with `env` added to the
/// worker's environment. A `cwd` that is not a directory fails the run without starting
/// anything (outcome `SpawnFailed`, naming the directory).
#[allow(clippy::too_many_arguments)]
pub fn run_command_in(
    command: &str,
    cwd: Option<&Path>,
    env: &[(String, String)],
    live: Option<(&Path, &Path)>,
    timeout: Option<Duration>,
    cancel: &Receiver<()>,
    on_start: impl FnOnce(i32),
) -> RunResult {
    let no_record = |_: i32, _: u64| Ok(());
    run_command_recorded(
        command, cwd, env, live, timeout, cancel, no_record, on_start,
    )
}

/// [`run_command_in`], calling `record(pgid, start_time)` after the shell exists and before
/// its command may run: the command runs only if `record` succeeds (else the run fails with
/// nothing run).
#[allow(clippy::too_many_arguments)]
pub fn run_command_recorded(
    command: &str,
    cwd: Option<&Path>,
    env: &[(String, String)],
    live: Option<(&Path, &Path)>,
    timeout: Option<Duration>,
    cancel: &Receiver<()>,
    record: impl FnOnce(i32, u64) -> io::Result<()>,
    on_start: impl FnOnce(i32),
) -> RunResult {
    let started = Instant::now();
    if let Some(dir) = cwd {
        if !dir.is_dir() {
            let e = ProcessError::NoDirectory {
                dir: dir.to_path_buf(),
            };
            return failed(e, started);
        }
    }
    let spawned = spawn_shell(command, cwd, env);
    let mut child = match spawned {
        Ok(child) => child,
        Err(cause) => return failed(ProcessError::Spawn { cause }, started),
    };
    let gate = child.stdin.take();
    // A timeout too large to represent as an instant is no timeout.
    let deadline = timeout.and_then(|t| started.checked_add(t));
    let live = live.map(|(out, err)| (Some(Live::new(out)), Some(Live::new(err))));
    let mut shell = match Shell::start(child, deadline, started, cancel, live) {
        Ok(shell) => shell,
        Err(e) => return failed(e, started),
    };
    let start_time = super::kill::start_time(shell.pgid).unwrap_or(0);
    if let Err(cause) = record(shell.pgid, start_time) {
        // Not recorded, so not run: closing the gate unwritten ends the shell.
        drop(gate);
        let _ = shell.wait(started);
        let e = ProcessError::Setup {
            action: "record the attempt",
            pid: shell.child.id(),
            cause,
        };
        return failed(e, started);
    }
    if let Some(mut gate) = gate {
        use std::io::Write;
        // A shell that died already reports its own status below.
        let _ = gate.write_all(b"\n");
    }
    on_start(shell.pgid);
    shell.wait(started)
}

/// The result of a run whose shell could not be started or handled.
fn failed(e: ProcessError, started: Instant) -> RunResult {
    RunResult {
        duration_ms: millis(started.elapsed()),
        ..RunResult::without_output(Outcome::SpawnFailed(e.to_string()))
    }
}

/// A spawned shell supervised by [`run_command`].
struct Shell {
    child: Child,
    pgid: i32,
    target: Arc<Target>,
    /// Write end of the collector's stop pipe: closing it tells the collector the shell is gone.
    stop: Option<OwnedFd>,
    collected: Arc<Handover<Collected>>,
    finished: bool,
}

impl Shell {
    /// Registers the cancel watch and hands the pipes to a collector; on failure the shell's
    /// group is killed and the shell reaped.
    fn start(
        mut child: Child,
        deadline: Option<Instant>,
        started: Instant,
        cancel: &Receiver<()>,
        live: Option<(Option<Live>, Option<Live>)>,
    ) -> Result<Shell, ProcessError> {
        let (live_out, live_err) = live.unwrap_or((None, None));
        let pid = child.id();
        let fail =
            |action: &'static str, cause: io::Error| ProcessError::Setup { action, pid, cause };
        let pgid = match i32::try_from(pid) {
            Ok(pgid) if pgid > 1 => pgid,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail("use the pid", ErrorKind::InvalidData.into()));
            }
        };
        let target = Arc::new(Target::new(pgid));
        let prepared = (|| {
            let out = Capture::new(child.stdout.take().map(OwnedFd::from), live_out)
                .map_err(|e| fail("prepare stdout", e))?;
            let err = Capture::new(child.stderr.take().map(OwnedFd::from), live_err)
                .map_err(|e| fail("prepare stderr", e))?;
            let (stop_rx, stop) =
                pipe2(OFlag::O_CLOEXEC).map_err(|e| fail("create a pipe", e.into()))?;
            watch_cancel(cancel, &target).map_err(|e| fail("watch for cancellation", e))?;
            let collected = Arc::new(Handover::default());
            let work = Collect {
                out,
                err,
                stop: stop_rx,
                deadline,
                started,
                target: Arc::clone(&target),
                reply: Arc::clone(&collected),
            };
            start_collector(work).map_err(|e| fail("start a collector thread", e))?;
            Ok((stop, collected))
        })();
        match prepared {
            Ok((stop, collected)) => Ok(Shell {
                child,
                pgid,
                target,
                stop: Some(stop),
                collected,
                finished: false,
            }),
            Err(e) => {
                target.kill("set-up failed");
                target.disarm();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Waits for the shell to exit, kills its leftovers, collects the output and reaps it.
    fn wait(&mut self, started: Instant) -> RunResult {
        // WNOWAIT: learn of the exit but leave the shell a zombie, so that its pid keeps naming
        // the group until everything below is done with it.
        // Any error but EINTR (ECHILD: someone else reaped it) means there is nothing to wait for.
        let shell = Pid::from_raw(self.pgid);
        while waitid(Id::Pid(shell), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
            == Err(Errno::EINTR)
        {}
        let exited_at = Instant::now();
        self.target.kill("leftovers");
        self.target.disarm();
        self.stop = None;
        let collected = self.collected.take();
        let status = self.child.wait();
        self.finished = true;
        let outcome = match status {
            Ok(status) => outcome_of(status, collected.timed_out_after),
            Err(cause) => {
                let pid = self.child.id();
                Outcome::SpawnFailed(ProcessError::Wait { pid, cause }.to_string())
            }
        };
        RunResult {
            outcome,
            duration_ms: millis(exited_at.saturating_duration_since(started)),
            stdout: collected.stdout,
            stderr: collected.stderr,
        }
    }
}

impl Drop for Shell {
    /// Only when `on_start` panicked: never leave the job running unsupervised.
    fn drop(&mut self) {
        if !self.finished {
            self.target.kill("abandoned");
            self.target.disarm();
            let _ = self.child.wait();
        }
    }
}

fn outcome_of(status: ExitStatus, timed_out_after: Option<u64>) -> Outcome {
    match (status.code(), status.signal(), timed_out_after) {
        // Killed by our timeout SIGKILL; a shell that exited on its own just in time keeps its
        // own status.
        (_, Some(sig), Some(after_ms)) if sig == Signal::SIGKILL as i32 => {
            Outcome::TimedOut { after_ms }
        }
        (Some(code), _, _) => Outcome::Exited(code),
        (None, Some(sig), _) => Outcome::Signaled(sig),
        // `wait` reports only exits and deaths by signal.
        (None, None, _) => Outcome::Exited(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::collect::TAIL_BYTES;
    use crate::worker::kill::kill_group;
    use crate::worker::spawn::SHELL;
    use crossbeam_channel::{bounded, never};
    use nix::unistd::getpgrp;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::thread;

    const PROMPT: Duration = Duration::from_secs(5);

    fn run(command: &str) -> RunResult {
        run_command(command, None, &never(), |_| {})
    }

    /// Whether `pid` is gone; a zombie counts as gone.
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    /// Polls until `pid` is gone, for at most [`PROMPT`].
    fn wait_gone(pid: i32) -> bool {
        let deadline = Instant::now() + PROMPT;
        while Instant::now() < deadline {
            if gone(pid) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        gone(pid)
    }

    fn read_pid(path: &Path) -> i32 {
        let text = std::fs::read_to_string(path).unwrap();
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("pid in {text:?}"))
    }

    /// Polls until the shell has written a pid to `path`, for at most [`PROMPT`].
    fn wait_pid_file(path: &Path) -> i32 {
        let deadline = Instant::now() + PROMPT;
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.ends_with('\n') {
                return text.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no pid written to {path:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn pid_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pid");
        (dir, path)
    }

    #[test]
    fn exit_codes_and_start_callback() {
        let mut seen = None;
        let r = run_command("exit 3", None, &never(), |pgid| seen = Some(pgid));
        assert_eq!(r.outcome, Outcome::Exited(3));
        assert!(seen.is_some_and(|pgid| pgid > 1), "{seen:?}");
        assert_eq!(run("true").outcome, Outcome::Exited(0));
        assert_eq!(run("no-such-command-xyz").outcome, Outcome::Exited(127));
    }

    #[test]
    fn shell_runs_in_its_own_group_with_dev_null_stdin() {
        let mut pgid = 0;
        let r = run_command(
            "read -r stat < /proc/self/stat; echo \"$stat\"; cat; echo end",
            None,
            &never(),
            |g| pgid = g,
        );
        assert_eq!(r.outcome, Outcome::Exited(0));
        let out = String::from_utf8(r.stdout).unwrap();
        let (stat, rest) = out.split_once('\n').unwrap();
        let (pid, fields) = stat.split_once(' ').unwrap();
        let fields: Vec<&str> = fields
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // state ppid pgrp
        assert_eq!(pid, pgid.to_string());
        assert_eq!(fields[2], pid, "{stat}");
        assert_eq!(rest, "end\n", "cat read nothing");
    }

    #[test]
    fn the_command_sees_what_sh_c_would_give_it() {
        // No positional parameters, `$0` the shell, which also names itself in its errors
        // (not the command's text).
        let r = run("echo \"$0|$#|$*\"; no-such-command-xyz");
        assert_eq!(r.outcome, Outcome::Exited(127));
        assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{SHELL}|0|\n"));
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(err.starts_with(&format!("{SHELL}: ")), "{err}");
        assert!(!err.contains("echo"), "{err}");
    }

    #[test]
    fn death_by_signal() {
        assert_eq!(run("kill -TERM $$").outcome, Outcome::Signaled(15));
    }

    #[test]
    fn small_output_is_kept_whole() {
        let r = run("printf 'out\\n'; printf 'err' >&2; printf 'more'");
        assert_eq!(r.stdout, b"out\nmore");
        assert_eq!(r.stderr, b"err");
    }

    #[test]
    fn only_the_tail_of_large_output_is_kept() {
        let r = run("seq 1 40000; seq 50000 90000 >&2");
        assert_eq!(r.outcome, Outcome::Exited(0));
        // The kept tail, after a line saying how much came before it.
        let expect = |from: u32, to: u32| -> Vec<u8> {
            let all: String = (from..=to).map(|n| format!("{n}\n")).collect();
            assert!(all.len() > TAIL_BYTES);
            let dropped = all.len() - TAIL_BYTES;
            let digits = dropped.to_string();
            let (head, tail) = digits.split_at(digits.len() - 3);
            let mut v = format!("[… {head},{tail} bytes dropped …]\n").into_bytes();
            v.extend_from_slice(&all.as_bytes()[dropped..]);
            v
        };
        assert_eq!(r.stdout, expect(1, 40000));
        assert!(r.stdout.ends_with(b"\n39999\n40000\n"));
        assert_eq!(r.stderr, expect(50000, 90000));
    }

    #[test]
    fn duration_is_measured() {
        let r = run("sleep 0.2");
        assert_eq!(r.outcome, Outcome::Exited(0));
        assert!((200..5000).contains(&r.duration_ms), "{}", r.duration_ms);
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let (_dir, file) = pid_file();
        let t0 = Instant::now();
        let r = run_command(
            &format!("sleep 30 & echo $! > {}; wait", file.display()),
            Some(Duration::from_millis(300)),
            &never(),
            |_| {},
        );
        let took = t0.elapsed();
        match r.outcome {
            Outcome::TimedOut { after_ms } => assert!((300..5000).contains(&after_ms)),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(took < PROMPT, "took {took:?}");
        assert!(took >= Duration::from_millis(300), "took {took:?}");
        assert!(wait_gone(read_pid(&file)), "background child survived");
    }

    #[test]
    fn huge_timeout_is_no_timeout() {
        let r = run_command("exit 7", Some(Duration::MAX), &never(), |_| {});
        assert_eq!(r.outcome, Outcome::Exited(7));
        let r = run_command(
            "exit 8",
            Some(Duration::from_millis(u64::MAX)),
            &never(),
            |_| {},
        );
        assert_eq!(r.outcome, Outcome::Exited(8));
    }

    #[test]
    fn output_before_a_timeout_is_kept() {
        let r = run_command(
            "echo before; exec sleep 30",
            Some(Duration::from_millis(100)),
            &never(),
            |_| {},
        );
        assert!(
            matches!(r.outcome, Outcome::TimedOut { .. }),
            "{:?}",
            r.outcome
        );
        assert_eq!(r.stdout, b"before\n");
    }

    #[test]
    fn timeout_applies_after_the_pipes_are_closed() {
        let t0 = Instant::now();
        let r = run_command(
            "exec >&- 2>&-; sleep 30",
            Some(Duration::from_millis(200)),
            &never(),
            |_| {},
        );
        assert!(t0.elapsed() < PROMPT, "took {:?}", t0.elapsed());
        assert!(
            matches!(r.outcome, Outcome::TimedOut { after_ms } if after_ms >= 200),
            "{:?}",
            r.outcome
        );
    }

    #[test]
    fn shell_outliving_its_pipes_is_waited_for() {
        let r = run("echo hi; exec >&- 2>&-; sleep 0.2; exit 5");
        assert_eq!(r.outcome, Outcome::Exited(5));
        assert_eq!(r.stdout, b"hi\n");
        assert!(r.duration_ms >= 200, "{}", r.duration_ms);
    }

    #[test]
    fn background_child_holding_the_pipes_does_not_hang() {
        let (_dir, file) = pid_file();
        let t0 = Instant::now();
        let mut pgid = 0;
        let r = run_command(
            &format!("sleep 30 & echo $! > {}; echo done", file.display()),
            None,
            &never(),
            |g| pgid = g,
        );
        assert!(t0.elapsed() < PROMPT, "took {:?}", t0.elapsed());
        assert_eq!(r.outcome, Outcome::Exited(0));
        assert_eq!(r.stdout, b"done\n");
        assert!(wait_gone(read_pid(&file)), "background child survived");
        assert!(wait_gone(pgid));
    }

    #[test]
    fn process_outside_the_group_holding_the_pipes_does_not_hang() {
        // setsid moves the sleep out of the job's group: it cannot be killed with the group, but
        // it must not keep run_command waiting either.
        assert!(
            Path::new("/usr/bin/setsid").exists() || Path::new("/bin/setsid").exists(),
            "this test needs setsid(1) (util-linux)"
        );
        let (_dir, file) = pid_file();
        let t0 = Instant::now();
        let f = file.display();
        let r = run(&format!(
            "setsid sh -c 'echo $$ > {f}.tmp; mv {f}.tmp {f}; exec sleep 30' &
             while [ ! -e {f} ]; do sleep 0.01; done; echo done"
        ));
        let took = t0.elapsed();
        let pid = wait_pid_file(&file);
        kill_group(pid, Signal::SIGKILL).unwrap();
        assert!(took < PROMPT, "took {took:?}");
        assert_eq!(r.outcome, Outcome::Exited(0));
        assert_eq!(r.stdout, b"done\n");
        assert!(wait_gone(pid));
    }

    #[test]
    fn cancel_message_kills_promptly() {
        let (_dir, file) = pid_file();
        let (cancel_tx, cancel_rx) = bounded::<()>(1);
        let (started_tx, started_rx) = bounded::<i32>(1);
        let canceller = thread::spawn(move || {
            let pgid = started_rx.recv().unwrap();
            cancel_tx.send(()).unwrap();
            (pgid, cancel_tx)
        });
        let t0 = Instant::now();
        let r = run_command(
            &format!("sleep 30 & echo $! > {}; wait", file.display()),
            None,
            &cancel_rx,
            |pgid| started_tx.send(pgid).unwrap(),
        );
        assert!(t0.elapsed() < PROMPT, "took {:?}", t0.elapsed());
        assert_eq!(r.outcome, Outcome::Signaled(9));
        let (pgid, _keep_connected) = canceller.join().unwrap();
        assert!(wait_gone(pgid));
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Ok(pid) = text.trim().parse() {
                assert!(wait_gone(pid), "background child survived");
            }
        }
    }

    #[test]
    fn cancel_by_disconnect_kills_promptly() {
        let (cancel_tx, cancel_rx) = bounded::<()>(0);
        let (started_tx, started_rx) = bounded::<i32>(1);
        let canceller = thread::spawn(move || {
            let pgid = started_rx.recv().unwrap();
            drop(cancel_tx);
            pgid
        });
        let t0 = Instant::now();
        let r = run_command("sleep 30", None, &cancel_rx, |pgid| {
            started_tx.send(pgid).unwrap()
        });
        assert!(t0.elapsed() < PROMPT, "took {:?}", t0.elapsed());
        assert_eq!(r.outcome, Outcome::Signaled(9));
        assert!(wait_gone(canceller.join().unwrap()));
    }

    #[test]
    fn already_cancelled_job_is_killed_at_once() {
        let (_, cancel_rx) = bounded::<()>(0);
        let t0 = Instant::now();
        let r = run_command("sleep 30", None, &cancel_rx, |_| {});
        assert!(t0.elapsed() < PROMPT);
        assert_eq!(r.outcome, Outcome::Signaled(9));
    }

    #[test]
    fn message_arriving_between_jobs_cancels_the_next_one() {
        let (cancel_tx, cancel_rx) = bounded::<()>(1);
        assert_eq!(
            run_command("true", None, &cancel_rx, |_| {}).outcome,
            Outcome::Exited(0)
        );
        cancel_tx.send(()).unwrap();
        let t0 = Instant::now();
        let r = run_command("sleep 30", None, &cancel_rx, |_| {});
        assert!(t0.elapsed() < PROMPT);
        assert_eq!(r.outcome, Outcome::Signaled(9));
        assert!(cancel_rx.is_empty(), "the message was used");
        assert_eq!(
            run_command("true", None, &cancel_rx, |_| {}).outcome,
            Outcome::Exited(0)
        );
    }

    #[test]
    fn one_message_cancels_one_of_the_jobs_sharing_a_receiver() {
        let (cancel_tx, cancel_rx) = bounded::<()>(1);
        let (started_tx, started_rx) = bounded::<i32>(2);
        let jobs: Vec<_> = (0..2)
            .map(|_| {
                let rx = cancel_rx.clone();
                let started = started_tx.clone();
                thread::spawn(move || {
                    run_command("sleep 30", Some(Duration::from_secs(1)), &rx, |pgid| {
                        started.send(pgid).unwrap()
                    })
                })
            })
            .collect();
        started_rx.recv().unwrap();
        started_rx.recv().unwrap();
        cancel_tx.send(()).unwrap();
        let mut outcomes: Vec<String> = jobs
            .into_iter()
            .map(|j| format!("{:?}", j.join().unwrap().outcome))
            .collect();
        outcomes.sort();
        assert_eq!(outcomes[0], "Signaled(9)");
        assert!(outcomes[1].starts_with("TimedOut"), "{outcomes:?}");
    }

    #[test]
    fn concurrent_jobs_keep_their_own_output() {
        let (_tx, cancel_rx) = bounded::<()>(0);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let rx = cancel_rx.clone();
                thread::spawn(move || {
                    let r = run_command(&format!("echo {i}; exit {i}"), None, &rx, |_| {});
                    (i, r)
                })
            })
            .collect();
        for h in handles {
            let (i, r) = h.join().unwrap();
            assert_eq!(r.outcome, Outcome::Exited(i));
            assert_eq!(r.stdout, format!("{i}\n").into_bytes());
        }
    }

    #[test]
    fn spawn_failure_is_reported() {
        let mut called = false;
        let r = run_command("echo a\0b", None, &never(), |_| called = true);
        match &r.outcome {
            Outcome::SpawnFailed(msg) => assert!(msg.starts_with("could not start"), "{msg}"),
            other => panic!("expected a spawn failure, got {other:?}"),
        }
        assert!(!called, "on_start must not run");
    }

    #[test]
    fn kill_group_rules() {
        let mut pgid = 0;
        assert_eq!(
            run_command("true", None, &never(), |g| pgid = g).outcome,
            Outcome::Exited(0)
        );
        assert!(wait_gone(pgid));
        kill_group(pgid, Signal::SIGTERM).unwrap();
        for bad in [-5, 0, 1] {
            let e = kill_group(bad, Signal::SIGTERM).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
        }
        let own = getpgrp().as_raw();
        if own > 1 {
            let e = kill_group(own, Signal::SIGTERM).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains("our own"), "{e}");
        }
    }

    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    fn plain_spawn() {
        let status = Command::new(SHELL).args(["-c", "true"]).status().unwrap();
        assert!(status.success());
    }

    /// What std offers for capturing output (it would hang on a background child).
    fn std_output() {
        let out = Command::new(SHELL)
            .args(["-c", "true"])
            .process_group(0)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
    }

    fn ours(cancel: &Receiver<()>) {
        let r = run_command("true", None, cancel, |_| {});
        assert_eq!(r.outcome, Outcome::Exited(0));
    }

    /// Per-job cost of run_command against a bare spawn-and-wait of the same shell, one job at a
    /// time (median) and four threads at a time (total). Run with
    /// `cargo test --release --lib -- worker::command::tests::per_job_cost --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a check"]
    fn per_job_cost() {
        const N: usize = 500;
        let (_tx, cancel) = bounded::<()>(0);
        let mut serial: [Vec<Duration>; 3] = Default::default();
        for _ in 0..N {
            for (i, times) in serial.iter_mut().enumerate() {
                let t = Instant::now();
                match i {
                    0 => plain_spawn(),
                    1 => std_output(),
                    _ => ours(&cancel),
                }
                times.push(t.elapsed());
            }
        }
        let [p, s, o] = serial.map(median);
        let ratio = |d: Duration| d.as_secs_f64() / p.as_secs_f64();
        println!(
            "one at a time, median of {N}: plain spawn {p:?}, std output() {s:?} ({:.3}), \
             run_command {o:?} ({:.3})",
            ratio(s),
            ratio(o)
        );
        let parallel = |job: fn(&Receiver<()>)| {
            let t = Instant::now();
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let cancel = cancel.clone();
                    thread::spawn(move || (0..N / 2).for_each(|_| job(&cancel)))
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
            t.elapsed()
        };
        for _ in 0..3 {
            let p = parallel(|_| plain_spawn());
            let s = parallel(|_| std_output());
            let o = parallel(ours);
            println!(
                "4 threads x {}: plain spawn {p:?}, std output() {s:?} ({:.3}), \
                 run_command {o:?} ({:.3})",
                N / 2,
                s.as_secs_f64() / p.as_secs_f64(),
                o.as_secs_f64() / p.as_secs_f64()
            );
        }
    }
}
