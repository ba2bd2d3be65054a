//! Helpers shared by the integration tests: a temporary data directory, running the binary,
//! a supervisor fixture that always stops what it started, and bounded waits.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How long one heavy command (a bulk enqueue of 100,000 jobs: about 25 s of a debug build on
/// a busy 2-core machine) may take before the test fails: a hang still fails it.
pub const HEAVY_DEADLINE: Duration = Duration::from_secs(300);

/// A temporary data directory and the binary pointed at it.
pub struct Env {
    pub dir: TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("queuectl-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file path inside the test's directory (outside the data directory's own files).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `queuectl --data-dir DIR`, ready for more arguments.
    pub fn cmd(&self) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::cargo_bin("queuectl").expect("binary");
        c.arg("--data-dir").arg(self.path());
        c.env_remove("QUEUECTL_HOME").env_remove("RUST_LOG");
        c.timeout(DEADLINE);
        c
    }

    /// Runs a command and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run queuectl")
    }

    /// Runs a command that must succeed and returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_within(args, DEADLINE)
    }

    /// [`Env::ok`] for a command allowed up to `limit`.
    pub fn ok_within(&self, args: &[&str], limit: Duration) -> String {
        let out = self
            .cmd()
            .args(args)
            .timeout(limit)
            .output()
            .expect("run queuectl");
        assert!(
            out.status.success(),
            "queuectl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs a command that must fail with `code`; returns its stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "queuectl {args:?}: stdout {} stderr {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    pub fn enqueue(&self, json: &str) -> String {
        self.ok(&["enqueue", json]).trim().to_string()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status JSON")
    }

    /// A count from `status --json`.
    pub fn count(&self, state: &str) -> u64 {
        self.status()[state].as_u64().expect("a count")
    }

    pub fn list(&self, state: &str) -> Vec<Value> {
        serde_json::from_str(&self.ok(&["list", "--state", state, "--json"])).expect("list JSON")
    }

    pub fn show(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["show", id, "--json"])).expect("show JSON")
    }

    /// Starts a detached supervisor with `count` workers; it is stopped when the guard drops.
    pub fn start(&self, count: u32) -> Supervisor<'_> {
        let out = self.ok(&["worker", "start", "--count", &count.to_string()]);
        let pid = out
            .split("pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out:?}"));
        Supervisor { env: self, pid }
    }

    /// Opens the store directly (no supervisor may be running) and checks its invariants.
    pub fn verify_store(&self) {
        use queuectl::store::JobStore;
        let store =
            queuectl::store::sled::SledStore::open(&self.path().join("db")).expect("open store");
        let report = store.verify().expect("verify");
        assert!(
            report.problems.is_empty(),
            "store invariants: {:?}",
            report.problems
        );
    }

    /// Pids of live processes whose command line names this test's directory.
    pub fn processes(&self) -> Vec<i32> {
        processes_naming(self.path())
    }
}

/// Pids of live processes (not zombies, not this one) whose command line names `path`.
pub fn processes_naming(path: &Path) -> Vec<i32> {
    let needle = path.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if alive(pid) && String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills (SIGKILL) every process whose command line names its path when dropped: for a data
/// directory outside an [`Env`], so that a failing test leaves nothing running.
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = processes_naming(&self.0);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                kill(pid, 9);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Env {
    /// Leaves no process behind, also when the test failed.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.processes();
            if pids.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                for pid in pids {
                    kill(pid, 9);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a signal (by number) to a process.
pub fn kill(pid: i32, sig: i32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `cond` until it holds, failing the test with `what` after `DEADLINE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_until_for(what, DEADLINE, &mut cond)
}

pub fn wait_until_for(what: &str, limit: Duration, cond: &mut dyn FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A running supervisor, stopped (forcefully if need be) when dropped.
pub struct Supervisor<'a> {
    pub env: &'a Env,
    pub pid: i32,
}

impl Supervisor<'_> {
    /// Pids of its worker processes (its live children).
    pub fn workers(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .and_then(|v| v.trim().parse::<i32>().ok());
            if ppid == Some(self.pid) && alive(pid) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Graceful stop; asserts it worked.
    pub fn stop(self) {
        self.env.ok(&["worker", "stop", "--timeout", "60"]);
        // `stop` returns once the store is let go of; the process ends a moment later (sled
        // closes its files after the lock is released).
        let pid = self.pid;
        wait_until_for(
            &format!("supervisor {pid} to exit after stop"),
            Duration::from_secs(10),
            &mut || !alive(pid),
        );
        std::mem::forget(self);
    }
}

impl Drop for Supervisor<'_> {
    fn drop(&mut self) {
        if alive(self.pid) {
            let _ = self
                .env
                .cmd()
                .args(["worker", "stop", "--force", "--timeout", "10"])
                .output();
            if alive(self.pid) {
                kill(self.pid, 9);
            }
        }
    }
}

/// A command's standard output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Permission bits of `path` itself (a symbolic link is not followed).
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// The supervisor's log (`worker.log`) of `env`, empty if there is none yet.
pub fn log(env: &Env) -> String {
    std::fs::read_to_string(env.path().join("worker.log")).unwrap_or_default()
}

/// Waits (bounded) until no process of this test's data directory is left: supervisor,
/// workers, clients and job shells that name the directory.
pub fn assert_no_processes(env: &Env) {
    wait_until_for(
        "every process of the test to exit",
        Duration::from_secs(20),
        &mut || env.processes().is_empty(),
    );
}
