//! `list` in pages: more jobs than one page holds, with and without a supervisor, in id order
//! and in run order, as a JSON array and as a table; and while a supervisor changes the jobs,
//! each is listed once.

mod common;

use std::io::Write;

use common::{wait_until, Env};
use serde_json::Value;

/// More than two pages' worth (a page holds at most 1,000 jobs).
const JOBS: usize = 2_500;

/// Enqueues `n` jobs `j0000`.. running `command`, in one bulk enqueue, in reverse id order
/// (so that id order is not the order they were added).
fn enqueue_many(env: &Env, n: usize, command: &str) {
    let path = env.file("jobs.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for i in (0..n).rev() {
        writeln!(
            f,
            r#"{{"id":"j{i:04}","command":"{command}","priority":{}}}"#,
            i % 3
        )
        .unwrap();
    }
    drop(f);
    env.ok(&["enqueue", "--file", path.to_str().unwrap()]);
}

fn ids(json: &str) -> Vec<String> {
    let v: Vec<Value> = serde_json::from_str(json).expect("a JSON array");
    v.iter()
        .map(|j| j["id"].as_str().expect("an id").to_string())
        .collect()
}

/// Asserts `got == want`, naming the first difference rather than printing thousands of ids.
fn same(got: &[String], want: &[String], what: &str) {
    if let Some(i) = (0..got.len().min(want.len())).find(|i| got[*i] != want[*i]) {
        panic!("{what}: at {i}, {} instead of {}", got[i], want[i]);
    }
    assert_eq!(got.len(), want.len(), "{what}: how many");
}

fn sorted_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("j{i:04}")).collect()
}

/// Every check of paging, against whoever owns the store.
fn pages_are_whole_and_ordered(env: &Env) {
    let all = sorted_ids(JOBS);
    // Piped: every job, by id, in one JSON array.
    same(&ids(&env.ok(&["list", "--json"])), &all, "list --json");
    // A window across page boundaries.
    same(
        &ids(&env.ok(&["list", "--json", "--offset", "990", "--limit", "1020"])),
        &all[990..2010],
        "a window",
    );
    same(
        &ids(&env.ok(&["list", "--json", "--state", "pending", "--limit", "3"])),
        &all[..3],
        "the first three",
    );
    // Run order: priority 2 first, then 1, then 0; within one, the order they were added
    // (reverse id order here).
    let run = ids(&env.ok(&["list", "--json", "--sort", "next-run"]));
    let mut want: Vec<(i64, usize)> = (0..JOBS).map(|i| (-((i % 3) as i64), JOBS - i)).collect();
    want.sort();
    let want: Vec<String> = want
        .into_iter()
        .map(|(_, r)| format!("j{:04}", JOBS - r))
        .collect();
    same(&run, &want, "run order");
    // A table: one header, one line per job, every row's columns where the header's are.
    let table = env.ok(&["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), JOBS + 1, "{}", &table[..400.min(table.len())]);
    assert!(lines[0].trim_start().starts_with("ID"));
    assert_eq!(lines.iter().filter(|l| l.contains("LAST ERROR")).count(), 1);
    let state_col = lines[0].find("STATE").unwrap();
    for line in &lines[1..] {
        assert_eq!(line.find("pending"), Some(state_col), "{line}");
    }
    assert!(lines[1].contains("j0000") && lines[JOBS].contains(&format!("j{:04}", JOBS - 1)));
    // `--all` and `--limit` say the same on a pipe.
    assert_eq!(env.ok(&["list", "--all"]), table);
    assert_eq!(env.ok(&["list", "--limit", "5"]).lines().count(), 6);
}

#[test]
fn list_pages_without_a_supervisor() {
    let env = Env::new();
    enqueue_many(&env, JOBS, "true");
    pages_are_whole_and_ordered(&env);
}

#[test]
fn list_pages_through_a_supervisor() {
    let env = Env::new();
    let guard = env.start(1);
    env.ok(&["worker", "pause"]);
    enqueue_many(&env, JOBS, "true");
    assert!(env.status()["supervisor_pid"].is_u64());
    pages_are_whole_and_ordered(&env);
    guard.stop();
}

#[test]
fn a_bad_sort_is_refused() {
    let env = Env::new();
    let err = env.fails(&["list", "--sort", "size"], 2);
    assert_eq!(
        err.trim(),
        "error: --sort: `size` is not an order; use id or next-run"
    );
}

#[test]
fn jobs_changing_while_listed_are_each_listed_once() {
    let env = Env::new();
    enqueue_many(&env, JOBS, "true");
    let guard = env.start(2);
    // Listed again and again while the workers move jobs from pending to completed.
    let mut rounds = 0;
    loop {
        let listed = ids(&env.ok(&["list", "--json"]));
        same(&listed, &sorted_ids(JOBS), "each job once, by id");
        rounds += 1;
        if env.count("completed") == JOBS as u64 {
            break;
        }
        assert!(rounds < 1000, "the jobs never finished");
    }
    wait_until("every job completed", || {
        env.count("completed") == JOBS as u64
    });
    guard.stop();
}
