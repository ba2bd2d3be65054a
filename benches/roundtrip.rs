//! The whole-process round trip of `queuectl enqueue`: `cargo bench --bench roundtrip`.
//!
//! Three things are timed, each as N sequential process runs (spawn + wait), in the same run:
//!
//! - `/bin/true`: the cost of starting any process here, the baseline;
//! - `enqueue` with no supervisor: the command takes the lock, opens sled, applies the job and
//!   flushes it itself;
//! - `enqueue` through the spool to a running supervisor with one worker: request file (fsync,
//!   rename, fsync of the directory), wake-up, one transaction and flush in the supervisor, reply.
//!
//! The job is `{"command":"true"}`, so in the spool case the supervisor's worker runs each job
//! while later requests arrive, as it would in real use. The binary is the one Cargo builds for
//! this bench (`CARGO_BIN_EXE_queuectl`, which Cargo sets for benches and integration tests).
//! Data directories live under Cargo's target tmp directory (or `QUEUECTL_BENCH_DIR`), not
//! `/tmp`, which may be a RAM disk where fsync costs nothing. `QUEUECTL_BENCH_N` changes N.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_N: usize = 300;
/// Untimed runs before each series (page cache, first open of the store).
const WARM_UP: usize = 10;
const JOB: &str = r#"{"command":"true"}"#;

fn queuectl() -> &'static str {
    env!("CARGO_BIN_EXE_queuectl")
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("QUEUECTL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    tempfile::Builder::new()
        .prefix("bench-roundtrip-")
        .tempdir_in(base)
        .expect("a temporary directory")
}

/// `queuectl --data-dir DIR ARGS...`, with a clean environment for the data directory.
fn command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(queuectl());
    cmd.arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("QUEUECTL_HOME")
        .env_remove("RUST_LOG")
        .env_remove("QUEUECTL_REPLY_TIMEOUT");
    cmd
}

/// Runs `cmd` to the end with its output discarded; panics unless it succeeds.
fn run_quiet(cmd: &mut Command) {
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?}: {status}");
}

/// Runs `make()` `WARM_UP` times untimed, then `n` times timed; returns the sorted durations.
fn series(n: usize, mut make: impl FnMut() -> Command) -> Vec<Duration> {
    for _ in 0..WARM_UP {
        run_quiet(&mut make());
    }
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let mut cmd = make();
            let started = Instant::now();
            run_quiet(&mut cmd);
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    times
}

/// The `q`-quantile of sorted durations (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A running supervisor, stopped when dropped: also when the bench panics.
struct Supervisor {
    dir: PathBuf,
    pid: i32,
}

impl Supervisor {
    fn start(dir: &Path, workers: u32) -> Supervisor {
        let out = command(dir, &["worker", "start", "--count", &workers.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("run worker start");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker start: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = text
            .split("pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok());
        let Some(pid) = pid else {
            // Started, but we cannot tell its pid: still stop it before failing.
            let _ = command(dir, &["worker", "stop", "--force", "--timeout", "20"]).output();
            panic!("no pid in {text:?}");
        };
        Supervisor {
            dir: dir.to_path_buf(),
            pid,
        }
    }

    fn alive(&self) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim().starts_with('Z'))
            })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let stopped = command(&self.dir, &["worker", "stop", "--force", "--timeout", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(stopped, Ok(s) if s.success()) || self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); there is nothing to select here.
    let n = std::env::var("QUEUECTL_BENCH_N")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_N);
    let base = bench_dir();
    let direct_dir = base.path().join("direct");
    let spool_dir = base.path().join("spool");
    println!(
        "queuectl enqueue round trip, {n} sequential process runs each (+{WARM_UP} warm-up)\n\
         binary {}\ndata directories under {}\n",
        queuectl(),
        base.path().display()
    );

    let baseline = series(n, || Command::new("/bin/true"));
    let direct = series(n, || command(&direct_dir, &["enqueue", JOB]));
    let spooled = {
        let supervisor = Supervisor::start(&spool_dir, 1);
        let times = series(n, || command(&spool_dir, &["enqueue", JOB]));
        assert!(supervisor.alive(), "the supervisor died during the bench");
        drop(supervisor);
        times
    };

    let base_median = quantile(&baseline, 0.5);
    println!(
        "{:<34} {:>10} {:>10} {:>14}",
        "", "median", "p90", "median / true"
    );
    for (name, times) in [
        ("/bin/true", &baseline),
        ("enqueue, direct (no supervisor)", &direct),
        ("enqueue, through the spool", &spooled),
    ] {
        let median = quantile(times, 0.5);
        println!(
            "{name:<34} {:>8.2}ms {:>8.2}ms {:>13.1}x",
            ms(median),
            ms(quantile(times, 0.9)),
            median.as_secs_f64() / base_median.as_secs_f64()
        );
    }
}
