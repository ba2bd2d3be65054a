//! The worker child's main loop: reads [`ToWorker`] frames from the supervisor, runs one job at
//! a time through [`command::run_command`] and answers with [`FromWorker`] frames.
//!
//! Invariants:
//! - `Ready` is the first frame sent; every job gets `Started` and then `Finished`, in order,
//!   and every frame is flushed as soon as it is written;
//! - when the input ends (the supervisor is gone) or turns bad, the running job's process group
//!   is killed and the worker returns; when the output fails, likewise;
//! - with a lock file, a shared lock on it is held for the worker's whole life, so whoever takes
//!   it exclusively knows every worker of the previous supervisor is gone.

pub mod attempt;
pub mod collect;
pub mod command;
pub mod fence;
pub mod kill;
pub mod protocol;
pub mod spawn;

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::Signal;

use crate::datadir::DataDir;
use protocol::{FromWorker, ProtocolError, RunJob, ToWorker};

/// The worker could not go on.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot use the worker's {which}: {cause}")]
    Stdio {
        which: &'static str,
        cause: io::Error,
    },
    #[error("could not open the worker lock file {}: {cause}", path.display())]
    OpenLock { path: PathBuf, cause: io::Error },
    #[error("could not take a shared lock on {}: {cause}", path.display())]
    Lock { path: PathBuf, cause: io::Error },
    #[error("cannot record attempts: {0}")]
    Attempts(io::Error),
    #[error("could not start the input reader thread: {0}")]
    ReaderThread(io::Error),
    #[error("bad frame from the supervisor: {0}")]
    Input(ProtocolError),
    #[error("could not send `ready` to the supervisor: {0}")]
    SendReady(ProtocolError),
    #[error("could not send `{what}` for job {job_id} to the supervisor: {cause}")]
    Send {
        what: &'static str,
        job_id: String,
        cause: ProtocolError,
    },
}

/// The hidden `worker-child` command: a worker process talking to its supervisor over stdin
/// and stdout, logging to the data directory's `worker.log` like the supervisor.
pub fn run_child(dir: &DataDir) -> Result<(), WorkerError> {
    crate::logging::init_file_only(&dir.log_path());
    let stdio = |which: &'static str, fd: BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(File::from)
            .map_err(|cause| WorkerError::Stdio { which, cause })
    };
    let input = stdio("stdin", io::stdin().as_fd())?;
    let output = stdio("stdout", io::stdout().as_fd())?;
    // Every attempt is recorded before its command runs; a worker that cannot record runs
    // nothing.
    if let Err(cause) = attempt::install(&dir.attempts_path()) {
        return Err(WorkerError::Attempts(cause));
    }
    fence::start_from_env();
    let result = run(input, output, Some(&dir.workers_lock_path()));
    attempt::remove();
    if let Err(e) = &result {
        tracing::error!("worker {} stopped: {e}", std::process::id());
    }
    result
}

/// Runs the worker until `Shutdown`, the end of `input`, or a failure.
///
/// `input` is read by a thread of its own, so that the end of the input is noticed while a job
/// runs; that thread ends when `input` does.
pub fn run<R, W>(input: R, output: W, lock_file: Option<&Path>) -> Result<(), WorkerError>
where
    R: Read + Send + 'static,
    W: Write,
{
    let _lock = lock_file.map(lock_shared).transpose()?;
    let mut output = output;
    send(
        &mut output,
        &FromWorker::Ready {
            pid: std::process::id(),
        },
    )
    .map_err(WorkerError::SendReady)?;
    let (frames, ended) = read_in_background(input)?;
    loop {
        match frames.recv() {
            Ok(Ok(ToWorker::Run(job))) => run_job(&mut output, job, &ended)?,
            Ok(Ok(ToWorker::Shutdown)) => return Ok(()),
            Ok(Err(e)) => return Err(WorkerError::Input(e)),
            // End of input while idle.
            Err(_) => return Ok(()),
        }
    }
}

/// Opens (creating it if needed) and share-locks the lock file; the lock lives as long as the
/// returned file.
fn lock_shared(path: &Path) -> Result<File, WorkerError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|cause| WorkerError::OpenLock {
            path: path.to_path_buf(),
            cause,
        })?;
    // Named explicitly: std's inherent `File::lock_shared` would otherwise win.
    fs2::FileExt::lock_shared(&file).map_err(|cause| WorkerError::Lock {
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(file)
}

/// Frames from the supervisor, as decoded by the reader thread; a decoding error comes last.
type Frames = Receiver<Result<ToWorker, ProtocolError>>;

/// Starts the reader thread. It forwards frames to the first receiver; the second one
/// disconnects when the input ends or turns bad, which cancels the running job.
fn read_in_background<R: Read + Send + 'static>(
    input: R,
) -> Result<(Frames, Receiver<()>), WorkerError> {
    let (frames_tx, frames_rx) = crossbeam_channel::unbounded();
    let (ended_tx, ended_rx) = crossbeam_channel::bounded::<()>(0);
    thread::Builder::new()
        .name("queuectl-worker-input".into())
        .spawn(move || forward_frames(BufReader::new(input), &frames_tx, ended_tx))
        .map_err(WorkerError::ReaderThread)?;
    Ok((frames_rx, ended_rx))
}

fn forward_frames<R: Read>(
    mut input: R,
    frames: &Sender<Result<ToWorker, ProtocolError>>,
    ended: Sender<()>,
) {
    let _ended = ended; // dropped when this returns: the running job is cancelled
    loop {
        match protocol::read_frame::<_, ToWorker>(&mut input) {
            Ok(Some(msg)) => {
                if frames.send(Ok(msg)).is_err() {
                    return; // the worker has returned
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = frames.send(Err(e));
                return;
            }
        }
    }
}

/// Runs one job: `Started` once its shell runs, then `Finished`.
fn run_job<W: Write>(output: &mut W, job: RunJob, ended: &Receiver<()>) -> Result<(), WorkerError> {
    let RunJob {
        job_id,
        command,
        timeout_ms,
        cwd,
        env,
        live,
    } = job;
    let mut start_failed = None;
    let mut group = None;
    // Marks every process of the attempt, also those that leave its process group, so that a
    // new owner finds them after a crash of this worker (see `attempt::kill_recorded`).
    let token = ulid::Ulid::generate().to_string();
    let mut env = env;
    env.push((attempt::TOKEN_ENV.to_string(), token.clone()));
    let result = command::run_command_recorded(
        &command,
        cwd.as_deref().map(std::path::Path::new),
        &env,
        live.as_ref().map(|(o, e)| {
            (
                std::path::Path::new(o.as_str()),
                std::path::Path::new(e.as_str()),
            )
        }),
        timeout_ms.map(Duration::from_millis),
        ended,
        |pgid, start| {
            group = Some(pgid);
            attempt::record(&job_id, pgid, start, &token)
        },
        |pgid| {
            fence::set_running(Some(pgid));
            let started = FromWorker::Started {
                job_id: job_id.clone(),
                pgid,
            };
            if let Err(e) = send(output, &started) {
                // Nobody would learn how the job ends: stop it now.
                if let Err(kill) = kill::kill_group(pgid, Signal::SIGKILL) {
                    tracing::warn!(pgid, error = %kill, "could not kill an unreported job");
                }
                start_failed = Some(e);
            }
        },
    );
    if let Some(pgid) = group {
        attempt::end(pgid);
    }
    fence::set_running(None);
    if let Some(cause) = start_failed {
        return Err(WorkerError::Send {
            what: "started",
            job_id,
            cause,
        });
    }
    let finished = FromWorker::Finished {
        job_id: job_id.clone(),
        result,
    };
    send(output, &finished).map_err(|cause| WorkerError::Send {
        what: "finished",
        job_id,
        cause,
    })
}

/// Writes one frame and flushes it.
fn send<W: Write>(output: &mut W, msg: &FromWorker) -> Result<(), ProtocolError> {
    protocol::write_frame(output, msg)?;
    output.flush()?;
    Ok(())
}

/// Milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Locks `m`, also after a panic elsewhere (the data stays consistent: no lock is held across
/// a step that may panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Outcome, RunResult};
    use std::io::{PipeReader, PipeWriter};
    use std::time::Instant;

    const PROMPT: Duration = Duration::from_secs(5);

    /// A worker running on a thread, with the raw pipes to and from it.
    struct Raw {
        to_worker: PipeWriter,
        from_worker: PipeReader,
        done: Receiver<Result<(), WorkerError>>,
    }

    fn start_raw(lock_file: Option<PathBuf>) -> Raw {
        let (input, to_worker) = std::io::pipe().unwrap();
        let (from_worker, output) = std::io::pipe().unwrap();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        thread::spawn(move || {
            let _ = done_tx.send(run(input, output, lock_file.as_deref()));
        });
        Raw {
            to_worker,
            from_worker,
            done,
        }
    }

    /// A worker running on a thread, with its frames decoded by another.
    struct Harness {
        to_worker: Option<PipeWriter>,
        from_worker: Receiver<FromWorker>,
        done: Receiver<Result<(), WorkerError>>,
    }

    impl Harness {
        fn start(lock_file: Option<PathBuf>) -> Harness {
            let mut raw = start_raw(lock_file);
            let (frames_tx, frames) = crossbeam_channel::unbounded();
            thread::spawn(move || {
                while let Ok(Some(msg)) = protocol::read_frame(&mut raw.from_worker) {
                    if frames_tx.send(msg).is_err() {
                        return;
                    }
                }
            });
            Harness {
                to_worker: Some(raw.to_worker),
                from_worker: frames,
                done: raw.done,
            }
        }

        fn send(&mut self, msg: &ToWorker) {
            let w = self.to_worker.as_mut().unwrap();
            protocol::write_frame(w, msg).unwrap();
            w.flush().unwrap();
        }

        fn next(&self) -> FromWorker {
            self.from_worker
                .recv_timeout(PROMPT)
                .expect("a frame from the worker")
        }

        fn result(&self) -> Result<(), WorkerError> {
            self.done.recv_timeout(PROMPT).expect("the worker returns")
        }
    }

    fn job(id: &str, command: &str, timeout_ms: Option<u64>) -> ToWorker {
        ToWorker::Run(RunJob {
            job_id: id.into(),
            command: command.into(),
            timeout_ms,
            cwd: None,
            env: Vec::new(),
            live: None,
        })
    }

    fn expect_ready(msg: FromWorker) {
        assert_eq!(
            msg,
            FromWorker::Ready {
                pid: std::process::id()
            }
        );
    }

    fn expect_started(msg: FromWorker, id: &str) -> i32 {
        match msg {
            FromWorker::Started { job_id, pgid } if job_id == id && pgid > 1 => pgid,
            other => panic!("expected Started for {id}, got {other:?}"),
        }
    }

    fn expect_finished(msg: FromWorker, id: &str) -> RunResult {
        match msg {
            FromWorker::Finished { job_id, result } if job_id == id => result,
            other => panic!("expected Finished for {id}, got {other:?}"),
        }
    }

    /// Whether `pid` is gone, polling for at most [`PROMPT`]; a zombie counts as gone.
    fn wait_gone(pid: i32) -> bool {
        let deadline = Instant::now() + PROMPT;
        loop {
            let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(stat) => stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            };
            if gone || Instant::now() >= deadline {
                return gone;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn ready_then_started_then_finished() {
        let mut h = Harness::start(None);
        expect_ready(h.next());
        h.send(&job("j1", "echo hi; echo oops >&2; exit 4", None));
        let pgid = expect_started(h.next(), "j1");
        let f = expect_finished(h.next(), "j1");
        assert_eq!(f.outcome, Outcome::Exited(4));
        assert_eq!(f.stdout, b"hi\n");
        assert_eq!(f.stderr, b"oops\n");
        assert!(wait_gone(pgid));
        h.send(&job("j2", "sleep 30", Some(100)));
        expect_started(h.next(), "j2");
        let f = expect_finished(h.next(), "j2");
        assert!(
            matches!(f.outcome, Outcome::TimedOut { after_ms } if after_ms >= 100),
            "{:?}",
            f.outcome
        );
        h.send(&ToWorker::Shutdown);
        h.result().unwrap();
    }

    #[test]
    fn shutdown_exits() {
        let mut h = Harness::start(None);
        expect_ready(h.next());
        h.send(&ToWorker::Shutdown);
        h.result().unwrap();
        assert!(
            h.from_worker.recv_timeout(PROMPT).is_err(),
            "nothing after ready"
        );
    }

    #[test]
    fn end_of_input_while_idle_exits() {
        let mut h = Harness::start(None);
        expect_ready(h.next());
        h.to_worker = None;
        h.result().unwrap();
    }

    #[test]
    fn end_of_input_during_a_job_kills_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        let mut h = Harness::start(None);
        expect_ready(h.next());
        let command = format!("sleep 30 & echo $! > {}; wait", file.display());
        h.send(&job("long", &command, None));
        let pgid = expect_started(h.next(), "long");
        // Wait for the background child to exist, then hang up.
        let deadline = Instant::now() + PROMPT;
        let child: i32 = loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.ends_with('\n') {
                break text.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the job never wrote its pid");
            thread::sleep(Duration::from_millis(5));
        };
        let t0 = Instant::now();
        h.to_worker = None;
        let f = expect_finished(h.next(), "long");
        assert_eq!(f.outcome, Outcome::Signaled(9));
        h.result().unwrap();
        assert!(t0.elapsed() < PROMPT, "took {:?}", t0.elapsed());
        assert!(wait_gone(pgid), "shell survived");
        assert!(wait_gone(child), "background child survived");
    }

    #[test]
    fn bad_frame_is_an_error_and_kills_the_job() {
        let mut h = Harness::start(None);
        expect_ready(h.next());
        h.send(&job("j", "sleep 30", None));
        let pgid = expect_started(h.next(), "j");
        let w = h.to_worker.as_mut().unwrap();
        w.write_all(&[0, 0, 0, 2, 0xc1, 0xc1]).unwrap();
        w.flush().unwrap();
        let f = expect_finished(h.next(), "j");
        assert_eq!(f.outcome, Outcome::Signaled(9));
        assert!(matches!(h.result(), Err(WorkerError::Input(_))));
        assert!(wait_gone(pgid));
    }

    #[test]
    fn output_failure_kills_the_job_and_returns_an_error() {
        let Raw {
            mut to_worker,
            mut from_worker,
            done,
        } = start_raw(None);
        expect_ready(protocol::read_frame(&mut from_worker).unwrap().unwrap());
        drop(from_worker);
        protocol::write_frame(&mut to_worker, &job("j", "sleep 30", None)).unwrap();
        to_worker.flush().unwrap();
        let t0 = Instant::now();
        let result = done.recv_timeout(PROMPT).expect("the worker returns");
        assert!(t0.elapsed() < PROMPT, "the job was not killed");
        match result {
            Err(WorkerError::Send { what, job_id, .. }) => {
                assert_eq!((what, job_id.as_str()), ("started", "j"));
            }
            other => panic!("expected a send error, got {other:?}"),
        }
    }

    #[test]
    fn shared_lock_is_held_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workers.lock");
        let mut h = Harness::start(Some(path.clone()));
        expect_ready(h.next());
        let probe = File::open(&path).unwrap();
        assert!(fs2::FileExt::try_lock_exclusive(&probe).is_err());
        let other = File::open(&path).unwrap();
        fs2::FileExt::try_lock_shared(&other).unwrap();
        fs2::FileExt::unlock(&other).unwrap();
        h.send(&ToWorker::Shutdown);
        h.result().unwrap();
        fs2::FileExt::try_lock_exclusive(&probe).unwrap();
    }

    #[test]
    fn unusable_lock_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("workers.lock");
        let (input, _keep) = std::io::pipe().unwrap();
        let err = run(input, Vec::new(), Some(&path)).unwrap_err();
        assert!(matches!(err, WorkerError::OpenLock { .. }), "{err:?}");
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
