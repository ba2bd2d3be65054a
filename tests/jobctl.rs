//! Everyday job control, run as a user would: `add`, durations, where a job runs (cwd, env),
//! `cancel`, `rm`, one wording of attempts, `--json` everywhere, completions and the man page,
//! read-only commands that create nothing, tables that fit, `dlq retry --all`, several states.

mod common;

use std::path::Path;

use common::{stderr, stdout, wait_until, Env};
use serde_json::Value;

/// Runs bad input; asserts exit status 2, one `error:` line containing `expect`, and that the
/// list of jobs did not change.
fn refused(env: &Env, args: &[&str], expect: &str) {
    let before = env.ok(&["list", "--json"]);
    let out = env.run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err:?}");
    assert!(err.contains(expect), "{args:?}: {err:?} lacks {expect:?}");
    assert!(!err.contains("invalid type"), "parser words: {err}");
    assert_eq!(env.ok(&["list", "--json"]), before, "{args:?} changed jobs");
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `queuectl --data-dir DIR` run from the directory `cwd`.
fn cmd_in(env: &Env, cwd: &Path) -> assert_cmd::Command {
    let mut c = env.cmd();
    c.current_dir(cwd);
    c
}

#[test]
fn add_quotes_each_argument_and_records_the_callers_directory() {
    let env = Env::new();
    let here = env.file("here");
    std::fs::create_dir(&here).unwrap();
    let out = cmd_in(&env, &here)
        .args([
            "add",
            "--id",
            "a",
            "--priority",
            "-3",
            "--max-retries",
            "0",
            "--timeout",
            "90s",
            "--env",
            "GREETING=hi there",
            "--env",
            "B=1",
            "--",
            "printf",
            "%s|",
            "it's",
            "two words",
            "$HOME",
            "a;b",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "a");
    assert!(
        stderr(&out).contains("no supervisor is running"),
        "a hint on stderr: {}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let j = env.show("a");
    let words = shlex::split(j["command"].as_str().unwrap()).unwrap();
    assert_eq!(
        words,
        ["printf", "%s|", "it's", "two words", "$HOME", "a;b"],
        "{j}"
    );
    assert_eq!(j["priority"], -3);
    assert_eq!(j["max_retries"], 0);
    assert_eq!(j["timeout"], 90.0);
    assert_eq!(j["cwd"], here.to_str().unwrap());
    assert_eq!(
        j["env"],
        serde_json::json!({"B": "1", "GREETING": "hi there"})
    );
    let shown = env.ok(&["show", "a"]);
    assert!(
        shown.contains(&format!("cwd           {}", here.display())),
        "{shown}"
    );
    assert!(shown.contains("GREETING='hi there'"), "{shown}");
    assert!(shown.contains("timeout       1m 30s"), "{shown}");

    // --json prints the id as an object; --cwd (relative to the caller) and --at.
    let sub = here.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let out = cmd_in(&env, &here)
        .args([
            "add",
            "--json",
            "--cwd",
            "sub",
            "--at",
            "2030-01-01T09:00:00+09:00",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json(&stdout(&out))["id"].as_str().unwrap().to_string();
    let j = env.show(&id);
    assert_eq!(j["cwd"], sub.to_str().unwrap());
    assert_eq!(j["available_at"], "2030-01-01T00:00:00.000Z");
}

#[test]
fn add_refuses_bad_flags_in_our_words() {
    let env = Env::new();
    refused(
        &env,
        &["add", "--delay", "soon", "--", "true"],
        "--delay: invalid duration `soon`",
    );
    refused(
        &env,
        &["add", "--timeout", "0", "--", "true"],
        "`timeout` must be more than 0",
    );
    refused(
        &env,
        &["add", "--at", "tomorrow", "--", "true"],
        "invalid time `tomorrow`",
    );
    refused(
        &env,
        &["add", "--env", "NOVALUE", "--", "true"],
        "--env expects KEY=VALUE",
    );
    refused(
        &env,
        &["add", "--env", "=x", "--", "true"],
        "not a valid environment variable",
    );
    refused(
        &env,
        &["add", "--priority", "high", "--", "true"],
        "--priority must be a whole number",
    );
    refused(
        &env,
        &["add", "--max-retries", "-1", "--", "true"],
        "--max-retries must be",
    );
    refused(
        &env,
        &["add", "--cwd", "/no/such/dir", "--", "true"],
        "not a directory",
    );
    refused(&env, &["add", "--", ""], "`command` must not be empty");
}

#[test]
fn durations_as_people_write_them_in_json() {
    let env = Env::new();
    let cases = [
        ("30", 30_000),
        ("1.5", 1_500),
        ("\"90s\"", 90_000),
        ("\"5m\"", 300_000),
        ("\"2h\"", 7_200_000),
        ("\"1d\"", 86_400_000),
        ("\"1h 30m\"", 5_400_000),
    ];
    for (i, (delay, ms)) in cases.iter().enumerate() {
        let id = format!("d{i}");
        let j = format!(r#"{{"id":"{id}","command":"true","delay":{delay},"timeout":{delay}}}"#);
        env.enqueue(&j);
        let shown = env.show(&id);
        let created = chrono::DateTime::parse_from_rfc3339(shown["created_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let at = chrono::DateTime::parse_from_rfc3339(shown["available_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        // `delay` counts from the moment the command read the clock, just before storing.
        assert!((at - created - ms).abs() < 5_000, "{delay}: {shown}");
        assert_eq!(
            shown["timeout"].as_f64().unwrap(),
            *ms as f64 / 1000.0,
            "{delay}"
        );
    }
    // A run_at with any offset.
    env.enqueue(r#"{"id":"o","command":"true","run_at":"2030-06-01T12:00:00-04:30"}"#);
    assert_eq!(env.show("o")["available_at"], "2030-06-01T16:30:00.000Z");

    for (field, value, expect) in [
        (
            "delay",
            "\"soon\"",
            "`delay` must be a number of seconds or a duration like 5m",
        ),
        (
            "delay",
            "true",
            "`delay` must be a number of seconds or a duration like 5m",
        ),
        (
            "delay",
            "-1",
            "`delay` must be a number of seconds or a duration like 5m",
        ),
        (
            "timeout",
            "[1]",
            "`timeout` must be a number of seconds or a duration like 5m",
        ),
        (
            "max_retries",
            "\"3\"",
            "`max_retries` must be a whole number >= 0",
        ),
        ("priority", "1.5", "`priority` must be a whole number"),
        ("command", "5", "`command` must be a string"),
        ("cwd", "7", "`cwd` must be a string"),
        ("env", "{\"A\":1}", "`env` must be an object of strings"),
        ("env", "[\"A\"]", "`env` must be an object of strings"),
        ("run_at", "12", "`run_at` must be an RFC 3339 time"),
    ] {
        let j = if field == "command" {
            format!(r#"{{"command":{value}}}"#)
        } else {
            format!(r#"{{"command":"true","{field}":{value}}}"#)
        };
        refused(&env, &["enqueue", &j], expect);
    }
}

#[test]
fn enqueue_records_the_callers_directory_unless_json_gives_cwd() {
    let env = Env::new();
    let a = env.file("a");
    std::fs::create_dir(&a).unwrap();
    let run = |json: &str| {
        let out = cmd_in(&env, &a).args(["enqueue", json]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    };
    let id = run(r#"{"command":"./backup.sh"}"#);
    assert_eq!(env.show(&id)["cwd"], a.to_str().unwrap());
    let id = run(r#"{"command":"true","cwd":"/srv/app","env":{"LANG":"C","X":""}}"#);
    let j = env.show(&id);
    assert_eq!(j["cwd"], "/srv/app");
    assert_eq!(j["env"], serde_json::json!({"LANG": "C", "X": ""}));
    // A relative cwd is taken from the caller's directory.
    let id = run(r#"{"command":"true","cwd":"sub"}"#);
    assert_eq!(env.show(&id)["cwd"], a.join("sub").to_str().unwrap());
    // Files too.
    let file = env.file("jobs.jsonl");
    std::fs::write(&file, "{\"id\":\"f1\",\"command\":\"true\"}\n").unwrap();
    let out = cmd_in(&env, &a)
        .args(["enqueue", "--json", "--file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&stdout(&out)),
        serde_json::json!({"enqueued": 1, "ids": ["f1"]})
    );
    assert_eq!(env.show("f1")["cwd"], a.to_str().unwrap());
}

#[test]
fn export_adds_cwd_and_env_after_the_documented_columns() {
    let env = Env::new();
    env.enqueue(r#"{"id":"e","command":"true","cwd":"/tmp","env":{"A":"1"}}"#);
    let db = env.file("out.db");
    let out = env.ok(&["export", "--json", "--sqlite", db.to_str().unwrap()]);
    assert_eq!(json(&out)["jobs"], 1);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('jobs') ORDER BY cid")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let n = cols.len();
    assert_eq!(&cols[n - 2..], ["cwd", "env"], "{cols:?}");
    let (cwd, envs): (String, String) = conn
        .query_row("SELECT cwd, env FROM jobs WHERE id = 'e'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(cwd, "/tmp");
    assert_eq!(json(&envs), serde_json::json!({"A": "1"}));
}

#[test]
fn cancel_and_rm_answer_per_id() {
    let env = Env::new();
    env.enqueue(r#"{"id":"p","command":"true"}"#);
    env.enqueue(r#"{"id":"s","command":"true","delay":"1h"}"#);
    // Not running: straight to dead, "cancelled", never reserved.
    let out = env.ok(&["cancel", "p", "s"]);
    assert_eq!(out, "p: cancelled\ns: cancelled\n");
    for id in ["p", "s"] {
        let j = env.show(id);
        assert_eq!(
            (j["state"].as_str(), j["last_error"].as_str()),
            (Some("dead"), Some("cancelled"))
        );
        assert_eq!(j["available_at"], Value::Null);
    }
    // Cancelling again is not an error; an unknown id is, with a line of its own.
    assert_eq!(env.ok(&["cancel", "p"]), "p: cancelled\n");
    let out = env.run(&["cancel", "p", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "p: cancelled\n");
    assert!(
        stderr(&out).contains("error: no job with id `nope`"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["cancel", "--json", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let items = json(&stdout(&out));
    assert_eq!(items[0]["id"], "nope");
    assert_eq!(items[0]["ok"], false);

    // rm: finished jobs only, with a reason for the others.
    env.enqueue(r#"{"id":"q","command":"true"}"#);
    let out = env.run(&["rm", "p", "q"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "p: removed\n");
    assert!(
        stderr(&out).contains("job `q` is pending: only completed or dead jobs can be removed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.count("pending"), 1);
    assert_eq!(env.count("dead"), 1);
    assert_eq!(env.count("total"), 2);
    let out = env.run(&["show", "p"]);
    assert!(stderr(&out).contains("no job with id `p`"));
    assert!(!env.run(&["rm"]).status.success(), "ids are required");
}

#[test]
fn dlq_retry_all_and_several_states() {
    let env = Env::new();
    for id in ["a", "b", "c"] {
        env.enqueue(&format!(r#"{{"id":"{id}","command":"true"}}"#));
    }
    env.ok(&["cancel", "a", "b"]);
    let dead = env.list("dead");
    assert_eq!(dead.len(), 2);
    let both: Vec<Value> = json(&env.ok(&["list", "--state", "pending,dead", "--json"]))
        .as_array()
        .unwrap()
        .clone();
    let ids: Vec<&str> = both.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"], "by id, whatever the state");
    let page = json(&env.ok(&[
        "list",
        "--state",
        "pending,dead",
        "--json",
        "--offset",
        "1",
        "--limit",
        "1",
    ]));
    assert_eq!(page[0]["id"], "b");
    assert_eq!(
        env.ok(&["list", "--state", "failed,processing"]),
        "No failed or processing jobs.\n"
    );
    refused(
        &env,
        &["list", "--state", "pending,done"],
        "unknown state `done`",
    );

    let out = env.ok(&["dlq", "retry", "--all"]);
    assert_eq!(
        out,
        "Job a moved from the DLQ to pending\nJob b moved from the DLQ to pending\n"
    );
    assert_eq!(env.count("pending"), 3);
    assert_eq!(env.ok(&["dlq", "retry", "--all"]), "No dead jobs.\n");
    assert!(
        !env.run(&["dlq", "retry"]).status.success(),
        "an id or --all"
    );
}

#[test]
fn json_on_every_printing_command() {
    let env = Env::new();
    let id = json(&env.ok(&["enqueue", "--json", r#"{"command":"true"}"#]))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 26);
    assert_eq!(
        json(&env.ok(&["config", "get", "max_retries", "--json"])),
        serde_json::json!({"max_retries": 3})
    );
    assert_eq!(
        json(&env.ok(&["config", "set", "poll_interval_ms", "2s", "--json"])),
        serde_json::json!({"poll_interval_ms": 2000})
    );
    let st = json(&env.ok(&["status", "--json"]));
    let dir = std::path::absolute(env.path()).unwrap();
    assert_eq!(st["data_dir"], dir.to_str().unwrap());
    assert!(env
        .ok(&["status"])
        .contains(&format!("Data directory: {}", dir.display())));
    assert_eq!(
        json(&env.ok(&["worker", "stop", "--json"]))["message"],
        "No supervisor is running"
    );
    env.ok(&["cancel", &id]);
    let retried = json(&env.ok(&["dlq", "retry", &id, "--json"]));
    assert_eq!(retried[0]["state"], "pending");
}

#[test]
fn attempts_have_one_meaning_and_logs_name_runs() {
    let env = Env::new();
    env.enqueue(r#"{"id":"f","command":"echo out; echo err >&2; exit 3","max_retries":2}"#);
    env.enqueue(r#"{"id":"z","command":"true","max_retries":0}"#);
    let sup = env.start(1);
    wait_until("f to fail once", || env.show("f")["state"] == "failed");
    wait_until("z to complete", || env.show("z")["state"] == "completed");
    let shown = env.ok(&["show", "f"]);
    assert!(
        shown.contains("attempts      runs 1, failures 1 of 2 allowed"),
        "{shown}"
    );
    let z = env.ok(&["show", "z"]);
    assert!(z.contains("runs 1, failures 0 of 1 allowed"), "{z}");
    let table = env.ok(&["list", "--state", "failed,completed"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("RUNS") && header.contains("FAILURES"),
        "{table}"
    );
    assert!(!header.contains("ATTEMPTS"), "{table}");
    assert!(table.contains("1 of 2"), "{table}");

    let logs = env.ok(&["logs", "f", "--run", "1"]);
    assert!(
        logs.starts_with("=== job f, run 1 of 1: exit code 3, took "),
        "{logs}"
    );
    assert!(logs.contains("out\n") && logs.contains("err\n"), "{logs}");
    let lj = json(&env.ok(&["logs", "f", "--json"]));
    assert_eq!(
        (lj["run"].as_u64(), lj["runs"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(lj["stdout"], "out\n");
    assert_eq!(lj["stderr"], "err\n");
    assert_eq!(lj["outcome"], "exit code 3");
    assert_eq!(lj["success"], false);
    sup.stop();
}

#[test]
fn tables_have_no_trailing_spaces_and_fit_the_width() {
    let env = Env::new();
    for i in 0..3 {
        env.enqueue(&format!(
            r#"{{"command":"echo a rather long command line number {i} that goes on and on","delay":"1h"}}"#
        ));
    }
    for cols in ["100", "80"] {
        for args in [&["list"][..], &["status"], &["config", "show"]] {
            let out = env.cmd().env("COLUMNS", cols).args(args).output().unwrap();
            assert!(out.status.success());
            let text = stdout(&out);
            for line in text.lines() {
                assert!(!line.ends_with(' '), "{args:?}: trailing space in {line:?}");
                assert!(
                    line.chars().count() <= cols.parse().unwrap(),
                    "{args:?} at {cols} columns: {line:?}"
                );
            }
        }
    }
    // Without a terminal nor COLUMNS nothing is cut.
    let wide = env
        .cmd()
        .env_remove("COLUMNS")
        .args(["list"])
        .output()
        .unwrap();
    assert!(stdout(&wide).lines().next().unwrap().contains("NEXT RUN"));
}

#[test]
fn read_only_commands_never_create_a_data_directory() {
    let env = Env::new();
    let missing = env.file("typo");
    for args in [
        &["status"][..],
        &["list"],
        &["show", "x"],
        &["logs", "x"],
        &["dlq", "list"],
        &["config", "show"],
        &["config", "get", "max_retries"],
        &["cancel", "x"],
        &["rm", "x"],
        &["worker", "stop"],
    ] {
        let out = assert_cmd::Command::cargo_bin("queuectl")
            .unwrap()
            .arg("--data-dir")
            .arg(&missing)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("no queue at"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    // Writing commands do create it.
    let out = assert_cmd::Command::cargo_bin("queuectl")
        .unwrap()
        .arg("--data-dir")
        .arg(&missing)
        .args(["add", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(missing.is_dir());
}

#[test]
fn completions_and_man_page() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef queuectl"),
        ("fish", "complete -c queuectl"),
    ] {
        let out = env.ok(&["completions", shell]);
        assert!(
            out.contains(marker),
            "{shell}: {}",
            &out[..out.len().min(200)]
        );
        for word in ["add", "cancel", "wait", "rm"] {
            assert!(out.contains(word), "{shell} completes {word}");
        }
    }
    let man = env.ok(&["man"]);
    assert!(man.contains(".TH queuectl 1"), "{}", &man[..200]);
    assert!(man.contains("enqueue") && man.contains("add"));
    let out = env.run(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_speaks_users_words() {
    let env = Env::new();
    let top = env.ok(&["--help"]);
    let mut commands: Vec<Vec<String>> = vec![vec![]];
    let names: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != "help")
        .collect();
    assert!(names.contains(&"add".to_string()), "{top}");
    for n in &names {
        commands.push(vec![n.clone()]);
        for sub in ["start", "stop", "list", "retry", "show", "get", "set"] {
            commands.push(vec![n.clone(), sub.to_string()]);
        }
    }
    for c in commands {
        let mut args: Vec<&str> = c.iter().map(String::as_str).collect();
        args.push("--help");
        let out = env.run(&args);
        if !out.status.success() {
            continue; // no such subcommand
        }
        let text = stdout(&out).to_lowercase();
        for word in ["seed", "internal"] {
            assert!(!text.contains(word), "{args:?} says {word:?}: {text}");
        }
    }
}

/// Starts a detached supervisor from directory `cwd`; stopped when the guard drops.
fn start_in<'a>(env: &'a Env, cwd: &Path, count: u32) -> common::Supervisor<'a> {
    let out = cmd_in(env, cwd)
        .args(["worker", "start", "--count", &count.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let pid = text
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text:?}"));
    common::Supervisor { env, pid }
}

fn wait_state(env: &Env, id: &str, state: &str) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("{id} to be {state}"), || {
        last = env.show(id);
        last["state"] == state
    });
    last
}

#[test]
fn a_job_runs_where_it_was_queued_with_its_env() {
    let env = Env::new();
    let a = env.file("a");
    let b = env.file("b");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    std::fs::write(
        a.join("backup.sh"),
        "#!/bin/sh\necho \"in $(pwd) as $WHO\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        a.join("backup.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = cmd_in(&env, &a)
        .args([
            "enqueue",
            r#"{"id":"here","command":"./backup.sh","env":{"WHO":"me"}}"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cmd_in(&env, &a)
        .args([
            "add",
            "--id",
            "flag",
            "--cwd",
            "../b",
            "--env",
            "WHO=you",
            "--",
            "sh",
            "-c",
            "echo \"in $(pwd) as $WHO\"",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    env.enqueue(
        r#"{"id":"gone","command":"true","cwd":"/nonexistent/queuectl-dir","max_retries":0}"#,
    );
    let sup = start_in(&env, &b, 2);
    wait_state(&env, "here", "completed");
    wait_state(&env, "flag", "completed");
    let logs = env.ok(&["logs", "here"]);
    assert!(
        logs.contains(&format!("in {} as me", a.display())),
        "{logs}"
    );
    let logs = env.ok(&["logs", "flag"]);
    assert!(
        logs.contains(&format!("in {} as you", b.display())),
        "{logs}"
    );
    // A directory that is gone fails the run with a clear reason; the supervisor goes on.
    let dead = wait_state(&env, "gone", "dead");
    let err = dead["last_error"].as_str().unwrap();
    assert!(
        err.contains("/nonexistent/queuectl-dir") && err.contains("does not exist"),
        "{err}"
    );
    assert!(common::alive(sup.pid));
    sup.stop();
}

#[test]
fn cancel_of_a_running_job_stops_its_processes_and_never_retries_it() {
    let env = Env::new();
    let pidfile = env.file("sleep.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    env.ok(&[
        "add",
        "--id",
        "nap",
        "--max-retries",
        "5",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let sup = env.start(1);
    wait_state(&env, "nap", "processing");
    wait_until("the sleep to start", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    });
    let sleep: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(common::alive(sleep));
    let out = env.ok(&["cancel", "nap"]);
    assert_eq!(out, "nap: cancelled\n");
    let j = env.show("nap");
    assert_eq!(j["state"], "dead", "{j}");
    assert_eq!(j["last_error"], "cancelled", "{j}");
    assert_eq!(j["attempts"], 0, "a cancel is not a failure: {j}");
    wait_until("the cancelled sleep to be gone", || !common::alive(sleep));
    // Never retried: the worker is free for the next job, and nap stays dead.
    let next = env.enqueue(r#"{"command":"true"}"#);
    wait_state(&env, &next, "completed");
    assert_eq!(env.show("nap")["state"], "dead");
    assert_eq!(env.show("nap")["runs"], 1);
    // Unknown and already finished jobs get a line each and a non-zero status.
    let out = env.run(&["cancel", "nap", &next, "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "nap: cancelled\n");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("job `{next}` is already completed")),
        "{err}"
    );
    assert!(err.contains("no job with id `nope`"), "{err}");
    sup.stop();
}

/// `wait --all` on more jobs than one request carries: waited for part by part, every job
/// answered once, in order.
#[test]
fn wait_all_waits_for_more_jobs_than_one_request_carries() {
    let env = Env::new();
    let file = env.path().join("jobs.jsonl");
    let lines: String = (0..1_205)
        .map(|i| format!("{{\"id\":\"j{i:05}\",\"command\":\"true\"}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    env.ok(&["enqueue", "--file", file.to_str().unwrap()]);
    // Waiting before any supervisor runs, so that every job is unfinished when it looks.
    let mut waiter = std::process::Command::new(assert_cmd::cargo::cargo_bin("queuectl"))
        .arg("--data-dir")
        .arg(env.path())
        .args(["wait", "--all"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = waiter.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(err), &mut line);
        let _ = tx.send(line);
    });
    // (Env kills the waiter when dropped, also if this fails.)
    let said = rx.recv_timeout(std::time::Duration::from_secs(60));
    assert!(
        said.as_deref()
            .is_ok_and(|l| l.contains("no supervisor is running")),
        "{said:?}"
    );
    let sup = env.start(4);
    let status = waiter.wait().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(waiter.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert_eq!(status.code(), Some(0));
    let expected: String = (0..1_205)
        .map(|i| format!("j{i:05}: completed\n"))
        .collect();
    assert_eq!(text, expected);
    sup.stop();
}

#[test]
fn wait_exits_0_1_or_124_with_a_line_per_job() {
    let env = Env::new();
    env.ok(&["add", "--id", "ok", "--", "true"]);
    env.ok(&[
        "add",
        "--id",
        "bad",
        "--max-retries",
        "0",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    env.ok(&["add", "--id", "slow", "--", "sleep", "300"]);
    // No supervisor yet: wait says so, keeps waiting, and is answered once one runs them.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("queuectl"))
        .arg("--data-dir")
        .arg(env.path())
        .args(["wait", "ok"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sup = env.start(2);
    let status = child.wait().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{text} {err}");
    assert_eq!(text, "ok: completed\n");
    let out = env.run(&["wait", "ok", "bad"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok: completed\nbad: dead (exit code 3)\n");
    let out = env.run(&["wait", "slow", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert_eq!(stdout(&out), "slow: processing (not finished)\n");
    let out = env.run(&["wait", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A wait is answered when a cancel finishes its job, not only when a run ends.
    env.ok(&["add", "--id", "later2", "--delay", "1h", "--", "true"]);
    // (the timed-out wait above is still parked: it is answered when `slow` ends)
    // (Names, not a count: the `add` just answered may still have its request file there for
    // a moment.)
    let parked = || -> std::collections::HashSet<std::ffi::OsString> {
        std::fs::read_dir(env.path().join("spool/new"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
            .unwrap_or_default()
    };
    let before = parked();
    let mut waiter = std::process::Command::new(assert_cmd::cargo::cargo_bin("queuectl"))
        .arg("--data-dir")
        .arg(env.path())
        .args(["wait", "later2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the wait to be parked", || !parked().is_subset(&before));
    env.ok(&["cancel", "later2"]);
    let status = waiter.wait().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(waiter.stdout.as_mut().unwrap(), &mut text).unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(text, "later2: dead (cancelled)\n");
    // --all: every job not finished when the wait began; --json.
    env.ok(&["cancel", "slow"]);
    let out = env.run(&["wait", "--all", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "nothing left to wait for: {}",
        stderr(&out)
    );
    assert_eq!(json(&stdout(&out)), serde_json::json!([]));
    env.ok(&["add", "--id", "later", "--delay", "1s", "--", "true"]);
    let out = env.run(&["wait", "--all", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let items = json(&stdout(&out));
    assert_eq!(items[0]["id"], "later");
    assert_eq!(items[0]["state"], "completed");
    sup.stop();
}

#[test]
fn wait_without_a_supervisor_says_so_and_times_out() {
    let env = Env::new();
    env.ok(&["add", "--id", "j", "--", "true"]);
    let out = env.run(&["wait", "j", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(124));
    assert_eq!(stdout(&out), "j: pending (not finished)\n");
    let err = stderr(&out);
    assert!(
        err.contains("no supervisor is running; waiting for one to start"),
        "{err}"
    );
}

#[test]
fn workers_scale_pause_and_resume_while_running() {
    let env = Env::new();
    let out = env.run(&["worker", "pause"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no supervisor is running"),
        "{}",
        stderr(&out)
    );
    let sup = env.start(1);
    assert_eq!(env.ok(&["worker", "scale", "3"]), "Scaling to 3 workers\n");
    wait_until("3 workers", || {
        env.status()["workers"] == 3 && sup.workers().len() == 3
    });
    // Pause: nothing new starts, running jobs go on; status says so.
    env.ok(&["add", "--id", "long", "--", "sleep", "2"]);
    wait_state(&env, "long", "processing");
    env.ok(&["worker", "pause"]);
    assert_eq!(env.status()["paused"], true);
    assert!(env.ok(&["status"]).contains(", paused"));
    env.ok(&["add", "--id", "held", "--", "true"]);
    wait_state(&env, "long", "completed");
    assert_eq!(env.show("held")["state"], "pending", "paused: not started");
    env.ok(&["worker", "resume"]);
    assert_eq!(env.status()["paused"], false);
    wait_state(&env, "held", "completed");
    // Down to 1 while two are busy: the idle one leaves at once, busy ones finish first.
    env.ok(&["add", "--id", "b1", "--", "sleep", "1"]);
    env.ok(&["add", "--id", "b2", "--", "sleep", "1"]);
    wait_until("two busy workers", || env.status()["busy_workers"] == 2);
    env.ok(&["worker", "scale", "1"]);
    wait_state(&env, "b1", "completed");
    wait_state(&env, "b2", "completed");
    wait_until("1 worker", || {
        env.status()["workers"] == 1 && sup.workers().len() == 1
    });
    assert_eq!(env.show("b1")["runs"], 1, "finished, not interrupted");
    let out = env.run(&["worker", "scale", "0"]);
    assert_eq!(out.status.code(), Some(2));
    sup.stop();
}

#[test]
fn logs_follow_streams_a_running_job_and_truncation_is_said() {
    let env = Env::new();
    let marker = env.file("go-on");
    let script = format!(
        "echo first; echo oops >&2; while [ ! -e {} ]; do sleep 0.05; done; echo second",
        marker.display()
    );
    env.ok(&["add", "--id", "f", "--", "sh", "-c", &script]);
    env.ok(&[
        "add",
        "--id",
        "big",
        "--",
        "sh",
        "-c",
        "head -c 204800 /dev/zero | tr '\\0' a",
    ]);
    let sup = env.start(2);
    wait_state(&env, "f", "processing");
    // Without --follow: what it printed so far.
    wait_until("the first line to be readable", || {
        env.ok(&["logs", "f"]).contains("first")
    });
    let so_far = env.ok(&["logs", "f"]);
    assert!(so_far.contains("still running"), "{so_far}");
    assert!(so_far.contains("oops"), "{so_far}");
    // --follow: the line arrives while the job still runs, then the end.
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("queuectl"))
        .arg("--data-dir")
        .arg(env.path())
        .args(["logs", "f", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout_pipe = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout_pipe)) {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l == "first") {
        match rx.recv_timeout(common::DEADLINE) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no `first` from logs --follow: {seen:?}");
            }
        }
    }
    assert_eq!(env.show("f")["state"], "processing", "seen before the end");
    std::fs::write(&marker, "").unwrap();
    let status = child.wait().unwrap();
    seen.extend(rx.iter());
    assert!(status.success(), "{seen:?}");
    assert!(seen.iter().any(|l| l == "second"), "{seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("=== run 1: exit code 0 ===")
    );
    // Output past the 64 KiB kept says how much was dropped.
    wait_state(&env, "big", "completed");
    let big = env.ok(&["logs", "big"]);
    assert!(
        big.contains("[… 139,264 bytes dropped …]\n"),
        "{}",
        &big[..200]
    );
    // The supervisor's log.
    let log = env.ok(&["logs", "--supervisor"]);
    assert!(log.contains("started with 2 workers"), "{log}");
    assert!(log.contains("Job f completed"), "{log}");
    assert_eq!(
        env.run(&["logs", "f", "--supervisor"]).status.code(),
        Some(2)
    );
    sup.stop();
}
