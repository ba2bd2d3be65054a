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
//! - **postgres** (when `QUEUECTL_TEST_DATABASE_URL` names a server; skipped, saying so,
//!   otherwise): the same 1,000 jobs in a fresh database of that server, run by one host with 4
//!   workers, and by two hosts (two data directories) with 2 workers each. The server's
//!   `synchronous_commit`/`fsync` decide whether each commit waits for the disk: start it with
//!   `QUEUECTL_PG_DURABLE=1 .ci/postgres.sh start DIR` for the durable defaults.
//!
//! It prints jobs/s for each round, the medians, and the ratios of queuectl with 4 and with 16
//! workers to `xargs -P4`. Set `QUEUECTL_BENCH_JOBS` or
//! `QUEUECTL_BENCH_ROUNDS` to change the size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use queuectl::model::parse_ts;
use queuectl::store::postgres::scratch::{ScratchDatabase, SERVER_ENV};

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

/// One PostgreSQL round: `hosts` supervisors (one data directory each, `workers` each) on a
/// fresh database; jobs per second.
fn postgres_round(server: &str, jobs: usize, hosts: usize, workers: u32) -> f64 {
    let db = ScratchDatabase::create(server).expect("a database on the benchmark server");
    let tmp = tempfile::Builder::new()
        .prefix("queuectl-bench-")
        .tempdir_in(std::env::var_os("QUEUECTL_BENCH_DIR").unwrap_or_else(|| "target".into()))
        .expect("temp dir");
    let dirs: Vec<std::path::PathBuf> = (0..hosts)
        .map(|h| tmp.path().join(format!("host{h}")))
        .collect();
    let pg = |dir: &Path| {
        let mut c = queuectl(dir);
        c.env("QUEUECTL_DATABASE_URL", &db.url);
        c
    };
    let lines: String = (0..jobs)
        .map(|i| format!("{{\"id\":\"j{i:06}\",\"command\":\"true\"}}\n"))
        .collect();
    let file = tmp.path().join("jobs.jsonl");
    std::fs::write(&file, lines).expect("write jobs");
    let mut stoppers = Vec::new();
    for dir in &dirs {
        run_ok(
            pg(dir)
                .args(["worker", "start", "--count"])
                .arg(workers.to_string()),
        );
        stoppers.push(PgStopper(dir, db.url.clone()));
    }
    run_ok(pg(&dirs[0]).arg("enqueue").arg("--file").arg(&file));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = run_ok(pg(&dirs[0]).args(["status", "--json"]));
        let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
        if v["completed"].as_u64().unwrap_or(0) >= jobs as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not complete");
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = run_ok(pg(&dirs[0]).args(["list", "--state", "completed", "--json"]));
    drop(stoppers);
    span_rate(jobs, &out)
}

/// Stops a PostgreSQL host's supervisor when dropped.
struct PgStopper<'a>(&'a Path, String);

impl Drop for PgStopper<'_> {
    fn drop(&mut self) {
        let _ = queuectl(self.0)
            .env("QUEUECTL_DATABASE_URL", &self.1)
            .args(["worker", "stop", "--force", "--timeout", "20"])
            .output();
    }
}

/// Jobs per second from the first `created_at` to the last `updated_at` of a `list --json`.
fn span_rate(jobs: usize, list_json: &str) -> f64 {
    let list: Vec<serde_json::Value> = serde_json::from_str(list_json).expect("list JSON");
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

/// One baseline round: `sh -c true` four at a time, per second. It runs in a session of its
/// own (`setsid -w`), as the detached supervisor does, so that the kernel's per-session CPU
/// grouping (autogroup) treats both alike when other work shares the machine.
fn xargs_round(jobs: usize) -> f64 {
    let t = Instant::now();
    let status = Command::new("setsid")
        .args(["-w", "sh", "-c"])
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
    match std::env::var(SERVER_ENV).ok().filter(|u| !u.is_empty()) {
        None => println!("SKIPPED: the postgres rounds ({SERVER_ENV} names no server)"),
        Some(server) => {
            let (mut p1, mut p2, mut px) = (Vec::new(), Vec::new(), Vec::new());
            for round in 1..=rounds {
                let rx = xargs_round(jobs);
                let r1 = postgres_round(&server, jobs, 1, 4);
                let r2 = postgres_round(&server, jobs, 2, 2);
                println!(
                    "round {round}: xargs -P4 {rx:6.0} jobs/s   postgres 1 host x 4 {r1:6.0} \
                     ({:.2})   2 hosts x 2 {r2:6.0} ({:.2})",
                    r1 / rx,
                    r2 / rx
                );
                px.push(rx);
                p1.push(r1);
                p2.push(r2);
            }
            let (m1, m2, mpx) = (median(p1), median(p2), median(px));
            println!("median over {rounds} rounds of {jobs} `true` jobs (postgres):");
            println!("  xargs -P4 sh -c true      {mpx:8.0} jobs/s");
            println!(
                "  postgres, 1 host x 4      {m1:8.0} jobs/s   ratio {:.2}",
                m1 / mpx
            );
            println!(
                "  postgres, 2 hosts x 2     {m2:8.0} jobs/s   ratio {:.2}",
                m2 / mpx
            );
        }
    }
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
