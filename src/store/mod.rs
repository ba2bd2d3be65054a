//! The storage seam: the [`JobStore`] trait every backend implements, the types that cross it
//! and the errors it returns, none of which name a backend. The embedded backend lives in
//! [`sled`] (the only code that names sled); [`conformance`] holds the behaviour every backend
//! must show, run against each of them.
//!
//! Durability: no operation flushes by itself. Whoever acknowledges a write to a user calls
//! [`JobStore::flush`] first; the supervisor flushes completions in groups.
//!
//! Time is always passed in (`now`), never read by a store, so tests can drive the clock.

pub mod closed;
#[cfg(test)]
pub mod conformance;
pub mod postgres;
pub mod sled;

use crate::model::{
    Config, ConfigKey, Counts, Job, JobState, Millis, NewJob, RetryDecision, RunOutput,
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
    #[error("the batch `{0}` is already published")]
    BatchPublished(String),
    #[error("the store has format version {found}; this queuectl reads version {expected}")]
    Schema { found: u32, expected: u32 },
    #[error("job `{id}` is already {state}")]
    Finished { id: String, state: JobState },
    #[error("job `{id}` is {state}: only completed or dead jobs can be removed")]
    NotFinished { id: String, state: JobState },
    #[error("job `{0}` is running")]
    Running(String),
    /// A shared store's database cannot be reached now (it is being connected to again).
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    #[error("the page to continue from is not one this queue gave out")]
    BadCursor,
    /// A write failed because the disk is full (an embedded store keeps failing until it is
    /// opened again).
    #[error("the disk is full (no space left on device)")]
    NoSpace,
}

/// The `last_error` of a job stopped by `queuectl cancel`.
pub const CANCELLED: &str = "cancelled";

impl StoreError {
    /// Whether the error is the user's (bad id, duplicate, wrong state) rather than the disk's.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            StoreError::Duplicate(_)
                | StoreError::DuplicateInBatch(_)
                | StoreError::NotFound(_)
                | StoreError::WrongState { .. }
                | StoreError::Finished { .. }
                | StoreError::NotFinished { .. }
                | StoreError::Running(_)
                | StoreError::BadCursor
        )
    }
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT)
}

/// What the retry rule decided for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailResult {
    pub job: Job,
    pub decision: RetryDecision,
}

/// The lease length on a shared store: the `lease_ms` setting, unless the environment's
/// `QUEUECTL_LEASE_MS` overrides it (for one host; the tests shorten leases with it; 100 ms to
/// one hour, another value is ignored).
pub fn lease_ms(config: &Config) -> u64 {
    std::env::var("QUEUECTL_LEASE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| (100..=3_600_000).contains(ms))
        .unwrap_or(config.lease_ms)
}

/// A supervisor sharing the queue from another data directory or host (shared stores only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostInfo {
    /// Host name and data directory.
    pub host: String,
    pub pid: u32,
    pub workers: u32,
    pub busy: u32,
    /// How long ago it last renewed its leases.
    pub heartbeat_age_ms: u64,
}

/// Result of a consistency check ([`JobStore::verify`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub jobs: u64,
    pub problems: Vec<String>,
}

/// What one step of [`JobStore::purge`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeStep {
    pub removed: u64,
    /// The id to continue after; `None`: the end was reached.
    pub next: Option<String>,
}

/// The order of [`JobStore::list_page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ListOrder {
    /// By id (bytes), whatever the state. Ids queuectl makes are ULIDs, which sort by the time
    /// they were made: for them this is the order the jobs were added.
    #[default]
    Id,
    /// The jobs waiting to run (pending and failed) in the order the queue would take them:
    /// those due at `now` by highest `priority`, then earliest `available_at`, then `seq`; then
    /// those waiting for a later time, earliest first (then `seq`). Jobs in other states have
    /// no next run and are not listed.
    NextRun,
}

/// One page of [`JobStore::list_page`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub jobs: Vec<Job>,
    /// Where the next page starts (opaque: give it back as `after`); `None` when this page
    /// is the last one.
    pub next: Option<Vec<u8>>,
}

/// How an attempt ended, for [`JobStore::finish`].
#[derive(Debug, Clone, Copy)]
pub enum RunEnd<'a> {
    Succeeded,
    Failed {
        error: &'a str,
        backoff_base: u64,
    },
    /// Stopped by `queuectl cancel`: the job goes to `dead` with `last_error` [`CANCELLED`],
    /// its `attempts` unchanged (a cancel is not a failure), and is never retried; the result
    /// is `Failed` with the decision `Dead`.
    Cancelled,
}

/// The job after its attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOrDone {
    Done(Job),
    Failed(FailResult),
}

/// What [`JobStore::finish_and_reserve_batch`] returns: the result of each end, in the order
/// of the ends, and the jobs reserved.
pub type TurnOutcome = (Vec<Result<FailOrDone, StoreError>>, Vec<Job>);

/// The queue's durable state, as every backend offers it. The owner of the store is its only
/// writer (one process), so implementations may check before they write; it writes from one
/// thread, except that a bulk enqueue ([`stage`](JobStore::stage),
/// [`publish`](JobStore::publish), [`discard`](JobStore::discard)) may go on in a second
/// thread meanwhile: implementations keep ids unique between those and
/// [`enqueue`](JobStore::enqueue).
///
/// Every method that changes jobs is atomic: after a crash at any point, either all of its
/// effect is there (once flushed) or none of it. `now` is the caller's clock; a backend never
/// reads its own. Errors a user can cause are [`StoreError::is_user_error`] variants; every
/// other failure is `Backend`, `Corrupt` or `Encode`. [`conformance`] pins all of this down.
pub trait JobStore: Send + Sync {
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Stores `jobs` as pending, all or none: `created_at = updated_at = now`,
    /// `available_at = run_at.unwrap_or(now)`, `attempts = runs = 0`, a fresh `seq` (increasing
    /// in batch order), and `max_retries` from `config` when the job has none.
    /// Refused with `DuplicateInBatch` when an id repeats within `jobs`, and with `Duplicate`
    /// when a job with that id exists in any state; nothing is stored then.
    /// With `request`, the spool request id is recorded in the same transaction, and a request
    /// already recorded is not applied again (`Ok` without any change).
    fn enqueue(
        &self,
        jobs: &[NewJob],
        config: &Config,
        now: Millis,
        request: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Bulk enqueue, step 1: adds `jobs` to batch `batch` (created on first use), built exactly
    /// as [`enqueue`](JobStore::enqueue) builds them (`seq` increasing across the calls of one
    /// batch, in order). Staged jobs are invisible to every read (`get`, `list`, `counts`,
    /// `all_jobs`) and to `reserve` until the batch is published, but their ids are taken: a
    /// staged id refuses a later `enqueue` or `stage` with `Duplicate` (`DuplicateInBatch`
    /// when it is staged in this batch or repeats within `jobs`). On error, nothing of this call
    /// is staged; what earlier calls staged stays. `BatchPublished` once the batch is published.
    /// Callers stage in chunks, so that memory stays bounded whatever the batch's size.
    fn stage(
        &self,
        batch: &str,
        jobs: &[NewJob],
        config: &Config,
        now: Millis,
    ) -> Result<(), StoreError>;

    /// Bulk enqueue, step 2: makes every job staged under `batch` pending, as one step that a
    /// crash cannot split (after it, once flushed, the next owner finds all of them; before it,
    /// none), and records `batch` as an applied request (see
    /// [`is_applied`](JobStore::is_applied)). Index entries use `now`. Returns how many jobs
    /// were published (0 for a batch never staged).
    fn publish(&self, batch: &str, now: Millis) -> Result<u64, StoreError>;

    /// Drops every job staged under `batch` (a bad line found after some chunks were staged).
    /// Returns how many. `BatchPublished` if it is published.
    fn discard(&self, batch: &str) -> Result<u64, StoreError>;

    /// Drops every batch staged and never published (an owner that died while staging); the
    /// owner calls it when it takes the store over. Returns how many jobs were dropped.
    fn discard_unpublished(&self) -> Result<u64, StoreError>;

    /// Whether spool request `request` (or batch) has been applied (and not forgotten since).
    fn is_applied(&self, request: &str) -> Result<bool, StoreError>;

    /// Takes the next job that may run at `now` (pending or failed, `available_at <= now`):
    /// highest `priority`, then earliest `available_at`, then lowest `seq`. It becomes
    /// `processing` with `locked_by = worker`, `locked_at = updated_at = now`, `runs + 1`,
    /// `pgid = None`. `None` when no job may run yet.
    fn reserve(&self, worker: &str, now: Millis) -> Result<Option<Job>, StoreError>;

    /// Takes waiting job `id` (pending or failed, due or scheduled for later) exactly as
    /// [`reserve`](JobStore::reserve) takes a job; `None` when it is not waiting. A supervisor
    /// whose store lost a reservation (a full disk) takes the job again for the run under way.
    fn reserve_id(&self, id: &str, worker: &str, now: Millis) -> Result<Option<Job>, StoreError>;

    /// [`finish`](JobStore::finish) of job `id` and [`reserve`](JobStore::reserve) for
    /// `worker` in one atomic step (the ended job itself is not reserved again even if due).
    /// When the finish is refused, nothing changes and nothing is reserved. The supervisor ends
    /// a turn with [`finish_and_reserve_batch`](JobStore::finish_and_reserve_batch) instead;
    /// this is the one-job cycle `benches/reserve.rs` measures it against.
    fn finish_and_reserve(
        &self,
        id: &str,
        end: &RunEnd<'_>,
        worker: &str,
        now: Millis,
    ) -> Result<(FailOrDone, Option<Job>), StoreError>;

    /// [`finish_and_reserve`](JobStore::finish_and_reserve) for a whole turn of the
    /// supervisor's loop: ends every attempt of `ends` and reserves a due job for each of
    /// `workers` (in order; fewer when fewer are due), in one atomic step. A job ended here is
    /// not reserved again even if due. Returns each end's result in the order of `ends` (an end
    /// refused as [`finish`](JobStore::finish) would refuse it is `NotFound` in its place and
    /// changes nothing; the others are recorded) and the jobs reserved, each `locked_by` its
    /// worker. An error of the whole step changes nothing.
    fn finish_and_reserve_batch(
        &self,
        ends: &[(&str, RunEnd<'_>)],
        workers: &[&str],
        now: Millis,
    ) -> Result<TurnOutcome, StoreError>;

    /// Ends the attempt of processing job `id`, unlocking it (`locked_by`, `locked_at`, `pgid`
    /// cleared, `updated_at = now`). Succeeded: `completed`, `available_at = None`. Failed:
    /// `attempts + 1`, `last_error = error`, then [`crate::model::retry_decision`]: `failed`
    /// with `available_at` = the retry time, or `dead` with `available_at = None`.
    /// `NotFound` when no processing job has that id.
    fn finish(&self, id: &str, end: &RunEnd<'_>, now: Millis) -> Result<FailOrDone, StoreError>;

    /// Records the process group of processing job `id` (`NotFound` if it is not processing).
    fn set_pgid(&self, id: &str, pgid: i32) -> Result<(), StoreError>;

    /// Returns processing job `id` to `pending` without counting an attempt (a forced stop):
    /// unlocked, `available_at = min(available_at, now)` so it keeps its place. A store that
    /// keeps cancels of running jobs (PostgreSQL: asked for from any host) ends a job whose
    /// cancel was asked for as [`cancel`](JobStore::cancel) would, instead: it is returned dead.
    /// `NotFound` when no processing job has that id.
    fn release(&self, id: &str, now: Millis) -> Result<Job, StoreError>;

    /// Moves dead job `id` back to `pending`: `attempts = 0`, `available_at = now`, unlocked,
    /// `last_error` kept. `NotFound` when there is no such job, `WrongState` when it is not
    /// dead. With `request` already applied: no change, and the job as it is now.
    fn dlq_retry(&self, id: &str, now: Millis, request: Option<&str>) -> Result<Job, StoreError>;

    /// Stores the output of run `output.run` of job `id`, replacing any earlier one.
    fn put_output(&self, id: &str, output: &RunOutput) -> Result<(), StoreError>;

    /// The output of run `run` of job `id`, if stored.
    fn output(&self, id: &str, run: u32) -> Result<Option<RunOutput>, StoreError>;

    /// Sets one configuration value (already validated by [`ConfigKey::parse_value`]). With
    /// `request`, as for [`enqueue`](JobStore::enqueue).
    fn config_set(
        &self,
        key: ConfigKey,
        value: u64,
        request: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The configuration, with defaults for keys never set.
    fn config(&self) -> Result<Config, StoreError>;

    /// Forgets which spool requests were applied (called once the spool is empty).
    fn forget_applied(&self) -> Result<(), StoreError>;

    /// Ends, as failed with `error`, the attempt of every job in `processing` (left there by an
    /// owner that died), exactly as [`finish`](JobStore::finish) would, in any order. Returns
    /// what the retry rule decided for each.
    fn recover_interrupted(
        &self,
        error: &str,
        backoff_base: u64,
        now: Millis,
    ) -> Result<Vec<FailResult>, StoreError>;

    /// One job, in whatever state.
    fn get(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// Jobs in `state` (every state when `None`, in lifecycle order: pending, processing,
    /// completed, failed, dead), each state's jobs by id in byte order, skipping `offset` and
    /// returning at most `limit`.
    fn list(
        &self,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;

    /// One page of the jobs in `states` (every state when empty), in `order`, starting after
    /// the cursor `after` (a [`ListPage::next`] this store returned; `None`: from the first),
    /// at most `limit` of them. `next` is set when the page is full (a following page may be
    /// empty). Each page is read at one instant, so paging through a store that changes
    /// meanwhile yields each job at most once (exactly once if it stays in a listed state), as
    /// it was when its page was read. `BadCursor` when `after` is not a cursor of this order.
    fn list_page(
        &self,
        states: &[JobState],
        order: ListOrder,
        after: Option<&[u8]>,
        limit: usize,
        now: Millis,
    ) -> Result<ListPage, StoreError>;

    /// Every job once, in the order of `list(None, ..)`.
    fn all_jobs(&self) -> Box<dyn Iterator<Item = Result<Job, StoreError>> + '_>;

    /// How many jobs are in each state.
    fn counts(&self) -> Result<Counts, StoreError>;

    /// The earliest `available_at` of a waiting job (pending or failed) that was not yet due at
    /// the last [`reserve`](JobStore::reserve) (or enqueue, fail, release); `None` when no job
    /// waits for a later time. It may lie in the past once its time has come: the caller then
    /// reserves, and the job is taken.
    fn next_wakeup(&self) -> Result<Option<Millis>, StoreError>;

    /// Checks the store's invariants over every job (each job in exactly one state, whatever
    /// the backend keeps beside the jobs agreeing with them). `jobs` is how many jobs there are;
    /// `problems` is empty when all is well.
    fn verify(&self) -> Result<VerifyReport, StoreError>;

    /// Cancels a job that is not running (`queuectl cancel`): a pending or failed job, due or
    /// waiting for its time, moves to `dead` with `last_error` [`CANCELLED`], unlocked, with no
    /// `available_at`, out of the availability order (it is never reserved again); `attempts`
    /// and `runs` are unchanged. Errors, changing nothing: `NotFound`; `Running` for a
    /// processing job; `Finished` (with its state) for a completed or dead job.
    fn cancel(&self, id: &str, now: Millis) -> Result<Job, StoreError>;

    /// One step of retention: examines at most `limit` jobs in `state` (completed or dead; any
    /// other state examines nothing), in id order (bytes) after `after` (exclusive; `None`: from
    /// the first), and removes those with `updated_at < finished_before` together with the
    /// output of every run. Returns how many were removed and where the next step starts (`None`
    /// once the last job was examined). Steps are small so that the owner can interleave them
    /// with its other work.
    fn purge(
        &self,
        state: JobState,
        finished_before: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PurgeStep, StoreError>;

    /// Removes a finished job (`queuectl rm`): a completed or dead job and the output of every
    /// run are deleted; the job is returned as it was. Errors, changing nothing: `NotFound`;
    /// `NotFinished` (with its state) for a pending, processing or failed job.
    fn remove(&self, id: &str) -> Result<Job, StoreError>;
}
