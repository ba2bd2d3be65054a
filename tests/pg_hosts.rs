//! Several hosts sharing one PostgreSQL queue: two data directories (two "hosts") on this
//! machine, one database on the test server (`QUEUECTL_TEST_DATABASE_URL`, which `.ci/run`
//! starts). Without a server these tests say so and skip; under `CI=true` they fail.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{alive, kill, wait_until_for, Env};
use queuectl::store::postgres::scratch::{ScratchDatabase, SERVER_ENV};

/// Leases in these tests: short, so that a lost host is noticed quickly.
const LEASE_MS: &str = "3000";
const LONG: Duration = Duration::from_secs(120);

fn server() -> Option<String> {
    match std::env::var(SERVER_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{SERVER_ENV} is not set: CI must test PostgreSQL");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: a PostgreSQL test (set {SERVER_ENV}, or run .ci/run, which starts a server)"
            );
            None
        }
    }
}

/// A lease long enough that its renewals (every third of it) wake no supervisor during a test:
/// what happens sooner was announced by the database.
const LONG_LEASE_MS: &str = "90000";

/// Quicker than any poll, renewal or retry in these tests: only a notification explains it.
const PROMPT: Duration = Duration::from_secs(15);

/// One host: its own data directory, the shared database.
struct Host {
    env: Env,
    url: String,
    /// This host's own lease (`QUEUECTL_LEASE_MS`), if not the shared setting.
    lease_ms: Option<&'static str>,
}

impl Host {
    fn new(db: &ScratchDatabase) -> Host {
        Host {
            env: Env::new(),
            url: db.url.clone(),
            lease_ms: Some(LEASE_MS),
        }
    }

    /// A host whose supervisor wakes only when told (a long lease, an hour's poll interval).
    fn quiet(db: &ScratchDatabase) -> Host {
        let mut h = Host::new(db);
        h.lease_ms = Some(LONG_LEASE_MS);
        h.ok(&["config", "set", "poll_interval_ms", "3600000"]);
        h
    }

    fn cmd(&self) -> assert_cmd::Command {
        let mut c = self.env.cmd();
        c.env("QUEUECTL_DATABASE_URL", &self.url);
        match self.lease_ms {
            Some(ms) => c.env("QUEUECTL_LEASE_MS", ms),
            None => c.env_remove("QUEUECTL_LEASE_MS"),
        };
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run queuectl");
        assert!(
            out.status.success(),
            "queuectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["--json", "status"])).expect("status json")
    }

    fn count(&self, state: &str) -> u64 {
        self.status()[state].as_u64().unwrap_or(0)
    }

    /// Starts this host's supervisor; returns its pid.
    fn start(&self, workers: u32) -> i32 {
        let out = self.ok(&["worker", "start", "--count", &workers.to_string()]);
        out.split("pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out:?}"))
    }

    fn stop(&self) {
        let _ = self
            .cmd()
            .args(["worker", "stop", "--force", "--timeout", "30"])
            .output();
    }

    fn show(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["--json", "show", id])).expect("show json")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every live process of session `sid` (a detached supervisor leads its own session, which
/// its workers and their jobs share).
fn session(sid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name: state ppid pgrp session ...
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        if fields.get(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_thousand_jobs_on_two_hosts_each_run_exactly_once() {
    let Some(admin) = server() else { return };
    let db = ScratchDatabase::create(&admin).expect("database");
    let a = Host::new(&db);
    let b = Host::new(&db);
    let ran = a.env.file("ran");
    let jobs = a.env.file("jobs.jsonl");
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!(
            "{{\"id\":\"j{i:04}\",\"command\":\"echo j{i:04} >> {}\"}}\n",
            ran.display()
        ));
    }
    std::fs::write(&jobs, text).unwrap();
    a.ok(&["enqueue", "--file", jobs.to_str().unwrap()]);
    a.start(3);
    b.start(3);
    let status = b.ok(&["status"]);
    assert!(status.contains("HOST"), "{status}");
    wait_until_for("1,000 jobs to complete", LONG, &mut || {
        a.count("completed") == 1000
    });
    let lines = std::fs::read_to_string(&ran).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    let unique: HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(lines.len(), 1000, "every job ran once, none twice");
    assert_eq!(unique.len(), 1000);
    let s = a.status();
    assert_eq!(s["hosts"].as_array().map(Vec::len), Some(2), "{s}");
}

#[test]
fn a_killed_host_loses_nothing() {
    let Some(admin) = server() else { return };
    let db = ScratchDatabase::create(&admin).expect("database");
    // The lease is the shared setting here (no host overrides it).
    let mut a = Host::new(&db);
    let mut b = Host::new(&db);
    a.lease_ms = None;
    b.lease_ms = None;
    assert_eq!(
        a.ok(&["config", "set", "lease_ms", "3s"]),
        "lease_ms = 3000\n"
    );
    let ran = a.env.file("ran");
    for i in 0..4 {
        a.ok(&[
            "enqueue",
            &format!(
                "{{\"id\":\"k{i}\",\"command\":\"sleep 3; echo k{i} >> {}\"}}",
                ran.display()
            ),
        ]);
    }
    let sup = a.start(2);
    wait_until_for("host a to run two jobs", LONG, &mut || {
        a.count("processing") == 2
    });
    // The host dies: its supervisor, workers and jobs, at once.
    for pid in session(sup) {
        kill(pid, 9);
    }
    wait_until_for("host a's processes to be gone", LONG, &mut || {
        session(sup).is_empty()
    });
    b.start(2);
    // Sooner than the default lease of 30 s: the setting is the lease.
    wait_until_for(
        "every job to complete on host b",
        Duration::from_secs(25),
        &mut || a.count("completed") == 4,
    );
    let lines = std::fs::read_to_string(&ran).unwrap();
    let mut lines: Vec<&str> = lines.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["k0", "k1", "k2", "k3"],
        "each job ran to its end once"
    );
    let a_key = a.env.path().display().to_string();
    let lost: Vec<serde_json::Value> = (0..4)
        .map(|i| a.show(&format!("k{i}")))
        .filter(|j| j["attempts"].as_u64() == Some(1))
        .collect();
    assert_eq!(lost.len(), 2, "the two interrupted runs counted as failed");
    for j in lost {
        let err = j["last_error"].as_str().unwrap_or_default();
        assert!(
            err.contains("lease expired") && err.contains(&a_key),
            "{err}"
        );
    }
}

#[test]
fn a_paused_host_never_runs_a_job_at_the_same_time_as_the_host_that_took_it_over() {
    let Some(admin) = server() else { return };
    let db = ScratchDatabase::create(&admin).expect("database");
    let a = Host::new(&db);
    let b = Host::new(&db);
    let log = a.env.file("ticks");
    for i in 0..2 {
        // Ticks every 0.1 s for about 10 s (longer than the lease and the retry delay together), each naming its run (the shell's pid).
        a.ok(&[
            "enqueue",
            &format!(
                "{{\"id\":\"p{i}\",\"command\":\"for n in $(seq 100); do echo p{i} $$ $(date +%s%N) >> {}; sleep 0.1; done\"}}",
                log.display()
            ),
        ]);
    }
    let sup = a.start(2);
    wait_until_for("host a to run both jobs", LONG, &mut || {
        a.count("processing") == 2
    });
    kill(sup, 19); // SIGSTOP, past the lease
    let _resume = Resume(sup);
    b.start(2);
    wait_until_for("host b to complete both jobs", LONG, &mut || {
        a.count("completed") == 2
    });
    kill(sup, 18); // SIGCONT
                   // Each run's ticks span an interval; two runs of one job never overlap.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut runs: BTreeMap<(String, String), (u128, u128)> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [id, run, t] = f[..] else { continue };
        let t: u128 = t.parse().unwrap();
        let e = runs.entry((id.into(), run.into())).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
    }
    for id in ["p0", "p1"] {
        let mut spans: Vec<(u128, u128)> = runs
            .iter()
            .filter(|((j, _), _)| j == id)
            .map(|(_, s)| *s)
            .collect();
        spans.sort_unstable();
        assert!(spans.len() >= 2, "{id} ran again on host b: {spans:?}");
        for w in spans.windows(2) {
            assert!(w[0].1 < w[1].0, "two runs of {id} overlapped: {spans:?}");
        }
    }
}

/// Sends SIGCONT when dropped, so that a failed test leaves no stopped process.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        kill(self.0, 18);
    }
}

/// The supervisor of host a sleeps (no poll for an hour, no renewal for 30 s); jobs enqueued
/// on host b, due now or a little later, start at once or at their time all the same.
#[test]
fn an_idle_host_wakes_when_any_host_enqueues_or_a_job_falls_due() {
    let Some(admin) = server() else { return };
    let db = ScratchDatabase::create(&admin).expect("database");
    let a = Host::quiet(&db);
    let b = Host::new(&db);
    a.start(1);
    // Let the supervisor settle into its sleep first.
    wait_until_for("host a to register", LONG, &mut || {
        b.status()["hosts"].as_array().is_some_and(|h| h.len() == 1)
    });
    b.ok(&["enqueue", r#"{"id":"now","command":"true"}"#]);
    wait_until_for("the job to run at once on host a", PROMPT, &mut || {
        b.show("now")["state"] == "completed"
    });
    let at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let run_at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    b.ok(&[
        "enqueue",
        &format!(r#"{{"id":"later","command":"true","run_at":"{run_at}"}}"#),
    ]);
    wait_until_for("the scheduled job to run at its time", PROMPT, &mut || {
        b.show("later")["state"] == "completed"
    });
    let ran = b.show("later");
    let finished = chrono::DateTime::parse_from_rfc3339(ran["updated_at"].as_str().unwrap())
        .expect("updated_at");
    assert!(finished >= at, "ran before its time: {ran}");
}

/// A job running on host a is cancelled from host b: a hears it at once and stops it.
#[test]
fn a_cancel_reaches_the_host_running_the_job() {
    let Some(admin) = server() else { return };
    let db = ScratchDatabase::create(&admin).expect("database");
    let a = Host::quiet(&db);
    let b = Host::new(&db);
    a.ok(&["enqueue", r#"{"id":"long","command":"sleep 60"}"#]);
    a.start(1);
    wait_until_for("the job to run on host a", LONG, &mut || {
        b.show("long")["state"] == "processing"
    });
    let started = std::time::Instant::now();
    let out = b.ok(&["cancel", "long"]);
    assert!(out.contains("cancelled"), "{out}");
    assert!(
        started.elapsed() < PROMPT,
        "the cancel took {:?}",
        started.elapsed()
    );
    let job = b.show("long");
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["last_error"], "cancelled", "{job}");
    assert_eq!(job["attempts"], 0, "{job}");
}

/// A busy worker's next job is reserved while its run is young and given back once the run
/// grows long, its run uncounted, for any host to take: an idle host runs it while the long run
/// goes on.
#[test]
fn a_next_job_reserved_ahead_goes_back_when_the_run_grows_long() {
    let Some(admin) = server() else { return };
    let db = ScratchDatabase::create(&admin).expect("database");
    let a = Host::quiet(&db);
    let b = Host::quiet(&db);
    let gate = a.env.file("gate");
    let long = format!(
        r#"{{"id":"long","command":"while [ ! -e {} ]; do sleep 0.05; done"}}"#,
        gate.display()
    );
    a.ok(&["enqueue", &long]);
    a.ok(&["enqueue", r#"{"id":"next","command":"true"}"#]);
    a.start(1);
    wait_until_for("the long run to start", LONG, &mut || {
        a.show("long")["state"] == "processing"
    });
    // Reserved ahead, then given back: waiting again, never run, but changed since enqueued.
    wait_until_for(
        "the next job to be reserved and given back",
        LONG,
        &mut || {
            let next = a.show("next");
            next["state"] == "pending"
                && next["runs"] == 0
                && next["updated_at"] != next["created_at"]
        },
    );
    b.start(1);
    wait_until_for("host b to run the next job", LONG, &mut || {
        b.show("next")["state"] == "completed"
    });
    assert_eq!(
        a.show("long")["state"],
        "processing",
        "the long run goes on"
    );
    assert_eq!(b.show("next")["runs"], 1, "one run: the one on host b");
    std::fs::write(&gate, "").unwrap();
    wait_until_for("the long run to complete", LONG, &mut || {
        a.show("long")["state"] == "completed"
    });
    assert_eq!(a.show("long")["runs"], 1);
}

/// `wait` on a host without a supervisor sees jobs other hosts run end; pause and scale
/// reach this host's own supervisor.
#[test]
fn wait_pause_and_scale_with_a_shared_queue() {
    let Some(admin) = server() else { return };
    let db = ScratchDatabase::create(&admin).expect("database");
    let a = Host::new(&db);
    let b = Host::new(&db);
    a.start(1);
    a.ok(&["worker", "pause"]);
    b.ok(&["enqueue", r#"{"id":"w","command":"true"}"#]);
    assert_eq!(b.show("w")["state"], "pending");
    a.ok(&["worker", "scale", "2"]);
    wait_until_for("host a's heartbeat to show 2 workers", LONG, &mut || {
        b.status()["hosts"][0]["workers"] == 2
    });
    a.ok(&["worker", "resume"]);
    let out = b.ok(&["wait", "w", "--timeout", "60s"]);
    assert!(out.contains("w: completed"), "{out}");
}

/// The database ends the supervisor's sessions again and again while jobs run: it connects
/// again (saying so in worker.log), and every job runs and is recorded exactly once.
#[test]
fn lost_connections_lose_no_job_and_finish_none_twice() {
    let Some(admin) = server() else { return };
    let db = ScratchDatabase::create(&admin).expect("database");
    let a = Host::new(&db);
    let ran = a.env.file("ran");
    let jobs = a.env.file("jobs.jsonl");
    let n = 300;
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "{{\"id\":\"c{i:03}\",\"command\":\"echo c{i:03} >> {}; sleep 0.05\"}}\n",
            ran.display()
        ));
    }
    std::fs::write(&jobs, text).unwrap();
    a.ok(&["enqueue", "--file", jobs.to_str().unwrap()]);
    a.start(4);
    let stop = AtomicBool::new(false);
    let ended = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut ended = 0;
            while !stop.load(Ordering::Relaxed) {
                ended += db.terminate_sessions().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(150));
            }
            ended
        });
        // Whatever happens below, the killer stops (the scope waits for it).
        let _stop = SetOnDrop(&stop);
        // The test's own commands may be cut off too: a failed look is no answer.
        let completed = || {
            let out = a.cmd().args(["--json", "status"]).output().ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["completed"].as_u64()
        };
        wait_until_for("every job to complete", LONG, &mut || {
            completed() == Some(n)
        });
        stop.store(true, Ordering::Relaxed);
        killer.join().expect("killer thread")
    });
    assert!(ended > 0, "no session was ended");
    let lines = std::fs::read_to_string(&ran).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    let unique: HashSet<&str> = lines.iter().copied().collect();
    assert_eq!(unique.len(), n as usize, "every job ran");
    assert_eq!(lines.len(), n as usize, "no job ran twice");
    let s = a.status();
    assert_eq!(s["completed"], n, "{s}");
    for st in ["pending", "processing", "failed", "dead"] {
        assert_eq!(s[st], 0, "{s}");
    }
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&a.ok(&["--json", "list", "--all"])).expect("list json");
    assert_eq!(list.len(), n as usize);
    for j in &list {
        assert_eq!(j["attempts"], 0, "no run counted as failed: {j}");
    }
    let log = std::fs::read_to_string(a.env.path().join("worker.log")).unwrap();
    assert!(log.contains("lost the connection"), "{log}");
    assert!(log.contains("again"), "{log}");
}

/// Sets its flag when dropped (also while a test unwinds).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
