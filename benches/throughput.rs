//! Throughput of the whole system against the machine's own limit.
//!
//! `cargo bench --bench throughput` runs, in alternating rounds:
//! - **queuectl**: a supervisor with 4 workers (and, in its own round, 16) is started on an
//!   empty data directory, then one `enqueue --file` hands it 1,000 `true` jobs; the time is from the first job's `created_at`
//!   to the last job's completion (`updated_at`), read back from the store afterwards, so the
//!   measurement does not disturb the run (no polling while it drains).
//! - **xargs -P4**: `seq 1000 | xargs -P4 -I{} sh -c true`, the raw rate of starting the same
//!   shell four at a time.
//!
//! It prints jobs/s for each round, the medians, and the ratios of queuectl with 4 and with 16
//! workers to `xargs -P4`. Set `QUEUECTL_BENCH_JOBS` or
//! `QUEUECTL_BENCH_ROUNDS` to change the size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use queuectl::model::parse_ts;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn queuectl(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_queuectl"));
    c.arg("--data-dir").arg(dir).env_remove("RUST_LOG");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().expect("run queuectl");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the supervisor of `dir` when dropped, also on panic.
struct Stopper<'a>(&'a Path);

impl Drop for Stopper<'_> {
    fn drop(&mut self) {
        let _ = queuectl(self.0)
            .args(["worker", "stop", "--force", "--timeout", "20"])
            .output();
    }
}

fn completed(dir: &Path) -> u64 {
    let out = run_ok(queuectl(dir).args(["status", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    v["completed"].as_u64().unwrap_or(0)
}

/// One queuectl round: jobs per second.
fn queuectl_round(jobs: usize, workers: u32) -> f64 {
    let tmp = tempfile::Builder::new()
        .prefix("queuectl-bench-")
        .tempdir_in(std::env::var_os("QUEUECTL_BENCH_DIR").unwrap_or_else(|| "target".into()))
        .expect("temp dir");
    let dir = tmp.path().join("data");
    let lines: String = (0..jobs)
        .map(|i| format!("{{\"id\":\"j{i:06}\",\"command\":\"true\"}}\n"))
        .collect();
    let file = tmp.path().join("jobs.jsonl");
    std::fs::write(&file, lines).expect("write jobs");
    run_ok(
        queuectl(&dir)
            .args(["worker", "start", "--count"])
            .arg(workers.to_string()),
    );
    let _stop = Stopper(&dir);
    run_ok(queuectl(&dir).arg("enqueue").arg("--file").arg(&file));
    let deadline = Instant::now() + Duration::from_secs(300);
    while completed(&dir) < jobs as u64 {
        assert!(Instant::now() < deadline, "jobs did not complete");
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = run_ok(queuectl(&dir).args(["list", "--state", "completed", "--json"]));
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list JSON");
    let ts =
        |v: &serde_json::Value, k: &str| parse_ts(v[k].as_str().expect("time")).expect("rfc3339");
    let first = list
        .iter()
        .map(|j| ts(j, "created_at"))
        .min()
        .expect("jobs");
    let last = list
        .iter()
        .map(|j| ts(j, "updated_at"))
        .max()
        .expect("jobs");
    jobs as f64 / ((last - first).max(1) as f64 / 1000.0)
}

/// One baseline round: `sh -c true` four at a time, per second.
fn xargs_round(jobs: usize) -> f64 {
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("seq {jobs} | xargs -P4 -I{{}} sh -c true"))
        .stdout(Stdio::null())
        .status()
        .expect("run xargs");
    assert!(status.success());
    jobs as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes flags such as --bench; `cargo test --benches` runs us with no work.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let jobs = env_num("QUEUECTL_BENCH_JOBS", 1000);
    let rounds = env_num("QUEUECTL_BENCH_ROUNDS", 5);
    let (mut q4, mut q16, mut x) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let rx = xargs_round(jobs);
        let r4 = queuectl_round(jobs, 4);
        let r16 = queuectl_round(jobs, 16);
        println!(
            "round {round}: xargs -P4 {rx:6.0} jobs/s   queuectl 4 workers {r4:6.0} ({:.2})   \
             16 workers {r16:6.0} ({:.2})",
            r4 / rx,
            r16 / rx
        );
        x.push(rx);
        q4.push(r4);
        q16.push(r16);
    }
    let (m4, m16, mx) = (median(q4), median(q16), median(x));
    println!("median over {rounds} rounds of {jobs} `true` jobs:");
    println!("  xargs -P4 sh -c true   {mx:8.0} jobs/s");
    println!(
        "  queuectl, 4 workers    {m4:8.0} jobs/s   ratio {:.2}",
        m4 / mx
    );
    println!(
        "  queuectl, 16 workers   {m16:8.0} jobs/s   ratio {:.2}",
        m16 / mx
    );
}
