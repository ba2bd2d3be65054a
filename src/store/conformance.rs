//! The behaviour every [`JobStore`] backend must show, written once against `&dyn JobStore` and
//! run against each backend by [`conformance_tests!`].
//!
//! A backend takes part by implementing [`Harness`] (open a store, and open the same store again)
//! and invoking the macro once in its test module:
//!
//! ```ignore
//! struct PgHarness { /* a private, empty database or schema */ }
//! impl crate::store::conformance::Harness for PgHarness {
//!     fn open(&mut self) -> Box<dyn JobStore> { /* connect to it */ }
//! }
//! crate::store::conformance::conformance_tests!(PgHarness::new());
//! // or, when the backend needs something the machine may lack:
//! crate::store::conformance::conformance_tests!(#[ignore = "needs PostgreSQL"] PgHarness::new());
//! // or, to decide at run time (the guard is evaluated first in each test; false skips it, and
//! // the guard itself says so loudly):
//! crate::store::conformance::conformance_tests!(skip_unless(pg_available()) PgHarness::new());
//! ```
//!
//! The macro expands into one `#[test]` per behaviour below; the expression is evaluated once per
//! test (and once per case of the property test), so every test starts from an empty store.
//! A backend is accepted when it passes them unchanged.

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use crate::model::{
    Config, ConfigKey, Job, JobState, Millis, NewJob, Outcome, RetryDecision, RunOutput,
};
use crate::store::{FailOrDone, JobStore, ListOrder, RunEnd, StoreError};

/// How the suite gets at one backend's store.
pub trait Harness {
    /// Opens the store under test. The first call finds it empty. Every later call opens the
    /// same store again, as the next owner would: the suite drops every handle from earlier
    /// calls before it calls `open` again, and flushes first what must survive. Failing to
    /// open is a test failure (panic with the reason).
    fn open(&mut self) -> Box<dyn JobStore>;
}

/// Makes a fresh harness (an empty store) each time it is called.
pub type Fresh<'a> = &'a dyn Fn() -> Box<dyn Harness>;

/// Expands into one `#[test]` per conformance behaviour for the harness built by the given
/// expression (evaluated anew for each test). Attributes given before the expression (such as
/// `#[ignore = "why"]`) go on every test.
macro_rules! conformance_tests {
    (skip_unless($guard:expr) $(#[$attr:meta])* $make:expr) => {
        $crate::store::conformance::conformance_tests!(@all ($guard) [$(#[$attr])*] $make);
    };
    ($(#[$attr:meta])* $make:expr) => {
        $crate::store::conformance::conformance_tests!(@all (true) [$(#[$attr])*] $make);
    };
    (@all $guard:tt $attrs:tt $make:expr) => {
        $crate::store::conformance::conformance_tests!(@each $guard $attrs $make;
            enqueue_reserve_complete,
            enqueue_defaults_and_fields,
            duplicates_are_refused_and_change_nothing,
            priority_then_time_then_fifo,
            scheduled_jobs_become_due_in_reserve,
            fail_follows_the_retry_rule_then_dlq_retry,
            finish_refuses_a_job_that_is_not_processing,
            finish_and_reserve_is_one_step,
            finish_and_reserve_batch_is_one_step,
            dlq_retry_of_a_job_that_is_not_dead,
            release_returns_without_counting_an_attempt,
            reserve_id_takes_only_a_waiting_job,
            pgid_is_recorded_while_processing,
            recovery_counts_interrupted_attempts,
            applied_requests_are_not_applied_twice,
            config_defaults_and_set,
            list_is_ordered_and_paginated,
            list_pages_in_id_order_with_a_cursor,
            list_pages_in_run_order,
            all_jobs_yields_every_job,
            output_is_kept_per_run,
            counts_follow_every_transition,
            everything_survives_a_reopen,
            staged_jobs_are_invisible_until_published,
            staged_ids_are_taken,
            a_discarded_batch_leaves_nothing,
            unpublished_batches_are_dropped_by_the_next_owner,
            purge_removes_old_finished_jobs_step_by_step,
            random_operations_keep_the_invariants,
            cancel_moves_waiting_jobs_to_dead_and_out_of_the_order,
            remove_deletes_finished_jobs_and_their_output
        );
    };
    (@each $guard:tt $attrs:tt $make:expr; $($name:ident),*) => {
        $( $crate::store::conformance::conformance_tests!(@one $guard $attrs $make; $name); )*
    };
    (@one ($guard:expr) [$(#[$attr:meta])*] $make:expr; $name:ident) => {
        #[test]
        $(#[$attr])*
        fn $name() {
            if !$guard {
                return;
            }
            let fresh = || -> Box<dyn $crate::store::conformance::Harness> { Box::new($make) };
            $crate::store::conformance::$name(&fresh);
        }
    };
}
pub(crate) use conformance_tests;

// ---- helpers --------------------------------------------------------------------------------

fn new_job(id: &str) -> NewJob {
    NewJob {
        id: id.to_string(),
        command: format!("echo {id}"),
        max_retries: None,
        priority: 0,
        run_at: None,
        timeout_ms: None,
        cwd: None,
        env: Vec::new(),
    }
}

fn assert_consistent(store: &dyn JobStore) {
    let report = store.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn ids(jobs: Vec<Job>) -> Vec<String> {
    jobs.into_iter().map(|j| j.id).collect()
}

fn complete(s: &dyn JobStore, id: &str, now: Millis) -> Job {
    match s.finish(id, &RunEnd::Succeeded, now).expect("finish") {
        FailOrDone::Done(job) => job,
        other => panic!("expected done, got {other:?}"),
    }
}

fn fail(s: &dyn JobStore, id: &str, backoff_base: u64, now: Millis) -> crate::store::FailResult {
    let end = RunEnd::Failed {
        error: "exit code 1",
        backoff_base,
    };
    match s.finish(id, &end, now).expect("finish") {
        FailOrDone::Failed(r) => r,
        other => panic!("expected failed, got {other:?}"),
    }
}

const CFG: Config = Config {
    max_retries: 3,
    backoff_base: 2,
    poll_interval_ms: 500,
    retention_completed: crate::model::KEEP,
    retention_dead: crate::model::KEEP,
    lease_ms: 30_000,
};

// ---- behaviours -----------------------------------------------------------------------------

/// `cancel`: a pending (due or scheduled) or failed job goes to dead with "cancelled" and is
/// never reserved again; a processing, finished or unknown job is refused and left alone.
pub fn cancel_moves_waiting_jobs_to_dead_and_out_of_the_order(fresh: Fresh<'_>) {
    let s = fresh().open();
    let mut later = new_job("later");
    later.run_at = Some(10_000);
    s.enqueue(&[new_job("now"), later, new_job("run")], &CFG, 100, None)
        .unwrap();
    assert_eq!(s.reserve("w", 150).unwrap().unwrap().id, "now");
    for id in ["later", "run"] {
        let j = s.cancel(id, 200).unwrap();
        assert_eq!(
            (
                j.state,
                j.last_error.as_deref(),
                j.available_at,
                j.updated_at
            ),
            (JobState::Dead, Some(crate::store::CANCELLED), None, 200)
        );
        assert_eq!(s.get(id).unwrap().unwrap(), j);
    }
    assert_consistent(&*s);
    assert!(
        s.reserve("w", 20_000).unwrap().is_none(),
        "cancelled jobs never run"
    );
    assert!(matches!(s.cancel("now", 300), Err(StoreError::Running(_))));
    assert_eq!(s.get("now").unwrap().unwrap().state, JobState::Processing);
    assert!(matches!(
        s.cancel("run", 300),
        Err(StoreError::Finished {
            state: JobState::Dead,
            ..
        })
    ));
    assert!(matches!(
        s.cancel("nope", 300),
        Err(StoreError::NotFound(_))
    ));
    // A failed job waiting for its retry keeps its count of failures.
    fail(&*s, "now", 2, 400);
    let j = s.cancel("now", 500).unwrap();
    assert_eq!((j.state, j.attempts, j.runs), (JobState::Dead, 1, 1));
    assert!(s.reserve("w", 1_000_000).unwrap().is_none());
    let c = s.counts().unwrap();
    assert_eq!((c.dead, c.total()), (3, 3));
    assert_consistent(&*s);
    // A running job is cancelled by ending its attempt so: dead, failures unchanged.
    s.enqueue(&[new_job("r")], &CFG, 600, None).unwrap();
    assert_eq!(s.reserve("w", 600).unwrap().unwrap().id, "r");
    match s.finish("r", &RunEnd::Cancelled, 700).unwrap() {
        FailOrDone::Failed(r) => {
            assert_eq!(r.decision, RetryDecision::Dead);
            assert_eq!(
                (r.job.state, r.job.attempts, r.job.last_error.as_deref()),
                (JobState::Dead, 0, Some(crate::store::CANCELLED))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("r").unwrap().unwrap().state, JobState::Dead);
    assert!(s.reserve("w", 1_000_000).unwrap().is_none());
    assert_consistent(&*s);
}

/// `remove`: a completed or dead job and the output of its runs are deleted (not the output of
/// another job whose id starts the same); any other job is refused and left alone.
pub fn remove_deletes_finished_jobs_and_their_output(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a"), new_job("b")], &CFG, 100, None)
        .unwrap();
    s.reserve("w", 100).unwrap().unwrap();
    let out = RunOutput {
        run: 1,
        outcome: Outcome::Exited(0),
        finished_at: 200,
        duration_ms: 100,
        stdout: b"hi".to_vec(),
        stderr: Vec::new(),
    };
    s.put_output("a", &out).unwrap();
    s.put_output("ab", &out).unwrap();
    assert!(matches!(
        s.remove("a"),
        Err(StoreError::NotFinished {
            state: JobState::Processing,
            ..
        })
    ));
    assert!(s.output("a", 1).unwrap().is_some());
    complete(&*s, "a", 200);
    assert_eq!(s.remove("a").unwrap().id, "a");
    assert!(s.get("a").unwrap().is_none());
    assert!(s.output("a", 1).unwrap().is_none());
    assert!(s.output("ab", 1).unwrap().is_some());
    assert!(matches!(s.remove("a"), Err(StoreError::NotFound(_))));
    assert!(matches!(
        s.remove("b"),
        Err(StoreError::NotFinished {
            state: JobState::Pending,
            ..
        })
    ));
    s.cancel("b", 300).unwrap();
    s.remove("b").unwrap();
    assert_eq!(s.counts().unwrap().total(), 0);
    assert_consistent(&*s);
}

/// A job goes pending -> processing -> completed, with every field set on the way.
pub fn enqueue_reserve_complete(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a")], &CFG, 100, None).unwrap();
    let a = s.get("a").unwrap().unwrap();
    assert_eq!(
        (a.state, a.attempts, a.max_retries, a.runs),
        (JobState::Pending, 0, 3, 0)
    );
    assert_eq!(
        (a.created_at, a.updated_at, a.available_at),
        (100, 100, Some(100))
    );
    assert_eq!(
        (a.locked_by.as_deref(), a.locked_at, a.last_error.as_deref()),
        (None, None, None)
    );
    let r = s.reserve("w1", 200).unwrap().unwrap();
    assert_eq!(r.id, "a");
    assert_eq!(r.state, JobState::Processing);
    assert_eq!(r.locked_by.as_deref(), Some("w1"));
    assert_eq!((r.locked_at, r.updated_at, r.runs), (Some(200), 200, 1));
    assert_eq!(
        s.get("a").unwrap().unwrap(),
        r,
        "get sees what reserve returned"
    );
    assert!(
        s.reserve("w1", 200).unwrap().is_none(),
        "nothing else is due"
    );
    let c = complete(&*s, "a", 300);
    assert_eq!(c.state, JobState::Completed);
    assert_eq!(
        (c.locked_by, c.available_at, c.updated_at),
        (None, None, 300)
    );
    assert_eq!((c.attempts, c.runs, c.pgid), (0, 1, None));
    assert_eq!(s.get("a").unwrap().unwrap().state, JobState::Completed);
    assert!(s.get("nope").unwrap().is_none());
    assert_eq!(s.counts().unwrap().completed, 1);
    assert_consistent(&*s);
}

/// Every field of a new job is stored as given, with `max_retries` from the config when absent.
pub fn enqueue_defaults_and_fields(fresh: Fresh<'_>) {
    let s = fresh().open();
    let mut full = new_job("full");
    full.command = "printf '%s' \"$X\" | tr a b".into();
    full.max_retries = Some(0);
    full.priority = -7;
    full.run_at = Some(5_000);
    full.timeout_ms = Some(1_500);
    full.cwd = Some("/tmp/x y".into());
    full.env = vec![("X".into(), "1".into()), ("A".into(), "é=2".into())];
    s.enqueue(&[full.clone(), new_job("plain")], &CFG, 1_000, None)
        .unwrap();
    let j = s.get("full").unwrap().unwrap();
    assert_eq!(j.command, full.command);
    assert_eq!(
        (j.max_retries, j.priority, j.available_at),
        (0, -7, Some(5_000))
    );
    assert_eq!(j.timeout_ms, Some(1_500));
    assert_eq!(j.cwd, full.cwd);
    assert_eq!(j.env, full.env);
    let p = s.get("plain").unwrap().unwrap();
    assert_eq!((p.max_retries, p.priority, p.timeout_ms), (3, 0, None));
    assert_eq!((p.cwd, p.env), (None, vec![]));
    // An empty batch is allowed and changes nothing.
    s.enqueue(&[], &CFG, 1_000, None).unwrap();
    assert_eq!(s.counts().unwrap().pending, 2);
    assert_consistent(&*s);
}

/// A batch with an id already stored (in any state) or repeated is refused whole.
pub fn duplicates_are_refused_and_change_nothing(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a")], &CFG, 0, None).unwrap();
    let err = s
        .enqueue(&[new_job("b"), new_job("a")], &CFG, 0, None)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(ref id) if id == "a"),
        "{err}"
    );
    assert!(err.is_user_error());
    assert!(s.get("b").unwrap().is_none(), "all or nothing");
    let err = s
        .enqueue(&[new_job("c"), new_job("c")], &CFG, 0, None)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateInBatch(ref id) if id == "c"),
        "{err}"
    );
    assert!(s.get("c").unwrap().is_none());
    // A job that moved on is still a duplicate.
    s.reserve("w", 0).unwrap();
    complete(&*s, "a", 0);
    assert!(matches!(
        s.enqueue(&[new_job("a")], &CFG, 0, None),
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(s.counts().unwrap().total(), 1);
    assert_consistent(&*s);
}

/// Reservation order: higher priority first, then earlier `available_at`, then enqueue order.
pub fn priority_then_time_then_fifo(fresh: Fresh<'_>) {
    let s = fresh().open();
    let mut jobs = vec![new_job("low1"), new_job("high"), new_job("low2")];
    jobs[1].priority = 5;
    s.enqueue(&jobs, &CFG, 10, None).unwrap();
    let mut early = new_job("early-low");
    early.run_at = Some(5);
    let mut neg = new_job("negative");
    neg.priority = -1;
    s.enqueue(&[neg, early], &CFG, 10, None).unwrap();
    let mut later_high = new_job("later-high");
    later_high.priority = 9;
    later_high.run_at = Some(15);
    s.enqueue(&[later_high], &CFG, 10, None).unwrap();
    let order: Vec<String> =
        std::iter::from_fn(|| s.reserve("w", 20).unwrap().map(|j| j.id)).collect();
    assert_eq!(
        order,
        [
            "later-high",
            "high",
            "early-low",
            "low1",
            "low2",
            "negative"
        ]
    );
    assert_consistent(&*s);
}

/// A job scheduled for later is not reserved before its time, is reported by `next_wakeup`, and
/// is reserved once its time has come (reserve sees every job whose time came, with no separate
/// step).
pub fn scheduled_jobs_become_due_in_reserve(fresh: Fresh<'_>) {
    let s = fresh().open();
    assert_eq!(s.next_wakeup().unwrap(), None);
    let mut later = new_job("later");
    later.run_at = Some(1_000);
    let mut latest = new_job("latest");
    latest.run_at = Some(3_000);
    s.enqueue(&[latest, later], &CFG, 0, None).unwrap();
    assert_eq!(s.next_wakeup().unwrap(), Some(1_000));
    assert!(s.reserve("w", 999).unwrap().is_none());
    assert_eq!(s.next_wakeup().unwrap(), Some(1_000));
    assert_eq!(s.counts().unwrap().pending, 2, "waiting jobs are pending");
    assert_eq!(s.reserve("w", 1_000).unwrap().unwrap().id, "later");
    assert_eq!(s.next_wakeup().unwrap(), Some(3_000));
    // Long past its time: reserved at once.
    assert_eq!(s.reserve("w", 50_000).unwrap().unwrap().id, "latest");
    assert_eq!(s.next_wakeup().unwrap(), None);
    assert_consistent(&*s);
}

/// Failures retry after backoff_base^attempts seconds until max_retries, then the job is dead;
/// `dlq_retry` brings it back with attempts reset.
pub fn fail_follows_the_retry_rule_then_dlq_retry(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("bad")], &CFG, 0, None).unwrap();
    let mut now = 0;
    for attempt in 1..=3u32 {
        let j = s.reserve("w", now).unwrap().expect("due");
        assert_eq!((j.attempts, j.runs), (attempt - 1, attempt));
        let r = fail(&*s, "bad", 2, now);
        assert_eq!(r.job.attempts, attempt);
        assert_eq!(r.job.last_error.as_deref(), Some("exit code 1"));
        assert_eq!((r.job.locked_by.as_deref(), r.job.locked_at), (None, None));
        assert_eq!(s.get("bad").unwrap().unwrap(), r.job);
        if attempt < 3 {
            let delay = 2u64.pow(attempt) * 1000;
            assert_eq!(
                r.decision,
                RetryDecision::Retry {
                    at: now + delay,
                    delay_secs: delay / 1000
                }
            );
            assert_eq!(r.job.state, JobState::Failed);
            assert_eq!(r.job.available_at, Some(now + delay));
            assert_eq!(s.next_wakeup().unwrap(), Some(now + delay));
            assert_eq!(s.counts().unwrap().failed, 1);
            // Not before its time.
            assert!(s.reserve("w", now + delay - 1).unwrap().is_none());
            now += delay;
        } else {
            assert_eq!(r.decision, RetryDecision::Dead);
            assert_eq!(r.job.state, JobState::Dead);
            assert_eq!(r.job.available_at, None);
            assert_eq!(s.next_wakeup().unwrap(), None);
            assert!(s.reserve("w", now + 1_000_000).unwrap().is_none());
        }
        assert_consistent(&*s);
    }
    assert_eq!(s.counts().unwrap().dead, 1);
    let j = s.dlq_retry("bad", now, None).unwrap();
    assert_eq!(
        (j.state, j.attempts, j.available_at),
        (JobState::Pending, 0, Some(now))
    );
    assert_eq!(
        j.last_error.as_deref(),
        Some("exit code 1"),
        "the last error stays"
    );
    assert_eq!(s.reserve("w", now).unwrap().unwrap().id, "bad");
    assert_consistent(&*s);
}

/// Ending an attempt of a job that is not processing is refused and changes nothing.
pub fn finish_refuses_a_job_that_is_not_processing(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a")], &CFG, 0, None).unwrap();
    let err = s.finish("a", &RunEnd::Succeeded, 1).unwrap_err();
    assert!(
        !matches!(err, StoreError::Backend(_) | StoreError::Corrupt { .. }),
        "{err}"
    );
    let err = s.finish("zz", &RunEnd::Succeeded, 1).unwrap_err();
    assert!(
        !matches!(err, StoreError::Backend(_) | StoreError::Corrupt { .. }),
        "{err}"
    );
    assert!(s.release("a", 1).is_err());
    assert!(s.set_pgid("a", 7).is_err());
    assert_eq!(s.get("a").unwrap().unwrap().state, JobState::Pending);
    assert_consistent(&*s);
}

/// `finish_and_reserve` ends one attempt and reserves the worker's next job in one step.
pub fn finish_and_reserve_is_one_step(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a"), new_job("b"), new_job("c")], &CFG, 0, None)
        .unwrap();
    s.reserve("w", 0).unwrap();
    let (done, next) = s
        .finish_and_reserve("a", &RunEnd::Succeeded, "w", 5)
        .unwrap();
    assert!(matches!(done, FailOrDone::Done(ref j) if j.state == JobState::Completed));
    let next = next.expect("b is due");
    assert_eq!(
        (next.id.as_str(), next.state, next.locked_at),
        ("b", JobState::Processing, Some(5))
    );
    let end = RunEnd::Failed {
        error: "exit code 1",
        backoff_base: 2,
    };
    let (done, next) = s.finish_and_reserve("b", &end, "w", 6).unwrap();
    match done {
        FailOrDone::Failed(r) => assert_eq!((r.job.state, r.job.attempts), (JobState::Failed, 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(next.unwrap().id, "c");
    // Nothing left due: the attempt still ends.
    let (done, next) = s
        .finish_and_reserve("c", &RunEnd::Succeeded, "w", 7)
        .unwrap();
    assert!(matches!(done, FailOrDone::Done(_)));
    assert!(next.is_none());
    // The retried job comes back through it once its time has come.
    s.enqueue(&[new_job("d")], &CFG, 8, None).unwrap();
    s.reserve("w", 8).unwrap();
    let (_, next) = s
        .finish_and_reserve("d", &RunEnd::Succeeded, "w", 2_006)
        .unwrap();
    assert_eq!(next.unwrap().id, "b");
    // A job that is not processing is refused and nothing changes (no job is reserved).
    s.enqueue(&[new_job("e")], &CFG, 9, None).unwrap();
    assert!(s
        .finish_and_reserve("c", &RunEnd::Succeeded, "w", 2_007)
        .is_err());
    assert_eq!(s.get("e").unwrap().unwrap().state, JobState::Pending);
    assert_eq!(s.counts().unwrap().completed, 3);
    assert_consistent(&*s);
}

/// `finish_and_reserve_batch` (a turn of the supervisor's loop): every end recorded, one job
/// reserved per worker in order, the jobs just ended not taken again; a refused end changes
/// nothing and reserves nothing.
pub fn finish_and_reserve_batch_is_one_step(fresh: Fresh<'_>) {
    let s = fresh().open();
    let jobs: Vec<NewJob> = (0..6).map(|i| new_job(&format!("b{i}"))).collect();
    s.enqueue(&jobs, &CFG, 0, None).unwrap();
    let (done, first) = s.finish_and_reserve_batch(&[], &["w1", "w2"], 1).unwrap();
    assert!(done.is_empty());
    let got: Vec<(&str, Option<&str>, JobState)> = first
        .iter()
        .map(|j| (j.id.as_str(), j.locked_by.as_deref(), j.state))
        .collect();
    assert_eq!(
        got,
        [
            ("b0", Some("w1"), JobState::Processing),
            ("b1", Some("w2"), JobState::Processing)
        ]
    );
    let failed = RunEnd::Failed {
        error: "exit code 1",
        backoff_base: 2,
    };
    // b5 is not processing: its end is refused and changes nothing; b1 fails (retry in 2 s,
    // not due), b0 succeeds; three workers get b2, b3, b4.
    let (done, next) = s
        .finish_and_reserve_batch(
            &[("b1", failed), ("b5", failed), ("b0", RunEnd::Succeeded)],
            &["w1", "w2", "w3"],
            3,
        )
        .unwrap();
    assert!(
        matches!(&done[0], Ok(FailOrDone::Failed(r)) if r.job.id == "b1" && r.job.state == JobState::Failed && r.job.attempts == 1)
    );
    assert!(matches!(&done[1], Err(StoreError::NotFound(id)) if id == "b5"));
    assert!(
        matches!(&done[2], Ok(FailOrDone::Done(j)) if j.id == "b0" && j.state == JobState::Completed)
    );
    let b5 = s.get("b5").unwrap().unwrap();
    assert_eq!((b5.state, b5.attempts, b5.runs), (JobState::Pending, 0, 0));
    let got: Vec<(&str, Option<&str>)> = next
        .iter()
        .map(|j| (j.id.as_str(), j.locked_by.as_deref()))
        .collect();
    assert_eq!(
        got,
        [("b2", Some("w1")), ("b3", Some("w2")), ("b4", Some("w3"))]
    );
    // Fewer due than workers: the ends are recorded, the one due job is taken.
    let ends = [
        ("b2", RunEnd::Succeeded),
        ("b3", RunEnd::Succeeded),
        ("b4", RunEnd::Cancelled),
    ];
    let (done, next) = s
        .finish_and_reserve_batch(&ends, &["w1", "w2", "w3"], 4)
        .unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(s.get("b4").unwrap().unwrap().state, JobState::Dead);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, "b5");
    // The failed job comes back once its retry time has come.
    let (_, next) = s
        .finish_and_reserve_batch(&[("b5", RunEnd::Succeeded)], &["w1", "w2"], 2_004)
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].id.as_str(), next[0].runs), ("b1", 2));
    // No worker to give a job to (a stop under way): the ends alone.
    s.enqueue(&[new_job("b6")], &CFG, 2_005, None).unwrap();
    let (done, next) = s
        .finish_and_reserve_batch(&[("b1", RunEnd::Succeeded)], &[], 2_006)
        .unwrap();
    assert!(matches!(&done[..], [Ok(FailOrDone::Done(j))] if j.id == "b1"));
    assert!(next.is_empty());
    let c = s.counts().unwrap();
    assert_eq!(
        (c.completed, c.dead, c.pending, c.get(JobState::Processing)),
        (5, 1, 1, 0)
    );
    assert_consistent(&*s);
}

/// `dlq_retry` names what is wrong: no such job, or a job that is not dead.
pub fn dlq_retry_of_a_job_that_is_not_dead(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a")], &CFG, 0, None).unwrap();
    assert!(matches!(
        s.dlq_retry("a", 0, None),
        Err(StoreError::WrongState {
            actual: JobState::Pending,
            expected: JobState::Dead,
            ..
        })
    ));
    assert!(matches!(
        s.dlq_retry("zz", 0, None),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.get("a").unwrap().unwrap().state, JobState::Pending);
    assert_consistent(&*s);
}

/// A forced stop returns a processing job to pending without counting an attempt; it keeps its
/// place in the queue.
pub fn release_returns_without_counting_an_attempt(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a"), new_job("b")], &CFG, 0, None)
        .unwrap();
    s.reserve("w", 5).unwrap();
    s.set_pgid("a", 4242).unwrap();
    let j = s.release("a", 10).unwrap();
    assert_eq!((j.state, j.attempts, j.pgid), (JobState::Pending, 0, None));
    assert_eq!((j.locked_by, j.locked_at, j.runs), (None, None, 1));
    assert_eq!(
        s.reserve("w", 10).unwrap().unwrap().id,
        "a",
        "keeps its place"
    );
    assert_consistent(&*s);
}

/// `reserve_id` takes a pending or failed job, due or not, as `reserve` would, and nothing
/// else; the job is then out of the order.
pub fn reserve_id_takes_only_a_waiting_job(fresh: Fresh<'_>) {
    let s = fresh().open();
    let mut later = new_job("later");
    later.run_at = Some(1_000_000);
    s.enqueue(&[new_job("a"), new_job("b"), later], &CFG, 0, None)
        .unwrap();
    let j = s.reserve_id("b", "w", 5).unwrap().expect("b taken");
    assert_eq!(
        (j.state, j.runs, j.locked_at),
        (JobState::Processing, 1, Some(5))
    );
    assert_eq!(j.locked_by.as_deref(), Some("w"));
    assert!(s.reserve_id("b", "w", 6).unwrap().is_none(), "processing");
    assert!(s.reserve_id("zz", "w", 6).unwrap().is_none(), "unknown");
    let j = s
        .reserve_id("later", "w", 7)
        .unwrap()
        .expect("scheduled taken");
    assert_eq!(j.state, JobState::Processing);
    assert_eq!(s.next_wakeup().unwrap(), None, "out of the schedule");
    // A failed job waiting for its retry.
    fail(&*s, "b", 2, 10);
    assert_eq!(s.get("b").unwrap().unwrap().state, JobState::Failed);
    assert_eq!(s.reserve_id("b", "w", 11).unwrap().unwrap().runs, 2);
    complete(&*s, "b", 12);
    assert!(s.reserve_id("b", "w", 13).unwrap().is_none(), "completed");
    assert_eq!(s.reserve("w", 2_000_000).unwrap().unwrap().id, "a");
    assert!(
        s.reserve("w", 2_000_000).unwrap().is_none(),
        "nothing else waits"
    );
    assert_eq!(s.counts().unwrap().processing, 2);
    assert_consistent(&*s);
}

/// The process group of a running job is stored with it and cleared when the attempt ends.
pub fn pgid_is_recorded_while_processing(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a")], &CFG, 0, None).unwrap();
    let r = s.reserve("w", 0).unwrap().unwrap();
    assert_eq!(r.pgid, None);
    s.set_pgid("a", 4242).unwrap();
    assert_eq!(s.get("a").unwrap().unwrap().pgid, Some(4242));
    assert!(matches!(s.set_pgid("zz", 1), Err(StoreError::NotFound(_))));
    let r = fail(&*s, "a", 1, 0);
    assert_eq!(r.job.pgid, None);
    assert_eq!(s.get("a").unwrap().unwrap().pgid, None);
    assert_eq!(s.reserve("w", 10_000).unwrap().unwrap().pgid, None);
    assert_consistent(&*s);
}

/// A new owner counts every attempt left in processing as failed, under the retry rule.
pub fn recovery_counts_interrupted_attempts(fresh: Fresh<'_>) {
    let s = fresh().open();
    let mut one = new_job("one-try");
    one.max_retries = Some(1);
    s.enqueue(&[new_job("a"), one, new_job("waiting")], &CFG, 0, None)
        .unwrap();
    s.reserve("w", 0).unwrap();
    s.reserve("w", 0).unwrap();
    let mut res = s.recover_interrupted("interrupted", 2, 50).unwrap();
    res.sort_by(|x, y| x.job.id.cmp(&y.job.id));
    assert_eq!(res.len(), 2);
    assert_eq!(res[0].job.id, "a");
    assert_eq!(
        res[0].decision,
        RetryDecision::Retry {
            at: 2_050,
            delay_secs: 2
        }
    );
    assert_eq!(res[1].decision, RetryDecision::Dead);
    let a = s.get("a").unwrap().unwrap();
    assert_eq!((a.state, a.attempts), (JobState::Failed, 1));
    assert_eq!(a.last_error.as_deref(), Some("interrupted"));
    assert_eq!(s.get("one-try").unwrap().unwrap().state, JobState::Dead);
    assert_eq!(s.get("waiting").unwrap().unwrap().state, JobState::Pending);
    assert_eq!(s.counts().unwrap().processing, 0);
    assert!(s
        .recover_interrupted("interrupted", 2, 60)
        .unwrap()
        .is_empty());
    assert_consistent(&*s);
}

/// A spool request applied once is not applied again, until the applied ids are forgotten.
pub fn applied_requests_are_not_applied_twice(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("a")], &CFG, 0, Some("REQ1")).unwrap();
    s.enqueue(&[new_job("a")], &CFG, 0, Some("REQ1")).unwrap();
    assert_eq!(s.counts().unwrap().pending, 1);
    s.config_set(ConfigKey::BackoffBase, 5, Some("REQ2"))
        .unwrap();
    s.config_set(ConfigKey::BackoffBase, 9, Some("REQ2"))
        .unwrap();
    assert_eq!(s.config().unwrap().backoff_base, 5);
    // A dead job retried once by a request, then dead again: the same request does nothing.
    let mut one = new_job("d");
    one.max_retries = Some(0);
    s.enqueue(&[one], &CFG, 0, None).unwrap();
    s.reserve("w", 0).unwrap();
    s.reserve("w", 0).unwrap();
    fail(&*s, "d", 2, 0);
    let j = s.dlq_retry("d", 1, Some("REQ3")).unwrap();
    assert_eq!(j.state, JobState::Pending);
    s.reserve("w", 1).unwrap();
    fail(&*s, "d", 2, 1);
    let j = s.dlq_retry("d", 2, Some("REQ3")).unwrap();
    assert_eq!(
        j.state,
        JobState::Dead,
        "not applied twice; returns the job as it is"
    );
    s.forget_applied().unwrap();
    assert!(s.enqueue(&[new_job("a")], &CFG, 0, Some("REQ1")).is_err());
    assert_consistent(&*s);
}

/// The configuration holds defaults until set; each key is set on its own.
pub fn config_defaults_and_set(fresh: Fresh<'_>) {
    let mut h = fresh();
    let s = h.open();
    assert_eq!(s.config().unwrap(), Config::default());
    s.config_set(ConfigKey::MaxRetries, 7, None).unwrap();
    s.config_set(ConfigKey::PollIntervalMs, 300, None).unwrap();
    let c = s.config().unwrap();
    assert_eq!(
        (c.max_retries, c.backoff_base, c.poll_interval_ms),
        (7, 2, 300)
    );
    // New jobs take max_retries from the config they are given.
    s.enqueue(&[new_job("a")], &c, 0, None).unwrap();
    assert_eq!(s.get("a").unwrap().unwrap().max_retries, 7);
    s.flush().unwrap();
    drop(s);
    assert_eq!(h.open().config().unwrap(), c, "config survives a reopen");
}

/// `list` returns one state's jobs (or all states, in lifecycle order), ordered by id (byte
/// order), with offset and limit.
pub fn list_is_ordered_and_paginated(fresh: Fresh<'_>) {
    let s = fresh().open();
    let jobs: Vec<NewJob> = [5, 1, 9, 0, 3, 8, 2, 7, 4, 6]
        .iter()
        .map(|i| new_job(&format!("j{i}")))
        .collect();
    s.enqueue(&jobs, &CFG, 0, None).unwrap();
    assert_eq!(
        ids(s.list(Some(JobState::Pending), 0, 3).unwrap()),
        ["j0", "j1", "j2"]
    );
    assert_eq!(
        ids(s.list(Some(JobState::Pending), 8, 5).unwrap()),
        ["j8", "j9"]
    );
    assert!(s.list(Some(JobState::Pending), 10, 5).unwrap().is_empty());
    assert!(s.list(Some(JobState::Pending), 0, 0).unwrap().is_empty());
    assert!(s.list(Some(JobState::Dead), 0, 5).unwrap().is_empty());
    assert_eq!(s.list(None, 0, usize::MAX).unwrap().len(), 10);
    // Byte order of ids, not numeric: "j10" sorts before "j2".
    let mut z = new_job("Z");
    z.priority = 1;
    s.enqueue(&[new_job("j10"), z], &CFG, 0, None).unwrap();
    assert_eq!(
        ids(s.list(Some(JobState::Pending), 0, 4).unwrap()),
        ["Z", "j0", "j1", "j10"]
    );
    // All states: lifecycle order, then id.
    assert_eq!(s.reserve("w", 0).unwrap().unwrap().id, "Z");
    let all = s.list(None, 0, usize::MAX).unwrap();
    assert_eq!(all[0].id, "j0");
    assert_eq!(all.last().unwrap().id, "Z");
    assert_eq!(all.last().unwrap().state, JobState::Processing);
    assert_eq!(ids(s.list(None, 10, 2).unwrap()), ["j9", "Z"]);
}

/// Every page of `list_page` in `order` from the first, `size` at a time (checking that `next`
/// is set exactly when a page is full).
fn all_pages(
    s: &dyn JobStore,
    states: &[JobState],
    order: ListOrder,
    size: usize,
    now: Millis,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = s
            .list_page(states, order, after.as_deref(), size, now)
            .expect("list_page");
        assert_eq!(
            page.next.is_some(),
            page.jobs.len() == size,
            "next iff full"
        );
        assert!(page.jobs.len() <= size);
        pages.push(ids(page.jobs));
        match page.next {
            Some(n) => after = Some(n),
            None => return pages,
        }
    }
}

/// `list_page` in id order: every listed job once across pages, by id whatever its state;
/// a cursor stays valid while jobs change, and a job that moves between pages is listed once.
pub fn list_pages_in_id_order_with_a_cursor(fresh: Fresh<'_>) {
    let s = fresh().open();
    let jobs: Vec<NewJob> = (0..25)
        .rev()
        .map(|i| new_job(&format!("j{i:02}")))
        .collect();
    s.enqueue(&jobs, &CFG, 0, None).unwrap();
    // Some in other states: j24 (enqueued first) runs and completes, the next one runs.
    let first = s.reserve("w", 1).unwrap().unwrap();
    complete(&*s, &first.id, 2);
    let running = s.reserve("w", 3).unwrap().unwrap();
    let want: Vec<String> = (0..25).map(|i| format!("j{i:02}")).collect();
    let pages = all_pages(&*s, &[], ListOrder::Id, 7, 3);
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [7, 7, 7, 4],
        "{pages:?}"
    );
    assert_eq!(pages.concat(), want, "by id across states");
    // Exactly full: the last page is empty.
    let pages = all_pages(&*s, &[], ListOrder::Id, 25, 3);
    assert_eq!(pages.len(), 2);
    assert!(pages[1].is_empty());
    // A filter on states.
    let done = all_pages(
        &*s,
        &[JobState::Completed, JobState::Processing],
        ListOrder::Id,
        1,
        3,
    );
    let mut both = vec![first.id.clone(), running.id.clone()];
    both.sort();
    assert_eq!(done.concat(), both);
    assert!(all_pages(&*s, &[JobState::Dead], ListOrder::Id, 5, 3)
        .concat()
        .is_empty());
    // Nothing asked for: nothing, and no next page.
    let page = s.list_page(&[], ListOrder::Id, None, 0, 3).unwrap();
    assert!(page.jobs.is_empty() && page.next.is_none());
    // Jobs change between pages: each is listed once, in its state when its page was read.
    let page = s.list_page(&[], ListOrder::Id, None, 10, 3).unwrap();
    assert_eq!(page.jobs.last().unwrap().id, "j09");
    let cursor = page.next.unwrap();
    // j05 (already listed) and j15 (not yet) both move on.
    assert_eq!(s.cancel("j05", 4).unwrap().state, JobState::Dead);
    assert_eq!(s.cancel("j15", 4).unwrap().state, JobState::Dead);
    let rest = s
        .list_page(&[], ListOrder::Id, Some(&cursor), 100, 4)
        .unwrap();
    assert_eq!(ids(rest.jobs.clone()), want[10..].to_vec());
    let j15 = rest.jobs.iter().find(|j| j.id == "j15").unwrap();
    assert_eq!(j15.state, JobState::Dead);
}

/// `list_page` in run order: the due jobs as `reserve` would take them, then those waiting for
/// a later time, earliest first; only pending and failed jobs.
pub fn list_pages_in_run_order(fresh: Fresh<'_>) {
    let s = fresh().open();
    let now = 1_000_000;
    let mut jobs = Vec::new();
    for (id, priority, run_at) in [
        ("a", 0, None),
        ("b", 5, None),
        ("c", 0, Some(now - 10)),
        ("d", 5, Some(now + 300)),
        ("e", -1, Some(now + 100)),
        ("f", 0, None),
        ("g", 9, None),
    ] {
        let mut j = new_job(id);
        j.priority = priority;
        j.run_at = run_at;
        jobs.push(j);
    }
    s.enqueue(&jobs, &CFG, now, None).unwrap();
    // g runs and fails: back with a retry time (now + 2 s: base 2, first failure).
    assert_eq!(s.reserve("w", now).unwrap().unwrap().id, "g");
    let g = fail(&*s, "g", 2, now);
    assert_eq!(g.job.state, JobState::Failed);
    // b runs: not listed (it has no next run while it runs).
    assert_eq!(s.reserve("w", now).unwrap().unwrap().id, "b");
    let order = ["c", "a", "f", "e", "d", "g"];
    for size in [1, 2, 4, 6, 50] {
        let pages = all_pages(&*s, &[], ListOrder::NextRun, size, now);
        assert_eq!(pages.concat(), order, "pages of {size}: {pages:?}");
    }
    assert_eq!(
        all_pages(&*s, &[JobState::Failed], ListOrder::NextRun, 2, now).concat(),
        ["g"]
    );
    assert!(
        all_pages(&*s, &[JobState::Completed], ListOrder::NextRun, 2, now)
            .concat()
            .is_empty()
    );
    // What was listed first is what `reserve` takes.
    assert_eq!(s.reserve("w", now).unwrap().unwrap().id, "c");
    // A cursor of the other order (or any other bytes) is refused, as the caller's error.
    let bad = s.list_page(&[], ListOrder::NextRun, Some(&[7, 7]), 2, now);
    assert!(matches!(bad, Err(StoreError::BadCursor)), "{bad:?}");
    assert!(StoreError::BadCursor.is_user_error());
}

/// `all_jobs` yields every job once, state by state in lifecycle order.
pub fn all_jobs_yields_every_job(fresh: Fresh<'_>) {
    let s = fresh().open();
    let jobs: Vec<NewJob> = (0..20).map(|i| new_job(&format!("k{i:02}"))).collect();
    s.enqueue(&jobs, &CFG, 0, None).unwrap();
    for _ in 0..5 {
        let j = s.reserve("w", 0).unwrap().unwrap();
        complete(&*s, &j.id, 1);
    }
    s.reserve("w", 1).unwrap();
    let all: Vec<Job> = s.all_jobs().collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 20);
    let states: Vec<JobState> = all.iter().map(|j| j.state).collect();
    let mut sorted = states.clone();
    sorted.sort();
    assert_eq!(states, sorted, "lifecycle order");
    let mut seen: Vec<&str> = all.iter().map(|j| j.id.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 20);
    assert_eq!(s.list(None, 0, usize::MAX).unwrap(), all);
}

/// The output of each run is kept under its run number.
pub fn output_is_kept_per_run(fresh: Fresh<'_>) {
    let mut h = fresh();
    let s = h.open();
    let out = |run, outcome| RunOutput {
        run,
        outcome,
        finished_at: 1,
        duration_ms: 2,
        stdout: format!("run {run}").into_bytes(),
        stderr: vec![0xff, 0, b'x'],
    };
    s.put_output("a", &out(1, Outcome::Exited(3))).unwrap();
    s.put_output("a", &out(2, Outcome::TimedOut { after_ms: 9 }))
        .unwrap();
    s.put_output("ab", &out(1, Outcome::SpawnFailed("no".into())))
        .unwrap();
    assert_eq!(
        s.output("a", 2).unwrap().unwrap(),
        out(2, Outcome::TimedOut { after_ms: 9 })
    );
    assert_eq!(s.output("a", 1).unwrap().unwrap().stdout, b"run 1");
    assert_eq!(
        s.output("ab", 1).unwrap().unwrap().outcome,
        Outcome::SpawnFailed("no".into())
    );
    assert!(s.output("a", 3).unwrap().is_none());
    assert!(s.output("b", 1).unwrap().is_none());
    s.flush().unwrap();
    drop(s);
    let s = h.open();
    assert_eq!(
        s.output("a", 1).unwrap().unwrap(),
        out(1, Outcome::Exited(3))
    );
}

/// `counts` matches the jobs in each state after every kind of transition.
pub fn counts_follow_every_transition(fresh: Fresh<'_>) {
    let mut h = fresh();
    let s = h.open();
    let check = |s: &dyn JobStore| {
        let c = s.counts().unwrap();
        for st in JobState::ALL {
            let n = s.list(Some(st), 0, usize::MAX).unwrap().len() as u64;
            assert_eq!(c.get(st), n, "{st}");
        }
        let report = s.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.jobs, c.total());
    };
    check(&*s);
    let mut once = new_job("once");
    once.max_retries = Some(1);
    let mut later = new_job("later");
    later.run_at = Some(100);
    s.enqueue(&[new_job("a"), new_job("b"), once, later], &CFG, 0, None)
        .unwrap();
    check(&*s);
    s.reserve("w", 0).unwrap(); // a
    check(&*s);
    complete(&*s, "a", 0);
    check(&*s);
    s.reserve("w", 0).unwrap(); // b
    fail(&*s, "b", 2, 0);
    check(&*s);
    s.reserve("w", 0).unwrap(); // once
    fail(&*s, "once", 2, 0);
    check(&*s);
    s.dlq_retry("once", 0, None).unwrap();
    check(&*s);
    s.reserve("w", 0).unwrap(); // once
    s.release("once", 0).unwrap();
    check(&*s);
    s.reserve("w", 0).unwrap(); // once
    let (_, next) = s
        .finish_and_reserve("once", &RunEnd::Succeeded, "w", 5_000)
        .unwrap();
    assert!(next.is_some());
    check(&*s);
    s.recover_interrupted("interrupted", 2, 5_000).unwrap();
    check(&*s);
    s.flush().unwrap();
    drop(s);
    let s = h.open();
    check(&*s);
    let c = s.counts().unwrap();
    assert_eq!(c.total(), 4);
}

/// Everything flushed survives closing and reopening the store.
pub fn everything_survives_a_reopen(fresh: Fresh<'_>) {
    let mut h = fresh();
    let s = h.open();
    let mut later = new_job("later");
    later.run_at = Some(10_000);
    s.enqueue(&[new_job("a"), new_job("b"), later], &CFG, 0, None)
        .unwrap();
    let a = s.reserve("w", 0).unwrap().unwrap();
    s.set_pgid("a", 77).unwrap();
    s.flush().unwrap();
    let before: Vec<Job> = s.all_jobs().collect::<Result<_, _>>().unwrap();
    drop(s);
    let s = h.open();
    let after: Vec<Job> = s.all_jobs().collect::<Result<_, _>>().unwrap();
    assert_eq!(before, after);
    assert_eq!(s.get("a").unwrap().unwrap().locked_at, a.locked_at);
    let c = s.counts().unwrap();
    assert_eq!((c.pending, c.processing), (2, 1));
    assert_eq!(s.next_wakeup().unwrap(), Some(10_000));
    assert_eq!(s.reserve("w", 1).unwrap().unwrap().id, "b");
    assert_eq!(s.reserve("w", 10_000).unwrap().unwrap().id, "later");
    assert_consistent(&*s);
}

/// Jobs staged under a batch are invisible until `publish` makes them all pending at once, in
/// the order they were staged; the batch then counts as an applied request.
pub fn staged_jobs_are_invisible_until_published(fresh: Fresh<'_>) {
    let mut h = fresh();
    let s = h.open();
    s.enqueue(&[new_job("before")], &CFG, 0, None).unwrap();
    let chunk = |from: usize, to: usize| -> Vec<NewJob> {
        (from..to).map(|i| new_job(&format!("b{i:03}"))).collect()
    };
    s.stage("BATCH1", &chunk(0, 3), &CFG, 10).unwrap();
    let mut later = new_job("b-later");
    later.run_at = Some(1_000);
    s.stage("BATCH1", &[later], &CFG, 11).unwrap();
    s.stage("BATCH1", &chunk(3, 5), &CFG, 12).unwrap();
    assert!(s.get("b000").unwrap().is_none());
    assert_eq!(s.counts().unwrap().total(), 1);
    assert_eq!(s.list(None, 0, usize::MAX).unwrap().len(), 1);
    assert_eq!(s.all_jobs().count(), 1);
    assert!(!s.is_applied("BATCH1").unwrap());
    assert_eq!(s.reserve("w", 20).unwrap().unwrap().id, "before");
    assert!(
        s.reserve("w", 20).unwrap().is_none(),
        "staged jobs are not reserved"
    );
    assert_consistent(&*s);
    assert_eq!(s.publish("BATCH1", 20).unwrap(), 6);
    assert!(s.is_applied("BATCH1").unwrap());
    let c = s.counts().unwrap();
    assert_eq!((c.pending, c.processing), (6, 1));
    let b1 = s.get("b001").unwrap().unwrap();
    assert_eq!(
        (b1.state, b1.created_at, b1.available_at),
        (JobState::Pending, 10, Some(10))
    );
    assert_eq!(b1.max_retries, 3);
    assert_eq!(s.next_wakeup().unwrap(), Some(1_000));
    let order: Vec<String> =
        std::iter::from_fn(|| s.reserve("w", 30).unwrap().map(|j| j.id)).collect();
    assert_eq!(
        order,
        ["b000", "b001", "b002", "b003", "b004"],
        "staging order"
    );
    assert_eq!(s.reserve("w", 1_000).unwrap().unwrap().id, "b-later");
    assert!(matches!(
        s.stage("BATCH1", &chunk(9, 10), &CFG, 40),
        Err(StoreError::BatchPublished(_)) | Ok(())
    ));
    assert_consistent(&*s);
    s.flush().unwrap();
    drop(s);
    let s = h.open();
    assert_eq!(s.counts().unwrap().total(), 7);
    assert_consistent(&*s);
}

/// A staged id is taken: by another job, another batch, or a later chunk of the same batch.
pub fn staged_ids_are_taken(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.enqueue(&[new_job("live")], &CFG, 0, None).unwrap();
    s.stage("B1", &[new_job("s1"), new_job("s2")], &CFG, 0)
        .unwrap();
    let dup = |r: Result<(), StoreError>| match r {
        Err(StoreError::Duplicate(id)) => id,
        other => panic!("expected a duplicate, got {other:?}"),
    };
    let dup_in = |r: Result<(), StoreError>| match r {
        Err(StoreError::DuplicateInBatch(id)) => id,
        other => panic!("expected a duplicate in the batch, got {other:?}"),
    };
    assert_eq!(dup(s.enqueue(&[new_job("s1")], &CFG, 0, None)), "s1");
    assert_eq!(
        dup(s.stage("B1", &[new_job("x"), new_job("live")], &CFG, 0)),
        "live"
    );
    assert_eq!(
        dup_in(s.stage("B1", &[new_job("y"), new_job("s2")], &CFG, 0)),
        "s2"
    );
    assert_eq!(
        dup_in(s.stage("B1", &[new_job("z"), new_job("z")], &CFG, 0)),
        "z"
    );
    assert_eq!(dup(s.stage("B2", &[new_job("s1")], &CFG, 0)), "s1");
    // Refused calls staged nothing: x, y and z are free.
    s.stage("B2", &[new_job("x"), new_job("y"), new_job("z")], &CFG, 0)
        .unwrap();
    assert_eq!(s.publish("B1", 0).unwrap(), 2);
    assert_eq!(s.publish("B2", 0).unwrap(), 3);
    assert_eq!(s.counts().unwrap().pending, 6);
    assert_consistent(&*s);
}

/// `discard` drops what a batch staged; its ids are free again.
pub fn a_discarded_batch_leaves_nothing(fresh: Fresh<'_>) {
    let s = fresh().open();
    s.stage("B1", &[new_job("a"), new_job("b")], &CFG, 0)
        .unwrap();
    s.stage("B1", &[new_job("c")], &CFG, 0).unwrap();
    assert_eq!(s.discard("B1").unwrap(), 3);
    assert_eq!(s.discard("B1").unwrap(), 0);
    assert!(!s.is_applied("B1").unwrap());
    assert_eq!(s.publish("B1", 0).unwrap(), 0, "nothing left to publish");
    s.enqueue(&[new_job("a"), new_job("b"), new_job("c")], &CFG, 0, None)
        .unwrap();
    assert_eq!(s.counts().unwrap().pending, 3);
    assert!(matches!(
        s.discard("B1"),
        Err(StoreError::BatchPublished(_)) | Ok(0)
    ));
    assert_consistent(&*s);
}

/// Batches staged by an owner that went away before publishing are invisible to the next owner,
/// which drops them; published ones are complete.
pub fn unpublished_batches_are_dropped_by_the_next_owner(fresh: Fresh<'_>) {
    let mut h = fresh();
    let s = h.open();
    s.stage("DONE", &[new_job("d1"), new_job("d2")], &CFG, 0)
        .unwrap();
    s.publish("DONE", 0).unwrap();
    s.stage("HALF", &[new_job("h1"), new_job("h2")], &CFG, 0)
        .unwrap();
    s.stage("HALF", &[new_job("h3")], &CFG, 0).unwrap();
    s.flush().unwrap();
    drop(s);
    let s = h.open();
    assert_eq!(s.counts().unwrap().total(), 2);
    assert!(s.get("h1").unwrap().is_none());
    assert_eq!(s.discard_unpublished().unwrap(), 3);
    assert_eq!(s.discard_unpublished().unwrap(), 0);
    assert!(!s.is_applied("HALF").unwrap());
    assert!(s.is_applied("DONE").unwrap());
    s.enqueue(&[new_job("h1")], &CFG, 0, None).unwrap();
    assert_eq!(s.counts().unwrap().total(), 3);
    assert_consistent(&*s);
}

/// Retention: `purge` removes completed (or dead) jobs that finished before the cut-off, with
/// their output, examining at most `limit` jobs per step and saying where to go on.
pub fn purge_removes_old_finished_jobs_step_by_step(fresh: Fresh<'_>) {
    let s = fresh().open();
    let jobs: Vec<NewJob> = (0..7).map(|i| new_job(&format!("p{i}"))).collect();
    let mut once = new_job("dead");
    once.max_retries = Some(0);
    s.enqueue(&jobs, &CFG, 0, None).unwrap();
    s.enqueue(&[once, new_job("waiting")], &CFG, 0, None)
        .unwrap();
    // p0..p6 complete at times 0..6 (ms), with output; `dead` dies at 3.
    for i in 0..7u64 {
        let j = s.reserve("w", i).unwrap().unwrap();
        s.put_output(
            &j.id,
            &RunOutput {
                run: 1,
                outcome: Outcome::Exited(0),
                finished_at: i,
                duration_ms: 0,
                stdout: b"x".to_vec(),
                stderr: Vec::new(),
            },
        )
        .unwrap();
        complete(&*s, &j.id, i);
    }
    s.reserve("w", 3).unwrap();
    fail(&*s, "dead", 2, 3);
    // Pending and processing jobs are never examined.
    assert_eq!(
        s.purge(JobState::Pending, u64::MAX, None, 100).unwrap(),
        crate::store::PurgeStep::default()
    );
    // Finished before 4: p0..p3, three examined per step.
    let mut removed = 0;
    let mut after: Option<String> = None;
    let mut steps = 0;
    loop {
        let step = s
            .purge(JobState::Completed, 4, after.as_deref(), 3)
            .unwrap();
        assert!(step.removed <= 3);
        removed += step.removed;
        steps += 1;
        match step.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!((removed, steps), (4, 3));
    for i in 0..7 {
        let id = format!("p{i}");
        assert_eq!(s.get(&id).unwrap().is_some(), i >= 4, "{id}");
        assert_eq!(
            s.output(&id, 1).unwrap().is_some(),
            i >= 4,
            "output of {id}"
        );
    }
    assert_eq!(s.counts().unwrap().completed, 3);
    let step = s.purge(JobState::Dead, 3, None, 100).unwrap();
    assert_eq!(
        (step.removed, step.next),
        (0, None),
        "died at 3, not before"
    );
    assert_eq!(s.purge(JobState::Dead, 4, None, 100).unwrap().removed, 1);
    assert_eq!(s.counts().unwrap().dead, 0);
    assert_eq!(s.get("waiting").unwrap().unwrap().state, JobState::Pending);
    // The ids are free again.
    s.enqueue(&[new_job("p0"), new_job("dead")], &CFG, 9, None)
        .unwrap();
    assert_consistent(&*s);
}

// ---- property test ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        n: u8,
        delay: u16,
        priority: i8,
    },
    Reserve,
    Complete(u8),
    Fail(u8),
    FinishAndReserve(u8, bool),
    Release(u8),
    DlqRetry(u8),
    /// Cancel a pending (`false`) or failed (`true`) job.
    Cancel(u8, bool),
    /// End a processing job's run as cancelled.
    CancelRunning(u8),
    /// Remove a completed (`false`) or dead (`true`) job.
    Remove(u8, bool),
    Advance(u16),
    Recover,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..4, 0u16..3000, -2i8..3).prop_map(|(n, delay, priority)| Op::Enqueue {
            n,
            delay,
            priority
        }),
        Just(Op::Reserve),
        Just(Op::Reserve),
        any::<u8>().prop_map(Op::Complete),
        any::<u8>().prop_map(Op::Fail),
        (any::<u8>(), any::<bool>()).prop_map(|(i, ok)| Op::FinishAndReserve(i, ok)),
        any::<u8>().prop_map(Op::Release),
        any::<u8>().prop_map(Op::DlqRetry),
        (any::<u8>(), any::<bool>()).prop_map(|(i, f)| Op::Cancel(i, f)),
        any::<u8>().prop_map(Op::CancelRunning),
        (any::<u8>(), any::<bool>()).prop_map(|(i, d)| Op::Remove(i, d)),
        (0u16..5000).prop_map(Op::Advance),
        Just(Op::Recover),
        Just(Op::Reopen),
    ]
}

fn pick(store: &dyn JobStore, state: JobState, i: u8) -> Option<String> {
    let jobs = store.list(Some(state), 0, usize::MAX).unwrap();
    if jobs.is_empty() {
        None
    } else {
        Some(jobs[i as usize % jobs.len()].id.clone())
    }
}

/// Random operations, with closes and reopens in between, keep the backend's invariants
/// (`verify` finds no problem), every job counted once, and the counts true to the states.
pub fn random_operations_keep_the_invariants(fresh: Fresh<'_>) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        run_ops(fresh(), ops)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn run_ops(mut h: Box<dyn Harness>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut store = h.open();
    let cfg = Config {
        max_retries: 2,
        backoff_base: 1,
        poll_interval_ms: 10,
        retention_completed: crate::model::KEEP,
        retention_dead: crate::model::KEEP,
        lease_ms: 30_000,
    };
    let mut now: Millis = 1_000;
    let mut next_id = 0u32;
    let mut total = 0u64;
    for op in ops {
        match op {
            Op::Enqueue { n, delay, priority } => {
                let jobs: Vec<NewJob> = (0..n)
                    .map(|_| {
                        next_id += 1;
                        let mut j = new_job(&format!("job{next_id}"));
                        j.priority = i64::from(priority);
                        if delay > 0 {
                            j.run_at = Some(now + u64::from(delay));
                        }
                        j
                    })
                    .collect();
                store.enqueue(&jobs, &cfg, now, None).unwrap();
                total += u64::from(n);
            }
            Op::Reserve => {
                if let Some(j) = store.reserve("w", now).unwrap() {
                    prop_assert_eq!(j.state, JobState::Processing);
                    prop_assert!(
                        j.available_at.unwrap_or(0) <= now,
                        "reserved before its time"
                    );
                }
            }
            Op::Complete(i) => {
                if let Some(id) = pick(&*store, JobState::Processing, i) {
                    complete(&*store, &id, now);
                }
            }
            Op::Fail(i) => {
                if let Some(id) = pick(&*store, JobState::Processing, i) {
                    fail(&*store, &id, cfg.backoff_base, now);
                }
            }
            Op::FinishAndReserve(i, ok) => {
                if let Some(id) = pick(&*store, JobState::Processing, i) {
                    let end = if ok {
                        RunEnd::Succeeded
                    } else {
                        RunEnd::Failed {
                            error: "boom",
                            backoff_base: cfg.backoff_base,
                        }
                    };
                    let (_, next) = store.finish_and_reserve(&id, &end, "w", now).unwrap();
                    if let Some(j) = next {
                        prop_assert_eq!(j.state, JobState::Processing);
                        prop_assert!(j.id != id);
                    }
                }
            }
            Op::Release(i) => {
                if let Some(id) = pick(&*store, JobState::Processing, i) {
                    store.release(&id, now).unwrap();
                }
            }
            Op::DlqRetry(i) => {
                if let Some(id) = pick(&*store, JobState::Dead, i) {
                    store.dlq_retry(&id, now, None).unwrap();
                }
            }
            Op::Cancel(i, failed) => {
                let from = if failed {
                    JobState::Failed
                } else {
                    JobState::Pending
                };
                if let Some(id) = pick(&*store, from, i) {
                    let j = store.cancel(&id, now).unwrap();
                    prop_assert_eq!(j.state, JobState::Dead);
                }
            }
            Op::CancelRunning(i) => {
                if let Some(id) = pick(&*store, JobState::Processing, i) {
                    store.finish(&id, &RunEnd::Cancelled, now).unwrap();
                    prop_assert_eq!(store.get(&id).unwrap().unwrap().state, JobState::Dead);
                }
            }
            Op::Remove(i, dead) => {
                let from = if dead {
                    JobState::Dead
                } else {
                    JobState::Completed
                };
                if let Some(id) = pick(&*store, from, i) {
                    store.remove(&id).unwrap();
                    prop_assert!(store.get(&id).unwrap().is_none());
                    total -= 1;
                }
            }
            Op::Advance(ms) => now += u64::from(ms),
            Op::Recover => {
                store
                    .recover_interrupted("interrupted", cfg.backoff_base, now)
                    .unwrap();
            }
            Op::Reopen => {
                store.flush().unwrap();
                drop(store);
                store = h.open();
            }
        }
        let report = store.verify().unwrap();
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
        prop_assert_eq!(report.jobs, total);
        let counts = store.counts().unwrap();
        prop_assert_eq!(counts.total(), total);
        for st in JobState::ALL {
            let listed = store.list(Some(st), 0, usize::MAX).unwrap().len() as u64;
            prop_assert_eq!(counts.get(st), listed, "count of {}", st);
        }
    }
    Ok(())
}
