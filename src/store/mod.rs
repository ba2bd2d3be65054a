//! The storage seam: the [`JobStore`] trait every backend implements, the types that cross it
//! and the errors it returns, none of which name a backend. The embedded backend lives in
//! [`sled`] (the only code that names sled); [`conformance`] holds the behaviour every backend
//! must show, run against each of them.
//!
//! Durability: no operation flushes by itself. Whoever acknowledges a write to a user calls
//! [`JobStore::flush`] first; the supervisor flushes completions in groups.
//!
//! Time is always passed in (`now`), never read by a store, so tests can drive the clock.

#[cfg(test)]
pub mod conformance;
pub mod sled;

use crate::model::{
    AttemptOutput, Config, ConfigKey, Counts, Job, JobState, Millis, NewJob, RetryDecision,
};

/// A backend's own error, carried without naming the backend.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: String, source: BackendError },
    #[error("storage error: {0}")]
    Backend(#[source] BackendError),
    #[error("corrupt record in tree `{tree}`: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("could not encode a record: {0}")]
    Encode(String),
    #[error("a job with id `{0}` already exists")]
    Duplicate(String),
    #[error("the batch holds id `{0}` more than once")]
    DuplicateInBatch(String),
    #[error("no job with id `{0}`")]
    NotFound(String),
    #[error("job `{id}` is {actual}, not {expected}")]
    WrongState {
        id: String,
        actual: JobState,
        expected: JobState,
    },
    #[error("the store has format version {found}; this queuectl reads version {expected}")]
    Schema { found: u32, expected: u32 },
}

impl StoreError {
    /// Whether the error is the user's (bad id, duplicate, wrong state) rather than the disk's.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            StoreError::Duplicate(_)
                | StoreError::DuplicateInBatch(_)
                | StoreError::NotFound(_)
                | StoreError::WrongState { .. }
        )
    }
}

/// What the retry rule decided for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailResult {
    pub job: Job,
    pub decision: RetryDecision,
}

/// Result of a consistency check ([`JobStore::verify`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub jobs: u64,
    pub problems: Vec<String>,
}

/// How an attempt ended, for [`JobStore::finish`].
#[derive(Debug, Clone, Copy)]
pub enum AttemptEnd<'a> {
    Succeeded,
    Failed { error: &'a str, backoff_base: u64 },
}

/// The job after its attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOrDone {
    Done(Job),
    Failed(FailResult),
}

/// The queue's durable state, as every backend offers it. The owner of the store is its only
/// writer (one thread of one process), so implementations may check before they write.
pub trait JobStore: Send + Sync {
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Stores `jobs` as pending, all or none. A job's `max_retries` defaults to the config's.
    /// With `request`, the spool request id is recorded in the same transaction and a request
    /// already applied is not applied again.
    fn enqueue(
        &self,
        jobs: &[NewJob],
        config: &Config,
        now: Millis,
        request: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Takes the next job that may run at `now` (highest priority, then earliest), moving it to
    /// `processing` locked by `worker`. Jobs whose scheduled time has come are included.
    fn reserve(&self, worker: &str, now: Millis) -> Result<Option<Job>, StoreError>;

    /// Ends the attempt of job `id` and, in the same step, reserves `worker`'s next job.
    fn finish_and_reserve(
        &self,
        id: &str,
        end: &AttemptEnd<'_>,
        worker: &str,
        now: Millis,
    ) -> Result<(FailOrDone, Option<Job>), StoreError>;

    /// Ends the attempt of job `id`: completed, or the retry rule.
    fn finish(&self, id: &str, end: &AttemptEnd<'_>, now: Millis)
        -> Result<FailOrDone, StoreError>;

    /// Records the process group of a running job.
    fn set_pgid(&self, id: &str, pgid: i32) -> Result<(), StoreError>;

    /// Returns a processing job to `pending` without counting an attempt (a forced stop).
    fn release(&self, id: &str, now: Millis) -> Result<Job, StoreError>;

    /// Moves a dead job back to `pending` with its attempts reset.
    fn dlq_retry(&self, id: &str, now: Millis, request: Option<&str>) -> Result<Job, StoreError>;

    /// Stores the output of one run.
    fn put_output(&self, id: &str, output: &AttemptOutput) -> Result<(), StoreError>;

    /// The output of run `run` of job `id`.
    fn output(&self, id: &str, run: u32) -> Result<Option<AttemptOutput>, StoreError>;

    /// Sets one configuration value.
    fn config_set(
        &self,
        key: ConfigKey,
        value: u64,
        request: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The configuration, with defaults for keys never set.
    fn config(&self) -> Result<Config, StoreError>;

    /// Forgets which spool requests were applied (once the spool is empty).
    fn forget_applied(&self) -> Result<(), StoreError>;

    /// Applies the retry rule to every job left in `processing` by an owner that died.
    fn recover_interrupted(
        &self,
        error: &str,
        backoff_base: u64,
        now: Millis,
    ) -> Result<Vec<FailResult>, StoreError>;

    /// One job, in whatever state.
    fn get(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// A page of jobs, of one state or all.
    fn list(
        &self,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;

    /// Every job, state by state.
    fn all_jobs(&self) -> Box<dyn Iterator<Item = Result<Job, StoreError>> + '_>;

    /// How many jobs are in each state.
    fn counts(&self) -> Result<Counts, StoreError>;

    /// When the earliest job that waits for its time becomes due, if any.
    fn next_wakeup(&self) -> Result<Option<Millis>, StoreError>;

    /// Checks the store's invariants over every job.
    fn verify(&self) -> Result<VerifyReport, StoreError>;
}
