//! Whole-process round trips of `queuectl` commands: `cargo bench --bench roundtrip`.
//!
//! Part 1 times N sequential process runs (spawn + wait) of each of these, **interleaved** (one
//! run of each in turn), so that every series sees the same load on a busy machine. It runs in
//! two phases, each with its own `/bin/true` and `--version` baseline: first the direct commands
//! with no supervisor anywhere, then the commands answered by a running supervisor (whose
//! worker runs the jobs enqueued meanwhile, as in real use):
//!
//! - `/bin/true`: the cost of starting any process here, the baseline;
//! - `queuectl --version`: starting queuectl itself (loading, argument parsing);
//! - `enqueue` and `status` with no supervisor: the command takes the lock, opens the store,
//!   applies (and for the enqueue flushes) itself;
//! - `enqueue` and `status` with a supervisor running one worker: request file, wake-up, the
//!   supervisor applies it (and flushes a write), reply.
//!
//! Each line gives the median and p90, and the median's excess over `/bin/true`.
//!
//! Part 2 runs 8 concurrent enqueuers (each a loop of sequential `enqueue` processes) against a
//! supervisor and reports the latency p50/p99 and how many requests the supervisor answered per
//! store flush (group commit), from its own log (debug level).
//!
//! The job is `{"command":"true"}`, so the supervisor's worker runs jobs while later requests
//! arrive, as it would in real use. The binary is the one Cargo builds for this bench
//! (`CARGO_BIN_EXE_queuectl`). Data directories live under Cargo's target tmp directory (or
//! `QUEUECTL_BENCH_DIR`), not `/tmp`, which may be a RAM disk where fsync costs nothing.
//! `QUEUECTL_BENCH_N` changes N (default 300), `QUEUECTL_BENCH_CONCURRENT_N` the requests per
//! concurrent enqueuer (default 100).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_N: usize = 300;
const DEFAULT_CONCURRENT_N: usize = 100;
const ENQUEUERS: usize = 8;
/// Untimed runs of each command before the series (page cache, first open of the store).
const WARM_UP: usize = 10;
const JOB: &str = r#"{"command":"true"}"#;
/// What the supervisor logs (debug level) after answering a group of requests.
const GROUP_LOG: &str = "with one flush of the store";

fn queuectl() -> &'static str {
    env!("CARGO_BIN_EXE_queuectl")
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
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

/// Times one run of `cmd`.
fn timed(mut cmd: Command) -> Duration {
    let started = Instant::now();
    run_quiet(&mut cmd);
    started.elapsed()
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
    /// Starts a supervisor; with `debug`, it logs at debug level (the group commit lines).
    fn start(dir: &Path, workers: u32, debug: bool) -> Supervisor {
        let mut cmd = command(dir, &["worker", "start", "--count", &workers.to_string()]);
        if debug {
            cmd.env("RUST_LOG", "debug");
        }
        let out = cmd.stdin(Stdio::null()).output().expect("run worker start");
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

/// One interleaved series: a name and how to make its command.
struct Series<'a> {
    name: &'static str,
    make: Box<dyn Fn() -> Command + 'a>,
    times: Vec<Duration>,
}

fn interleaved(n: usize, series: &mut [Series<'_>]) {
    for _ in 0..WARM_UP {
        for s in series.iter() {
            run_quiet(&mut (s.make)());
        }
    }
    for _ in 0..n {
        for s in series.iter_mut() {
            let t = timed((s.make)());
            s.times.push(t);
        }
    }
    for s in series.iter_mut() {
        s.times.sort_unstable();
    }
}

/// Part 2: `ENQUEUERS` threads, each running `per_client` enqueues one after the other.
/// Returns the sorted latencies, the wall time, and (requests, flushes) from the log.
fn concurrent(dir: &Path, per_client: usize) -> (Vec<Duration>, Duration, usize, usize) {
    let supervisor = Supervisor::start(dir, 1, true);
    for _ in 0..WARM_UP {
        run_quiet(&mut command(dir, &["enqueue", JOB]));
    }
    let log = dir.join("worker.log");
    let before = groups_in_log(&log);
    let started = Instant::now();
    let mut times: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..ENQUEUERS)
            .map(|_| {
                s.spawn(move || {
                    (0..per_client)
                        .map(|_| timed(command(dir, &["enqueue", JOB])))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("an enqueuer thread"))
            .collect()
    });
    let wall = started.elapsed();
    assert!(supervisor.alive(), "the supervisor died during the bench");
    drop(supervisor);
    let after = groups_in_log(&log);
    times.sort_unstable();
    (times, wall, after.0 - before.0, after.1 - before.1)
}

/// Sums the supervisor's group commit lines: (requests answered, flushes).
fn groups_in_log(log: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut total = (0, 0);
    for line in text.lines().filter(|l| l.contains(GROUP_LOG)) {
        // "... answered N requests (W changes) with one flush of the store"
        let writes = line
            .split('(')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|w| w.parse::<usize>().ok());
        if let Some(w) = writes.filter(|&w| w > 0) {
            total.0 += w;
            total.1 += 1;
        }
    }
    total
}

/// One phase: `/bin/true`, `queuectl --version` and each of `commands` (name, arguments) run
/// against `dir`, interleaved.
fn phase(n: usize, dir: &Path, commands: &[(&'static str, Vec<&str>)]) -> Vec<Series<'static>> {
    let mut series = vec![
        Series {
            name: "/bin/true",
            make: Box::new(|| Command::new("/bin/true")),
            times: Vec::new(),
        },
        Series {
            name: "queuectl --version",
            make: Box::new(|| {
                let mut c = Command::new(queuectl());
                c.arg("--version");
                c
            }),
            times: Vec::new(),
        },
    ];
    for (name, args) in commands {
        let dir = dir.to_path_buf();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        series.push(Series {
            name,
            make: Box::new(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                command(&dir, &args)
            }),
            times: Vec::new(),
        });
    }
    interleaved(n, &mut series);
    series
}

/// Median, p90 and the median's excess over the phase's own `/bin/true` (its first series).
fn print_table(series: &[Series<'_>]) {
    let base_median = quantile(&series[0].times, 0.5);
    println!(
        "{:<34} {:>10} {:>10} {:>16}",
        "", "median", "p90", "median - true"
    );
    for s in series {
        let median = quantile(&s.times, 0.5);
        println!(
            "{:<34} {:>8.2}ms {:>8.2}ms {:>+14.2}ms",
            s.name,
            ms(median),
            ms(quantile(&s.times, 0.9)),
            ms(median) - ms(base_median)
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); `cargo test --benches` runs us with
    // `--test`: nothing to do then.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let n = env_num("QUEUECTL_BENCH_N", DEFAULT_N);
    let per_client = env_num("QUEUECTL_BENCH_CONCURRENT_N", DEFAULT_CONCURRENT_N);
    let base = bench_dir();
    let direct_dir = base.path().join("direct");
    let spool_dir = base.path().join("spool");
    let concurrent_dir = base.path().join("concurrent");
    println!(
        "queuectl round trips, {n} sequential process runs of each, interleaved (+{WARM_UP} \
         warm-up)\nbinary {}\ndata directories under {}\n",
        queuectl(),
        base.path().display()
    );

    // Two phases, each with its own baseline: the direct commands with no supervisor anywhere
    // (a running one, and the jobs it runs, would take CPU and disk from them), then the same
    // commands answered by a supervisor.
    let direct = [
        ("enqueue, direct (no supervisor)", vec!["enqueue", JOB]),
        ("status, direct (no supervisor)", vec!["status"]),
    ];
    print_table(&phase(n, &direct_dir, &direct));

    let supervisor = Supervisor::start(&spool_dir, 1, false);
    let answered = [
        ("enqueue, with a supervisor", vec!["enqueue", JOB]),
        ("status, with a supervisor", vec!["status"]),
    ];
    let table = phase(n, &spool_dir, &answered);
    assert!(supervisor.alive(), "the supervisor died during the bench");
    drop(supervisor);
    println!();
    print_table(&table);

    let (times, wall, requests, flushes) = concurrent(&concurrent_dir, per_client);
    println!(
        "\n{ENQUEUERS} concurrent enqueuers x {per_client} enqueues, with a supervisor: \
         {:.0} enqueues/s",
        times.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "  latency p50 {:.2}ms  p90 {:.2}ms  p99 {:.2}ms",
        ms(quantile(&times, 0.5)),
        ms(quantile(&times, 0.9)),
        ms(quantile(&times, 0.99))
    );
    if flushes > 0 {
        println!(
            "  {requests} acknowledged changes in {flushes} store flushes: {:.2} per flush",
            requests as f64 / flushes as f64
        );
    } else {
        println!("  (no group commit lines in the supervisor's log)");
    }
}
