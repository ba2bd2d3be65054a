//! The commands that need no supervisor: enqueue, status, list, show, dlq, config; and bad input.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, Utc};
use common::{stderr, wait_until, Env, DEADLINE};
use serde_json::{json, Value};

/// The keys of a job in `list --json` and `show --json`, in order.
const JOB_KEYS: [&str; 16] = [
    "id",
    "command",
    "state",
    "attempts",
    "max_retries",
    "created_at",
    "updated_at",
    "available_at",
    "locked_by",
    "locked_at",
    "last_error",
    "priority",
    "timeout",
    "runs",
    "cwd",
    "env",
];

/// `2025-11-09T08:21:13.456Z`: what `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$` matches.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let pattern = b"dddd-dd-ddTdd:dd:dd.dddZ";
    b.len() == pattern.len()
        && b.iter().zip(pattern).all(|(c, p)| match p {
            b'd' => c.is_ascii_digit(),
            p => c == p,
        })
}

fn parse_time(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("a timestamp, got {v}"));
    assert!(is_timestamp(s), "timestamp format: {s}");
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.chars()
            .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c)))
}

/// Asserts the failure of bad input: exit status 2, one line on stderr that starts with
/// `error:` and contains `expect`, no panic.
fn assert_refused(args: &[&str], out: &Output, expect: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: expected exit 2; stdout {} stderr {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.starts_with("error: "), "{args:?}: stderr {err:?}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: one line: {err:?}"
    );
    assert!(
        err.contains(expect),
        "{args:?}: {err:?} should mention {expect:?}"
    );
}

/// Everything a bad command must leave alone: every job, the counts and the config.
fn snapshot(env: &Env) -> (Value, Value, Value) {
    let st = env.status();
    let jobs: Value = serde_json::from_str(&env.ok(&["list", "--json"])).expect("list JSON");
    let cfg: Value = serde_json::from_str(&env.ok(&["config", "show", "--json"])).expect("config");
    (st, jobs, cfg)
}

/// Runs bad input and checks it was refused and changed nothing.
fn refused(env: &Env, args: &[&str], expect: &str) {
    let before = snapshot(env);
    let out = env.run(args);
    assert_refused(args, &out, expect);
    assert_eq!(snapshot(env), before, "{args:?} changed the store");
}

/// Many refusals in a row: each is checked against the counts (or, for `config`, the
/// settings) taken before the first; [`Refusals::finish`] compares everything.
struct Refusals<'a> {
    env: &'a Env,
    before: (Value, Value, Value),
}

impl<'a> Refusals<'a> {
    fn new(env: &'a Env) -> Self {
        Refusals {
            env,
            before: snapshot(env),
        }
    }

    fn check(&self, args: &[&str], expect: &str) {
        let out = self.env.run(args);
        assert_refused(args, &out, expect);
        if args[0] == "config" {
            let cfg: Value =
                serde_json::from_str(&self.env.ok(&["config", "show", "--json"])).unwrap();
            assert_eq!(cfg, self.before.2, "{args:?} changed the config");
        } else {
            assert_eq!(
                self.env.status(),
                self.before.0,
                "{args:?} changed the counts"
            );
        }
    }

    fn finish(self) {
        assert_eq!(snapshot(self.env), self.before, "the store changed");
    }
}

/// Writes a file in the test's directory and returns its path as a string.
fn write_file(env: &Env, name: &str, text: &str) -> String {
    let path = env.file(name);
    std::fs::write(&path, text).expect("write file");
    path.to_str().expect("utf-8 path").to_string()
}

/// The binary with no `--data-dir` and the given environment (nothing inherited that picks a
/// data directory).
fn bare_cmd(vars: &[(&str, &Path)]) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("queuectl").expect("binary");
    c.env_remove("QUEUECTL_HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("RUST_LOG");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.timeout(DEADLINE);
    c
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn ids(jobs: &Value) -> Vec<&str> {
    jobs.as_array()
        .expect("array")
        .iter()
        .map(|j| j["id"].as_str().expect("id"))
        .collect()
}

#[test]
fn enqueue_then_status_counts_it() {
    let env = Env::new();
    assert_eq!(
        env.enqueue(r#"{"id":"job1","command":"echo Hello World"}"#),
        "job1"
    );
    assert_eq!(env.count("pending"), 1);
    let st = env.status();
    assert_eq!(st["workers"], 0);
    assert!(st["supervisor_pid"].is_null());
    env.verify_store();
}

#[test]
fn enqueue_prints_the_given_id_or_a_new_ulid() {
    let env = Env::new();
    assert_eq!(
        env.ok(&["enqueue", r#"{"id":"given","command":"true"}"#]),
        "given\n"
    );
    let a = env.enqueue(r#"{"command":"true"}"#);
    let b = env.enqueue(r#"{"command":"true"}"#);
    assert!(is_ulid(&a), "a ULID: {a:?}");
    assert!(is_ulid(&b), "a ULID: {b:?}");
    assert_ne!(a, b);
    for id in ["given", a.as_str(), b.as_str()] {
        assert_eq!(env.show(id)["id"], id);
    }
    assert_eq!(env.count("pending"), 3);
}

#[test]
fn enqueue_fields_show_up_in_show_json() {
    let env = Env::new();
    let id = env.enqueue(
        r#"{"id":"all","command":"echo 'all fields'","max_retries":7,"priority":-4,"timeout":2.5,"delay":3600}"#,
    );
    assert_eq!(id, "all");
    let j = env.show("all");
    assert_eq!(j["command"], "echo 'all fields'");
    assert_eq!(j["state"], "pending");
    assert_eq!(j["attempts"], 0);
    assert_eq!(j["runs"], 0);
    assert_eq!(j["max_retries"], 7);
    assert_eq!(j["priority"], -4);
    assert_eq!(j["timeout"], 2.5);
    let created = parse_time(&j["created_at"]);
    assert_eq!(j["updated_at"], j["created_at"]);
    let available = parse_time(&j["available_at"]);
    let delay = (available - created).num_milliseconds();
    assert!(
        (3_599_000..=3_601_000).contains(&delay),
        "delay 3600 s: available_at {available} created_at {created}"
    );
    assert!(available > Utc::now());

    // run_at, in UTC and with an offset; the stored time is UTC with milliseconds.
    env.enqueue(r#"{"id":"at","command":"true","run_at":"2099-01-02T03:04:05Z"}"#);
    assert_eq!(env.show("at")["available_at"], "2099-01-02T03:04:05.000Z");
    env.enqueue(r#"{"id":"at2","command":"true","run_at":"2099-01-02T04:04:05.25+01:00"}"#);
    assert_eq!(env.show("at2")["available_at"], "2099-01-02T03:04:05.250Z");

    // Defaults: priority 0, no timeout, may run now, nothing locked.
    env.enqueue(r#"{"id":"plain","command":"true"}"#);
    let j = env.show("plain");
    assert_eq!(j["priority"], 0);
    assert_eq!(j["max_retries"], 3);
    assert!(j["timeout"].is_null());
    assert!(parse_time(&j["available_at"]) <= Utc::now());
    for k in ["locked_by", "locked_at", "last_error"] {
        assert!(j[k].is_null(), "{k}: {}", j[k]);
    }
    // A delay of 0 is allowed.
    env.enqueue(r#"{"id":"zero","command":"true","delay":0}"#);
    assert_eq!(env.count("pending"), 5);
    env.verify_store();
}

#[test]
fn max_retries_default_comes_from_the_config_at_enqueue() {
    let env = Env::new();
    env.enqueue(r#"{"id":"before","command":"true"}"#);
    assert_eq!(
        env.ok(&["config", "set", "max_retries", "5"]),
        "max_retries = 5\n"
    );
    env.enqueue(r#"{"id":"after","command":"true"}"#);
    env.enqueue(r#"{"id":"explicit","command":"true","max_retries":0}"#);
    assert_eq!(env.show("before")["max_retries"], 3);
    assert_eq!(env.show("after")["max_retries"], 5);
    assert_eq!(env.show("explicit")["max_retries"], 0);
}

#[test]
fn enqueue_file_reads_json_lines_and_skips_blank_lines() {
    let env = Env::new();
    let path = write_file(
        &env,
        "jobs.jsonl",
        "{\"id\":\"f1\",\"command\":\"echo 1\"}\n\n   \n{\"command\":\"echo 2\",\"priority\":3}\r\n\
         {\"id\":\"f3\",\"command\":\"echo 3\",\"delay\":60}",
    );
    assert_eq!(env.ok(&["enqueue", "--file", &path]), "Enqueued 3 jobs\n");
    assert_eq!(env.count("pending"), 3);
    assert_eq!(env.show("f1")["command"], "echo 1");
    assert!(parse_time(&env.show("f3")["available_at"]) > Utc::now());
    let jobs = env.list("pending");
    let second: Vec<&Value> = jobs.iter().filter(|j| j["command"] == "echo 2").collect();
    assert_eq!(second.len(), 1);
    assert!(is_ulid(second[0]["id"].as_str().unwrap()));
    assert_eq!(second[0]["priority"], 3);

    // One line: singular.
    let one = write_file(&env, "one.jsonl", "{\"id\":\"f4\",\"command\":\"true\"}\n");
    assert_eq!(env.ok(&["enqueue", "--file", &one]), "Enqueued 1 job\n");

    // `-` is standard input.
    let out = env
        .cmd()
        .args(["enqueue", "--file", "-"])
        .write_stdin(
            "{\"id\":\"s1\",\"command\":\"true\"}\n\n{\"id\":\"s2\",\"command\":\"true\"}\n",
        )
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Enqueued 2 jobs\n");
    assert_eq!(env.show("s2")["state"], "pending");
    assert_eq!(env.count("pending"), 6);

    // An empty file enqueues nothing and says so.
    let empty = write_file(&env, "empty.jsonl", "\n\n");
    assert_eq!(env.ok(&["enqueue", "--file", &empty]), "Enqueued 0 jobs\n");
    assert_eq!(env.count("pending"), 6);
    env.verify_store();
}

#[test]
fn enqueue_file_is_all_or_nothing() {
    let env = Env::new();
    env.enqueue(r#"{"id":"taken","command":"true"}"#);

    let bad_line = write_file(
        &env,
        "bad.jsonl",
        "{\"id\":\"b1\",\"command\":\"true\"}\n{\"id\":\"b2\",\"command\":\"true\"}\n{\"id\":\"b3\",\"command\":\n{\"id\":\"b4\",\"command\":\"true\"}\n",
    );
    refused(&env, &["enqueue", "--file", &bad_line], "line 3");
    let out = env.run(&["enqueue", "--file", &bad_line]);
    assert!(
        stderr(&out).contains(&bad_line),
        "names the file: {}",
        stderr(&out)
    );

    // Blank lines count in the line numbers.
    let bad_after_blank = write_file(
        &env,
        "bad2.jsonl",
        "{\"command\":\"true\"}\n\n{\"command\":\"\"}\n",
    );
    refused(&env, &["enqueue", "--file", &bad_after_blank], "line 3");

    let dup_in_batch = write_file(
        &env,
        "dup.jsonl",
        "{\"id\":\"d1\",\"command\":\"true\"}\n{\"id\":\"d2\",\"command\":\"true\"}\n{\"id\":\"d1\",\"command\":\"true\"}\n",
    );
    refused(&env, &["enqueue", "--file", &dup_in_batch], "`d1`");

    let dup_in_store = write_file(
        &env,
        "dup-store.jsonl",
        "{\"id\":\"new1\",\"command\":\"true\"}\n{\"id\":\"taken\",\"command\":\"false\"}\n{\"id\":\"new2\",\"command\":\"true\"}\n",
    );
    refused(&env, &["enqueue", "--file", &dup_in_store], "`taken`");
    let out = env.run(&["enqueue", "--file", &dup_in_store]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));

    // Standard input too.
    let out = env
        .cmd()
        .args(["enqueue", "--file", "-"])
        .write_stdin("{\"id\":\"x1\",\"command\":\"true\"}\n{\"id\":\"x2\",\"command\":\"true\",\"colour\":1}\n")
        .output()
        .expect("run");
    assert_refused(&["enqueue", "--file", "-"], &out, "line 2");

    assert_eq!(
        ids(&serde_json::from_str(&env.ok(&["list", "--json"])).unwrap()),
        ["taken"]
    );
    assert_eq!(env.show("taken")["command"], "true");
    env.verify_store();
}

#[test]
fn enqueue_file_with_100000_lines() {
    let env = Env::new();
    let mut text = String::with_capacity(3_000_000);
    for i in 0..100_000 {
        if i % 1000 == 0 {
            text.push_str(&format!(
                "{{\"id\":\"big-{i}\",\"command\":\"echo {i}\"}}\n"
            ));
        } else {
            text.push_str("{\"command\":\"true\"}\n");
        }
    }
    let path = write_file(&env, "big.jsonl", &text);
    assert_eq!(
        env.ok_within(&["enqueue", "--file", &path], common::HEAVY_DEADLINE),
        "Enqueued 100000 jobs\n"
    );
    let st = env.status();
    assert_eq!(st["pending"], 100_000);
    assert_eq!(st["total"], 100_000);
    assert_eq!(env.show("big-99000")["command"], "echo 99000");
}

#[test]
fn status_table_and_json() {
    let env = Env::new();
    env.enqueue(r#"{"command":"true"}"#);
    env.enqueue(r#"{"command":"true","delay":100}"#);
    let table = env.ok(&["status"]);
    for state in ["pending", "processing", "completed", "failed", "dead"] {
        assert!(
            table.contains(state),
            "status table mentions {state}: {table}"
        );
    }
    let pending_row = table.lines().find(|l| l.contains("pending")).unwrap();
    assert_eq!(
        pending_row.split_whitespace().collect::<Vec<_>>(),
        ["pending", "2"]
    );
    assert!(table.contains("no supervisor running"), "{table}");

    let st = env.status();
    for (state, n) in [
        ("pending", 2),
        ("processing", 0),
        ("completed", 0),
        ("failed", 0),
        ("dead", 0),
    ] {
        assert!(st[state].is_u64(), "{state} is a number: {st}");
        assert_eq!(st[state], n, "{state}: {st}");
    }
    assert_eq!(st["workers"], 0);
    assert!(st["supervisor_pid"].is_null(), "{st}");
}

#[test]
fn list_json_has_the_documented_fields() {
    let env = Env::new();
    for id in ["c", "a", "e", "b", "d"] {
        env.enqueue(&format!(r#"{{"id":"{id}","command":"echo {id}"}}"#));
    }
    env.enqueue(r#"{"id":"t","command":"true","timeout":1.5,"priority":2}"#);
    let jobs = env.list("pending");
    assert_eq!(
        ids(&Value::Array(jobs.clone())),
        ["a", "b", "c", "d", "e", "t"]
    );
    for j in &jobs {
        let obj = j.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut want = JOB_KEYS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want, "keys of {j}");
        for k in ["created_at", "updated_at", "available_at"] {
            assert!(is_timestamp(j[k].as_str().unwrap_or("")), "{k}: {j}");
        }
        for k in ["locked_by", "locked_at", "last_error"] {
            assert!(j[k].is_null(), "{k} unset: {j}");
        }
        assert_eq!(j["state"], "pending");
        assert_eq!(j["attempts"], 0);
        assert_eq!(j["max_retries"], 3);
        assert_eq!(j["runs"], 0);
        // `show --json` is the same object.
        assert_eq!(&env.show(j["id"].as_str().unwrap()), j);
    }
    let t = jobs.iter().find(|j| j["id"] == "t").unwrap();
    assert_eq!(t["timeout"], 1.5);
    assert_eq!(t["priority"], 2);
    assert!(jobs
        .iter()
        .filter(|j| j["id"] != "t")
        .all(|j| j["timeout"].is_null()));
}

#[test]
fn list_limit_offset_and_states() {
    let env = Env::new();
    for id in ["a", "b", "c", "d", "e"] {
        env.enqueue(&format!(r#"{{"id":"{id}","command":"echo {id}"}}"#));
    }
    let page = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["list"];
        all.extend_from_slice(args);
        all.push("--json");
        let v: Value = serde_json::from_str(&env.ok(&all)).expect("list JSON");
        ids(&v).into_iter().map(String::from).collect()
    };
    assert_eq!(page(&["--state", "pending", "--limit", "2"]), ["a", "b"]);
    assert_eq!(
        page(&["--state", "pending", "--limit", "2", "--offset", "1"]),
        ["b", "c"]
    );
    assert_eq!(page(&["--state", "pending", "--offset", "3"]), ["d", "e"]);
    assert_eq!(
        page(&["--state", "pending", "--offset", "10"]),
        Vec::<String>::new()
    );
    assert_eq!(
        page(&["--state", "pending", "--limit", "0"]),
        Vec::<String>::new()
    );
    assert_eq!(page(&[]), ["a", "b", "c", "d", "e"]);
    assert_eq!(page(&["--limit", "1", "--offset", "4"]), ["e"]);
    for state in ["processing", "completed", "failed", "dead"] {
        assert_eq!(page(&["--state", state]), Vec::<String>::new(), "{state}");
        assert_eq!(
            env.ok(&["list", "--state", state]),
            format!("No {state} jobs.\n")
        );
    }

    // The table: a header and one row per job.
    let table = env.ok(&["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("ID") && lines[0].contains("STATE"),
        "{table}"
    );
    assert_eq!(lines.len(), 6, "{table}");
    for id in ["a", "b", "c", "d", "e"] {
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().next() == Some(id)
                    && l.contains(&format!("echo {id}"))),
            "row for {id}: {table}"
        );
    }
    let table = env.ok(&[
        "list", "--state", "pending", "--limit", "2", "--offset", "3",
    ]);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("echo d") && table.contains("echo e") && !table.contains("echo c"));

    let empty = Env::new();
    assert_eq!(empty.ok(&["list"]), "No jobs.\n");
    assert_eq!(empty.ok(&["list", "--json"]).trim(), "[]");
}

#[test]
fn show_prints_every_field() {
    let env = Env::new();
    env.enqueue(r#"{"id":"s","command":"echo shown","priority":9,"timeout":3}"#);
    let text = env.ok(&["show", "s"]);
    let fields: Vec<(&str, &str)> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("key value");
            (k, v.trim())
        })
        .collect();
    let mut keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    // `attempts` says it all in one line (`runs 0, failures 0 of 3 allowed`).
    let mut want: Vec<&str> = JOB_KEYS
        .into_iter()
        .filter(|k| !["max_retries", "runs"].contains(k))
        .collect();
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want, "{text}");
    let get = |k: &str| fields.iter().find(|(key, _)| *key == k).unwrap().1;
    assert_eq!(get("id"), "s");
    assert_eq!(get("command"), "echo shown");
    assert_eq!(get("state"), "pending");
    assert_eq!(get("priority"), "9");
    assert_eq!(get("timeout"), "3s");
    assert_eq!(get("attempts"), "runs 0, failures 0 of 3 allowed");
    assert_eq!(get("locked_by"), "-");
    assert!(is_timestamp(get("created_at")), "{text}");

    let j = env.show("s");
    assert_eq!(j["timeout"], 3.0);
    assert_eq!(j["priority"], 9);
}

#[test]
fn dlq_is_empty_and_retry_refuses_jobs_that_are_not_dead() {
    let env = Env::new();
    assert_eq!(env.ok(&["dlq", "list", "--json"]).trim(), "[]");
    assert_eq!(env.ok(&["dlq", "list"]), "No dead jobs.\n");
    env.enqueue(r#"{"id":"p","command":"true"}"#);
    assert_eq!(env.ok(&["dlq", "list", "--json"]).trim(), "[]");
    refused(&env, &["dlq", "retry", "p"], "pending");
    refused(&env, &["dlq", "retry", "nope"], "no job with id `nope`");
    assert_eq!(env.show("p")["state"], "pending");
    env.verify_store();
}

#[test]
fn dead_job_shows_in_the_dlq_and_retry_moves_it_to_pending() {
    let env = Env::new();
    env.enqueue(r#"{"id":"d","command":"echo out; exit 1","max_retries":1}"#);
    env.enqueue(r#"{"id":"later","command":"true","delay":3600}"#);
    let guard = env.start(1);
    wait_until("job d dead", || env.show("d")["state"] == "dead");
    guard.stop();

    let st = env.status();
    assert!(st["supervisor_pid"].is_null(), "{st}");
    assert_eq!(
        (st["dead"].as_u64(), st["pending"].as_u64()),
        (Some(1), Some(1))
    );

    let dead: Value = serde_json::from_str(&env.ok(&["dlq", "list", "--json"])).unwrap();
    assert_eq!(ids(&dead), ["d"]);
    let d = &dead[0];
    assert_eq!(d["state"], "dead");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["runs"], 1);
    assert!(d["available_at"].is_null(), "{d}");
    assert!(d["locked_by"].is_null() && d["locked_at"].is_null(), "{d}");
    assert!(
        d["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("exit code 1"),
        "{d}"
    );
    assert_eq!(&env.show("d"), d);
    let table = env.ok(&["dlq", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().next() == Some("d")),
        "{table}"
    );
    let logs = env.ok(&["logs", "d"]);
    let after_stdout = logs.lines().skip_while(|l| *l != "--- stdout ---").nth(1);
    assert_eq!(after_stdout, Some("out"), "{logs}");

    // `list` without --state shows both, by id whatever their state.
    let all: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(ids(&all), ["d", "later"]);

    assert_eq!(
        env.ok(&["dlq", "retry", "d"]),
        "Job d moved from the DLQ to pending\n"
    );
    let j = env.show("d");
    assert_eq!(j["state"], "pending");
    assert_eq!(j["attempts"], 0);
    assert!(parse_time(&j["available_at"]) <= Utc::now());
    assert_eq!(env.ok(&["dlq", "list", "--json"]).trim(), "[]");
    let st = env.status();
    assert_eq!(
        (st["dead"].as_u64(), st["pending"].as_u64()),
        (Some(0), Some(2))
    );

    // Once is enough: it is no longer dead.
    refused(&env, &["dlq", "retry", "d"], "pending");
    env.verify_store();
}

#[test]
fn config_show_get_set() {
    let env = Env::new();
    let table = env.ok(&["config", "show"]);
    for (k, v) in [
        ("max_retries", "3"),
        ("backoff_base", "2"),
        ("poll_interval_ms", "500"),
        ("retention_completed", "7days"),
        ("retention_dead", "keep"),
        ("lease_ms", "30000"),
    ] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(k))
            .unwrap_or_else(|| panic!("{k} in {table}"));
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), [k, v]);
    }
    let cfg: Value = serde_json::from_str(&env.ok(&["config", "show", "--json"])).unwrap();
    assert_eq!(
        cfg,
        json!({"max_retries": 3, "backoff_base": 2, "poll_interval_ms": 500,
               "retention_completed": 604_800_000u64, "retention_dead": 0,
               "lease_ms": 30_000})
    );
    assert_eq!(env.ok(&["config", "get", "max_retries"]), "3\n");
    assert_eq!(env.ok(&["config", "get", "backoff_base"]), "2\n");
    assert_eq!(env.ok(&["config", "get", "poll_interval_ms"]), "500\n");

    assert_eq!(
        env.ok(&["config", "set", "max_retries", "0"]),
        "max_retries = 0\n"
    );
    assert_eq!(
        env.ok(&["config", "set", "backoff_base", "7"]),
        "backoff_base = 7\n"
    );
    assert_eq!(
        env.ok(&["config", "set", "poll_interval_ms", "250"]),
        "poll_interval_ms = 250\n"
    );
    assert_eq!(
        env.ok(&["config", "set", "lease_ms", "45s"]),
        "lease_ms = 45000\n"
    );
    assert_eq!(env.ok(&["config", "get", "lease_ms"]), "45000\n");
    env.ok(&["config", "set", "lease_ms", "30000"]);
    assert_eq!(env.ok(&["config", "get", "max_retries"]), "0\n");
    assert_eq!(env.ok(&["config", "get", "backoff_base"]), "7\n");
    assert_eq!(env.ok(&["config", "get", "poll_interval_ms"]), "250\n");
    let cfg: Value = serde_json::from_str(&env.ok(&["config", "show", "--json"])).unwrap();
    assert_eq!(
        cfg,
        json!({"max_retries": 0, "backoff_base": 7, "poll_interval_ms": 250,
               "retention_completed": 604_800_000u64, "retention_dead": 0,
               "lease_ms": 30_000})
    );
    // The setting persists: a job enqueued now takes it.
    env.enqueue(r#"{"id":"j","command":"true"}"#);
    assert_eq!(env.show("j")["max_retries"], 0);
}

#[test]
fn bad_job_json_is_refused_and_changes_nothing() {
    let env = Env::new();
    env.enqueue(r#"{"id":"existing","command":"true"}"#);
    let r = Refusals::new(&env);
    let cases: &[(&str, &str)] = &[
        (r#"{"command":"#, "invalid job JSON"),
        ("not json", "invalid job JSON"),
        ("", "invalid job JSON"),
        (r#"[{"command":"true"}]"#, "JSON object"),
        // serde would otherwise read a struct from an array of its fields.
        (r#"["id1","true",null,null,null,null,null]"#, "JSON object"),
        (r#""echo hi""#, "JSON object"),
        ("5", "JSON object"),
        ("null", "JSON object"),
        ("{}", "missing field `command`"),
        (r#"{"id":"x"}"#, "missing field `command`"),
        (r#"{"command":""}"#, "`command` must not be empty"),
        (r#"{"command":"   "}"#, "`command` must not be empty"),
        (r#"{"command":"\t\n"}"#, "`command` must not be empty"),
        (r#"{"command":"a\u0000b"}"#, "NUL"),
        (r#"{"command":5}"#, "`command` must be a string"),
        (r#"{"command":null}"#, "`command` must be a string"),
        (
            r#"{"command":"x","max_retries":"x"}"#,
            "`max_retries` must be a whole number >= 0",
        ),
        (
            r#"{"command":"x","max_retries":-1}"#,
            "`max_retries` must be a whole number >= 0",
        ),
        (
            r#"{"command":"x","max_retries":1.5}"#,
            "`max_retries` must be a whole number >= 0",
        ),
        (
            r#"{"command":"x","priority":1.5}"#,
            "`priority` must be a whole number",
        ),
        (
            r#"{"command":"x","priority":"high"}"#,
            "`priority` must be a whole number",
        ),
        (
            r#"{"command":"x","timeout":0}"#,
            "`timeout` must be more than 0 seconds",
        ),
        (
            r#"{"command":"x","timeout":-2}"#,
            "`timeout` must be a number of seconds or a duration like 5m",
        ),
        (
            r#"{"command":"x","timeout":"5 parsecs"}"#,
            "`timeout` must be a number of seconds or a duration like 5m",
        ),
        (
            r#"{"command":"x","delay":-1}"#,
            "`delay` must be a number of seconds or a duration like 5m",
        ),
        (
            r#"{"command":"x","delay":"soon"}"#,
            "`delay` must be a number of seconds or a duration like 5m",
        ),
        (
            r#"{"command":"x","colour":"red"}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"command":"x","delay":1,"run_at":"2099-01-01T00:00:00Z"}"#,
            "either `run_at` or `delay`",
        ),
        (
            r#"{"command":"x","run_at":"tomorrow"}"#,
            "invalid time `tomorrow`",
        ),
        (
            r#"{"command":"x","run_at":"2099-01-01 00:00"}"#,
            "invalid time",
        ),
        (
            r#"{"command":"x","run_at":"1969-12-31T23:59:59Z"}"#,
            "invalid time",
        ),
        (
            r#"{"command":"x","run_at":5}"#,
            "`run_at` must be an RFC 3339 time",
        ),
        (r#"{"command":"x","id":""}"#, "`id` must not be empty"),
        (r#"{"command":"x","id":"a\nb"}"#, "control characters"),
        (r#"{"command":"x","id":7}"#, "`id` must be a string"),
        (
            r#"{"command":"x","id":"existing"}"#,
            "`existing` already exists",
        ),
        (r#"{"command":"x"} {"command":"y"}"#, "trailing characters"),
    ];
    for &(json, expect) in cases {
        r.check(&["enqueue", json], expect);
    }
    let long_id = format!(r#"{{"command":"x","id":"{}"}}"#, "i".repeat(257));
    r.check(&["enqueue", &long_id], "longer than 256 bytes");
    r.finish();
    // The existing job is untouched by the duplicate.
    assert_eq!(env.show("existing")["command"], "true");
    assert_eq!(env.count("pending"), 1);
    env.verify_store();
}

#[test]
fn bad_files_commands_and_settings_are_refused() {
    let env = Env::new();
    env.enqueue(r#"{"id":"existing","command":"true"}"#);
    env.ok(&["config", "set", "backoff_base", "3"]);
    let r = Refusals::new(&env);

    let missing = env.file("no-such-file.jsonl");
    let missing = missing.to_str().unwrap();
    r.check(&["enqueue", "--file", missing], "cannot read");
    let out = env.run(&["enqueue", "--file", missing]);
    assert!(
        stderr(&out).contains(missing),
        "names the path: {}",
        stderr(&out)
    );
    let dir = env.file("a-directory");
    std::fs::create_dir(&dir).unwrap();
    refused(
        &env,
        &["enqueue", "--file", dir.to_str().unwrap()],
        "is a directory",
    );

    r.check(&["list", "--state", "done"], "unknown state `done`");
    refused(
        &env,
        &["list", "--state", "Pending"],
        "unknown state `Pending`",
    );
    r.check(&["show", "nope"], "no job with id `nope`");
    r.check(&["show", "nope", "--json"], "no job with id `nope`");
    r.check(&["logs", "nope"], "no job with id `nope`");
    r.check(&["dlq", "retry", "nope"], "no job with id `nope`");
    r.check(&["dlq", "retry", "existing"], "is pending, not dead");

    refused(
        &env,
        &["config", "set", "colour", "red"],
        "unknown config key `colour`",
    );
    refused(
        &env,
        &["config", "set", "max_retries", "abc"],
        "invalid value `abc` for max_retries",
    );
    refused(
        &env,
        &["config", "set", "max_retries", "-1"],
        "invalid value `-1` for max_retries",
    );
    refused(
        &env,
        &["config", "set", "max_retries", "1.5"],
        "invalid value `1.5`",
    );
    refused(
        &env,
        &["config", "set", "max_retries", ""],
        "invalid value ``",
    );
    refused(
        &env,
        &["config", "set", "max_retries", "4294967296"],
        "too large",
    );
    refused(
        &env,
        &["config", "set", "backoff_base", "0"],
        "invalid value `0` for backoff_base",
    );
    refused(
        &env,
        &["config", "set", "backoff_base", "-2"],
        "invalid value `-2` for backoff_base",
    );
    refused(
        &env,
        &["config", "set", "poll_interval_ms", "0"],
        "invalid value `0` for poll_interval_ms",
    );
    refused(
        &env,
        &["config", "set", "lease_ms", "999"],
        "invalid value `999` for lease_ms: must be at least 1000",
    );
    refused(
        &env,
        &["config", "set", "lease_ms", "2h"],
        "invalid value `2h` for lease_ms: must be at most 3600000",
    );
    refused(
        &env,
        &["config", "get", "nope"],
        "unknown config key `nope`",
    );
    r.finish();
    assert_eq!(env.ok(&["config", "get", "backoff_base"]), "3\n");

    // No job at all: clap's usage error, also exit 2, and nothing changes.
    let before = snapshot(&env);
    let out = env.run(&["enqueue"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error:") && err.contains("required"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // JSON and --file together are refused too.
    let file = write_file(&env, "ok.jsonl", "{\"command\":\"true\"}\n");
    let out = env.run(&["enqueue", r#"{"command":"true"}"#, "--file", &file]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error:"), "{}", stderr(&out));
    assert_eq!(snapshot(&env), before);
    env.verify_store();
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let env = Env::new();
    let text: String = (0..2000)
        .map(|i| {
            format!(
                "{{\"id\":\"job-{i:05}\",\"command\":\"echo a fairly long command line {i}\"}}\n"
            )
        })
        .collect();
    let path = write_file(&env, "jobs.jsonl", &text);
    assert_eq!(
        env.ok(&["enqueue", "--file", &path]),
        "Enqueued 2000 jobs\n"
    );
    let bin = assert_cmd::cargo::cargo_bin("queuectl");
    for args in ["list", "list --json", "list --state pending --json"] {
        // The status of queuectl itself, not of `head`, goes to stderr.
        let script = format!(
            "{{ \"$0\" --data-dir \"$1\" {args}; echo \"queuectl-status=$?\" >&2; }} | head -1"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg(&bin)
            .arg(env.path())
            .env_remove("QUEUECTL_HOME")
            .output()
            .expect("sh");
        let err = stderr(&out);
        assert!(!err.contains("error"), "{args}: {err}");
        assert!(!err.contains("panicked"), "{args}: {err}");
        assert!(err.contains("queuectl-status=0"), "{args}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
}

#[test]
fn data_dir_flag_creates_a_nested_directory_private_to_the_user() {
    let env = Env::new();
    let parent = env.file("new");
    let nested: PathBuf = parent.join("deeper").join("queue");
    let out = bare_cmd(&[])
        .arg("--data-dir")
        .arg(&nested)
        .args(["enqueue", r#"{"id":"n","command":"true"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(nested.is_dir());
    assert_eq!(mode(&nested), 0o700, "{}", nested.display());
    assert_eq!(mode(&parent), 0o700, "{}", parent.display());
    assert!(nested.join("db").is_dir());
    // It is the queue: the job is there, and not in the test's own data directory.
    let out = bare_cmd(&[])
        .arg("--data-dir")
        .arg(&nested)
        .args(["show", "n", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.count("pending"), 0);

    // A data directory that is a file is refused.
    let file = env.file("plain-file");
    std::fs::write(&file, "x").unwrap();
    let out = bare_cmd(&[])
        .arg("--data-dir")
        .arg(&file)
        .args(["status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("error:") && err.contains("not a directory"),
        "{err}"
    );
}

#[test]
fn queuectl_home_is_used_without_the_flag() {
    let env = Env::new();
    let home = env.file("home");
    let xdg = env.file("xdg");
    let qhome = env.file("qhome").join("q");
    let out = bare_cmd(&[
        ("HOME", &home),
        ("XDG_DATA_HOME", &xdg),
        ("QUEUECTL_HOME", &qhome),
    ])
    .args(["enqueue", r#"{"id":"via-env","command":"true"}"#])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-env\n");
    assert!(qhome.join("db").is_dir());
    assert_eq!(mode(&qhome), 0o700);
    assert!(
        !xdg.exists() && !home.exists(),
        "only QUEUECTL_HOME is used"
    );

    let out = bare_cmd(&[])
        .arg("--data-dir")
        .arg(&qhome)
        .args(["show", "via-env", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // The flag wins over QUEUECTL_HOME.
    let out = bare_cmd(&[("QUEUECTL_HOME", &qhome)])
        .arg("--data-dir")
        .arg(env.path())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["pending"], 0);
}

#[test]
fn xdg_data_home_is_used_when_nothing_else_is_set() {
    let env = Env::new();
    let home = env.file("home");
    let xdg = env.file("xdg");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&xdg).unwrap();
    let out = bare_cmd(&[("HOME", &home), ("XDG_DATA_HOME", &xdg)])
        .args(["enqueue", r#"{"id":"via-xdg","command":"true"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = xdg.join("queuectl");
    assert!(dir.join("db").is_dir(), "{} holds the store", dir.display());
    assert_eq!(mode(&dir), 0o700);
    assert!(!home.join(".local").exists());
    let out = bare_cmd(&[("HOME", &home), ("XDG_DATA_HOME", &xdg)])
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&jobs), ["via-xdg"]);

    // Without XDG_DATA_HOME: ~/.local/share/queuectl.
    let out = bare_cmd(&[("HOME", &home)])
        .args(["enqueue", r#"{"id":"via-home","command":"true"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(home.join(".local/share/queuectl/db").is_dir());
}

/// `list --all` prints every job; it and `--limit` exclude each other. (A terminal shows the
/// first 50 by default; tests read through a pipe, which gets every job.)
#[test]
fn list_all_and_limit() {
    let env = Env::new();
    for i in 0..60 {
        env.enqueue(&format!(r#"{{"id":"j{i:02}","command":"true"}}"#));
    }
    let all: Value = serde_json::from_str(&env.ok(&["list", "--all", "--json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 60);
    let piped: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(piped, all, "piped: every job");
    let out = env.fails(&["list", "--all", "--limit", "3"], 2);
    assert!(out.contains("--limit"), "{out}");
}
