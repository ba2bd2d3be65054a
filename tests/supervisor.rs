//! The supervisor, black-box: `worker start/stop`, running jobs, retries and the DLQ, timeouts,
//! signals, and surviving `kill -9` of a worker or of the supervisor itself.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{alive, assert_no_processes, kill, log, wait_until, wait_until_for, Env, Supervisor};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------------------------

/// A path quoted for `sh -c`.
fn sh(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// The job as JSON (paths in commands are escaped properly).
fn job(v: Value) -> String {
    v.to_string()
}

fn state(v: &Value) -> &str {
    v["state"].as_str().expect("a state")
}

/// Waits until `path` holds a pid (a whole line, as `echo $! > FILE` writes it) and returns it.
fn wait_for_pid(path: &Path) -> i32 {
    let mut pid = None;
    wait_until(&format!("a pid in {}", path.display()), || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pid = text
            .ends_with('\n')
            .then(|| text.trim().parse::<i32>().ok())
            .flatten();
        pid.is_some()
    });
    pid.expect("pid")
}

fn wait_gone(what: &str, pid: i32) {
    wait_until_for(
        &format!("{what} (pid {pid}) to be gone"),
        Duration::from_secs(20),
        &mut || !alive(pid),
    );
}

/// Waits until the job's state is `want`, failing at once if it reaches an unexpected end state.
fn wait_state(env: &Env, id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("job {id} to be {want}"), || {
        last = env.show(id);
        let s = state(&last);
        assert!(
            s == want || !["completed", "dead"].contains(&s),
            "job {id} ended {s}, expected {want}: {last}"
        );
        s == want
    });
    last
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of proc(5); the first field after the ")" is field 3.
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    utime + stime
}

/// Milliseconds since the epoch of a `worker.log` line, from its `[2025-11-09T08:21:13.456Z]`.
fn log_time_ms(line: &str) -> i64 {
    let ts = line
        .strip_prefix('[')
        .and_then(|s| s.split(']').next())
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    chrono::DateTime::parse_from_rfc3339(ts)
        .unwrap_or_else(|e| panic!("bad timestamp {ts:?}: {e}"))
        .timestamp_millis()
}

/// The one line of `log` containing `needle`.
fn log_line<'a>(log: &'a str, needle: &str) -> &'a str {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(
        lines.len(),
        1,
        "one line with {needle:?} expected in:\n{log}"
    );
    lines[0]
}

/// A supervisor run with `worker start --foreground` as our own child; killed and reaped on
/// drop if it is still there (also when the test fails).
struct Foreground(Child);

impl Foreground {
    fn spawn(env: &Env, count: u32) -> Foreground {
        let child = Command::new(env!("CARGO_BIN_EXE_queuectl"))
            .arg("--data-dir")
            .arg(env.path())
            .args(["worker", "start", "--foreground", "--count"])
            .arg(count.to_string())
            .env_remove("QUEUECTL_HOME")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.file("foreground.stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn the foreground supervisor");
        Foreground(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Fails the test at once, with the reason, if the supervisor has exited.
    fn assert_running(&mut self, env: &Env) {
        if let Some(status) = self.0.try_wait().expect("try_wait") {
            let stderr = std::fs::read_to_string(env.file("foreground.stderr")).unwrap_or_default();
            panic!("the foreground supervisor exited ({status}): {stderr}");
        }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn jobs_enqueued_before_start_run_and_complete() {
    let env = Env::new();
    let ids: Vec<String> = (1..=6).map(|i| format!("job{i}")).collect();
    for id in &ids {
        env.enqueue(&job(json!({"id": id, "command": format!("echo {id}")})));
    }
    assert_eq!(env.count("pending"), 6);

    let sup = env.start(2);
    wait_until("all 6 jobs completed", || env.count("completed") == 6);
    let st = env.status();
    assert_eq!(st["workers"], 2, "{st}");
    assert_eq!(st["supervisor_pid"], sup.pid, "{st}");
    assert_eq!(st["pending"], 0, "{st}");
    assert_eq!(st["processing"], 0, "{st}");
    for id in &ids {
        let j = env.show(id);
        assert_eq!(state(&j), "completed", "{j}");
        assert_eq!(j["attempts"], 0, "{j}");
        assert!(env.ok(&["logs", id]).contains(&format!("{id}\n")));
    }

    let pid = sup.pid;
    sup.stop();
    let st = env.status();
    assert_eq!(st["workers"], 0, "{st}");
    assert!(st["supervisor_pid"].is_null(), "{st}");
    assert_eq!(st["completed"], 6, "{st}");

    let log = log(&env);
    assert!(
        log.contains(&format!("[INFO] Supervisor {pid} started with 2 workers")),
        "{log}"
    );
    for id in &ids {
        let line = log_line(&log, &format!("Job {id} completed successfully in "));
        assert!(line.contains("[INFO]"), "{line}");
        assert!(line.trim_end().ends_with('s'), "{line}");
    }
    assert!(log.contains(&format!("Supervisor {pid} stopped")), "{log}");
    assert_no_processes(&env);
    env.verify_store();
}

#[test]
fn priorities_order_the_work() {
    let env = Env::new();
    let out = env.file("order");
    // (id, priority), in enqueue order.
    let jobs = [
        ("a", 0),
        ("b", 5),
        ("c", -3),
        ("d", 5),
        ("e", 10),
        ("f", 0),
        ("g", -3),
        ("h", 7),
    ];
    for (id, priority) in jobs {
        env.enqueue(&job(json!({
            "id": id,
            "priority": priority,
            "command": format!("echo {id} >> {}", sh(&out)),
        })));
    }
    let sup = env.start(1);
    wait_until("all jobs completed", || {
        env.count("completed") == jobs.len() as u64
    });
    let order = std::fs::read_to_string(&out).expect("the jobs wrote their ids");
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(order, ["e", "h", "b", "d", "a", "f", "c", "g"]);
    sup.stop();
    assert_no_processes(&env);
}

#[test]
fn failing_job_is_retried_with_growing_delays_then_dead_then_dlq_retry_runs_it() {
    let env = Env::new();
    env.ok(&["config", "set", "backoff_base", "2"]);
    env.ok(&["config", "set", "max_retries", "3"]);
    let marker = env.file("marker");
    let id = env.enqueue(&job(json!({
        "id": "flaky",
        "command": format!("test -f {} || {{ echo boom >&2; exit 7; }}", sh(&marker)),
    })));
    assert_eq!(id, "flaky");
    let sup = env.start(1);

    let dead = wait_state(&env, &id, "dead");
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert_eq!(dead["runs"], 3, "{dead}");
    let last_error = dead["last_error"].as_str().expect("last_error");
    assert!(
        last_error.contains("exit code 7") && last_error.contains("boom"),
        "{last_error}"
    );

    let log = log(&env);
    let first = log_line(
        &log,
        "Job flaky failed (exit code 7: boom) (attempt 1/3) - retrying in 2s",
    );
    let second = log_line(
        &log,
        "Job flaky failed (exit code 7: boom) (attempt 2/3) - retrying in 4s",
    );
    let last = log_line(
        &log,
        "Job flaky failed (exit code 7: boom) after 3 attempts - moved to DLQ",
    );
    assert!(
        first.contains("[WARN]") && second.contains("[WARN]"),
        "{log}"
    );
    assert!(last.contains("[ERROR]"), "{log}");
    // The delays really grew: each retry ran no earlier than its backoff.
    let (t1, t2, t3) = (log_time_ms(first), log_time_ms(second), log_time_ms(last));
    assert!(
        t2 - t1 >= 1_900,
        "second attempt {}ms after the first",
        t2 - t1
    );
    assert!(
        t3 - t2 >= 3_900,
        "third attempt {}ms after the second",
        t3 - t2
    );

    let latest = env.ok(&["logs", &id]);
    assert!(latest.contains("run 3 of 3"), "{latest}");
    assert!(latest.contains("boom"), "{latest}");
    let first_out = env.ok(&["logs", &id, "--attempt", "1"]);
    assert!(first_out.contains("run 1 of 3"), "{first_out}");
    assert!(first_out.contains("exit code 7"), "{first_out}");
    assert!(first_out.contains("boom"), "{first_out}");

    // Fix the cause, then take it out of the DLQ while the supervisor runs.
    std::fs::write(&marker, "").unwrap();
    let msg = env.ok(&["dlq", "retry", &id]);
    assert!(msg.contains("flaky"), "{msg}");
    let done = wait_state(&env, &id, "completed");
    assert_eq!(done["attempts"], 0, "{done}");
    assert_eq!(done["runs"], 4, "{done}");
    let log = crate::log(&env);
    assert!(
        log.contains("Job flaky completed successfully in "),
        "{log}"
    );
    sup.stop();
    assert_no_processes(&env);
}

#[test]
fn job_over_its_timeout_is_killed_with_its_children() {
    let env = Env::new();
    let child_file = env.file("child");
    let id = env.enqueue(&job(json!({
        "id": "slow",
        "command": format!("sleep 30 & echo $! > {}; wait", sh(&child_file)),
        "timeout": 0.5,
        "max_retries": 1,
    })));
    let sup = env.start(1);
    let t0 = Instant::now();
    let dead = wait_state(&env, &id, "dead");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?} to time out",
        t0.elapsed()
    );
    assert_eq!(dead["attempts"], 1, "{dead}");
    let last_error = dead["last_error"].as_str().expect("last_error");
    assert!(last_error.contains("timed out"), "{last_error}");
    let child = wait_for_pid(&child_file);
    wait_gone("the job's background sleep", child);
    sup.stop();
    assert_no_processes(&env);
}

#[test]
fn graceful_stop_lets_a_running_job_finish() {
    let env = Env::new();
    let sup = env.start(1);
    let id = env.enqueue(r#"{"id":"nap","command":"sleep 2"}"#);
    wait_state(&env, &id, "processing");
    let out = env.ok(&["worker", "stop"]);
    assert!(
        out.contains(&format!("Supervisor {} stopped", sup.pid)),
        "{out}"
    );
    assert!(!alive(sup.pid), "the supervisor is still alive after stop");
    // The stop waited for the job.
    let j = env.show(&id);
    assert_eq!(state(&j), "completed", "{j}");
    assert_eq!(j["attempts"], 0, "{j}");
    assert_eq!(j["runs"], 1, "{j}");
    let log = log(&env);
    assert!(log.contains("waiting for 1 running job to finish"), "{log}");
    assert!(log.contains("Job nap completed successfully in "), "{log}");
    let st = env.status();
    assert_eq!(st["workers"], 0, "{st}");
    assert!(st["supervisor_pid"].is_null(), "{st}");
    drop(sup);
    assert_no_processes(&env);
}

#[test]
fn forced_stop_kills_the_running_job_and_returns_it_to_pending() {
    let env = Env::new();
    let pid_file = env.file("sleep.pid");
    let sup = env.start(1);
    let id = env.enqueue(&job(json!({
        "id": "long",
        "command": format!("sleep 30 & echo $! > {}; wait", sh(&pid_file)),
    })));
    wait_state(&env, &id, "processing");
    let sleep = wait_for_pid(&pid_file);
    assert!(alive(sleep));

    let t0 = Instant::now();
    env.ok(&["worker", "stop", "--force", "--timeout", "30"]);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "forced stop took {took:?}");
    assert!(!alive(sup.pid), "the supervisor is still alive");

    let j = env.show(&id);
    assert_eq!(state(&j), "pending", "{j}");
    assert_eq!(j["attempts"], 0, "{j}");
    assert!(j["last_error"].is_null(), "{j}");
    wait_gone("the job's sleep", sleep);
    let st = env.status();
    assert_eq!(st["workers"], 0, "{st}");
    assert_eq!(st["processing"], 0, "{st}");
    assert!(log(&env).contains("Job long returned to pending (forced stop)"));
    drop(sup);
    assert_no_processes(&env);
    env.verify_store();
}

#[test]
fn sigint_to_a_foreground_supervisor_stops_it_gracefully() {
    let env = Env::new();
    let mut fg = Foreground::spawn(&env, 2);
    let pid = fg.pid();
    wait_until("the foreground supervisor to be ready", || {
        fg.assert_running(&env);
        let st = env.status();
        st["supervisor_pid"] == pid && st["workers"] == 2
    });
    for id in ["n1", "n2"] {
        env.enqueue(&job(json!({"id": id, "command": "sleep 1"})));
    }
    wait_until("both jobs running", || env.count("processing") == 2);

    kill(pid, 2);
    let mut status = None;
    wait_until("the foreground supervisor to exit", || {
        status = fg.0.try_wait().expect("try_wait");
        status.is_some()
    });
    let status = status.unwrap();
    assert!(status.success(), "exit status {status}");
    for id in ["n1", "n2"] {
        let j = env.show(id);
        assert_eq!(state(&j), "completed", "{j}");
        assert_eq!(j["attempts"], 0, "{j}");
    }
    let log = log(&env);
    assert!(
        log.contains(&format!(
            "Supervisor {pid} stopping: waiting for 2 running jobs"
        )),
        "{log}"
    );
    assert!(log.contains(&format!("Supervisor {pid} stopped")), "{log}");
    let st = env.status();
    assert!(st["supervisor_pid"].is_null(), "{st}");
    drop(fg);
    assert_no_processes(&env);
}

#[test]
fn worker_killed_with_kill_9_is_replaced_and_its_attempt_counts() {
    let env = Env::new();
    env.ok(&["config", "set", "backoff_base", "5"]);
    let pid_file = env.file("sleep.pid");
    let marker = env.file("marker");
    let sup = env.start(1);
    let workers = sup.workers();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let old = workers[0];
    let id = env.enqueue(&job(json!({
        "id": "victim",
        // The first run sleeps; once the marker exists, a retry succeeds at once.
        "command": format!(
            "test -f {m} && exit 0; sleep 30 & echo $! > {p}; wait",
            m = sh(&marker),
            p = sh(&pid_file)
        ),
    })));
    wait_state(&env, &id, "processing");
    let sleep = wait_for_pid(&pid_file);
    std::fs::write(&marker, "").unwrap();

    kill(old, 9);
    let mut j = Value::Null;
    wait_until("the attempt to be counted", || {
        j = env.show(&id);
        j["attempts"] == 1
    });
    assert!(["failed", "pending"].contains(&state(&j)), "{j}");
    assert_eq!(j["last_error"], "worker exited unexpectedly", "{j}");
    wait_gone("the job's sleep", sleep);

    wait_until("a new worker", || {
        let w = sup.workers();
        w.len() == 1 && w[0] != old
    });
    assert_eq!(env.status()["workers"], 1);
    let quick = env.enqueue(r#"{"id":"quick","command":"true"}"#);
    wait_state(&env, &quick, "completed");
    // The retry (after 5 s) runs on the new worker and succeeds.
    let j = wait_state(&env, &id, "completed");
    assert_eq!(j["attempts"], 1, "{j}");
    assert_eq!(j["runs"], 2, "{j}");

    let log = log(&env);
    assert!(
        log.contains(
            "Job victim failed (worker exited unexpectedly) (attempt 1/3) - retrying in 5s"
        ),
        "{log}"
    );
    sup.stop();
    assert_no_processes(&env);
}

#[test]
fn supervisor_killed_with_kill_9_three_times_loses_no_job() {
    const JOBS: usize = 300;
    let env = Env::new();
    env.ok(&["config", "set", "backoff_base", "1"]);
    let out = env.file("out");
    let jobs_file = env.file("jobs.jsonl");
    let mut lines = String::new();
    for n in 0..JOBS {
        lines.push_str(&job(json!({
            "id": format!("j{n}"),
            "command": format!("echo j{n} >> {}; sleep 0.01", sh(&out)),
            "max_retries": 10,
        })));
        lines.push('\n');
    }
    std::fs::write(&jobs_file, lines).unwrap();
    let msg = env.ok(&["enqueue", "--file", jobs_file.to_str().unwrap()]);
    assert!(msg.contains("Enqueued 300 jobs"), "{msg}");

    let mut completed = 0;
    for round in 1..=3 {
        let sup = env.start(4);
        let target = (completed + 10).min(JOBS as u64);
        wait_until(&format!("round {round}: {target} jobs completed"), || {
            completed = env.count("completed");
            completed >= target
        });
        kill(sup.pid, 9);
        wait_gone("the killed supervisor", sup.pid);
        assert_no_processes(&env);
        eprintln!("round {round}: killed with {completed} jobs completed");
    }

    let sup = env.start(4);
    wait_until("every job completed", || {
        env.count("completed") == JOBS as u64
    });
    sup.stop();
    let st = env.status();
    assert_eq!(st["processing"], 0, "{st}");
    assert_eq!(st["dead"], 0, "{st}");
    assert_eq!(st["completed"], JOBS, "{st}");

    let out = std::fs::read_to_string(&out).expect("output file");
    let seen: std::collections::HashSet<&str> = out.lines().collect();
    let missing: Vec<String> = (0..JOBS)
        .map(|n| format!("j{n}"))
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    assert!(missing.is_empty(), "ids never written: {missing:?}");
    assert!(
        log(&env).contains("was interrupted by a stopped supervisor"),
        "no kill hit a running job"
    );
    assert_no_processes(&env);
    env.verify_store();
}

#[test]
fn second_start_is_refused_and_a_stale_lock_confuses_nobody() {
    let env = Env::new();
    let sup = env.start(1);
    let err = env.fails(&["worker", "start"], 2);
    assert!(err.contains(&format!("pid {}", sup.pid)), "{err}");
    assert!(err.contains("already running"), "{err}");
    // The first one is untouched.
    assert!(alive(sup.pid));
    assert_eq!(env.status()["supervisor_pid"], sup.pid);

    kill(sup.pid, 9);
    wait_gone("the killed supervisor", sup.pid);
    assert_no_processes(&env);
    let lock = std::fs::read_to_string(env.path().join("lock")).unwrap();
    assert_eq!(
        lock.trim(),
        sup.pid.to_string(),
        "the killed supervisor's pid stays in the lock"
    );

    let st = env.status();
    assert_eq!(st["workers"], 0, "{st}");
    assert!(st["supervisor_pid"].is_null(), "{st}");
    let out = env.ok(&["worker", "stop"]);
    assert!(out.contains("No supervisor is running"), "{out}");

    let again: Supervisor = env.start(1);
    assert_ne!(again.pid, sup.pid);
    let st = env.status();
    assert_eq!(st["supervisor_pid"], again.pid, "{st}");
    assert_eq!(st["workers"], 1, "{st}");
    let id = env.enqueue(r#"{"command":"true"}"#);
    wait_state(&env, &id, "completed");
    again.stop();
    assert_no_processes(&env);
}

#[test]
fn idle_supervisor_uses_almost_no_cpu() {
    let env = Env::new();
    let sup = env.start(2);
    let mut pids = vec![sup.pid];
    pids.extend(sup.workers());
    assert_eq!(pids.len(), 3, "{pids:?}");
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let t0 = Instant::now();
    wait_until("2 s to pass", || t0.elapsed() >= Duration::from_secs(2));
    let used: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>() - before;
    assert!(
        used < 20,
        "an idle supervisor and its 2 workers used {used} ticks in {:?}",
        t0.elapsed()
    );
    assert_eq!(env.status()["workers"], 2);
    sup.stop();
    assert_no_processes(&env);
}

#[test]
fn stop_returns_only_once_the_supervisor_has_let_go_of_the_store() {
    let env = Env::new();
    for round in 0..15 {
        let sup = env.start(1);
        let id = env.enqueue(&job(json!({"id": format!("r{round}"), "command": "true"})));
        wait_state(&env, &id, "completed");
        // Asserts the process is gone as soon as `worker stop` returns.
        sup.stop();
        // The store is free at once: sled opens (no lock of the old supervisor left on it),
        // and a command can take it over directly.
        env.verify_store();
        let st = env.status();
        assert!(st["supervisor_pid"].is_null(), "round {round}: {st}");
        assert_eq!(st["completed"], round + 1, "round {round}: {st}");
    }
    assert_no_processes(&env);
}

/// Retention: `clean` removes finished jobs on demand (`--older-than`, else the setting, or
/// all when it is `keep`), and a supervisor applies `retention_completed` by itself; the output
/// of the jobs goes with them.
#[test]
fn clean_and_retention_remove_finished_jobs_with_their_output() {
    let env = Env::new();
    for i in 0..3 {
        env.enqueue(&format!(r#"{{"id":"ok{i}","command":"echo {i}"}}"#));
    }
    for i in 0..2 {
        env.enqueue(&format!(
            r#"{{"id":"bad{i}","command":"false","max_retries":0}}"#
        ));
    }
    let sup = env.start(2);
    wait_until("every job finished", || {
        env.count("completed") == 3 && env.count("dead") == 2
    });
    sup.stop();
    assert!(env.ok(&["logs", "ok0"]).contains('0'));
    let out = env.fails(&["clean", "--state", "pending"], 2);
    assert!(out.contains("completed or dead"), "{out}");
    let out = env.fails(&["clean", "--state", "dead", "--older-than", "soon"], 2);
    assert!(out.contains("--older-than"), "{out}");
    assert_eq!(
        env.ok(&["clean", "--state", "dead", "--older-than", "1h"]),
        "Removed 0 dead jobs\n"
    );
    // retention_dead is `keep` by default: cleaning dead jobs without a cut-off takes them all.
    assert_eq!(env.ok(&["config", "get", "retention_dead"]), "keep\n");
    assert_eq!(
        env.ok(&["clean", "--state", "dead"]),
        "Removed 2 dead jobs\n"
    );
    assert_eq!(env.count("dead"), 0);
    // The default retention of completed jobs (7 days) keeps them.
    assert_eq!(
        env.ok(&["clean", "--state", "completed"]),
        "Removed 0 completed jobs\n"
    );
    assert_eq!(
        env.ok(&["config", "set", "retention_completed", "1ms"]),
        "retention_completed = 1ms\n"
    );
    let sup = env.start(1);
    wait_until("the supervisor removes the completed jobs", || {
        env.count("completed") == 0
    });
    sup.stop();
    let out = env.fails(&["logs", "ok0"], 2);
    assert!(out.contains("ok0"), "{out}");
    assert_eq!(env.count("total"), 0);
    env.verify_store();
    // The output went with the jobs: a new job of the same id has none.
    env.enqueue(r#"{"id":"ok0","command":"true"}"#);
    let out = env.fails(&["logs", "ok0"], 2);
    assert!(out.contains("not run"), "{out}");
}
