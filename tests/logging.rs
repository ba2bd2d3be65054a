//! Logging in every process: a command that owns the store for a moment (and recovers it) and
//! a worker process append to the data directory's `worker.log`, in the supervisor's line format
//! `[2025-11-09T08:21:13.456Z] [LEVEL] message`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{alive, kill, log, wait_until, Env};

/// Whether `line` is `[<RFC 3339 time in UTC, milliseconds>] [<LEVEL>] <message>`.
fn well_formed(line: &str) -> bool {
    let Some((time, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] [")) else {
        return false;
    };
    let Some((level, message)) = rest.split_once("] ") else {
        return false;
    };
    time.len() == 24
        && time.ends_with('Z')
        && chrono::DateTime::parse_from_rfc3339(time).is_ok()
        && ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level)
        && !message.is_empty()
}

#[test]
fn line_format_check_rejects_other_lines() {
    assert!(well_formed(
        "[2025-11-09T08:21:13.456Z] [INFO] Job a completed"
    ));
    assert!(!well_formed(
        "2025-11-09T08:21:13.456Z INFO Job a completed"
    ));
    assert!(!well_formed("[2025-11-09 08:21:13] [INFO] Job a completed"));
    assert!(!well_formed(
        "[2025-11-09T08:21:13.456Z] [LOUD] Job a completed"
    ));
}

#[test]
fn a_command_that_recovers_the_store_logs_what_it_did() {
    let env = Env::new();
    let started = env.file("started");
    let job = serde_json::json!({
        "id": "long",
        "command": format!("touch '{}'; sleep 30", started.display()),
        "max_retries": 3,
    });
    env.enqueue(&job.to_string());
    let sup = env.start(1);
    wait_until("the job runs", || started.exists());
    // An acknowledged write is flushed before its reply, and the reservation with it.
    env.ok(&["config", "set", "max_retries", "3"]);
    kill(sup.pid, 9);
    wait_until("the supervisor is gone", || !alive(sup.pid));
    let before = log(&env);
    assert!(!before.contains("interrupted"), "{before}");
    // A plain `status` owns the store: it finds the run interrupted and applies the retry rule.
    let st = env.status();
    assert_eq!(st["failed"], 1, "{st}");
    let after = log(&env);
    let added = &after[before.len()..];
    let line = added
        .lines()
        .find(|l| l.contains("Job long was interrupted by a stopped supervisor"))
        .unwrap_or_else(|| panic!("no recovery line in {added:?}"));
    assert!(well_formed(line), "{line}");
    assert!(
        line.contains("] [WARN] ") && line.contains("(attempt 1/3)"),
        "{line}"
    );
}

#[test]
fn a_worker_process_logs_why_it_stopped() {
    let env = Env::new();
    env.ok(&["config", "set", "max_retries", "3"]); // creates the data directory
    let mut child = Command::new(env!("CARGO_BIN_EXE_queuectl"))
        .arg("--data-dir")
        .arg(env.path())
        .arg("worker-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A frame of two bytes that decode to nothing.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&[0, 0, 0, 2, 0xc1, 0xc1]).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(!status.success());
    let text = log(&env);
    let line = text
        .lines()
        .find(|l| l.contains("bad frame from the supervisor"))
        .unwrap_or_else(|| panic!("no line of the worker in {text:?}"));
    assert!(well_formed(line), "{line}");
    assert!(line.contains("] [ERROR] worker "), "{line}");
}
