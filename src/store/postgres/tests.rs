//! Tests of what only the PostgreSQL backend has: several stores (hosts) on one database,
//! owners, the database's clock and the schema version. The shared behaviour is the
//! conformance suite's.

use std::sync::Arc;

use super::scratch::{self, with_dbname, ScratchDatabase};
use super::*;
use crate::model::NewJob;
use crate::store::conformance::{conformance_tests, Harness};
use crate::store::JobStore;

/// The test server's URL; `None` (after saying so) when there is none, a failure under `CI=true`.
pub(crate) fn test_server() -> Option<String> {
    match std::env::var(scratch::SERVER_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("QUEUECTL_TEST_DATABASE_URL is not set: CI must test PostgreSQL");
            }
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: a PostgreSQL test (set QUEUECTL_TEST_DATABASE_URL, or run .ci/run, \
                 which starts a server)"
            );
            None
        }
    }
}

/// A database of its own for one test, dropped afterwards.
pub(crate) struct TestDb(ScratchDatabase);

impl TestDb {
    /// `None` (after saying so) when no server was given, which under `CI=true` is a failure.
    pub(crate) fn create() -> Option<TestDb> {
        let admin = test_server()?;
        Some(TestDb(
            ScratchDatabase::create(&admin).expect("create a test database"),
        ))
    }

    fn url(&self) -> &str {
        &self.0.url
    }

    /// A store on this database with the caller's clock.
    pub(crate) fn store(&self, owner: &str) -> PgStore {
        PgStore::open(self.url(), owner).unwrap().use_caller_clock()
    }

    /// A store that keeps the database until it is dropped.
    fn keeping_store(self: &Arc<Self>, owner: &str) -> PgStore {
        let mut store = self.store(owner);
        store.keep = Some(Arc::clone(self));
        store
    }
}

/// A private database per test; every open is the same supervisor again (same owner key).
struct PgHarness {
    db: Arc<TestDb>,
}

impl PgHarness {
    fn new() -> PgHarness {
        PgHarness {
            db: Arc::new(TestDb::create().expect("a PostgreSQL test server")),
        }
    }
}

impl Harness for PgHarness {
    fn open(&mut self) -> Box<dyn JobStore> {
        Box::new(self.db.keeping_store("conformance-host"))
    }
}

conformance_tests!(skip_unless(test_server().is_some()) PgHarness::new());

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

const CFG: Config = Config {
    max_retries: 3,
    backoff_base: 2,
    poll_interval_ms: 500,
    retention_completed: crate::model::KEEP,
    retention_dead: crate::model::KEEP,
    lease_ms: 30_000,
};

#[test]
fn url_database_is_replaced() {
    assert_eq!(
        with_dbname("postgres://u@h:1/postgres", "x"),
        "postgres://u@h:1/x"
    );
    assert_eq!(with_dbname("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    assert_eq!(
        with_dbname("postgres://u@h:1/db?sslmode=disable", "x"),
        "postgres://u@h:1/x?sslmode=disable"
    );
}

#[test]
fn messages_never_show_the_password() {
    assert_eq!(redact("postgres://u:secret@h/db"), "postgres://h/db");
    let cfg: postgres::Config = "postgres://u:secret@h:5/db".parse().unwrap();
    assert_eq!(describe(&cfg), "postgres://h:5/db");
    let err = PgStore::open("postgres://u:secret@127.0.0.1:1/db", "o")
        .err()
        .expect("nothing listens on port 1");
    assert!(!err.to_string().contains("secret"), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[test]
fn basic_cycle() {
    let Some(db) = TestDb::create() else { return };
    let s = db.store("host-a");
    s.enqueue(&[new_job("a"), new_job("b")], &CFG, 100, None)
        .unwrap();
    let a = s.get("a").unwrap().unwrap();
    assert_eq!(
        (a.state, a.available_at, a.created_at),
        (JobState::Pending, Some(100), 100)
    );
    let r = s.reserve("w1", 200).unwrap().unwrap();
    assert_eq!(
        (r.id.as_str(), r.state, r.runs, r.locked_at),
        ("a", JobState::Processing, 1, Some(200))
    );
    let (done, next) = s
        .finish_and_reserve("a", &RunEnd::Succeeded, "w1", 300)
        .unwrap();
    assert!(
        matches!(done, FailOrDone::Done(ref j) if j.state == JobState::Completed && j.updated_at == 300)
    );
    let next = next.unwrap();
    assert_eq!(next.id, "b");
    let failed = s
        .finish(
            "b",
            &RunEnd::Failed {
                error: "exit code 1",
                backoff_base: 2,
            },
            1000,
        )
        .unwrap();
    let FailOrDone::Failed(f) = failed else {
        panic!("{failed:?}")
    };
    assert_eq!(f.job.state, JobState::Failed);
    assert_eq!(
        f.decision,
        RetryDecision::Retry {
            at: 3000,
            delay_secs: 2
        }
    );
    assert_eq!(s.next_wakeup().unwrap(), Some(3000));
    assert!(s.reserve("w1", 2999).unwrap().is_none());
    assert_eq!(s.reserve("w1", 3000).unwrap().unwrap().id, "b");
    assert!(s.verify().unwrap().problems.is_empty());
}

fn take_all(s: &PgStore) -> Vec<String> {
    let mut mine = Vec::new();
    while let Some(j) = s.reserve("w", 1).unwrap() {
        mine.push(j.id);
    }
    mine
}

#[test]
fn two_owners_never_take_the_same_job_and_only_the_owner_ends_it() {
    let Some(db) = TestDb::create() else { return };
    let a = db.store("host-a");
    let b = db.store("host-b");
    let jobs: Vec<NewJob> = (0..200).map(|i| new_job(&format!("j{i:03}"))).collect();
    a.enqueue(&jobs, &CFG, 0, None).unwrap();
    let taken = std::thread::scope(|scope| {
        let ha = scope.spawn(|| take_all(&a));
        let hb = scope.spawn(|| take_all(&b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let mut all: Vec<String> = taken.0.iter().chain(taken.1.iter()).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200, "every job taken exactly once");
    assert_eq!(taken.0.len() + taken.1.len(), 200);
    let theirs = taken.1.first().or(taken.0.first()).unwrap();
    let (other, owner) = if taken.1.contains(theirs) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let err = other.finish(theirs, &RunEnd::Succeeded, 2).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(other.set_pgid(theirs, 5).is_err());
    owner.finish(theirs, &RunEnd::Succeeded, 2).unwrap();
}

#[test]
fn recovery_takes_only_the_owners_own_jobs() {
    let Some(db) = TestDb::create() else { return };
    let a = db.store("host-a");
    let b = db.store("host-b");
    a.enqueue(&[new_job("a"), new_job("b")], &CFG, 0, None)
        .unwrap();
    a.reserve("w", 1).unwrap().unwrap();
    b.reserve("w", 1).unwrap().unwrap();
    let again = db.store("host-a");
    let got = again.recover_interrupted("interrupted", 2, 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job.id, "a");
    assert_eq!(got[0].job.attempts, 1);
    assert_eq!(b.get("b").unwrap().unwrap().state, JobState::Processing);
}

#[test]
fn the_database_clock_decides_when_not_told_otherwise() {
    let Some(db) = TestDb::create() else { return };
    let s = PgStore::open(db.url(), "host-a").unwrap();
    // A caller far in the past is ignored: the job is stored and taken at the database's time.
    s.enqueue(&[new_job("a")], &CFG, 5, None).unwrap();
    let j = s.reserve("w", 5).unwrap().unwrap();
    let wall = crate::model::now_ms();
    assert!(j.locked_at.unwrap().abs_diff(wall) < 60_000, "{j:?}");
    let FailOrDone::Failed(f) = s
        .finish(
            "a",
            &RunEnd::Failed {
                error: "x",
                backoff_base: 3,
            },
            5,
        )
        .unwrap()
    else {
        panic!()
    };
    let RetryDecision::Retry { at, delay_secs } = f.decision else {
        panic!()
    };
    assert_eq!(delay_secs, 3);
    assert_eq!(at, f.job.updated_at + 3000);
}

#[test]
fn a_newer_schema_is_refused() {
    let Some(db) = TestDb::create() else { return };
    drop(db.store("x"));
    let mut c = Client::connect(db.url(), NoTls).unwrap();
    c.batch_execute("UPDATE queuectl_schema SET version = 99")
        .unwrap();
    let err = PgStore::open(db.url(), "x").err().unwrap();
    assert!(matches!(err, StoreError::Schema { found: 99, .. }), "{err}");
    // Opening twice at once is fine (the migration lock).
    let db = TestDb::create().unwrap();
    std::thread::scope(|s| {
        let h: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PgStore::open(db.url(), "y").map(|_| ())))
            .collect();
        for h in h {
            h.join().unwrap().unwrap();
        }
    });
}

#[test]
fn huge_backoff_saturates() {
    let Some(db) = TestDb::create() else { return };
    let s = db.store("a");
    let mut j = new_job("a");
    j.max_retries = Some(100);
    s.enqueue(&[j], &CFG, 0, None).unwrap();
    s.reserve("w", 0).unwrap().unwrap();
    let r = s
        .finish(
            "a",
            &RunEnd::Failed {
                error: "x",
                backoff_base: 1_000_000,
            },
            u64::MAX,
        )
        .unwrap();
    let FailOrDone::Failed(f) = r else { panic!() };
    assert_eq!(f.job.state, JobState::Failed);
    assert!(f.job.available_at.unwrap() > MAX_MS as u64);
}

/// A finish sent for an attempt that is over (its answer lost, the job retried and taken
/// again by the same host) never ends the later attempt.
#[test]
fn a_finish_ends_only_its_own_attempt() {
    let Some(db) = TestDb::create() else { return };
    let first = db.store("host-a");
    let again = db.store("host-a");
    first.enqueue(&[new_job("j")], &CFG, 100, None).unwrap();
    assert_eq!(first.reserve("w1", 200).unwrap().unwrap().runs, 1);
    let failed = RunEnd::Failed {
        error: "exit code 1",
        backoff_base: 2,
    };
    again.finish("j", &failed, 300).unwrap();
    assert_eq!(again.reserve("w1", 10_000).unwrap().unwrap().runs, 2);
    let late = first.finish("j", &RunEnd::Succeeded, 10_100);
    assert!(matches!(late, Err(StoreError::NotFound(_))), "{late:?}");
    let j = first.get("j").unwrap().unwrap();
    assert_eq!((j.state, j.runs, j.attempts), (JobState::Processing, 2, 1));
    again.finish("j", &RunEnd::Succeeded, 10_200).unwrap();
    assert_eq!(first.get("j").unwrap().unwrap().state, JobState::Completed);
}

/// A cancel of a running job marks it and announces it; a supervisor that lost its lease
/// meanwhile has the job reaped as cancelled, not retried.
#[test]
fn a_cancel_of_a_running_job_is_kept_until_its_supervisor_ends_it() {
    let Some(db) = TestDb::create() else { return };
    let host = PgStore::open(db.url(), "host-a").unwrap().with_lease(100);
    let other = db.store("command");
    host.enqueue(&[new_job("r")], &CFG, 0, None).unwrap();
    host.reserve("w1", 0).unwrap().unwrap();
    let job = other.request_cancel("r").unwrap().expect("running");
    assert_eq!(job.state, JobState::Processing);
    let held = host.heartbeat(1, 1, 100).unwrap();
    assert_eq!(held.get("r"), Some(&true));
    std::thread::sleep(std::time::Duration::from_millis(150));
    let reaped = other.reap_expired(2).unwrap();
    assert_eq!(reaped.len(), 1);
    let r = other.get("r").unwrap().unwrap();
    assert_eq!(
        (r.state, r.attempts, r.last_error.as_deref()),
        (JobState::Dead, 0, Some(crate::store::CANCELLED))
    );
    assert!(other.request_cancel("r").unwrap().is_none());
}

/// A running job whose cancel was asked for from another host, then returned by its supervisor
/// (a forced stop before the news arrived), ends cancelled: it does not run again.
#[test]
fn a_release_keeps_a_cancel_asked_for_meanwhile() {
    let Some(db) = TestDb::create() else { return };
    let host = db.store("host-a");
    let other = db.store("command");
    host.enqueue(&[new_job("r"), new_job("s")], &CFG, 0, None)
        .unwrap();
    host.reserve("w1", 0).unwrap().unwrap();
    host.reserve("w2", 0).unwrap().unwrap();
    other.request_cancel("r").unwrap().expect("running");
    let r = host.release("r", 5).unwrap();
    assert_eq!(
        (r.state, r.attempts, r.last_error.as_deref(), r.available_at),
        (JobState::Dead, 0, Some(crate::store::CANCELLED), None)
    );
    let s = host.release("s", 5).unwrap();
    assert_eq!((s.state, s.available_at), (JobState::Pending, Some(0)));
    let next = host.reserve("w1", 6).unwrap().expect("s is waiting");
    assert_eq!(next.id, "s");
    assert!(
        host.reserve("w2", 6).unwrap().is_none(),
        "r is never run again"
    );
}

/// Ends every other session on the test's database.
fn terminate_others(db: &TestDb) {
    let mut c = postgres::Client::connect(db.url(), postgres::NoTls).unwrap();
    c.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .unwrap();
}

/// `discard_unpublished` until it drops something (a closed session lets go of its locks a
/// moment after the client is gone), within a deadline.
fn discard_eventually(s: &PgStore) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let n = s.discard_unpublished().unwrap();
        if n > 0 || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A batch is kept while the command staging it lives; once its session is gone (the command
/// was killed, or cut off) any owner drops it, and the cut-off command's publish fails rather
/// than publish part of it.
#[test]
fn batches_of_gone_commands_are_dropped_by_any_owner() {
    let Some(db) = TestDb::create() else { return };
    let cmd = db.store("command:a:1");
    cmd.stage("B1", &[new_job("x1"), new_job("x2")], &CFG, 0)
        .unwrap();
    let sup = db.store("host-b");
    assert_eq!(sup.discard_unpublished().unwrap(), 0, "still being staged");
    drop(sup);
    terminate_others(&db);
    let sup = db.store("host-b");
    // The first statement finds its session ended; the next one, on a new session, is refused.
    assert!(cmd.publish("B1", 0).is_err());
    let late = cmd.publish("B1", 0);
    assert!(matches!(late, Err(StoreError::Unavailable(_))), "{late:?}");
    assert_eq!(sup.counts().unwrap().total(), 0, "nothing published");
    assert_eq!(discard_eventually(&sup), 2);

    // A command that dies (its connection closed) while staging.
    let cmd = db.store("command:a:2");
    cmd.stage("B2", &[new_job("y1")], &CFG, 0).unwrap();
    assert_eq!(sup.discard_unpublished().unwrap(), 0);
    drop(cmd);
    assert_eq!(discard_eventually(&sup), 1);
    // Its ids are free again.
    sup.enqueue(&[new_job("y1")], &CFG, 0, None).unwrap();
}

/// A job reserved ahead and given back unstarted is as it was: pending, in its place, its run
/// uncounted; one whose cancel was asked for meanwhile ends cancelled.
#[test]
fn unreserve_gives_a_job_back_as_if_never_reserved() {
    let Some(db) = TestDb::create() else { return };
    let host = db.store("host-a");
    let other = db.store("command");
    host.enqueue(&[new_job("a"), new_job("b"), new_job("c")], &CFG, 0, None)
        .unwrap();
    assert_eq!(host.reserve("w1", 1).unwrap().unwrap().id, "a");
    let a = host.unreserve("a", 2).unwrap();
    assert_eq!(
        (
            a.state,
            a.runs,
            a.attempts,
            a.locked_by.as_deref(),
            a.available_at
        ),
        (JobState::Pending, 0, 0, None, Some(0))
    );
    assert_eq!(
        host.reserve("w1", 3).unwrap().unwrap().id,
        "a",
        "first again"
    );
    assert_eq!(host.reserve("w2", 3).unwrap().unwrap().id, "b");
    other.request_cancel("b").unwrap().expect("held");
    let b = host.unreserve("b", 4).unwrap();
    assert_eq!(
        (b.state, b.runs, b.last_error.as_deref()),
        (JobState::Dead, 0, Some(crate::store::CANCELLED))
    );
    assert!(
        matches!(host.unreserve("c", 5), Err(StoreError::NotFound(_))),
        "not reserved"
    );
}
