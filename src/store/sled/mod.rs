//! The storage engine: the only code in queuectl that names sled.
//!
//! A job lives in exactly one state tree (`pending`, `processing`, `completed`, `failed`,
//! `dead`). The availability index (`due` for jobs that may run now, `scheduled` for jobs whose
//! time has not come) holds exactly the pending and failed jobs, each once. Every state change is
//! one sled transaction over all the trees it touches, so a crash at any point leaves both
//! invariants true. Key layouts are written down in [`keys`].
//!
//! Durability: no operation here flushes by itself. Whoever acknowledges a write to a user calls
//! [`SledStore::flush`] first; the supervisor flushes completions in groups.
//!
//! Time is always passed in (`now`), never read here, so tests can drive the clock.

pub mod keys;

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Transactional, Tree};

use crate::model::{
    retry_decision, Config, ConfigKey, Counts, Job, JobState, Millis, NewJob, RetryDecision,
    RunOutput,
};
use crate::store::{
    FailOrDone, FailResult, JobStore, ListOrder, ListPage, PurgeStep, RunEnd, StoreError,
    TurnOutcome, VerifyReport,
};

/// sled's page cache, as sled counts it (the bytes of keys and values; the memory it takes is
/// about twice that). A queue works at its two ends (new jobs, the next due ones), so a small
/// cache serves a million jobs as fast as a large one; a larger one only grows the supervisor
/// (after a 1,000,000-line bulk enqueue through it: 200 MB with 64 MiB, 158 MB with 16 MiB,
/// 138 MB with 8 MiB; see README, performance).
const CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// How long `open` waits for a previous owner's sled threads to let go of the database.
const SLED_LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Jobs moved from `scheduled` to `due` per transaction.
const PROMOTE_BATCH: usize = 512;

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            // Once a write failed, sled returns the same error to every later write until it
            // is opened again.
            sled::Error::Io(io) if super::is_no_space(&io) => StoreError::NoSpace,
            e => StoreError::Backend(Box::new(e)),
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::from(e),
        }
    }
}

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Records are MessagePack arrays in field order (not maps with field names): about a third
/// of the size, and sled's writes cost grows with value size. New fields go last, with
/// `#[serde(default)]`, so older records still decode.
fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(v).map_err(|e| StoreError::Encode(e.to_string()))
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

fn tx_encode<T: Serialize>(v: &T) -> TxResult<Vec<u8>> {
    encode(v).map_err(ConflictableTransactionError::Abort)
}

fn tx_decode_job(state: JobState, bytes: &[u8]) -> TxResult<Job> {
    decode(keys::state_tree_name(state), bytes).map_err(ConflictableTransactionError::Abort)
}

/// Removes the temporary files of snapshots whose writing was interrupted
/// (`snap.<lsn>.generating`): sled would otherwise take the newest such file for its snapshot
/// and refuse to open with "Read corrupted data" (sled 0.34, issues #1527 and #1533). A kill
/// during any open, or a full disk, leaves one behind.
///
/// Why this is safe: nobody is writing a snapshot now. Callers hold the data directory's lock,
/// and this waits for sled's own lock on `db/db` (held by a previous owner's threads until
/// they are done) before looking. A `.generating` file was never a snapshot: sled publishes
/// one only by renaming it to `snap.<lsn>` after an fsync, and removes older snapshots only
/// after that rename. So removing the temporary file leaves the store exactly as if the
/// writer had died before creating it, which sled recovers from (the last published snapshot,
/// or none, plus the log). A snapshot only speeds up recovery; it holds no data of its own.
fn remove_snapshot_debris(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| StoreError::Open {
        path: dir.display().to_string(),
        source: Box::new(e),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let debris: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .filter(|n| {
            let n = n.as_encoded_bytes();
            n.starts_with(b"snap.") && n.ends_with(b".generating")
        })
        .collect();
    if debris.is_empty() {
        return Ok(());
    }
    // sled locks `db/db` (an fs2 exclusive lock) for as long as it has the store open.
    let data = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dir.join("db"));
    let _sled_lock = match data {
        Ok(file) => {
            let deadline = std::time::Instant::now() + SLED_LOCK_GRACE;
            while fs2::FileExt::try_lock_exclusive(&file).is_err() {
                if std::time::Instant::now() >= deadline {
                    // Still held: let sled's open report it.
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Some(file)
        }
        Err(_) => None,
    };
    for name in debris {
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => tracing::warn!(
                "removed {} left by an interrupted open of the store",
                dir.join(&name).display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

/// The queue's durable state.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    states: [Tree; 5],
    due: Tree,
    scheduled: Tree,
    counts: Tree,
    applied: Tree,
    /// Version 2's one entry per staged job: read only by the upgrade to version 3.
    staged: Tree,
    chunks: Tree,
    batches: Tree,
    output: Tree,
    config: Tree,
    meta: Tree,
    /// Taken shared by every transaction that moves jobs between trees, and exclusively by a
    /// page read ([`JobStore::list_page`]), so that a page sees the trees at one instant (sled
    /// has no snapshots). Uncontended, it costs a few nanoseconds per transaction; a page read
    /// holds writers back for as long as it takes to read one page.
    gate: Arc<RwLock<()>>,
    /// Held by every write that adds jobs, from its look for taken ids to its commit: a bulk
    /// enqueue stored by a thread beside the owner's own (see the supervisor) must not let an
    /// id in twice. It guards the ids staged and not yet moved, which such a look includes.
    adding: Arc<Mutex<Staging>>,
}

/// The ids of the jobs of every bulk enqueue staged and not yet moved to `pending`, by batch:
/// what keeps an id out twice while its job is staged (a chunk is one entry, not one per id,
/// so the tree cannot be asked). In memory only, and that is enough: the owner is the only
/// writer; after a crash, `open` finishes moving the published batches before anything can add
/// a job, and a new owner drops the unpublished ones (`discard_unpublished`) before it takes
/// any request; a batch staged again after its owner died starts with `discard`.
///
/// An id is kept as a 64-bit hash (a million-job batch holds 16 MiB of them, not 70 MiB of
/// strings); a hash found is confirmed by reading the batch's chunks, which only an id given
/// twice (or one chance in 2^64 per batch and id) costs. The hash is keyed at random per
/// process, so ids cannot be chosen to collide.
#[derive(Default)]
struct Staging {
    hasher: std::collections::hash_map::RandomState,
    batches: HashMap<String, StagedBatch>,
}

#[derive(Default)]
struct StagedBatch {
    ids: HashSet<u64>,
    /// The number of the batch's next chunk.
    next_chunk: u32,
}

impl Staging {
    fn hash(&self, id: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, id)
    }
}

/// Takes the lock of writes that add jobs (a poisoned lock guards only ids, which are still
/// right: every change to them is made after the write it follows succeeded).
fn hold(lock: &Mutex<Staging>) -> MutexGuard<'_, Staging> {
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Positions of the trees in every job transaction (see [`SledStore::tx`]).
const TX_DUE: usize = 5;
const TX_SCHEDULED: usize = 6;
const TX_COUNTS: usize = 7;
const TX_APPLIED: usize = 8;
const TX_CHUNKS: usize = 9;

/// Jobs per staged chunk, and so per transaction of a publication's move. sled copies a node
/// on every write, and a leaf holds up to 16 entries: chunks of 1,000 jobs made leaves of
/// megabytes and a supervisor storing a million-line file peaked at 164 MiB (136 MiB with 100).
/// 100 keeps the copies small and the transactions short (a supervisor's loop waits for one at
/// most).
const CHUNK_JOBS: usize = 100;

fn state_index(state: JobState) -> usize {
    match state {
        JobState::Pending => 0,
        JobState::Processing => 1,
        JobState::Completed => 2,
        JobState::Failed => 3,
        JobState::Dead => 4,
    }
}

/// One transaction over every tree a job transition may touch, by name.
struct Tx<'a>(&'a [TransactionalTree]);

impl Tx<'_> {
    fn state(&self, state: JobState) -> &TransactionalTree {
        &self.0[state_index(state)]
    }

    fn due(&self) -> &TransactionalTree {
        &self.0[TX_DUE]
    }

    fn scheduled(&self) -> &TransactionalTree {
        &self.0[TX_SCHEDULED]
    }

    fn applied(&self) -> &TransactionalTree {
        &self.0[TX_APPLIED]
    }

    fn chunks(&self) -> &TransactionalTree {
        &self.0[TX_CHUNKS]
    }

    /// Adds `delta` to the counter of `state`.
    fn count(&self, state: JobState, delta: i64) -> TxResult<()> {
        let counts = &self.0[TX_COUNTS];
        let key = keys::count_key(state);
        let current = match counts.get(key)? {
            None => 0,
            Some(v) => match keys::decode_count(&v) {
                Some(n) => n,
                None => {
                    return abort(StoreError::Corrupt {
                        tree: keys::COUNTS,
                        detail: format!("the {state} counter is not 8 bytes"),
                    })
                }
            },
        };
        let next = current.saturating_add_signed(delta);
        counts.insert(key, &next.to_be_bytes())?;
        Ok(())
    }

    /// Counts a job that moved from `from` to `to`.
    fn moved(&self, from: JobState, to: JobState) -> TxResult<()> {
        self.count(from, -1)?;
        self.count(to, 1)
    }

    /// Records `request` as applied; `false` if it already was (then nothing is to be done).
    fn apply_once(&self, request: Option<&str>) -> TxResult<bool> {
        if let Some(req) = request {
            if self.applied().get(req)?.is_some() {
                return Ok(false);
            }
            self.applied().insert(req, &[])?;
        }
        Ok(true)
    }

    /// Writes `job` into the tree of its state.
    fn put(&self, job: &Job) -> TxResult<()> {
        self.state(job.state)
            .insert(job.id.as_bytes(), tx_encode(job)?)?;
        Ok(())
    }

    /// Removes job `id` from the tree of `state`, if it is there.
    fn take(&self, state: JobState, id: &str) -> TxResult<Option<Job>> {
        match self.state(state).remove(id.as_bytes())? {
            None => Ok(None),
            Some(raw) => tx_decode_job(state, &raw).map(Some),
        }
    }

    fn take_processing(&self, id: &str) -> TxResult<Job> {
        match self.take(JobState::Processing, id)? {
            Some(job) => Ok(job),
            None => abort(StoreError::NotFound(id.to_string())),
        }
    }

    /// Adds a pending or failed job to the availability index.
    fn index(&self, job: &Job, now: Millis) -> TxResult<()> {
        let value = keys::index_value(job.state, &job.id);
        match index_key(job, now) {
            IndexKey::Due(k) => self.due().insert(&k[..], value)?,
            IndexKey::Scheduled(k) => self.scheduled().insert(&k[..], value)?,
        };
        Ok(())
    }

    /// Removes a pending or failed job from the availability index: it is in exactly one of
    /// the two trees, under its `available_at`.
    fn unindex(&self, job: &Job) -> TxResult<()> {
        if let Some(at) = job.available_at {
            self.due()
                .remove(&keys::due_key(job.priority, at, job.seq)[..])?;
            self.scheduled()
                .remove(&keys::scheduled_key(at, job.seq)[..])?;
        }
        Ok(())
    }

    /// Moves the job of `next` to `processing`, locked by `worker`.
    fn take_due(&self, next: &DueEntry, worker: &str, now: Millis) -> TxResult<Taken> {
        if self.due().remove(&next.key)?.is_none() {
            return Ok(Taken::Raced);
        }
        let Some(job) = self.take(next.state, &next.id)? else {
            return Ok(Taken::Missing);
        };
        let job = self.start_run(job, next.state, worker, now)?;
        Ok(Taken::Job(Box::new(job)))
    }

    /// Puts a job just taken out of the (pending or failed) tree of `from` into `processing`,
    /// locked by `worker`, with one more run.
    fn start_run(&self, mut job: Job, from: JobState, worker: &str, now: Millis) -> TxResult<Job> {
        job.state = JobState::Processing;
        job.locked_by = Some(worker.to_string());
        job.locked_at = Some(now);
        job.updated_at = now;
        job.runs = job.runs.saturating_add(1);
        job.pgid = None;
        self.put(&job)?;
        self.moved(from, JobState::Processing)?;
        Ok(job)
    }

    /// Ends the attempt of processing job `id`.
    fn finish(&self, id: &str, end: &RunEnd<'_>, now: Millis) -> TxResult<FailOrDone> {
        let mut job = self.take_processing(id)?;
        unlock(&mut job, now);
        match end {
            RunEnd::Succeeded => {
                job.state = JobState::Completed;
                job.available_at = None;
                self.put(&job)?;
                self.moved(JobState::Processing, JobState::Completed)?;
                Ok(FailOrDone::Done(job))
            }
            RunEnd::Failed {
                error,
                backoff_base,
            } => {
                job.attempts = job.attempts.saturating_add(1);
                job.last_error = Some(error.to_string());
                let decision = retry_decision(job.attempts, job.max_retries, *backoff_base, now);
                match decision {
                    RetryDecision::Dead => {
                        job.state = JobState::Dead;
                        job.available_at = None;
                        self.put(&job)?;
                    }
                    RetryDecision::Retry { at, .. } => {
                        job.state = JobState::Failed;
                        job.available_at = Some(at);
                        self.put(&job)?;
                        self.index(&job, now)?;
                    }
                }
                self.moved(JobState::Processing, job.state)?;
                Ok(FailOrDone::Failed(FailResult { job, decision }))
            }
            RunEnd::Cancelled => {
                job.state = JobState::Dead;
                job.available_at = None;
                job.last_error = Some(crate::store::CANCELLED.to_string());
                self.put(&job)?;
                self.moved(JobState::Processing, JobState::Dead)?;
                Ok(FailOrDone::Failed(FailResult {
                    job,
                    decision: RetryDecision::Dead,
                }))
            }
        }
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in directory `path`, upgrading an older format.
    /// Only one process may have it open; callers hold the data directory's lock first.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let config = sled::Config::new().path(path).cache_capacity(CACHE_BYTES);
        remove_snapshot_debris(path)?;
        crate::crashpoint::watch_open(path);
        // Callers own the data directory's lock, so sled's own file lock can only be held by
        // a previous owner that is still closing (its background threads let go a moment after
        // the last handle is dropped): wait for it rather than fail.
        let deadline = std::time::Instant::now() + SLED_LOCK_GRACE;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.display().to_string(),
                        source: Box::new(source),
                    })
                }
            }
        };
        let tree = |name: &str| db.open_tree(name);
        let states = [
            tree(keys::state_tree_name(JobState::Pending))?,
            tree(keys::state_tree_name(JobState::Processing))?,
            tree(keys::state_tree_name(JobState::Completed))?,
            tree(keys::state_tree_name(JobState::Failed))?,
            tree(keys::state_tree_name(JobState::Dead))?,
        ];
        let store = SledStore {
            states,
            due: tree(keys::DUE)?,
            scheduled: tree(keys::SCHEDULED)?,
            counts: tree(keys::COUNTS)?,
            applied: tree(keys::APPLIED)?,
            staged: tree(keys::STAGED)?,
            chunks: tree(keys::CHUNKS)?,
            batches: tree(keys::BATCHES)?,
            output: tree(keys::OUTPUT)?,
            config: tree(keys::CONFIG)?,
            meta: tree(keys::META)?,
            gate: Arc::default(),
            adding: Arc::default(),
            db,
        };
        store.check_schema()?;
        store.resume_published()?;
        Ok(store)
    }

    /// The format version written in `meta`; `None` for a store never opened before.
    fn schema_version(&self) -> Result<Option<u32>, StoreError> {
        match self.meta.get(keys::SCHEMA_VERSION_KEY)? {
            None => Ok(None),
            Some(v) => <[u8; 4]>::try_from(v.as_ref())
                .map(|b| Some(u32::from_be_bytes(b)))
                .map_err(|_| StoreError::Corrupt {
                    tree: keys::META,
                    detail: "schema_version is not 4 bytes".into(),
                }),
        }
    }

    /// Brings the store to [`keys::SCHEMA_VERSION`], one version at a time; refuses a newer one.
    fn check_schema(&self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        match found {
            Some(keys::SCHEMA_VERSION) => Ok(()),
            // Version 1 (and a new, empty store): no counters yet, nothing staged.
            None | Some(1) => self.upgrade_to_2().and_then(|()| self.upgrade_to_3()),
            Some(2) => self.upgrade_to_3(),
            Some(found) => Err(StoreError::Schema {
                found,
                expected: keys::SCHEMA_VERSION,
            }),
        }
    }

    /// Version 2 adds the per-state counters (and records ending with `cwd` and `env`, which
    /// version 1 records decode without): count every state tree once, then write the counters
    /// and the new version in one transaction.
    fn upgrade_to_2(&self) -> Result<(), StoreError> {
        let mut counts = Counts::default();
        for st in JobState::ALL {
            counts.set(st, self.tree(st).len() as u64);
        }
        let trees = [&self.counts, &self.meta];
        trees[..].transaction(|t| {
            for st in JobState::ALL {
                t[0].insert(keys::count_key(st), &counts.get(st).to_be_bytes())?;
            }
            t[1].insert(keys::SCHEMA_VERSION_KEY, &2u32.to_be_bytes())?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        if counts.total() > 0 {
            tracing::info!(
                jobs = counts.total(),
                "upgraded the store to format version 2"
            );
        }
        Ok(())
    }

    /// Version 3 stages a bulk enqueue's jobs in chunks: what version 2 staged one entry per job
    /// (a batch cut short by a crash) moves into chunks of its batch, `CHUNK_JOBS` entries per
    /// transaction, so a crash here leaves each entry in one of the two; then the version.
    fn upgrade_to_3(&self) -> Result<(), StoreError> {
        const CHUNK_JOBS: usize = 1_000;
        let mut moved = 0usize;
        loop {
            // The first batch still in `staged`, and up to CHUNK_JOBS of its entries.
            let mut batch: Option<String> = None;
            let mut entries = Vec::new();
            for item in self.staged.iter() {
                let (k, v) = item?;
                let Some((b, _)) = keys::decode_staged_value(&v) else {
                    return Err(StoreError::Corrupt {
                        tree: keys::STAGED,
                        detail: "short entry".into(),
                    });
                };
                let b = String::from_utf8_lossy(b).into_owned();
                if batch.get_or_insert_with(|| b.clone()) == &b {
                    entries.push((k, v));
                    if entries.len() == CHUNK_JOBS {
                        break;
                    }
                }
            }
            let Some(batch) = batch else { break };
            let next = self.next_chunk(&batch)?;
            let value = keys::chunk_value(
                entries
                    .iter()
                    .filter_map(|(_, v)| keys::decode_staged_value(v).map(|(_, r)| r)),
            );
            let trees = [&self.staged, &self.chunks];
            trees[..].transaction(|t| {
                for (k, _) in &entries {
                    t[0].remove(k)?;
                }
                t[1].insert(keys::chunk_key(&batch, next), value.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
            moved += entries.len();
        }
        self.meta
            .insert(keys::SCHEMA_VERSION_KEY, &3u32.to_be_bytes())?;
        if moved > 0 {
            tracing::info!(
                jobs = moved,
                "upgraded the store to format version 3 (staged jobs in chunks)"
            );
        }
        Ok(())
    }

    /// The number the next chunk of `batch` takes: one more than its last on disk.
    fn next_chunk(&self, batch: &str) -> Result<u32, StoreError> {
        let last = self
            .chunks
            .scan_prefix(keys::chunk_prefix(batch))
            .next_back();
        Ok(match last {
            None => 0,
            Some(item) => {
                let (k, _) = item?;
                keys::chunk_number(&k).map_or(0, |n| n.saturating_add(1))
            }
        })
    }

    /// The gate, for a transaction that moves jobs (a poisoned lock guards nothing: no data
    /// lives in it).
    fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The gate, for a page read: no job moves until it is dropped.
    fn reading_a_page(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A page in id order: the state trees merged by key, each from just after `after`.
    fn page_by_id(
        &self,
        states: &[JobState],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let mut iters: Vec<(JobState, sled::Iter)> = states
            .iter()
            .map(|st| {
                let tree = self.tree(*st);
                let it = match after {
                    Some(a) => tree.range::<&[u8], _>((Bound::Excluded(a), Bound::Unbounded)),
                    None => tree.iter(),
                };
                (*st, it)
            })
            .collect();
        let mut heads = Vec::with_capacity(iters.len());
        for (_, it) in &mut iters {
            heads.push(it.next().transpose()?);
        }
        let mut jobs: Vec<Job> = Vec::with_capacity(limit.min(4096));
        while jobs.len() < limit {
            let smallest = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|(k, _)| (i, k)))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(i) = smallest else { break };
            let next = iters[i].1.next().transpose()?;
            if let Some((_, v)) = std::mem::replace(&mut heads[i], next) {
                jobs.push(decode(keys::state_tree_name(iters[i].0), &v)?);
            }
        }
        let next = match jobs.last() {
            Some(last) if jobs.len() == limit => Some(last.id.as_bytes().to_vec()),
            _ => None,
        };
        Ok(ListPage { jobs, next })
    }

    /// A page in run order: the `due` index, then `scheduled`. The cursor is the phase (0:
    /// due, 1: scheduled) then the index key of the last job.
    fn page_by_run(
        &self,
        states: &[JobState],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let (from_phase, from_key): (u8, Option<&[u8]>) = match after {
            None => (0, None),
            Some([phase @ (0 | 1), key @ ..]) => (*phase, Some(key)),
            Some(_) => return Err(StoreError::BadCursor),
        };
        let mut jobs = Vec::with_capacity(limit.min(4096));
        let mut last: Option<Vec<u8>> = None;
        for (phase, tree) in [(0u8, &self.due), (1, &self.scheduled)] {
            if phase < from_phase {
                continue;
            }
            let range = match from_key.filter(|_| phase == from_phase) {
                Some(k) => tree.range::<&[u8], _>((Bound::Excluded(k), Bound::Unbounded)),
                None => tree.iter(),
            };
            for item in range {
                if jobs.len() >= limit {
                    break;
                }
                let (key, value) = item?;
                let Some((state, id)) = keys::decode_index_value(&value) else {
                    return Err(StoreError::Corrupt {
                        tree: if phase == 0 {
                            keys::DUE
                        } else {
                            keys::SCHEDULED
                        },
                        detail: "malformed index entry".into(),
                    });
                };
                if !states.contains(&state) {
                    continue;
                }
                let Some(raw) = self.tree(state).get(id.as_bytes())? else {
                    continue;
                };
                jobs.push(decode(keys::state_tree_name(state), &raw)?);
                let mut cursor = Vec::with_capacity(1 + key.len());
                cursor.push(phase);
                cursor.extend_from_slice(&key);
                last = Some(cursor);
            }
        }
        let next = last.filter(|_| jobs.len() == limit);
        Ok(ListPage { jobs, next })
    }

    fn tree(&self, state: JobState) -> &Tree {
        &self.states[state_index(state)]
    }

    /// Runs `f` as one transaction over the state trees, the index, the counters and the
    /// applied requests (sled serialises every transaction under one lock, so naming trees
    /// that are not written costs next to nothing).
    fn tx<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T, TransactionError<StoreError>> {
        let _gate = self.writing();
        let [p, pr, c, fa, d] = &self.states;
        let trees: [&Tree; 10] = [
            p,
            pr,
            c,
            fa,
            d,
            &self.due,
            &self.scheduled,
            &self.counts,
            &self.applied,
            &self.chunks,
        ];
        trees[..].transaction(|t| f(&Tx(t)))
    }

    // ---- writes ---------------------------------------------------------------------------

    /// The first entry of `due`, skipping (and dropping) malformed ones.
    fn peek_due(&self) -> Result<Option<DueEntry>, StoreError> {
        loop {
            let Some((key, value)) = self.due.first()? else {
                return Ok(None);
            };
            match keys::decode_index_value(&value) {
                Some((state, id)) => {
                    return Ok(Some(DueEntry {
                        id: id.to_string(),
                        key,
                        state,
                    }))
                }
                None => {
                    // A malformed entry names no job: drop it rather than block the queue.
                    tracing::warn!("dropping a malformed entry from the due index");
                    self.due.remove(&key)?;
                }
            }
        }
    }

    fn taken(&self, taken: Taken, next: &DueEntry) -> Option<Job> {
        match taken {
            Taken::Job(job) => Some(*job),
            Taken::Missing => {
                tracing::warn!(id = next.id, "dropped a due entry for a missing job");
                None
            }
            Taken::Raced => None,
        }
    }

    /// A processing job finished successfully.
    pub fn complete(&self, id: &str, now: Millis) -> Result<Job, StoreError> {
        match self.finish(id, &RunEnd::Succeeded, now)? {
            FailOrDone::Done(job) => Ok(job),
            FailOrDone::Failed(r) => Ok(r.job),
        }
    }

    /// A processing job's attempt failed: the retry rule moves it to `failed` (scheduled for
    /// its retry) or to `dead`.
    pub fn fail(
        &self,
        id: &str,
        error: &str,
        backoff_base: u64,
        now: Millis,
    ) -> Result<FailResult, StoreError> {
        let end = RunEnd::Failed {
            error,
            backoff_base,
        };
        match self.finish(id, &end, now)? {
            FailOrDone::Failed(r) => Ok(r),
            FailOrDone::Done(job) => Err(StoreError::Corrupt {
                tree: keys::state_tree_name(JobState::Completed),
                detail: format!("job {} completed on a failed attempt", job.id),
            }),
        }
    }

    /// The error for a job that is not in `expected`: not found, or in another state.
    fn not_in_state(&self, id: &str, expected: JobState) -> StoreError {
        match self.get(id) {
            Ok(Some(job)) => StoreError::WrongState {
                id: id.to_string(),
                actual: job.state,
                expected,
            },
            Ok(None) => StoreError::NotFound(id.to_string()),
            Err(e) => e,
        }
    }

    /// Moves every scheduled job whose time has come (`available_at <= now`) to `due`.
    /// Returns how many moved.
    pub fn promote_due(&self, now: Millis) -> Result<usize, StoreError> {
        let mut moved = 0;
        loop {
            let batch: Vec<(sled::IVec, sled::IVec)> = self
                .scheduled
                .range(..keys::scheduled_key(now.saturating_add(1), 0))
                .take(PROMOTE_BATCH)
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                return Ok(moved);
            }
            let [p, _, _, f, _] = &self.states;
            let trees = [&self.scheduled, &self.due, p, f];
            let _gate = self.writing();
            moved += trees[..].transaction(|t| {
                let mut n = 0;
                for (key, value) in &batch {
                    if t[0].remove(key)?.is_none() {
                        continue;
                    }
                    let Some((state, id)) = keys::decode_index_value(value) else {
                        continue;
                    };
                    let tree = if state == JobState::Failed {
                        &t[3]
                    } else {
                        &t[2]
                    };
                    let Some(raw) = tree.get(id.as_bytes())? else {
                        continue;
                    };
                    let job = tx_decode_job(state, &raw)?;
                    let at = job.available_at.unwrap_or(now);
                    t[1].insert(&keys::due_key(job.priority, at, job.seq)[..], value.clone())?;
                    n += 1;
                }
                Ok(n)
            })?;
        }
    }

    /// The state of batch `batch` in `batches`, if it exists.
    fn batch_state(&self, batch: &str) -> Result<Option<u8>, StoreError> {
        Ok(self.batches.get(batch)?.and_then(|v| v.first().copied()))
    }

    /// The keys of every chunk `batch` staged, in staging order.
    fn chunk_keys(&self, batch: &str) -> Result<Vec<sled::IVec>, StoreError> {
        self.chunks
            .scan_prefix(keys::chunk_prefix(batch))
            .keys()
            .map(|k| k.map_err(StoreError::from))
            .collect()
    }

    /// Moves every staged job of published batch `batch` to `pending`, chunk by chunk, then
    /// forgets the batch. Each chunk is one transaction (the chunk goes, its jobs arrive), so a
    /// crash leaves the batch published with some chunks moved, and `open` moves the rest.
    fn move_published(&self, batch: &str, now: Millis) -> Result<u64, StoreError> {
        let mut moved = 0u64;
        for key in self.chunk_keys(batch)? {
            let _adding = hold(&self.adding);
            moved += self.tx(|t| {
                let Some(value) = t.chunks().remove(&key)? else {
                    return Ok(0);
                };
                let Some(records) = keys::decode_chunk_value(&value) else {
                    return abort(StoreError::Corrupt {
                        tree: keys::CHUNKS,
                        detail: "a chunk cut short".into(),
                    });
                };
                for record in &records {
                    let job: Job = decode(keys::CHUNKS, record)
                        .map_err(ConflictableTransactionError::Abort)?;
                    t.state(JobState::Pending)
                        .insert(job.id.as_bytes(), *record)?;
                    t.index(&job, now)?;
                }
                let n = records.len() as u64;
                if n > 0 {
                    t.count(JobState::Pending, i64::try_from(n).unwrap_or(i64::MAX))?;
                }
                Ok(n)
            })?;
            crate::crashpoint::hit("enqueue-publish");
        }
        self.forget_batch(batch)?;
        Ok(moved)
    }

    /// Drops every staged job of `batch`, then the batch.
    fn drop_staged(&self, batch: &str) -> Result<u64, StoreError> {
        let mut dropped = 0u64;
        for key in self.chunk_keys(batch)? {
            if let Some(value) = self.chunks.remove(&key)? {
                dropped += keys::decode_chunk_value(&value).map_or(0, |r| r.len() as u64);
            }
        }
        self.forget_batch(batch)?;
        Ok(dropped)
    }

    /// Forgets `batch` once none of its jobs is staged any more: its marker, and its ids.
    fn forget_batch(&self, batch: &str) -> Result<(), StoreError> {
        let mut staging = hold(&self.adding);
        self.batches.remove(batch)?;
        staging.batches.remove(batch);
        Ok(())
    }

    /// Finishes the publication of every batch published before a crash.
    fn resume_published(&self) -> Result<(), StoreError> {
        let published: Vec<String> = self
            .batches
            .iter()
            .filter_map(|item| match item {
                Ok((k, v)) if v.first() == Some(&keys::BATCH_PUBLISHED) => {
                    Some(Ok(String::from_utf8_lossy(&k).into_owned()))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        for batch in published {
            // The time of publication was not kept: the jobs are indexed by their own
            // `available_at`, as of the time they were staged at the latest.
            let now = self.staged_now(&batch)?;
            let n = self.move_published(&batch, now)?;
            tracing::info!(batch, jobs = n, "finished publishing a bulk enqueue");
        }
        Ok(())
    }

    /// A time no earlier than the staging of any job of `batch` (its latest `created_at`):
    /// jobs due by then go to `due`, later ones to `scheduled`; `reserve` promotes the rest.
    fn staged_now(&self, batch: &str) -> Result<Millis, StoreError> {
        let mut latest = 0;
        self.visit_staged(batch, |job| {
            latest = latest.max(job.created_at);
            true
        })?;
        Ok(latest)
    }

    /// Calls `f` with every job `batch` staged, in staging order, until it returns `false`.
    fn visit_staged(&self, batch: &str, mut f: impl FnMut(Job) -> bool) -> Result<(), StoreError> {
        for item in self.chunks.scan_prefix(keys::chunk_prefix(batch)) {
            let (_, v) = item?;
            let records = keys::decode_chunk_value(&v).ok_or_else(|| StoreError::Corrupt {
                tree: keys::CHUNKS,
                detail: "a chunk cut short".into(),
            })?;
            for record in records {
                if !f(decode(keys::CHUNKS, record)?) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    // ---- reads ----------------------------------------------------------------------------

    /// Whether a job may be reserved right now.
    pub fn has_due(&self) -> Result<bool, StoreError> {
        Ok(!self.due.is_empty())
    }

    /// Whether `id` is taken: a job in any state, or staged (`staging`: the ids staged, held).
    fn exists(&self, staging: &Staging, id: &str) -> Result<bool, StoreError> {
        Ok(self.in_a_state(id)? || self.staged_by(staging, id, staging.hash(id))?.is_some())
    }

    /// The batch that staged `id` (whose hash is `hash`), if one did.
    fn staged_by(
        &self,
        staging: &Staging,
        id: &str,
        hash: u64,
    ) -> Result<Option<String>, StoreError> {
        for (batch, staged) in &staging.batches {
            if staged.ids.contains(&hash) && self.batch_holds(batch, id)? {
                return Ok(Some(batch.clone()));
            }
        }
        Ok(None)
    }

    /// Whether a chunk of `batch` holds a job `id` (reads every chunk of the batch).
    fn batch_holds(&self, batch: &str, id: &str) -> Result<bool, StoreError> {
        let mut found = false;
        self.visit_staged(batch, |job| {
            found = job.id == id;
            !found
        })?;
        Ok(found)
    }

    /// Whether a job `id` is in one of the state trees.
    fn in_a_state(&self, id: &str) -> Result<bool, StoreError> {
        for tree in &self.states {
            if tree.contains_key(id.as_bytes())? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The counters as stored.
    fn stored_counts(&self) -> Result<Counts, StoreError> {
        let mut c = Counts::default();
        for st in JobState::ALL {
            let n = match self.counts.get(keys::count_key(st))? {
                None => 0,
                Some(v) => keys::decode_count(&v).ok_or_else(|| StoreError::Corrupt {
                    tree: keys::COUNTS,
                    detail: format!("the {st} counter is not 8 bytes"),
                })?,
            };
            c.set(st, n);
        }
        Ok(c)
    }
}

impl JobStore for SledStore {
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError> {
        crate::crashpoint::hit("before-flush");
        self.db.flush()?;
        Ok(())
    }

    /// Stores `jobs` as pending, all or none. A job's `max_retries` defaults to the config's.
    /// With `request`, the spool request id is recorded in the same transaction and a request
    /// already applied is not applied again.
    fn enqueue(
        &self,
        jobs: &[NewJob],
        config: &Config,
        now: Millis,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut seen = HashSet::with_capacity(jobs.len());
        for j in jobs {
            if !seen.insert(j.id.as_str()) {
                return Err(StoreError::DuplicateInBatch(j.id.clone()));
            }
        }
        let mut records = Vec::with_capacity(jobs.len());
        for j in jobs {
            let job = new_record(j, config, now, self.db.generate_id()?);
            records.push((encode(&job)?, index_key(&job, now), job));
        }
        if let Some(req) = request {
            if self.applied.contains_key(req)? {
                return Ok(());
            }
        }
        let staging = hold(&self.adding);
        // Duplicates are looked for before the transaction, holding `adding`, so nothing can
        // add an id in between (the owner is the only writer), and plain reads cost a fraction of
        // transactional ones (this halves the time of a 100,000-job batch).
        for j in jobs {
            if self.exists(&staging, &j.id)? {
                return Err(StoreError::Duplicate(j.id.clone()));
            }
        }
        let added = i64::try_from(records.len()).unwrap_or(i64::MAX);
        self.tx(|t| {
            if !t.apply_once(request)? {
                return Ok(());
            }
            let pending = t.state(JobState::Pending);
            for (bytes, idx, job) in &records {
                pending.insert(job.id.as_bytes(), bytes.as_slice())?;
                let value = keys::index_value(JobState::Pending, &job.id);
                match idx {
                    IndexKey::Due(k) => t.due().insert(&k[..], value)?,
                    IndexKey::Scheduled(k) => t.scheduled().insert(&k[..], value)?,
                };
            }
            if added > 0 {
                t.count(JobState::Pending, added)?;
            }
            Ok(())
        })?;
        crate::crashpoint::hit("enqueue-chunk");
        Ok(())
    }

    fn stage(
        &self,
        batch: &str,
        jobs: &[NewJob],
        config: &Config,
        now: Millis,
    ) -> Result<(), StoreError> {
        if batch.is_empty() || batch.len() > usize::from(u8::MAX) {
            return Err(StoreError::Encode(format!(
                "a batch id must be 1 to 255 bytes, not {}",
                batch.len()
            )));
        }
        if self.batch_state(batch)? == Some(keys::BATCH_PUBLISHED) {
            return Err(StoreError::BatchPublished(batch.to_string()));
        }
        let mut seen = HashSet::with_capacity(jobs.len());
        for j in jobs {
            if !seen.insert(j.id.as_str()) {
                return Err(StoreError::DuplicateInBatch(j.id.clone()));
            }
        }
        // Checked before the write, as in `enqueue`.
        let mut staging = hold(&self.adding);
        let hashes: Vec<u64> = jobs.iter().map(|j| staging.hash(&j.id)).collect();
        for (j, &hash) in jobs.iter().zip(&hashes) {
            match self.staged_by(&staging, &j.id, hash)? {
                Some(b) if b == batch => return Err(StoreError::DuplicateInBatch(j.id.clone())),
                Some(_) => return Err(StoreError::Duplicate(j.id.clone())),
                None => {}
            }
            if self.in_a_state(&j.id)? {
                return Err(StoreError::Duplicate(j.id.clone()));
            }
        }
        let mut records = Vec::with_capacity(jobs.len());
        for j in jobs {
            records.push(encode(&new_record(j, config, now, self.db.generate_id()?))?);
        }
        // The batch is registered first: chunks without it would be dropped by nobody
        // (`discard_unpublished` goes by `batches`).
        if self.batch_state(batch)?.is_none() {
            self.batches.insert(batch, &[keys::BATCH_STAGING])?;
        }
        let mut n = match staging.batches.get(batch) {
            Some(b) => b.next_chunk,
            // Chunks left by an earlier owner of this batch, if any: go on after them.
            None => self.next_chunk(batch)?,
        };
        let mut chunks = sled::Batch::default();
        for part in records.chunks(CHUNK_JOBS) {
            let value = keys::chunk_value(part.iter().map(Vec::as_slice));
            chunks.insert(keys::chunk_key(batch, n), value);
            n = n.saturating_add(1);
        }
        self.chunks.apply_batch(chunks)?;
        let staged = staging.batches.entry(batch.to_string()).or_default();
        staged.ids.extend(hashes);
        staged.next_chunk = n;
        drop(staging);
        crate::crashpoint::hit("enqueue-chunk");
        Ok(())
    }

    fn publish(&self, batch: &str, now: Millis) -> Result<u64, StoreError> {
        // The one step: once `batches` says published (with the request recorded as applied
        // in the same transaction), the jobs are the queue's, and `open` finishes moving them
        // if this process dies before it does.
        let trees = [&self.batches, &self.applied];
        trees[..].transaction(|t| {
            t[0].insert(batch, &[keys::BATCH_PUBLISHED])?;
            t[1].insert(batch, &[])?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        self.move_published(batch, now)
    }

    fn discard(&self, batch: &str) -> Result<u64, StoreError> {
        if self.batch_state(batch)? == Some(keys::BATCH_PUBLISHED) {
            return Err(StoreError::BatchPublished(batch.to_string()));
        }
        self.drop_staged(batch)
    }

    fn discard_unpublished(&self) -> Result<u64, StoreError> {
        let staging: Vec<String> = self
            .batches
            .iter()
            .filter_map(|item| match item {
                Ok((k, v)) if v.first() != Some(&keys::BATCH_PUBLISHED) => {
                    Some(Ok(String::from_utf8_lossy(&k).into_owned()))
                }
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        let mut dropped = 0;
        for batch in staging {
            dropped += self.drop_staged(&batch)?;
        }
        Ok(dropped)
    }

    fn is_applied(&self, request: &str) -> Result<bool, StoreError> {
        Ok(self.applied.contains_key(request)?)
    }

    /// Takes the first due job (highest priority, then earliest available, then enqueue order),
    /// moves it to `processing` and marks it locked by `worker`.
    fn reserve(&self, worker: &str, now: Millis) -> Result<Option<Job>, StoreError> {
        self.promote_due(now)?;
        loop {
            let Some(next) = self.peek_due()? else {
                return Ok(None);
            };
            let taken = self.tx(|t| t.take_due(&next, worker, now))?;
            if let Some(job) = self.taken(taken, &next) {
                crate::crashpoint::hit("after-reserve");
                return Ok(Some(job));
            }
        }
    }

    /// Takes waiting job `id` out of its state and index, as `reserve` would take it.
    fn reserve_id(&self, id: &str, worker: &str, now: Millis) -> Result<Option<Job>, StoreError> {
        // The owner is the only writer: what is read here cannot change before the transaction.
        let Some(job) = self.get(id)? else {
            return Ok(None);
        };
        let from = job.state;
        if !matches!(from, JobState::Pending | JobState::Failed) {
            return Ok(None);
        }
        Ok(self.tx(|t| {
            let Some(job) = t.take(from, id)? else {
                return Ok(None);
            };
            t.unindex(&job)?;
            t.start_run(job, from, worker, now).map(Some)
        })?)
    }

    /// Ends the attempt of processing job `id` (completed, or the retry rule) and, in the same
    /// transaction, reserves the next due job for `worker`: one commit where the separate
    /// calls would make two. `None` for the next job when nothing is due.
    fn finish_and_reserve(
        &self,
        id: &str,
        end: &RunEnd<'_>,
        worker: &str,
        now: Millis,
    ) -> Result<(FailOrDone, Option<Job>), StoreError> {
        self.promote_due(now)?;
        let Some(next) = self.peek_due()? else {
            return Ok((self.finish(id, end, now)?, None));
        };
        let (done, taken) = self.tx(|t| {
            let done = t.finish(id, end, now)?;
            let taken = t.take_due(&next, worker, now)?;
            Ok((done, taken))
        })?;
        let taken = self.taken(taken, &next);
        if taken.is_some() {
            crate::crashpoint::hit("after-reserve");
        }
        Ok((done, taken))
    }

    /// One transaction; the due jobs are picked before it (this owner is the only writer).
    fn finish_and_reserve_batch(
        &self,
        ends: &[(&str, RunEnd<'_>)],
        workers: &[&str],
        now: Millis,
    ) -> Result<TurnOutcome, StoreError> {
        self.promote_due(now)?;
        // Picked before the ends are recorded: a job ended here (processing until then) is
        // not among them even if its retry is due at once.
        let mut next = Vec::with_capacity(workers.len());
        for item in self.due.iter() {
            if next.len() == workers.len() {
                break;
            }
            let (key, value) = item?;
            if let Some((state, id)) = keys::decode_index_value(&value) {
                next.push(DueEntry {
                    id: id.to_string(),
                    key,
                    state,
                });
            }
        }
        let (done, taken) = self.tx(|t| {
            let mut done = Vec::with_capacity(ends.len());
            for (id, end) in ends {
                // A refused end wrote nothing (its job was not processing): the others go on.
                done.push(match t.finish(id, end, now) {
                    Ok(done) => Ok(done),
                    Err(ConflictableTransactionError::Abort(e @ StoreError::NotFound(_))) => Err(e),
                    Err(e) => return Err(e),
                });
            }
            let mut taken = Vec::with_capacity(next.len());
            for (entry, worker) in next.iter().zip(workers) {
                taken.push(t.take_due(entry, worker, now)?);
            }
            Ok((done, taken))
        })?;
        let jobs = taken
            .into_iter()
            .zip(&next)
            .filter_map(|(taken, entry)| self.taken(taken, entry))
            .collect::<Vec<_>>();
        if !jobs.is_empty() {
            crate::crashpoint::hit("after-reserve");
        }
        Ok((done, jobs))
    }

    /// Ends an attempt without reserving anything.
    fn finish(&self, id: &str, end: &RunEnd<'_>, now: Millis) -> Result<FailOrDone, StoreError> {
        Ok(self.tx(|t| t.finish(id, end, now))?)
    }

    /// Records the process group of a running attempt, so that a later owner can kill it.
    /// One key of one tree changes, which sled does atomically without a transaction.
    fn set_pgid(&self, id: &str, pgid: i32) -> Result<(), StoreError> {
        let processing = self.tree(JobState::Processing);
        let Some(raw) = processing.get(id.as_bytes())? else {
            return Err(StoreError::NotFound(id.to_string()));
        };
        let mut job: Job = decode(keys::state_tree_name(JobState::Processing), &raw)?;
        job.pgid = Some(pgid);
        // Only if the job is still there unchanged (it cannot be otherwise while the one
        // writer, the caller, is here; the swap makes that explicit).
        let swapped = processing.compare_and_swap(id.as_bytes(), Some(raw), Some(encode(&job)?))?;
        if swapped.is_err() {
            tracing::debug!(id, "job changed while recording its process group");
        }
        Ok(())
    }

    /// Returns a processing job to `pending` without counting an attempt (a forced stop). It
    /// keeps its place in the queue.
    fn release(&self, id: &str, now: Millis) -> Result<Job, StoreError> {
        let job = self.tx(|t| {
            let mut job = t.take_processing(id)?;
            job.state = JobState::Pending;
            unlock(&mut job, now);
            job.available_at = Some(job.available_at.unwrap_or(now).min(now));
            t.put(&job)?;
            t.index(&job, now)?;
            t.moved(JobState::Processing, JobState::Pending)?;
            Ok(job)
        })?;
        Ok(job)
    }

    /// Moves a dead job back to `pending` with attempts = 0 (`queuectl dlq retry`).
    fn dlq_retry(&self, id: &str, now: Millis, request: Option<&str>) -> Result<Job, StoreError> {
        let res = self.tx(|t| {
            if !t.apply_once(request)? {
                return Ok(None);
            }
            let Some(mut job) = t.take(JobState::Dead, id)? else {
                // Which error (not found, or the actual state) is worked out after the
                // transaction: sled holds its write lock while this closure runs, so reading
                // the store outside the transaction here would deadlock.
                return abort(StoreError::NotFound(id.to_string()));
            };
            job.state = JobState::Pending;
            job.attempts = 0;
            unlock(&mut job, now);
            job.available_at = Some(now);
            t.put(&job)?;
            t.index(&job, now)?;
            t.moved(JobState::Dead, JobState::Pending)?;
            Ok(Some(job))
        });
        let job = match res {
            Err(TransactionError::Abort(StoreError::NotFound(_))) => {
                return Err(self.not_in_state(id, JobState::Dead))
            }
            res => res?,
        };
        match job {
            Some(job) => Ok(job),
            None => self.get(id)?.ok_or_else(|| StoreError::NotFound(id.into())),
        }
    }

    /// Stores the output of one attempt.
    fn put_output(&self, id: &str, output: &RunOutput) -> Result<(), StoreError> {
        self.output
            .insert(keys::output_key(id, output.run), encode(output)?)?;
        Ok(())
    }

    /// Sets a config value (already validated by [`ConfigKey::parse_value`]).
    fn config_set(
        &self,
        key: ConfigKey,
        value: u64,
        request: Option<&str>,
    ) -> Result<(), StoreError> {
        let trees = [&self.config, &self.applied];
        trees[..].transaction(|t| {
            if let Some(req) = request {
                if t[1].get(req)?.is_some() {
                    return Ok(());
                }
                t[1].insert(req, &[])?;
            }
            t[0].insert(key.as_str(), value.to_string().as_bytes())?;
            Ok(())
        })?;
        Ok(())
    }

    /// Forgets spool request ids: called once the spool holds none of them any more.
    fn forget_applied(&self) -> Result<(), StoreError> {
        self.applied.clear()?;
        Ok(())
    }

    /// Every processing job found by a new owner was interrupted: each counts as a failed
    /// attempt under the retry rule. Returns what happened to each.
    fn recover_interrupted(
        &self,
        error: &str,
        backoff_base: u64,
        now: Millis,
    ) -> Result<Vec<FailResult>, StoreError> {
        let ids: Vec<String> = self
            .list(Some(JobState::Processing), 0, usize::MAX)?
            .into_iter()
            .map(|j| j.id)
            .collect();
        ids.iter()
            .map(|id| self.fail(id, error, backoff_base, now))
            .collect()
    }

    /// The effective configuration: stored values over the defaults.
    fn config(&self) -> Result<Config, StoreError> {
        let mut cfg = Config::default();
        for item in self.config.iter() {
            let (k, v) = item?;
            let corrupt = |detail: String| StoreError::Corrupt {
                tree: keys::CONFIG,
                detail,
            };
            let key = std::str::from_utf8(&k)
                .ok()
                .and_then(|k| k.parse::<ConfigKey>().ok());
            let Some(key) = key else {
                continue; // a key from a newer version: ignored
            };
            let value = std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .and_then(|v| key.check_canonical(v).ok())
                .ok_or_else(|| corrupt(format!("bad value for {}", key.as_str())))?;
            cfg.set(key, value);
        }
        Ok(cfg)
    }

    /// Finds a job in whichever state it is.
    fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        for state in JobState::ALL {
            if let Some(raw) = self.tree(state).get(id.as_bytes())? {
                return Ok(Some(decode(keys::state_tree_name(state), &raw)?));
            }
        }
        Ok(None)
    }

    /// Jobs in `state` (all states when `None`, in lifecycle order), ordered by id, skipping
    /// `offset` and returning at most `limit`.
    fn list(
        &self,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let states: Vec<JobState> = match state {
            Some(s) => vec![s],
            None => JobState::ALL.to_vec(),
        };
        let mut out = Vec::new();
        let mut skip = offset;
        for st in states {
            for item in self.tree(st).iter().values() {
                if out.len() >= limit {
                    return Ok(out);
                }
                if skip > 0 {
                    skip -= 1;
                    continue;
                }
                out.push(decode(keys::state_tree_name(st), &item?)?);
            }
        }
        Ok(out)
    }

    fn list_page(
        &self,
        states: &[JobState],
        order: ListOrder,
        after: Option<&[u8]>,
        limit: usize,
        _now: Millis,
    ) -> Result<ListPage, StoreError> {
        let mut listed: Vec<JobState> = Vec::with_capacity(5);
        for st in if states.is_empty() {
            &JobState::ALL[..]
        } else {
            states
        } {
            if !listed.contains(st) {
                listed.push(*st);
            }
        }
        if limit == 0 {
            return Ok(ListPage::default());
        }
        let _gate = self.reading_a_page();
        match order {
            ListOrder::Id => self.page_by_id(&listed, after, limit),
            ListOrder::NextRun => {
                listed.retain(|st| matches!(st, JobState::Pending | JobState::Failed));
                if listed.is_empty() {
                    return Ok(ListPage::default());
                }
                self.page_by_run(&listed, after, limit)
            }
        }
    }

    /// Every job, in lifecycle order then by id (for export).
    fn all_jobs(&self) -> Box<dyn Iterator<Item = Result<Job, StoreError>> + '_> {
        Box::new(JobState::ALL.into_iter().flat_map(move |st| {
            self.tree(st)
                .iter()
                .values()
                .map(move |v| decode(keys::state_tree_name(st), &v?))
        }))
    }

    /// How many jobs are in each state.
    /// Read from the counters kept with every transition: a few reads whatever the size.
    fn counts(&self) -> Result<Counts, StoreError> {
        self.stored_counts()
    }

    /// When the earliest scheduled job becomes due, if any.
    fn next_wakeup(&self) -> Result<Option<Millis>, StoreError> {
        match self.scheduled.first()? {
            None => Ok(None),
            Some((k, _)) => Ok(Some(keys::scheduled_at(&k).ok_or_else(|| {
                StoreError::Corrupt {
                    tree: keys::SCHEDULED,
                    detail: "short key".into(),
                }
            })?)),
        }
    }

    /// The output of run `run` of job `id`.
    fn output(&self, id: &str, run: u32) -> Result<Option<RunOutput>, StoreError> {
        match self.output.get(keys::output_key(id, run))? {
            None => Ok(None),
            Some(raw) => Ok(Some(decode(keys::OUTPUT, &raw)?)),
        }
    }

    /// Pending or failed → dead with `last_error` "cancelled", out of `due`/`scheduled`.
    fn cancel(&self, id: &str, now: Millis) -> Result<Job, StoreError> {
        // The owner is the only writer: what is read here cannot change before the transaction.
        let job = self
            .get(id)?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let from = job.state;
        match from {
            JobState::Pending | JobState::Failed => {}
            JobState::Processing => return Err(StoreError::Running(id.to_string())),
            state => {
                return Err(StoreError::Finished {
                    id: id.to_string(),
                    state,
                })
            }
        }
        Ok(self.tx(|t| {
            let Some(mut job) = t.take(from, id)? else {
                return abort(StoreError::NotFound(id.to_string()));
            };
            t.unindex(&job)?;
            job.state = JobState::Dead;
            job.last_error = Some(crate::store::CANCELLED.to_string());
            job.available_at = None;
            unlock(&mut job, now);
            t.put(&job)?;
            t.moved(from, JobState::Dead)?;
            Ok(job)
        })?)
    }

    /// Deletes a completed or dead job and every `output` record under its id.
    fn remove(&self, id: &str) -> Result<Job, StoreError> {
        let job = self
            .get(id)?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        if !job.state.is_finished() {
            return Err(StoreError::NotFinished {
                id: id.to_string(),
                state: job.state,
            });
        }
        let outputs: Vec<sled::IVec> = self
            .output
            .scan_prefix(keys::output_prefix(id))
            .keys()
            .collect::<Result<_, _>>()?;
        // Output first: a crash in between leaves the job without its output (which `logs`
        // reports), never output that a new job of the same id would show as its own.
        for k in &outputs {
            self.output.remove(k)?;
        }
        let state = job.state;
        self.tx(|t| {
            if t.take(state, id)?.is_some() {
                t.count(state, -1)?;
            }
            Ok(())
        })?;
        Ok(job)
    }

    fn purge(
        &self,
        state: JobState,
        finished_before: Millis,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PurgeStep, StoreError> {
        if !state.is_finished() || limit == 0 {
            return Ok(PurgeStep::default());
        }
        let range = match after {
            Some(a) => self
                .tree(state)
                .range::<&[u8], _>((Bound::Excluded(a.as_bytes()), Bound::Unbounded)),
            None => self.tree(state).iter(),
        };
        let mut examined = 0;
        let mut last = None;
        let mut old = Vec::new();
        for item in range.take(limit) {
            let (_, v) = item?;
            examined += 1;
            let job: Job = decode(keys::state_tree_name(state), &v)?;
            if job.updated_at < finished_before {
                old.push(job.id.clone());
            }
            last = Some(job.id);
        }
        // Output first, as `remove` does.
        let mut outputs = sled::Batch::default();
        for id in &old {
            for k in self.output.scan_prefix(keys::output_prefix(id)).keys() {
                outputs.remove(k?);
            }
        }
        self.output.apply_batch(outputs)?;
        let removed = self.tx(|t| {
            let mut n = 0i64;
            for id in &old {
                if t.take(state, id)?.is_some() {
                    n += 1;
                }
            }
            if n > 0 {
                t.count(state, -n)?;
            }
            Ok(n.unsigned_abs())
        })?;
        Ok(PurgeStep {
            removed,
            next: if examined == limit { last } else { None },
        })
    }

    /// Checks both invariants over the whole store: each job in exactly one state tree whose
    /// name matches its record, and the index holding exactly the pending and failed jobs.
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut where_: std::collections::HashMap<String, JobState> = Default::default();
        let mut expected_index: HashSet<(JobState, String)> = HashSet::new();
        for st in JobState::ALL {
            for item in self.tree(st).iter() {
                let (k, v) = item?;
                let id = String::from_utf8_lossy(&k).into_owned();
                let job: Job = decode(keys::state_tree_name(st), &v)?;
                report.jobs += 1;
                if job.state != st || job.id != id {
                    report
                        .problems
                        .push(format!("job {id} in tree {st} says state {}", job.state));
                }
                if let Some(prev) = where_.insert(id.clone(), st) {
                    report
                        .problems
                        .push(format!("job {id} is in both {prev} and {st}"));
                }
                if matches!(st, JobState::Pending | JobState::Failed) {
                    expected_index.insert((st, id));
                }
            }
        }
        let mut indexed: HashSet<(JobState, String)> = HashSet::new();
        for tree in [&self.due, &self.scheduled] {
            for item in tree.iter() {
                let (_, v) = item?;
                match keys::decode_index_value(&v) {
                    None => report.problems.push("malformed index entry".into()),
                    Some((st, id)) => {
                        if !indexed.insert((st, id.to_string())) {
                            report.problems.push(format!("job {id} indexed twice"));
                        }
                    }
                }
            }
        }
        let mut staged_ids = HashSet::new();
        for item in self.chunks.iter() {
            let (_, v) = item?;
            let Some(records) = keys::decode_chunk_value(&v) else {
                report.problems.push("a staged chunk is cut short".into());
                continue;
            };
            for record in records {
                let job: Job = decode(keys::CHUNKS, record)?;
                if let Some(st) = where_.get(&job.id) {
                    report
                        .problems
                        .push(format!("job {} is staged and also {st}", job.id));
                }
                if !staged_ids.insert(job.id.clone()) {
                    report
                        .problems
                        .push(format!("job {} is staged twice", job.id));
                }
            }
        }
        if !self.staged.is_empty() {
            report
                .problems
                .push("jobs staged one by one (format version 2) are left".into());
        }
        let stored = self.stored_counts()?;
        for st in JobState::ALL {
            let actual = where_.values().filter(|s| **s == st).count() as u64;
            if stored.get(st) != actual {
                report.problems.push(format!(
                    "the {st} counter says {} but there are {actual}",
                    stored.get(st)
                ));
            }
        }
        for missing in expected_index.difference(&indexed) {
            report
                .problems
                .push(format!("{} job {} is not indexed", missing.0, missing.1));
        }
        for extra in indexed.difference(&expected_index) {
            report.problems.push(format!(
                "index names {} job {} which is not there",
                extra.0, extra.1
            ));
        }
        Ok(report)
    }
}

/// The first `due` entry, read before the transaction that takes it.
struct DueEntry {
    key: sled::IVec,
    state: JobState,
    id: String,
}

/// What taking a `due` entry found.
enum Taken {
    Job(Box<Job>),
    /// Someone took the entry first.
    Raced,
    /// The entry named a job that is not there; the entry is dropped.
    Missing,
}

/// The record of a new job, as [`JobStore::enqueue`] stores it.
fn new_record(j: &NewJob, config: &Config, now: Millis, seq: u64) -> Job {
    Job {
        id: j.id.clone(),
        command: j.command.clone(),
        state: JobState::Pending,
        attempts: 0,
        max_retries: j.max_retries.unwrap_or(config.max_retries),
        created_at: now,
        updated_at: now,
        available_at: Some(j.run_at.unwrap_or(now)),
        locked_by: None,
        locked_at: None,
        last_error: None,
        priority: j.priority,
        timeout_ms: j.timeout_ms,
        seq,
        pgid: None,
        runs: 0,
        cwd: j.cwd.clone(),
        env: j.env.clone(),
    }
}

/// Where a job goes in the availability index.
enum IndexKey {
    Due([u8; 24]),
    Scheduled([u8; 16]),
}

fn index_key(job: &Job, now: Millis) -> IndexKey {
    let at = job.available_at.unwrap_or(now);
    if at <= now {
        IndexKey::Due(keys::due_key(job.priority, at, job.seq))
    } else {
        IndexKey::Scheduled(keys::scheduled_key(at, job.seq))
    }
}

fn unlock(job: &mut Job, now: Millis) {
    job.locked_by = None;
    job.locked_at = None;
    job.pgid = None;
    job.updated_at = now;
}

#[cfg(test)]
mod tests;
