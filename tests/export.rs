//! `queuectl export --sqlite`: the documented schema, every job and setting, with and without a
//! supervisor running, and the refusals.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{wait_until, Env};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

/// The columns of the documented `jobs` table: name, type, notnull, default, pk.
const JOBS_COLUMNS: [(&str, &str, bool, Option<&str>, bool); 12] = [
    ("id", "TEXT", false, None, true),
    ("command", "TEXT", true, None, false),
    ("state", "TEXT", false, None, false),
    ("attempts", "INTEGER", false, Some("0"), false),
    ("max_retries", "INTEGER", false, Some("3"), false),
    ("created_at", "TEXT", false, None, false),
    ("updated_at", "TEXT", false, None, false),
    ("available_at", "TEXT", false, None, false),
    ("locked_by", "TEXT", false, None, false),
    ("locked_at", "TEXT", false, None, false),
    ("last_error", "TEXT", false, None, false),
    ("priority", "INTEGER", false, Some("0"), false),
];

const CONFIG_COLUMNS: [(&str, &str, bool, Option<&str>, bool); 2] = [
    ("key", "TEXT", false, None, true),
    ("value", "TEXT", false, None, false),
];

const STATES: [&str; 5] = ["pending", "processing", "completed", "failed", "dead"];

fn open(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn table_info(conn: &Connection, table: &str) -> Vec<(String, String, bool, Option<String>, bool)> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({table})"))
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>("name")?,
            r.get::<_, String>("type")?,
            r.get::<_, i64>("notnull")? != 0,
            r.get::<_, Option<String>>("dflt_value")?,
            r.get::<_, i64>("pk")? != 0,
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn expected(
    cols: &[(&str, &str, bool, Option<&str>, bool)],
) -> Vec<(String, String, bool, Option<String>, bool)> {
    cols.iter()
        .map(|(n, t, nn, d, pk)| (n.to_string(), t.to_string(), *nn, d.map(String::from), *pk))
        .collect()
}

fn to_json(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => json!(i),
        SqlValue::Real(f) => json!(f),
        SqlValue::Text(s) => json!(s),
        SqlValue::Blob(b) => panic!("unexpected blob {b:?}"),
    }
}

/// Every row of `jobs`, by id, as JSON objects keyed by column name.
fn job_rows(conn: &Connection) -> BTreeMap<String, serde_json::Map<String, Value>> {
    let mut stmt = conn.prepare("SELECT * FROM jobs").unwrap();
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let rows = stmt
        .query_map([], |r| {
            let mut m = serde_json::Map::new();
            for (i, n) in names.iter().enumerate() {
                m.insert(n.clone(), to_json(r.get::<_, SqlValue>(i)?));
            }
            Ok(m)
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut out = BTreeMap::new();
    for m in rows {
        let id = m["id"].as_str().expect("text id").to_string();
        assert!(out.insert(id.clone(), m).is_none(), "id {id} twice");
    }
    out
}

/// Checks an exported file against the running queue: schema, counts per state, every field
/// of every job against `show --json`, and the config. Returns the rows.
fn check_export(env: &Env, path: &Path) -> BTreeMap<String, serde_json::Map<String, Value>> {
    let conn = open(path);
    let info = table_info(&conn, "jobs");
    let n = JOBS_COLUMNS.len();
    assert_eq!(
        info[..n.min(info.len())],
        expected(&JOBS_COLUMNS)[..],
        "the documented jobs columns, first"
    );
    let extra: Vec<&str> = info[n..].iter().map(|c| c.0.as_str()).collect();
    assert_eq!(extra, ["cwd", "env"], "queuectl's columns after them");
    assert_eq!(
        table_info(&conn, "config"),
        expected(&CONFIG_COLUMNS),
        "config columns"
    );
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["config", "jobs"]);
    let jobs_sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'jobs'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        jobs_sql.contains(
            "state TEXT CHECK (state IN ('pending','processing','completed','failed','dead'))"
        ),
        "{jobs_sql}"
    );

    let status = env.status();
    let mut total = 0;
    for state in STATES {
        let n: i64 = conn
            .query_row("SELECT count(*) FROM jobs WHERE state = ?1", [state], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(json!(n), status[state], "{state} rows vs status {status}");
        total += n;
    }
    let all: i64 = conn
        .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(all, total, "every row has one of the five states");

    let rows = job_rows(&conn);
    for (id, row) in &rows {
        let shown = env.show(id);
        for (col, ..) in JOBS_COLUMNS {
            assert_eq!(
                row[col], shown[col],
                "job {id}, column {col}: {row:?} vs {shown}"
            );
        }
    }

    let config: BTreeMap<String, Option<String>> = conn
        .prepare("SELECT key, value FROM config")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let shown: Value = serde_json::from_str(&env.ok(&["config", "show", "--json"])).unwrap();
    let shown: BTreeMap<String, Option<String>> = shown
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.to_string())))
        .collect();
    assert_eq!(config, shown);
    assert_eq!(config.len(), 6);
    rows
}

/// `export --sqlite PATH`, which must succeed and say what it wrote.
fn export(env: &Env, path: &Path, extra: &[&str]) {
    let mut args = vec!["export", "--sqlite", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = env.ok(&args);
    let jobs = env.status()["total"].as_u64().unwrap();
    assert_eq!(
        out,
        format!(
            "Exported {jobs} jobs and 6 config keys to {}\n",
            path.display()
        )
    );
}

/// A fresh directory for export files, inside the test's directory.
fn out_dir(env: &Env) -> PathBuf {
    let dir = env.file("exports");
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// The names in a directory, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn state(env: &Env, id: &str) -> String {
    env.show(id)["state"].as_str().unwrap().to_string()
}

/// Enqueues jobs that end completed, failed (waiting 1000 s for a retry) and dead, and waits
/// for them under the supervisor.
fn settle_finished_jobs(env: &Env) {
    env.enqueue(r#"{"id":"done","command":"echo done","priority":5}"#);
    env.enqueue(r#"{"id":"retrying","command":"echo nope >&2; exit 1","max_retries":5}"#);
    env.enqueue(r#"{"id":"dead","command":"exit 3","max_retries":1,"timeout":30}"#);
    wait_until("completed, failed and dead jobs", || {
        state(env, "done") == "completed"
            && state(env, "retrying") == "failed"
            && state(env, "dead") == "dead"
    });
}

#[test]
fn export_with_every_state_while_a_supervisor_runs() {
    let env = Env::new();
    let dir = out_dir(&env);
    env.ok(&["config", "set", "backoff_base", "1000"]);
    let guard = env.start(1);
    settle_finished_jobs(&env);

    // Holds the only worker until the test creates the gate file (bounded: a minute).
    let gate = env.file("gate");
    let gate_job = json!({
        "id": "running",
        "command": format!(
            "i=0; while [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
            gate.display()
        ),
        "priority": 10,
        "timeout": 120,
    });
    env.enqueue(&gate_job.to_string());
    wait_until("the gate job to run", || {
        state(&env, "running") == "processing"
    });
    // The only worker is busy: these stay pending.
    env.enqueue(r#"{"id":"waiting","command":"echo waited","priority":-2}"#);
    env.enqueue(r#"{"id":"scheduled","command":"true","delay":3600}"#);

    let path = dir.join("queue.db");
    export(&env, &path, &[]);
    let st = env.status();
    assert!(st["supervisor_pid"].is_u64(), "{st}");
    for (s, n) in [
        ("pending", 2),
        ("processing", 1),
        ("completed", 1),
        ("failed", 1),
        ("dead", 1),
    ] {
        assert_eq!(st[s], n, "{s}: {st}");
    }
    let rows = check_export(&env, &path);
    assert_eq!(rows.len(), 6);
    let running = &rows["running"];
    assert_eq!(running["state"], "processing");
    assert!(running["locked_by"].is_string(), "{running:?}");
    assert!(running["locked_at"].is_string(), "{running:?}");
    assert!(running["last_error"].is_null(), "{running:?}");
    assert_eq!(running["priority"], 10);
    let retrying = &rows["retrying"];
    assert_eq!(retrying["state"], "failed");
    assert_eq!(retrying["attempts"], 1);
    assert_eq!(retrying["max_retries"], 5);
    assert!(retrying["last_error"]
        .as_str()
        .unwrap()
        .contains("exit code 1"));
    assert!(retrying["available_at"].is_string());
    assert_eq!(rows["dead"]["state"], "dead");
    assert!(rows["dead"]["available_at"].is_null());
    assert_eq!(rows["done"]["state"], "completed");
    assert_eq!(rows["done"]["last_error"], Value::Null);
    assert_eq!(rows["scheduled"]["state"], "pending");
    assert!(rows["scheduled"]["available_at"].as_str() > rows["scheduled"]["created_at"].as_str());
    assert_eq!(entries(&dir), ["queue.db"], "no temporary files left");

    // The supervisor goes on working after the export.
    std::fs::write(&gate, "").unwrap();
    wait_until("the gate job and the waiting job to complete", || {
        state(&env, "running") == "completed" && state(&env, "waiting") == "completed"
    });
    env.enqueue(r#"{"id":"after","command":"true"}"#);
    wait_until("a job enqueued after the export", || {
        state(&env, "after") == "completed"
    });
    // The export is a snapshot: it did not change.
    assert_eq!(job_rows(&open(&path))["running"]["state"], "processing");
    drop(guard);
}

#[test]
fn export_without_a_supervisor() {
    let env = Env::new();
    let dir = out_dir(&env);
    env.ok(&["config", "set", "backoff_base", "1000"]);
    env.ok(&["config", "set", "poll_interval_ms", "100"]);
    let guard = env.start(1);
    settle_finished_jobs(&env);
    guard.stop();
    env.enqueue(r#"{"id":"pending","command":"echo 'it''s \"quoted\" ünïcode'"}"#);
    env.enqueue(r#"{"id":"scheduled","command":"true","run_at":"2099-05-06T07:08:09.123Z"}"#);
    env.ok(&["config", "set", "max_retries", "7"]);

    let st = env.status();
    assert!(st["supervisor_pid"].is_null(), "{st}");
    let path = dir.join("queue.db");
    export(&env, &path, &[]);
    let rows = check_export(&env, &path);
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["dead", "done", "pending", "retrying", "scheduled"]
    );
    assert_eq!(
        rows["pending"]["command"],
        "echo 'it''s \"quoted\" ünïcode'"
    );
    assert_eq!(
        rows["scheduled"]["available_at"],
        "2099-05-06T07:08:09.123Z"
    );
    assert_eq!(rows["done"]["priority"], 5);
    let max_retries: String = open(&path)
        .query_row(
            "SELECT value FROM config WHERE key = 'max_retries'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(max_retries, "7");
    assert_eq!(entries(&dir), ["queue.db"], "no temporary files left");

    // The CHECK constraint is in force for tools that write to the file.
    let conn = Connection::open(&path).unwrap();
    assert!(conn
        .execute(
            "INSERT INTO jobs(id, command, state) VALUES ('x', 'true', 'done')",
            []
        )
        .is_err());
    conn.execute(
        "INSERT INTO jobs(id, command, state) VALUES ('y', 'true', 'pending')",
        [],
    )
    .unwrap();
    let defaults: (i64, i64, i64) = conn
        .query_row(
            "SELECT attempts, max_retries, priority FROM jobs WHERE id = 'y'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(defaults, (0, 3, 0));
    env.verify_store();
}

#[test]
fn export_of_an_empty_queue() {
    let env = Env::new();
    let dir = out_dir(&env);
    let path = dir.join("empty.db");
    export(&env, &path, &[]);
    let rows = check_export(&env, &path);
    assert!(rows.is_empty());
}

#[test]
fn an_existing_file_is_replaced_only_with_force() {
    let env = Env::new();
    let dir = out_dir(&env);
    env.enqueue(r#"{"id":"a","command":"true"}"#);
    let path = dir.join("existing.db");
    let old = b"precious, not a database\n".to_vec();
    std::fs::write(&path, &old).unwrap();

    let err = env.fails(&["export", "--sqlite", path.to_str().unwrap()], 2);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), old, "file untouched");
    assert_eq!(entries(&dir), ["existing.db"]);

    export(&env, &path, &["--force"]);
    let rows = check_export(&env, &path);
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(entries(&dir), ["existing.db"]);

    // Replacing an earlier export works too, and takes the newer contents.
    env.enqueue(r#"{"id":"b","command":"true"}"#);
    env.fails(&["export", "--sqlite", path.to_str().unwrap()], 2);
    assert_eq!(job_rows(&open(&path)).len(), 1);
    export(&env, &path, &["--force"]);
    assert_eq!(check_export(&env, &path).len(), 2);
    assert_eq!(entries(&dir), ["existing.db"]);
}

#[test]
fn an_unwritable_path_is_a_clear_error_and_leaves_nothing() {
    let env = Env::new();
    let dir = out_dir(&env);
    env.enqueue(r#"{"id":"a","command":"true"}"#);
    std::fs::write(dir.join("file.txt"), "x").unwrap();
    std::fs::create_dir(dir.join("a-dir")).unwrap();
    let before = entries(&dir);

    let cases = [
        (dir.join("file.txt").join("out.db"), "not a directory"),
        (
            dir.join("file.txt").join("sub").join("out.db"),
            "not a directory",
        ),
        (dir.join("missing").join("out.db"), "does not exist"),
        (dir.join("a-dir"), "is a directory"),
    ];
    for (path, expect) in &cases {
        for force in [false, true] {
            let mut args = vec!["export", "--sqlite", path.to_str().unwrap()];
            if force {
                args.push("--force");
            }
            let out = env.run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} succeeded");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert!(err.starts_with("error: "), "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
            assert!(err.contains(expect), "{args:?}: {err}");
            assert!(err.contains(path.to_str().unwrap()), "{args:?}: {err}");
            assert!(out.stdout.is_empty(), "{args:?}");
            assert_eq!(entries(&dir), before, "{args:?} left something behind");
            assert_eq!(entries(&dir.join("a-dir")), Vec::<String>::new());
        }
    }
    assert_eq!(std::fs::read_to_string(dir.join("file.txt")).unwrap(), "x");
    assert!(!dir.join("missing").exists());
    // The queue is unchanged.
    assert_eq!(env.count("pending"), 1);
}

#[test]
fn export_of_many_jobs_while_workers_are_busy() {
    const JOBS: usize = 5_000;
    let env = Env::new();
    let dir = out_dir(&env);
    let guard = env.start(2);
    let file = env.file("jobs.jsonl");
    let lines: String = (0..JOBS)
        .map(|i| format!("{{\"id\":\"m{i:05}\",\"command\":\"true\"}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    env.ok(&["enqueue", "--file", file.to_str().unwrap()]);
    // The workers take jobs from pending to completed while the supervisor writes the file.
    let path = dir.join("many.db");
    let out = env.ok(&["export", "--sqlite", path.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["jobs"], JOBS);
    assert_eq!(v["path"], path.display().to_string());
    let conn = open(&path);
    let info = table_info(&conn, "jobs");
    assert_eq!(
        info[..JOBS_COLUMNS.len()],
        expected(&JOBS_COLUMNS)[..],
        "the documented jobs columns"
    );
    let (rows, distinct, bad_states): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT id), \
             sum(state NOT IN ('pending','processing','completed','failed','dead')) FROM jobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, distinct, bad_states), (JOBS as i64, JOBS as i64, 0));
    assert!(env.status()["supervisor_pid"].is_u64());
    assert!(common::log(&env).contains(&format!("exported {JOBS} jobs in")));
    assert_eq!(entries(&dir), ["many.db"], "no temporary files left");
    wait_until("every job completed", || {
        env.count("completed") == JOBS as u64
    });
    drop(guard);
}
