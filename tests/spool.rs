//! The request spool, black box: with a supervisor running, every command goes through
//! `<data-dir>/spool/` and must behave as it does without one; requests survive a supervisor that
//! is stopped, killed or stopping; planted files cannot hurt the supervisor; many concurrent
//! clients lose nothing; and the Node.js queuectl's Quick Start works end to end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{alive, assert_no_processes, mode, stderr, stdout, wait_until, Env};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use queuectl::model::NewJob;
use queuectl::spool::request::{self, ErrorKind, Reply, Request};
use queuectl::spool::Spool;
use serde_json::Value;

/// How long a single spool round trip may take before a test fails.
const ROUND_TRIP: Duration = Duration::from_secs(30);

// ---- helpers ----

/// `<data-dir>/spool/<sub>`.
fn spool(env: &Env, sub: &str) -> PathBuf {
    env.path().join("spool").join(sub)
}

/// A command with extra environment variables.
fn run_with(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = env.cmd();
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run queuectl")
}

/// A fresh request-shaped name: a canonical ULID (26 characters of upper-case Crockford base32,
/// first character 0-7). Checked here rather than trusted, so a planted file is never refused
/// merely for its name.
fn request_id() -> String {
    let id = ulid::Ulid::generate().to_string();
    assert_eq!(id.len(), 26, "{id}");
    assert!((b'0'..=b'7').contains(&id.as_bytes()[0]), "{id}");
    assert!(
        id.bytes()
            .all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)),
        "{id}"
    );
    id
}

/// Rings the supervisor's doorbell as a client would: one byte into the FIFO `spool/wake`,
/// opened write-only and non-blocking (so this cannot hang if nobody listens).
fn wake(env: &Env) {
    let path = spool(env, "wake");
    let mut fifo = fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    assert!(fifo.metadata().unwrap().file_type().is_fifo());
    fifo.write_all(&[1]).expect("ring the wake fifo");
}

fn signal(pid: i32, sig: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid), sig)
        .unwrap_or_else(|e| panic!("cannot send {sig} to {pid}: {e}"));
}

/// The ids in a `list --json` answer, in order.
fn ids(jobs: &[Value]) -> Vec<String> {
    jobs.iter()
        .map(|j| j["id"].as_str().expect("an id").to_owned())
        .collect()
}

fn state_of(env: &Env, id: &str) -> String {
    env.show(id)["state"].as_str().expect("a state").to_owned()
}

/// Runs one command in a data directory and returns (exit code, stdout, stderr) with the
/// directory's path replaced by `<DIR>`, so runs in different directories compare.
fn outcome(env: &Env, args: &[String]) -> (Option<i32>, String, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.run(&args);
    let dir = env.path().to_string_lossy().into_owned();
    (
        out.status.code(),
        stdout(&out).replace(&dir, "<DIR>"),
        stderr(&out).replace(&dir, "<DIR>"),
    )
}

// ---- 1. writes through the spool answer as direct writes do ----

/// The same sequence of writes (and the reads that check them) in a data directory without a
/// supervisor and in one with a supervisor running: every step must give the same exit status,
/// stdout and stderr, and the expected ones.
#[test]
fn writes_through_the_spool_answer_like_direct_writes() {
    let direct = Env::new();
    let spooled = Env::new();
    let sup = spooled.start(1);
    // It really is the supervisor that answers in `spooled`.
    let st = spooled.status();
    assert_eq!(
        st["supervisor_pid"].as_i64(),
        Some(i64::from(sup.pid)),
        "{st}"
    );
    assert!(direct.status()["supervisor_pid"].is_null());

    // Jobs are delayed an hour so that none of them runs: both stores stay comparable.
    for env in [&direct, &spooled] {
        fs::write(
            env.file("ok.jsonl"),
            "{\"id\":\"b\",\"command\":\"true\",\"delay\":3600}\n\n\
             {\"id\":\"c\",\"command\":\"true\",\"delay\":3600}\n",
        )
        .unwrap();
        fs::write(
            env.file("dup-inside.jsonl"),
            "{\"id\":\"d\",\"command\":\"true\",\"delay\":3600}\n\
             {\"id\":\"e\",\"command\":\"true\",\"delay\":3600}\n\
             {\"id\":\"d\",\"command\":\"true\",\"delay\":3600}\n",
        )
        .unwrap();
        fs::write(
            env.file("dup-existing.jsonl"),
            "{\"id\":\"f\",\"command\":\"true\",\"delay\":3600}\n\
             {\"id\":\"a\",\"command\":\"true\",\"delay\":3600}\n",
        )
        .unwrap();
    }
    let job_a = r#"{"id":"a","command":"true","delay":3600}"#;
    // (arguments, expected exit status, expected text in stdout (code 0) or stderr)
    let steps: Vec<(Vec<String>, i32, &str)> = vec![
        (vec!["enqueue".into(), job_a.into()], 0, "a\n"),
        (vec!["enqueue".into(), job_a.into()], 2, "already exists"),
        (
            vec!["enqueue".into(), "--file".into(), "<DIR>/ok.jsonl".into()],
            0,
            "Enqueued 2 jobs",
        ),
        (
            vec![
                "enqueue".into(),
                "--file".into(),
                "<DIR>/dup-inside.jsonl".into(),
            ],
            2,
            "more than once",
        ),
        (
            vec![
                "enqueue".into(),
                "--file".into(),
                "<DIR>/dup-existing.jsonl".into(),
            ],
            2,
            "already exists",
        ),
        (vec!["show".into(), "d".into()], 2, "no job"),
        (vec!["show".into(), "e".into()], 2, "no job"),
        (vec!["show".into(), "f".into()], 2, "no job"),
        (
            vec!["dlq".into(), "retry".into(), "a".into()],
            2,
            "not dead",
        ),
        (
            vec!["dlq".into(), "retry".into(), "nope".into()],
            2,
            "no job",
        ),
        (
            vec![
                "config".into(),
                "set".into(),
                "backoff_base".into(),
                "0".into(),
            ],
            2,
            "backoff_base",
        ),
        (
            vec![
                "config".into(),
                "set".into(),
                "no_such_key".into(),
                "1".into(),
            ],
            2,
            "unknown config key",
        ),
        (
            vec![
                "config".into(),
                "set".into(),
                "poll_interval_ms".into(),
                "300".into(),
            ],
            0,
            "poll_interval_ms = 300",
        ),
        (
            vec!["config".into(), "get".into(), "poll_interval_ms".into()],
            0,
            "300\n",
        ),
        (
            vec!["config".into(), "get".into(), "backoff_base".into()],
            0,
            "2\n",
        ),
        (
            vec!["enqueue".into(), r#"{"command":"  "}"#.into()],
            2,
            "must not be empty",
        ),
        (
            vec!["list".into(), "--state".into(), "pending".into()],
            0,
            "pending",
        ),
    ];
    for (args, code, expect) in &steps {
        let mut results = Vec::new();
        for env in [&direct, &spooled] {
            let dir = env.path().to_string_lossy().into_owned();
            let args: Vec<String> = args.iter().map(|a| a.replace("<DIR>", &dir)).collect();
            results.push(outcome(env, &args));
        }
        let (d, s) = (&results[0], &results[1]);
        assert_eq!(d.0, Some(*code), "direct {args:?}: {d:?}");
        let text = if *code == 0 { &d.1 } else { &d.2 };
        assert!(text.contains(expect), "direct {args:?}: {d:?}");
        if *code != 0 {
            assert!(d.1.is_empty(), "direct {args:?} printed to stdout: {d:?}");
        }
        // `list` prints update times, which differ between the two stores: compare its rows'
        // ids and states only.
        if args[0] == "list" {
            assert_eq!(d.0, s.0, "{args:?}: direct {d:?} spooled {s:?}");
            let rows = |t: &str| {
                t.lines()
                    .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
            };
            assert_eq!(rows(&d.1), rows(&s.1), "{args:?}");
        } else {
            // Only a command working directly can say that no supervisor runs.
            let no_hint = |o: &(Option<i32>, String, String)| {
                let err: String =
                    o.2.lines()
                        .filter(|l| !l.starts_with("hint: no supervisor is running"))
                        .map(|l| format!("{l}\n"))
                        .collect();
                (o.0, o.1.clone(), err)
            };
            assert_eq!(
                no_hint(d),
                no_hint(s),
                "{args:?}: direct and through the spool differ"
            );
        }
    }

    // Nothing of a refused batch was added, and the same three jobs are in both stores.
    for env in [&direct, &spooled] {
        let st = env.status();
        assert_eq!(st["pending"], 3, "{st}");
        assert_eq!(st["total"], 3, "{st}");
        let mut got = ids(&env.list("pending"));
        got.sort();
        assert_eq!(got, ["a", "b", "c"]);
        let cfg = env.ok(&["config", "show", "--json"]);
        let cfg: Value = serde_json::from_str(&cfg).unwrap();
        assert_eq!(cfg["poll_interval_ms"], 300, "{cfg}");
    }
    // Still answered by the same supervisor, which took the new setting without a restart.
    let st = spooled.status();
    assert_eq!(
        st["supervisor_pid"].as_i64(),
        Some(i64::from(sup.pid)),
        "{st}"
    );
    assert!(alive(sup.pid));

    // The spool is private: its directories are 0700, the doorbell 0600, and nothing is left
    // over in it once every request was answered.
    for sub in ["", "tmp", "new", "reply", "rejected"] {
        assert_eq!(mode(&spool(&spooled, sub)), 0o700, "spool/{sub}");
    }
    assert_eq!(mode(&spool(&spooled, "wake")), 0o600);
    // (The supervisor removes a request just after its reply, which the command may already
    // have read: give it that moment.)
    for sub in ["tmp", "new", "reply", "rejected"] {
        let dir = spool(&spooled, sub);
        wait_until(&format!("spool/{sub} empty"), || {
            fs::read_dir(&dir).unwrap().next().is_none()
        });
    }

    sup.stop();
    spooled.verify_store();
    direct.verify_store();
    assert_no_processes(&spooled);
    assert_no_processes(&direct);
}

// ---- 2. read-your-writes ----

#[test]
fn reads_through_the_spool_see_every_acknowledged_write() {
    let env = Env::new();
    let sup = env.start(1);
    // One worker, busy with a long job, so later jobs stay pending for the whole test. (Longer
    // than the 5 s of the brief, so that a loaded machine cannot let it finish mid-test; the
    // guard kills it at the end.)
    assert_eq!(
        env.enqueue(r#"{"id":"slow","command":"echo started; sleep 30"}"#),
        "slow"
    );
    wait_until("the slow job to run", || {
        state_of(&env, "slow") == "processing"
    });

    for i in 0..5 {
        let id = format!("next-{i}");
        assert_eq!(
            env.enqueue(&format!(r#"{{"id":"{id}","command":"true"}}"#)),
            id
        );
        // Immediately visible, in the counts and by id.
        let st = env.status();
        assert_eq!(st["pending"], i + 1, "{st}");
        assert_eq!(st["processing"], 1, "{st}");
        assert_eq!(st["total"], i + 2, "{st}");
        assert_eq!(
            st["supervisor_pid"].as_i64(),
            Some(i64::from(sup.pid)),
            "{st}"
        );
        assert_eq!(st["busy_workers"], 1, "{st}");
        let job = env.show(&id);
        assert_eq!(job["id"], id.as_str());
        assert_eq!(job["state"], "pending");
    }

    // Every read command works while the supervisor runs.
    let pending = ids(&env.list("pending"));
    assert_eq!(pending.len(), 5, "{pending:?}");
    let table = env.ok(&["list"]);
    assert!(
        table.contains("slow") && table.contains("next-4"),
        "{table}"
    );
    let logs = env.ok(&["logs", "slow"]);
    assert!(logs.contains("still running"), "{logs}");
    let never_ran = env.fails(&["logs", "next-0"], 2);
    assert!(never_ran.contains("has not run yet"), "{never_ran}");
    assert!(env.ok(&["dlq", "list"]).contains("No dead jobs"));
    assert_eq!(env.ok(&["dlq", "list", "--json"]).trim(), "[]");
    let cfg = env.ok(&["config", "show"]);
    assert!(
        cfg.contains("max_retries")
            && cfg.contains("backoff_base")
            && cfg.contains("poll_interval_ms"),
        "{cfg}"
    );
    let export = env.file("export.sqlite");
    let said = env.ok(&["export", "--sqlite", export.to_str().unwrap()]);
    assert!(said.contains("Exported 6 jobs"), "{said}");
    let db = rusqlite::Connection::open(&export).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM jobs WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 5);
    // An existing export is refused unless forced, through the spool too.
    env.fails(&["export", "--sqlite", export.to_str().unwrap()], 2);

    assert!(alive(sup.pid));
    drop(sup); // forced stop: kills the slow job
    assert_no_processes(&env);
    env.verify_store();
}

// ---- 3. hand-off when the supervisor stops answering ----

/// Freezes the supervisor, enqueues with a 1 s reply time-out (exit 3, request left in
/// `spool/new/`), then kills the supervisor and waits until it and its workers are gone.
/// Returns the job id and the request id.
fn enqueue_to_a_frozen_supervisor_then_kill_it(env: &Env, pid: i32) -> (String, String) {
    signal(pid, Signal::SIGSTOP);
    let out = run_with(
        env,
        &[
            "enqueue",
            r#"{"id":"handed-over","command":"echo handed over"}"#,
        ],
        &[("QUEUECTL_REPLY_TIMEOUT", "1")],
    );
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout {} stderr {err}",
        stdout(&out)
    );
    assert!(err.contains("queued"), "{err}");
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let request_id = err
        .split("request ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no request id in {err:?}"))
        .to_owned();
    let file = spool(env, "new").join(format!("{request_id}.req"));
    let meta = fs::symlink_metadata(&file)
        .unwrap_or_else(|e| panic!("the request {} is not in spool/new: {e}", file.display()));
    assert!(meta.file_type().is_file());
    assert_eq!(meta.mode() & 0o7777, 0o600, "request file mode");
    // The client cleaned up its doorbell when it gave up.
    let left: Vec<_> = fs::read_dir(spool(env, "reply")).unwrap().collect();
    assert!(left.is_empty(), "spool/reply holds {left:?}");

    signal(pid, Signal::SIGKILL);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGCONT);
    wait_until("the killed supervisor to be gone", || !alive(pid));
    // Its workers see their pipe close and exit.
    assert_no_processes(env);
    // Nobody has applied it yet.
    assert!(file.exists());
    ("handed-over".to_owned(), request_id)
}

#[test]
fn a_request_left_by_a_killed_supervisor_is_applied_by_the_next_command() {
    let env = Env::new();
    let sup = env.start(1);
    let (id, request_id) = enqueue_to_a_frozen_supervisor_then_kill_it(&env, sup.pid);

    // A direct command takes the lock, drains the spool first, then answers.
    let st = env.status();
    assert!(st["supervisor_pid"].is_null(), "{st}");
    assert_eq!(st["pending"], 1, "{st}");
    assert_eq!(st["total"], 1, "{st}");
    let job = env.show(&id);
    assert_eq!(job["state"], "pending");
    assert_eq!(job["command"], "echo handed over");
    assert!(!spool(&env, "new")
        .join(format!("{request_id}.req"))
        .exists());
    // Applied once only: a second drain finds nothing, and the id is not refused as a duplicate
    // of itself.
    assert_eq!(env.count("total"), 1);
    assert!(fs::read_dir(spool(&env, "rejected"))
        .unwrap()
        .next()
        .is_none());

    drop(sup);
    assert_no_processes(&env);
    env.verify_store();
}

#[test]
fn a_request_left_by_a_killed_supervisor_is_run_by_the_next_supervisor() {
    let env = Env::new();
    let sup = env.start(1);
    let (id, request_id) = enqueue_to_a_frozen_supervisor_then_kill_it(&env, sup.pid);

    let next = env.start(1);
    assert_ne!(next.pid, sup.pid);
    assert!(!spool(&env, "new")
        .join(format!("{request_id}.req"))
        .exists());
    wait_until("the handed-over job to complete", || {
        state_of(&env, &id) == "completed"
    });
    let logs = env.ok(&["logs", &id]);
    assert!(logs.contains("handed over"), "{logs}");
    let st = env.status();
    assert_eq!(st["completed"], 1, "{st}");
    assert_eq!(st["total"], 1, "{st}");
    assert_eq!(
        st["supervisor_pid"].as_i64(),
        Some(i64::from(next.pid)),
        "{st}"
    );

    next.stop();
    drop(sup);
    assert_no_processes(&env);
    env.verify_store();
}

#[test]
fn requests_written_while_the_supervisor_stops_are_applied() {
    let env = Env::new();
    let sup = env.start(1);
    let pid = sup.pid;
    assert_eq!(
        env.enqueue(r#"{"id":"running","command":"sleep 2"}"#),
        "running"
    );
    wait_until("the job to run", || {
        state_of(&env, "running") == "processing"
    });

    let log = env.path().join("worker.log");
    let late = std::thread::scope(|s| {
        let stopper = s.spawn(|| env.run(&["worker", "stop", "--timeout", "60"]));
        wait_until("the supervisor to begin stopping", || {
            stopper.is_finished() || fs::read_to_string(&log).is_ok_and(|l| l.contains("stopping"))
        });
        // Enqueue until the stop has returned, covering the whole stopping window: waiting
        // for the running job, answering the last requests, letting go of the lock.
        let mut late = Vec::new();
        loop {
            let stopped = stopper.is_finished();
            let id = format!("late-{}", late.len());
            let started = Instant::now();
            let out = env.run(&["enqueue", &format!(r#"{{"id":"{id}","command":"true"}}"#)]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "enqueue while stopping: {}",
                stderr(&out)
            );
            assert_eq!(stdout(&out).trim(), id);
            assert!(started.elapsed() < ROUND_TRIP);
            late.push(id);
            if stopped {
                break;
            }
        }
        let out = stopper.join().unwrap();
        eprintln!(
            "{} requests written while the supervisor stopped",
            late.len()
        );
        assert!(out.status.success(), "worker stop: {}", stderr(&out));
        assert!(stdout(&out).contains(&format!("Supervisor {pid} stopped")));
        late
    });
    wait_until("the supervisor to exit", || !alive(pid));

    // The running job was let finish; every late job exists and, since a stopping supervisor
    // starts nothing, is still pending.
    assert_eq!(state_of(&env, "running"), "completed");
    let pending: BTreeSet<String> = ids(&env.list("pending")).into_iter().collect();
    let want: BTreeSet<String> = late.iter().cloned().collect();
    assert_eq!(pending, want);
    let st = env.status();
    assert_eq!(st["total"].as_u64(), Some(late.len() as u64 + 1), "{st}");
    assert!(st["supervisor_pid"].is_null());
    assert!(fs::read_dir(spool(&env, "new")).unwrap().next().is_none());

    drop(sup);
    assert_no_processes(&env);
    env.verify_store();
}

// ---- 4. planted files cannot hurt the supervisor ----

/// How a planted file is made, at a staging path outside the spool (it is then renamed into
/// `spool/new/` in one step, so the supervisor never sees it half made).
type Plant = Box<dyn Fn(&Path)>;

/// A valid request body: the refusal must come from the file, not from what it says.
fn enqueue_body(id: &str) -> Vec<u8> {
    let job = NewJob::from_json(
        &format!(r#"{{"id":"{id}","command":"true"}}"#),
        0,
        String::new,
    )
    .unwrap();
    request::encode(&Request::Enqueue { jobs: vec![job] }).unwrap()
}

#[test]
fn bad_request_files_are_set_aside_and_the_supervisor_keeps_running() {
    let env = Env::new();
    let sup = env.start(1);
    let secret = env.file("secret");
    fs::write(&secret, enqueue_body("via-symlink")).unwrap();

    let mut cases: Vec<(&str, Plant, &str)> = Vec::new();
    {
        let secret = secret.clone();
        cases.push((
            "symlink",
            Box::new(move |p| symlink(&secret, p).unwrap()),
            "symbolic link",
        ));
    }
    cases.push((
        "sparse file over 64 MiB",
        Box::new(|p| {
            fs::File::create(p)
                .unwrap()
                .set_len(64 * 1024 * 1024 + 1)
                .unwrap()
        }),
        "over the limit",
    ));
    cases.push((
        "garbage",
        Box::new(|p| fs::write(p, b"\xc1\xff\x00 this is not a request \x93").unwrap()),
        "corrupt request",
    ));
    cases.push((
        "empty file",
        Box::new(|p| fs::write(p, b"").unwrap()),
        "corrupt request",
    ));
    cases.push((
        "fifo",
        Box::new(|p| {
            nix::unistd::mkfifo(
                p,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
            )
            .unwrap()
        }),
        "fifo, not a regular file",
    ));
    cases.push((
        "directory",
        Box::new(|p| fs::create_dir(p).unwrap()),
        "directory, not a regular file",
    ));

    assert_set_aside(&env, sup.pid, &secret, &cases);

    // A name that is not a request is moved aside too, untouched, and not answered.
    fs::write(env.file("staging-notes"), b"notes").unwrap();
    fs::rename(
        env.file("staging-notes"),
        spool(&env, "new").join("notes.txt"),
    )
    .unwrap();
    wake(&env);
    wait_until("notes.txt to be set aside", || {
        spool(&env, "rejected").join("notes.txt").exists()
    });
    assert_eq!(
        fs::read(spool(&env, "rejected").join("notes.txt")).unwrap(),
        b"notes"
    );

    // None of the refused bodies was applied; every good write was.
    for refused in ["via-symlink", "via-other-owner"] {
        env.fails(&["show", refused], 2);
    }
    wait_until("the good jobs to complete", || {
        env.count("completed") == cases.len() as u64
    });
    let st = env.status();
    assert_eq!(st["total"].as_u64(), Some(cases.len() as u64), "{st}");
    assert!(alive(sup.pid));

    sup.stop();
    assert_no_processes(&env);
    env.verify_store();
}

/// Plants each case's file in `spool/new/` and checks that the supervisor `sup_pid` refuses it
/// with an error reply, sets it aside with the reason, and keeps running.
fn assert_set_aside(env: &Env, sup_pid: i32, secret: &Path, cases: &[(&str, Plant, &str)]) {
    let client = Spool::open(env.path()).unwrap();
    for (n, (what, plant, reason)) in cases.iter().enumerate() {
        let id = request_id();
        let name = format!("{id}.req");
        // A client waiting for this request's reply, as `queuectl` itself would.
        let waiter = client.reply_waiter(&id).unwrap();
        let staging = env.file(&format!("staging-{n}"));
        plant(&staging);
        fs::rename(&staging, spool(env, "new").join(&name)).unwrap();
        wake(env);

        // Refused with an error reply, not left unanswered.
        let body = waiter
            .wait(ROUND_TRIP)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: no reply within {ROUND_TRIP:?}"));
        match request::decode::<Reply>(&body).unwrap() {
            Reply::Error {
                kind: ErrorKind::Invalid,
                message,
            } => assert!(
                message.contains("refused") && message.contains(reason),
                "{what}: {message}"
            ),
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
        drop(waiter);

        // Moved aside as it was, with the reason next to it.
        let moved = spool(env, "rejected").join(&name);
        let meta = fs::symlink_metadata(&moved)
            .unwrap_or_else(|e| panic!("{what}: not in spool/rejected: {e}"));
        assert!(
            fs::symlink_metadata(spool(env, "new").join(&name)).is_err(),
            "{what}: still in spool/new"
        );
        let why = fs::read_to_string(spool(env, "rejected").join(format!("{id}.reason")))
            .unwrap_or_else(|e| panic!("{what}: no reason file: {e}"));
        assert!(why.contains(reason), "{what}: {why}");
        match *what {
            "symlink" => {
                assert!(meta.file_type().is_symlink());
                assert_eq!(fs::read_link(&moved).unwrap(), *secret);
                assert_eq!(fs::read(secret).unwrap(), enqueue_body("via-symlink"));
            }
            "fifo" => assert!(meta.file_type().is_fifo()),
            "directory" => assert!(meta.file_type().is_dir()),
            "other owner" => assert_eq!(meta.uid(), 4242),
            "sparse file over 64 MiB" => assert_eq!(meta.len(), 64 * 1024 * 1024 + 1),
            _ => assert!(meta.file_type().is_file()),
        }

        // The supervisor is still there and still answers; a normal write works.
        assert!(alive(sup_pid), "{what}: the supervisor died");
        let st = env.status();
        assert_eq!(
            st["supervisor_pid"].as_i64(),
            Some(i64::from(sup_pid)),
            "{what}: {st}"
        );
        let ok_id = format!("after-{n}");
        assert_eq!(
            env.enqueue(&format!(r#"{{"id":"{ok_id}","command":"true"}}"#)),
            ok_id
        );
    }
}

/// Giving a file away needs root: run as root with `cargo test -- --ignored as_root` (.ci/run
/// does when it runs as root).
#[test]
#[ignore = "needs root to give a request file to another user"]
fn request_file_of_another_owner_is_set_aside_as_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "run this test as root: it gives a file to another user"
    );
    let env = Env::new();
    let sup = env.start(1);
    let secret = env.file("secret");
    let cases: Vec<(&str, Plant, &str)> = vec![(
        "other owner",
        Box::new(|p| {
            fs::write(p, enqueue_body("via-other-owner")).unwrap();
            std::os::unix::fs::chown(p, Some(4242), Some(4242)).unwrap();
            assert_eq!(fs::metadata(p).unwrap().uid(), 4242);
        }),
        "owned by uid 4242",
    )];
    assert_set_aside(&env, sup.pid, &secret, &cases);
    sup.stop();
}

// ---- 5. many concurrent clients ----

#[test]
fn eight_clients_enqueueing_250_jobs_each_while_four_workers_run() {
    const CLIENTS: usize = 8;
    const JOBS: usize = 250;
    let env = Env::new();
    let sup = env.start(4);
    let out_file = env.file("out.txt");
    let out_path = out_file.to_str().unwrap().to_owned();

    let started = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|k| {
                let env = &env;
                let out_path = &out_path;
                s.spawn(move || {
                    let mut failures = Vec::new();
                    for j in 0..JOBS {
                        let id = format!("p{k}-j{j}");
                        let job = serde_json::json!({
                            "id": id,
                            "command": format!("echo {id} >> '{out_path}'"),
                        })
                        .to_string();
                        let out = env.run(&["enqueue", &job]);
                        if !out.status.success() || stdout(&out).trim() != id {
                            failures.push(format!(
                                "{id}: {} stdout {:?} stderr {:?}",
                                out.status,
                                stdout(&out),
                                stderr(&out)
                            ));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let enqueued_in = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} enqueues failed: {failures:#?}",
        failures.len()
    );

    let total = (CLIENTS * JOBS) as u64;
    wait_until("every job to complete", || env.count("completed") == total);
    eprintln!(
        "{total} enqueue processes in {enqueued_in:.1?}; all completed after {:.1?}",
        started.elapsed()
    );
    let st = env.status();
    assert_eq!(st["total"].as_u64(), Some(total), "{st}");

    let want: BTreeSet<String> = (0..CLIENTS)
        .flat_map(|k| (0..JOBS).map(move |j| format!("p{k}-j{j}")))
        .collect();
    let listed = ids(&env.list("completed"));
    assert_eq!(listed.len() as u64, total, "listed {} jobs", listed.len());
    let unique: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(unique.len() as u64, total, "an id is listed twice");
    assert_eq!(unique, want);

    // Every job ran exactly once.
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for line in fs::read_to_string(&out_file).unwrap().lines() {
        *runs.entry(line.to_owned()).or_default() += 1;
    }
    let ran: BTreeSet<String> = runs.keys().cloned().collect();
    assert_eq!(ran, want, "the ids written by the jobs");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "jobs that ran more than once: {twice:?}");

    sup.stop();
    assert_no_processes(&env);
    env.verify_store();
}

// ---- 6. the Node.js queuectl's Quick Start ----

#[test]
fn the_quick_start_in_its_own_order() {
    let env = Env::new();
    let sup = env.start(3);
    assert_eq!(sup.workers().len(), 3);

    assert_eq!(
        env.ok(&["enqueue", r#"{"id":"job1","command":"echo Hello World"}"#])
            .trim(),
        "job1"
    );
    let done_id = env
        .ok(&["enqueue", r#"{"command":"sleep 2 && echo Done"}"#])
        .trim()
        .to_owned();
    assert_eq!(done_id.len(), 26, "a generated id: {done_id:?}");

    let status = env.ok(&["status"]);
    for word in [
        "pending",
        "processing",
        "completed",
        "failed",
        "dead",
        "total",
    ] {
        assert!(status.contains(word), "{status}");
    }
    assert!(
        status.contains("Workers: 3 (") && status.contains(&sup.pid.to_string()),
        "{status}"
    );
    for state in ["pending", "processing", "completed", "failed", "dead"] {
        env.ok(&["list", "--state", state]);
    }
    env.ok(&["dlq", "list"]);

    // A dead job for the DLQ.
    env.ok(&[
        "enqueue",
        r#"{"id":"doomed","command":"exit 7","max_retries":1}"#,
    ]);
    wait_until("the failing job to be dead", || {
        state_of(&env, "doomed") == "dead"
    });
    let dlq = env.ok(&["dlq", "list"]);
    assert!(dlq.contains("doomed"), "{dlq}");
    let retried = env.ok(&["dlq", "retry", "doomed"]);
    assert!(
        retried.contains("doomed") && retried.contains("pending"),
        "{retried}"
    );

    assert_eq!(
        env.ok(&["config", "set", "max_retries", "3"]).trim(),
        "max_retries = 3"
    );
    assert_eq!(env.ok(&["config", "get", "backoff_base"]).trim(), "2");
    let cfg = env.ok(&["config", "show"]);
    let row = cfg
        .lines()
        .find(|l| l.contains("max_retries"))
        .unwrap_or_else(|| panic!("{cfg}"));
    assert!(row.split_whitespace().any(|w| w == "3"), "{cfg}");

    wait_until("job1 and the sleep to complete", || {
        state_of(&env, "job1") == "completed" && state_of(&env, &done_id) == "completed"
    });
    assert!(env.ok(&["logs", "job1"]).contains("Hello World"));
    assert!(env.ok(&["logs", &done_id]).contains("Done"));
    // The retried job fails once more and, with max_retries 1 of its own, is dead again.
    wait_until("the retried job to be dead again", || {
        let job = env.show("doomed");
        job["state"] == "dead" && job["runs"] == 2
    });
    let st = env.status();
    assert_eq!(
        (
            st["completed"].as_u64(),
            st["dead"].as_u64(),
            st["total"].as_u64()
        ),
        (Some(2), Some(1), Some(3)),
        "{st}"
    );
    let status = env.ok(&["status"]);
    let count_of = |state: &str| {
        status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(state))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_owned)
    };
    assert_eq!(count_of("completed").as_deref(), Some("2"), "{status}");
    assert_eq!(count_of("dead").as_deref(), Some("1"), "{status}");

    let stopped = env.ok(&["worker", "stop"]);
    assert!(
        stopped.contains(&format!("Supervisor {} stopped", sup.pid)),
        "{stopped}"
    );
    wait_until("the supervisor to exit", || !alive(sup.pid));
    drop(sup);
    assert_no_processes(&env);
    env.verify_store();
}

/// A bulk enqueue through a running supervisor: the jobs go through a file in the spool, not
/// the request, and are stored all or none; a refused file changes nothing and leaves nothing.
#[test]
fn bulk_enqueue_through_a_supervisor_is_all_or_nothing() {
    let env = Env::new();
    env.enqueue(r#"{"id":"taken","command":"true","delay":3600}"#);
    let sup = env.start(1);
    let lines = 25_000; // many chunks of the store's bulk enqueue
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&format!(
            "{{\"id\":\"bulk-{i:05}\",\"command\":\"true\",\"delay\":3600}}\n"
        ));
    }
    // Refused at the very end (an id already stored): nothing of the file is stored.
    let bad = env.file("bad.jsonl");
    fs::write(
        &bad,
        format!("{text}{{\"id\":\"taken\",\"command\":\"true\"}}\n"),
    )
    .unwrap();
    let out = env.fails(&["enqueue", "--file", bad.to_str().unwrap()], 2);
    assert!(out.contains("`taken`"), "{out}");
    assert_eq!(env.status()["total"], 1);
    assert_eq!(fs::read_dir(spool(&env, "bulk")).unwrap().count(), 0);
    // The good file, with --json: every id, in order.
    let good = env.file("good.jsonl");
    fs::write(&good, &text).unwrap();
    let out = env.ok(&["enqueue", "--file", good.to_str().unwrap(), "--json"]);
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(out["enqueued"], lines as u64);
    let ids: Vec<String> = serde_json::from_value(out["ids"].clone()).unwrap();
    assert_eq!(ids.len(), lines);
    assert_eq!(ids[0], "bulk-00000");
    assert_eq!(ids[lines - 1], format!("bulk-{:05}", lines - 1));
    let st = env.status();
    assert_eq!(st["pending"], lines as u64 + 1);
    assert_eq!(st["supervisor_pid"], sup.pid);
    assert_eq!(fs::read_dir(spool(&env, "bulk")).unwrap().count(), 0);
    sup.stop();
    env.verify_store();
}

/// A bulk enqueue through a supervisor is stored beside its event loop: a job enqueued after
/// it runs and completes while the bulk is still being stored.
#[test]
fn a_bulk_enqueue_through_a_supervisor_does_not_hold_it_up() {
    let env = Env::new();
    let sup = env.start(1);
    let lines = 60_000;
    let text: String = (0..lines)
        .map(|_| "{\"command\":\"true\",\"delay\":3600}\n")
        .collect();
    let file = env.file("many.jsonl");
    fs::write(&file, text).unwrap();
    std::thread::scope(|scope| {
        // However slow the machine: this test is about what runs meanwhile, not how long.
        let bulk = scope.spawn(|| {
            env.cmd()
                .args(["enqueue", "--file", file.to_str().unwrap()])
                .env("QUEUECTL_REPLY_TIMEOUT", "600")
                .timeout(Duration::from_secs(600))
                .output()
                .expect("run queuectl")
        });
        wait_until("the bulk enqueue to reach the supervisor", || {
            fs::read_dir(spool(&env, "new")).is_ok_and(|mut d| d.next().is_some())
        });
        let id = env.enqueue(r#"{"command":"true"}"#);
        wait_until("the later job to complete", || {
            env.show(&id)["state"] == "completed"
        });
        assert!(
            !bulk.is_finished(),
            "the bulk enqueue was over before the later job ran"
        );
        let out = bulk.join().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    });
    assert_eq!(env.status()["pending"], lines as u64);
    assert_eq!(env.status()["completed"], 1);
    sup.stop();
    env.verify_store();
}
