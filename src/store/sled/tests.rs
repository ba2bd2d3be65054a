//! Unit tests of every transition, and a property test of the invariants across reopen.

use super::*;
use crate::store::{JobStore, StoreError};
use proptest::prelude::*;
use tempfile::TempDir;

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

fn open() -> (TempDir, SledStore) {
    let dir = TempDir::new().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    (dir, store)
}

fn assert_consistent(store: &SledStore) {
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

const CFG: Config = Config {
    max_retries: 3,
    backoff_base: 2,
    poll_interval_ms: 500,
};

#[test]
fn enqueue_reserve_complete() {
    let (_d, s) = open();
    s.enqueue(&[new_job("a")], &CFG, 100, None).unwrap();
    let a = s.get("a").unwrap().unwrap();
    assert_eq!(
        (a.state, a.attempts, a.max_retries),
        (JobState::Pending, 0, 3)
    );
    assert_eq!(a.available_at, Some(100));
    let r = s.reserve("w1", 200).unwrap().unwrap();
    assert_eq!(r.state, JobState::Processing);
    assert_eq!(r.locked_by.as_deref(), Some("w1"));
    assert_eq!(r.locked_at, Some(200));
    assert_eq!(r.runs, 1);
    assert!(
        s.reserve("w1", 200).unwrap().is_none(),
        "nothing else is due"
    );
    let c = s.complete("a", 300).unwrap();
    assert_eq!(c.state, JobState::Completed);
    assert_eq!(
        (c.locked_by, c.available_at, c.updated_at),
        (None, None, 300)
    );
    assert_eq!(s.counts().unwrap().completed, 1);
    assert_consistent(&s);
}

#[test]
fn duplicates_are_refused_and_change_nothing() {
    let (_d, s) = open();
    s.enqueue(&[new_job("a")], &CFG, 0, None).unwrap();
    let err = s
        .enqueue(&[new_job("b"), new_job("a")], &CFG, 0, None)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Duplicate(ref id) if id == "a"),
        "{err}"
    );
    assert!(s.get("b").unwrap().is_none(), "all or nothing");
    let err = s
        .enqueue(&[new_job("c"), new_job("c")], &CFG, 0, None)
        .unwrap_err();
    assert!(matches!(err, StoreError::DuplicateInBatch(_)), "{err}");
    // A job that moved on is still a duplicate.
    s.reserve("w", 0).unwrap();
    s.complete("a", 0).unwrap();
    assert!(s.enqueue(&[new_job("a")], &CFG, 0, None).is_err());
    assert_eq!(s.counts().unwrap().total(), 1);
    assert_consistent(&s);
}

#[test]
fn priority_then_time_then_fifo() {
    let (_d, s) = open();
    let mut jobs = vec![new_job("low1"), new_job("high"), new_job("low2")];
    jobs[1].priority = 5;
    s.enqueue(&jobs, &CFG, 10, None).unwrap();
    let mut early = new_job("early-low");
    early.run_at = Some(5);
    s.enqueue(&[early], &CFG, 10, None).unwrap();
    let order: Vec<String> =
        std::iter::from_fn(|| s.reserve("w", 20).unwrap().map(|j| j.id)).collect();
    assert_eq!(order, ["high", "early-low", "low1", "low2"]);
}

#[test]
fn scheduled_jobs_wait_for_their_time() {
    let (_d, s) = open();
    let mut later = new_job("later");
    later.run_at = Some(1_000);
    s.enqueue(&[later], &CFG, 0, None).unwrap();
    assert!(!s.has_due().unwrap());
    assert_eq!(s.next_wakeup().unwrap(), Some(1_000));
    assert_eq!(s.promote_due(999).unwrap(), 0);
    assert!(s.reserve("w", 999).unwrap().is_none());
    assert_eq!(s.promote_due(1_000).unwrap(), 1);
    assert_eq!(s.next_wakeup().unwrap(), None);
    assert_eq!(s.reserve("w", 1_000).unwrap().unwrap().id, "later");
    assert_consistent(&s);
}

#[test]
fn fail_follows_the_retry_rule_then_dlq_retry() {
    let (_d, s) = open();
    s.enqueue(&[new_job("bad")], &CFG, 0, None).unwrap();
    let mut now = 0;
    for attempt in 1..=3u32 {
        s.promote_due(now).unwrap();
        let j = s.reserve("w", now).unwrap().expect("due");
        assert_eq!(j.attempts, attempt - 1);
        let r = s.fail("bad", "exit code 1", 2, now).unwrap();
        assert_eq!(r.job.attempts, attempt);
        assert_eq!(r.job.last_error.as_deref(), Some("exit code 1"));
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
            assert_eq!(s.next_wakeup().unwrap(), Some(now + delay));
            // Not before its time.
            s.promote_due(now + delay - 1).unwrap();
            assert!(s.reserve("w", now + delay - 1).unwrap().is_none());
            now += delay;
        } else {
            assert_eq!(r.decision, RetryDecision::Dead);
            assert_eq!(r.job.state, JobState::Dead);
            assert_eq!(r.job.available_at, None);
        }
        assert_consistent(&s);
    }
    assert_eq!(s.counts().unwrap().dead, 1);
    let j = s.dlq_retry("bad", now, None).unwrap();
    assert_eq!((j.state, j.attempts), (JobState::Pending, 0));
    assert_eq!(s.reserve("w", now).unwrap().unwrap().id, "bad");
    assert_consistent(&s);
}

#[test]
fn finish_and_reserve_is_one_step() {
    let (_d, s) = open();
    s.enqueue(&[new_job("a"), new_job("b"), new_job("c")], &CFG, 0, None)
        .unwrap();
    s.reserve("w", 0).unwrap();
    let (done, next) = s
        .finish_and_reserve("a", &AttemptEnd::Succeeded, "w", 5)
        .unwrap();
    assert!(matches!(done, FailOrDone::Done(ref j) if j.state == JobState::Completed));
    let next = next.expect("b is due");
    assert_eq!(
        (next.id.as_str(), next.state, next.locked_at),
        ("b", JobState::Processing, Some(5))
    );
    let end = AttemptEnd::Failed {
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
        .finish_and_reserve("c", &AttemptEnd::Succeeded, "w", 7)
        .unwrap();
    assert!(matches!(done, FailOrDone::Done(_)));
    assert!(next.is_none());
    // A job that is not processing is refused and nothing changes.
    assert!(s
        .finish_and_reserve("c", &AttemptEnd::Succeeded, "w", 8)
        .is_err());
    assert_eq!(s.counts().unwrap().completed, 2);
    assert_consistent(&s);
}

#[test]
fn dlq_retry_of_a_job_that_is_not_dead() {
    let (_d, s) = open();
    s.enqueue(&[new_job("a")], &CFG, 0, None).unwrap();
    assert!(matches!(
        s.dlq_retry("a", 0, None),
        Err(StoreError::WrongState {
            actual: JobState::Pending,
            ..
        })
    ));
    assert!(matches!(
        s.dlq_retry("zz", 0, None),
        Err(StoreError::NotFound(_))
    ));
    assert_consistent(&s);
}

#[test]
fn release_returns_without_counting_an_attempt() {
    let (_d, s) = open();
    s.enqueue(&[new_job("a"), new_job("b")], &CFG, 0, None)
        .unwrap();
    s.reserve("w", 5).unwrap();
    s.set_pgid("a", 4242).unwrap();
    assert_eq!(s.get("a").unwrap().unwrap().pgid, Some(4242));
    let j = s.release("a", 10).unwrap();
    assert_eq!((j.state, j.attempts, j.pgid), (JobState::Pending, 0, None));
    assert_eq!(
        s.reserve("w", 10).unwrap().unwrap().id,
        "a",
        "keeps its place"
    );
    assert_consistent(&s);
}

#[test]
fn recovery_counts_interrupted_attempts() {
    let (_d, s) = open();
    let mut one = new_job("one-try");
    one.max_retries = Some(1);
    s.enqueue(&[new_job("a"), one], &CFG, 0, None).unwrap();
    s.reserve("w", 0).unwrap();
    s.reserve("w", 0).unwrap();
    let res = s.recover_interrupted("interrupted", 2, 50).unwrap();
    assert_eq!(res.len(), 2);
    assert_eq!(s.get("a").unwrap().unwrap().state, JobState::Failed);
    assert_eq!(s.get("one-try").unwrap().unwrap().state, JobState::Dead);
    assert_eq!(s.counts().unwrap().processing, 0);
    assert_consistent(&s);
}

#[test]
fn applied_requests_are_not_applied_twice() {
    let (_d, s) = open();
    s.enqueue(&[new_job("a")], &CFG, 0, Some("REQ1")).unwrap();
    s.enqueue(&[new_job("a")], &CFG, 0, Some("REQ1")).unwrap();
    assert_eq!(s.counts().unwrap().pending, 1);
    s.config_set(ConfigKey::BackoffBase, 5, Some("REQ2"))
        .unwrap();
    s.forget_applied().unwrap();
    assert!(s.enqueue(&[new_job("a")], &CFG, 0, Some("REQ1")).is_err());
}

#[test]
fn config_defaults_and_set() {
    let (_d, s) = open();
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
}

#[test]
fn list_is_ordered_and_paginated() {
    let (_d, s) = open();
    let jobs: Vec<NewJob> = (0..10).map(|i| new_job(&format!("j{i}"))).collect();
    s.enqueue(&jobs, &CFG, 0, None).unwrap();
    let ids = |v: Vec<Job>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list(Some(JobState::Pending), 0, 3).unwrap()),
        ["j0", "j1", "j2"]
    );
    assert_eq!(
        ids(s.list(Some(JobState::Pending), 8, 5).unwrap()),
        ["j8", "j9"]
    );
    assert!(s.list(Some(JobState::Dead), 0, 5).unwrap().is_empty());
    assert_eq!(s.list(None, 0, usize::MAX).unwrap().len(), 10);
}

#[test]
fn output_is_kept_per_run() {
    let (_d, s) = open();
    let out = |run| AttemptOutput {
        run,
        outcome: crate::model::Outcome::Exited(0),
        finished_at: 1,
        duration_ms: 2,
        stdout: format!("run {run}").into_bytes(),
        stderr: vec![],
    };
    s.put_output("a", &out(1)).unwrap();
    s.put_output("a", &out(2)).unwrap();
    assert_eq!(s.output("a", 2).unwrap().unwrap().stdout, b"run 2");
    assert_eq!(s.output("a", 1).unwrap().unwrap().stdout, b"run 1");
    assert!(s.output("a", 3).unwrap().is_none());
}

#[test]
fn everything_survives_a_reopen() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("db");
    {
        let s = SledStore::open(&path).unwrap();
        s.enqueue(&[new_job("a"), new_job("b")], &CFG, 0, None)
            .unwrap();
        s.reserve("w", 0).unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(&path).unwrap();
    let c = s.counts().unwrap();
    assert_eq!((c.pending, c.processing), (1, 1));
    assert_consistent(&s);
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue { n: u8, delay: u16, priority: i8 },
    Reserve,
    Complete(u8),
    Fail(u8),
    FinishAndReserve(u8, bool),
    Release(u8),
    DlqRetry(u8),
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
        (0u16..5000).prop_map(Op::Advance),
        Just(Op::Recover),
        Just(Op::Reopen),
    ]
}

fn pick(store: &SledStore, state: JobState, i: u8) -> Option<String> {
    let jobs = store.list(Some(state), 0, usize::MAX).unwrap();
    if jobs.is_empty() {
        None
    } else {
        Some(jobs[i as usize % jobs.len()].id.clone())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random operations, with closes and reopens in between, keep each job in exactly one
    /// state tree and the index holding exactly the pending and failed jobs.
    #[test]
    fn invariants_hold_across_random_operations(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("db");
        let mut store = SledStore::open(&path).unwrap();
        let cfg = Config { max_retries: 2, backoff_base: 1, poll_interval_ms: 10 };
        let mut now: Millis = 1_000;
        let mut next_id = 0u32;
        let mut total = 0u64;
        for op in ops {
            match op {
                Op::Enqueue { n, delay, priority } => {
                    let jobs: Vec<NewJob> = (0..n).map(|_| {
                        next_id += 1;
                        let mut j = new_job(&format!("job{next_id}"));
                        j.priority = i64::from(priority);
                        if delay > 0 { j.run_at = Some(now + u64::from(delay)); }
                        j
                    }).collect();
                    store.enqueue(&jobs, &cfg, now, None).unwrap();
                    total += u64::from(n);
                }
                Op::Reserve => {
                    store.promote_due(now).unwrap();
                    if let Some(j) = store.reserve("w", now).unwrap() {
                        prop_assert_eq!(j.state, JobState::Processing);
                    }
                }
                Op::Complete(i) => if let Some(id) = pick(&store, JobState::Processing, i) {
                    store.complete(&id, now).unwrap();
                },
                Op::Fail(i) => if let Some(id) = pick(&store, JobState::Processing, i) {
                    store.fail(&id, "boom", cfg.backoff_base, now).unwrap();
                },
                Op::FinishAndReserve(i, ok) => if let Some(id) = pick(&store, JobState::Processing, i) {
                    store.promote_due(now).unwrap();
                    let end = if ok {
                        AttemptEnd::Succeeded
                    } else {
                        AttemptEnd::Failed { error: "boom", backoff_base: cfg.backoff_base }
                    };
                    let (_, next) = store.finish_and_reserve(&id, &end, "w", now).unwrap();
                    if let Some(j) = next {
                        prop_assert_eq!(j.state, JobState::Processing);
                        prop_assert!(j.id != id);
                    }
                },
                Op::Release(i) => if let Some(id) = pick(&store, JobState::Processing, i) {
                    store.release(&id, now).unwrap();
                },
                Op::DlqRetry(i) => if let Some(id) = pick(&store, JobState::Dead, i) {
                    store.dlq_retry(&id, now, None).unwrap();
                },
                Op::Advance(ms) => now += u64::from(ms),
                Op::Recover => { store.recover_interrupted("interrupted", cfg.backoff_base, now).unwrap(); }
                Op::Reopen => {
                    store.flush().unwrap();
                    drop(store);
                    store = SledStore::open(&path).unwrap();
                }
            }
            let report = store.verify().unwrap();
            prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
            prop_assert_eq!(report.jobs, total);
            prop_assert_eq!(store.counts().unwrap().total(), total);
        }
    }
}
