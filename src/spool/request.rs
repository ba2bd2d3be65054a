//! What a command asks of the store's owner ([`Request`]), the answer ([`Reply`]), their
//! encoding in spool files (MessagePack), and the one handler, [`apply`], that both a command
//! working directly and the supervisor run: so a request gives the same answer either way.
//!
//! A write request carries everything that must not change if it is applied again after a crash
//! (job ids are chosen by the client), and [`apply`] records the request id in the same
//! transaction, so a request found again in the spool is not applied twice.

use serde::{Deserialize, Serialize};

use std::io::{BufRead, BufReader};

use crate::model::{Config, ConfigKey, Counts, Job, JobState, Millis, NewJob, RunOutput};
use crate::spool::{PendingRequest, Spool};
use crate::store::{JobStore, ListOrder, StoreError};

/// The most jobs one page of `list` holds, whatever was asked: a reply stays small.
pub const PAGE_MAX: usize = 1_000;

/// Jobs of a bulk enqueue stored per call of [`JobStore::stage`]: small, because a backend may
/// hold every other reader and writer back while it writes one (sled does).
pub const BULK_CHUNK: usize = 1_000;

/// One thing a command asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Enqueue {
        jobs: Vec<NewJob>,
    },
    /// The jobs in the spool's bulk file `batch` (a request id), all or none: streamed from
    /// the file and stored in chunks, so that neither the request nor memory grows with it.
    EnqueueBulk {
        batch: String,
    },
    DlqRetry {
        id: String,
    },
    ConfigSet {
        key: String,
        value: u64,
    },
    Status,
    List {
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    },
    /// One page of `list`: the jobs in `states` (every state when empty) in `order`, after
    /// the cursor `after` of the previous page, at most `limit` (and at most [`PAGE_MAX`]).
    ListPage {
        states: Vec<JobState>,
        order: ListOrder,
        #[serde(with = "serde_bytes")]
        after: Option<Vec<u8>>,
        limit: usize,
    },
    /// Write every job and the config to the SQLite file `path` (absolute), replacing a file
    /// there only with `force`. The owner writes it itself, page by page.
    Export {
        path: std::path::PathBuf,
        force: bool,
    },
    Show {
        id: String,
    },
    Logs {
        id: String,
        run: Option<u32>,
    },
    Config,
    /// Every job and the config, read at one instant (for export).
    Dump,
    /// Stop jobs that have not finished: each goes to `dead` with `last_error` "cancelled".
    Cancel {
        ids: Vec<String>,
    },
    /// Delete finished jobs and their output.
    Remove {
        ids: Vec<String>,
    },
    /// Move every dead job back to pending.
    DlqRetryAll,
    /// Remove the completed (or dead) jobs that finished more than `older_than_ms` ago (`None`:
    /// the configured retention, or all of them when it is `keep`), with their output.
    Clean {
        state: JobState,
        older_than_ms: Option<u64>,
    },
    /// The jobs, once all of them are completed or dead: a supervisor answers when they are;
    /// any other owner (or one that is stopping) answers at once with their current state.
    Wait {
        ids: Vec<String>,
    },
    /// A running supervisor's number of workers (only a supervisor answers).
    Scale {
        count: u32,
    },
    /// Stop (`true`) or restart giving out jobs (only a supervisor answers).
    Pause {
        paused: bool,
    },
}

impl Request {
    /// The checks the CLI makes before it sends a request, made again by whoever applies it.
    pub fn check(&self) -> Result<(), crate::model::ModelError> {
        match self {
            Request::Enqueue { jobs } => jobs.iter().try_for_each(crate::model::NewJob::check),
            _ => Ok(()),
        }
    }

    /// Whether the request changes the store (and so must be flushed before it is answered).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Enqueue { .. }
                | Request::EnqueueBulk { .. }
                | Request::DlqRetry { .. }
                | Request::ConfigSet { .. }
                | Request::Cancel { .. }
                | Request::Remove { .. }
                | Request::DlqRetryAll
                | Request::Clean { .. }
        )
    }
}

/// The answer to `status`: the counts and who owns the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub counts: Counts,
    pub owner: OwnerInfo,
    /// With a shared queue (PostgreSQL): every supervisor sharing it.
    #[serde(default)]
    pub hosts: Vec<crate::store::HostInfo>,
}

/// Who is answering: a supervisor (with its workers) or a command working directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OwnerInfo {
    pub workers: u32,
    pub busy_workers: u32,
    pub supervisor_pid: Option<u32>,
    /// `worker pause` holds back new jobs.
    #[serde(default)]
    pub paused: bool,
    /// The supervisor is stopping (running jobs finish, nothing new starts).
    #[serde(default)]
    pub stopping: bool,
    /// The store cannot be written (the disk is full): nothing new starts.
    #[serde(default)]
    pub out_of_space: bool,
    /// Ends of runs the supervisor keeps in memory until the store can take them.
    #[serde(default)]
    pub unstored: u32,
}

/// How a request failed, which decides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The user's input was refused (exit status 2).
    Invalid,
    /// Something went wrong on our side (exit status 1).
    Internal,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// A write was applied and is durable.
    Done,
    Retried(Job),
    Status(StatusInfo),
    Jobs(Vec<Job>),
    /// A page of `list`, and where the next one starts (`None`: this was the last).
    Page {
        jobs: Vec<Job>,
        #[serde(with = "serde_bytes")]
        next: Option<Vec<u8>>,
    },
    /// What an export wrote.
    Exported {
        jobs: u64,
        config_keys: u64,
    },
    Job(Job),
    Logs {
        job: Job,
        run: u32,
        output: Option<RunOutput>,
    },
    Config(Config),
    /// How many jobs were removed.
    Removed(u64),
    Dump {
        jobs: Vec<Job>,
        config: Config,
    },
    /// One result per id of a request about several jobs, in the order asked: the job after
    /// the change, or why it could not be changed.
    Each(Vec<(String, Result<Job, String>)>),
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Reply {
    fn from_store_error(e: StoreError) -> Reply {
        let kind = if e.is_user_error() {
            ErrorKind::Invalid
        } else {
            ErrorKind::Internal
        };
        Reply::Error {
            kind,
            message: e.to_string(),
        }
    }

    fn invalid(message: String) -> Reply {
        Reply::Error {
            kind: ErrorKind::Invalid,
            message,
        }
    }
}

/// Errors of encoding and decoding requests and replies.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("could not encode: {0}")]
    Encode(String),
    #[error("could not decode: {0}")]
    Decode(String),
}

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(v).map_err(|e| CodecError::Encode(e.to_string()))
}

pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(b).map_err(|e| CodecError::Decode(e.to_string()))
}

/// Answers `req` with `reply` and removes the request; failures are logged, not returned (the
/// effect is stored already: a client that gets no answer takes over and is answered by the
/// request's replay, or reports it queued).
pub fn answer(spool: &Spool, req: &PendingRequest, reply: &Reply) {
    match encode(reply) {
        Ok(body) => {
            if let Err(e) = spool.reply(&req.id, &body) {
                tracing::warn!("could not answer request {}: {e}", req.id);
            }
        }
        Err(e) => tracing::error!("could not encode the reply to {}: {e}", req.id),
    }
    if let Err(e) = spool.finish(req) {
        if !e.is_not_found() {
            tracing::warn!("could not remove request {}: {e}", req.id);
        }
    }
}

/// Runs one request against the store. Writes are not flushed here: the caller flushes before
/// it hands out the reply. `request_id` is the spool id of the request, if it came that way.
pub fn apply(
    store: &dyn JobStore,
    spool: &Spool,
    req: &Request,
    owner: OwnerInfo,
    now: Millis,
    request_id: Option<&str>,
) -> Reply {
    if let Err(e) = req.check() {
        return Reply::invalid(e.to_string());
    }
    let result = match req {
        Request::Enqueue { jobs } => store
            .config()
            .and_then(|cfg| store.enqueue(jobs, &cfg, now, request_id))
            .map(|()| Reply::Done),
        Request::EnqueueBulk { batch } => return enqueue_bulk(store, spool, batch, now),
        Request::DlqRetry { id } => store.dlq_retry(id, now, request_id).map(Reply::Retried),
        Request::ConfigSet { key, value } => match key.parse::<ConfigKey>() {
            Err(e) => return Reply::invalid(e.to_string()),
            Ok(k) => match k.check_canonical(*value) {
                Err(e) => return Reply::invalid(e.to_string()),
                Ok(v) => store.config_set(k, v, request_id).map(|()| Reply::Done),
            },
        },
        Request::Status => store.counts().map(|counts| {
            Reply::Status(StatusInfo {
                counts,
                owner,
                hosts: Vec::new(),
            })
        }),
        Request::List {
            state,
            offset,
            limit,
        } => store.list(*state, *offset, *limit).map(Reply::Jobs),
        Request::ListPage {
            states,
            order,
            after,
            limit,
        } => store
            .list_page(
                states,
                *order,
                after.as_deref(),
                (*limit).min(PAGE_MAX),
                now,
            )
            .map(|page| Reply::Page {
                jobs: page.jobs,
                next: page.next,
            }),
        Request::Export { path, force } => return export(store, path, *force),
        Request::Show { id } => match store.get(id) {
            Ok(Some(job)) => Ok(Reply::Job(job)),
            Ok(None) => Err(StoreError::NotFound(id.clone())),
            Err(e) => Err(e),
        },
        Request::Logs { id, run } => match store.get(id) {
            Ok(Some(job)) => {
                if job.runs == 0 {
                    return Reply::invalid(format!("job `{id}` has not run yet"));
                }
                let run = run.unwrap_or(job.runs);
                if run == 0 || run > job.runs {
                    return Reply::invalid(format!(
                        "job `{id}` has no attempt {run} (it has run {} time{})",
                        job.runs,
                        if job.runs == 1 { "" } else { "s" }
                    ));
                }
                store
                    .output(id, run)
                    .map(|output| Reply::Logs { job, run, output })
            }
            Ok(None) => Err(StoreError::NotFound(id.clone())),
            Err(e) => Err(e),
        },
        Request::Config => store.config().map(Reply::Config),
        Request::Clean {
            state,
            older_than_ms,
        } => clean(store, *state, *older_than_ms, now).map(Reply::Removed),
        Request::Dump => store.config().and_then(|config| {
            let jobs = store.all_jobs().collect::<Result<Vec<_>, _>>()?;
            Ok(Reply::Dump { jobs, config })
        }),
        Request::Cancel { ids } => each(ids, |id| cancel_one(store, id, now)),
        Request::Wait { ids } => each(ids, |id| {
            store
                .get(id)?
                .ok_or_else(|| StoreError::NotFound(id.to_string()))
        }),
        Request::Remove { ids } => each(ids, |id| store.remove(id)),
        Request::Scale { .. } | Request::Pause { .. } => {
            return Reply::invalid(
                "no supervisor is running (start one with `queuectl worker start`)".into(),
            )
        }
        Request::DlqRetryAll => store
            .list(Some(JobState::Dead), 0, usize::MAX)
            .and_then(|dead| {
                let ids: Vec<String> = dead.into_iter().map(|j| j.id).collect();
                // Each job's retry is recorded under the request and the job, so that the
                // request applied again (after a crash before its reply) retries none twice,
                // even one that died again meanwhile.
                each(&ids, |id| {
                    let key = request_id.map(|r| format!("{r}/{id}"));
                    store.dlq_retry(id, now, key.as_deref())
                })
            }),
    };
    result.unwrap_or_else(Reply::from_store_error)
}

/// Cancels one job that is not running. Cancelling twice (or a request applied again after a
/// crash) is not an error.
pub fn cancel_one(store: &dyn JobStore, id: &str, now: Millis) -> Result<Job, StoreError> {
    match store.cancel(id, now) {
        Err(StoreError::Finished {
            state: JobState::Dead,
            ..
        }) => match store.get(id)? {
            Some(job) if job.last_error.as_deref() == Some(crate::store::CANCELLED) => Ok(job),
            _ => store.cancel(id, now),
        },
        other => other,
    }
}

/// Whether every one of `jobs` is completed or dead (an unknown id counts as finished: there
/// is nothing to wait for).
pub fn all_finished(results: &[(String, Result<Job, String>)]) -> bool {
    results.iter().all(|(_, r)| match r {
        Ok(job) => job.state.is_finished(),
        Err(_) => true,
    })
}

/// Applies `op` to each id; a user error is that id's answer, any other error the request's.
fn each(
    ids: &[String],
    mut op: impl FnMut(&str) -> Result<Job, StoreError>,
) -> Result<Reply, StoreError> {
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        match op(id) {
            Ok(job) => results.push((id.clone(), Ok(job))),
            Err(e) if e.is_user_error() => results.push((id.clone(), Err(e.to_string()))),
            Err(e) => return Err(e),
        }
    }
    Ok(Reply::Each(results))
}

/// Jobs examined per step of retention.
pub const PURGE_STEP: usize = 1_000;

/// The cut-off time of a retention (`None` when the jobs are kept for ever).
pub fn retention_cutoff(retention_ms: u64, now: Millis) -> Option<Millis> {
    (retention_ms != crate::model::KEEP).then(|| now.saturating_sub(retention_ms))
}

/// Writes the SQLite export (see [`crate::export::export_store`]); a refusal about the path is
/// the user's, anything else ours.
fn export(store: &dyn JobStore, path: &std::path::Path, force: bool) -> Reply {
    match crate::export::export_store(store, path, force) {
        Ok(summary) => Reply::Exported {
            jobs: summary.jobs,
            config_keys: summary.config_keys,
        },
        Err(e) => {
            let kind = if e.is_refusal() {
                ErrorKind::Invalid
            } else {
                ErrorKind::Internal
            };
            // The causes too: the reply carries text, not the error.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            Reply::Error { kind, message }
        }
    }
}

/// `queuectl clean`: every step of [`JobStore::purge`] over `state`, returning how many went.
fn clean(
    store: &dyn JobStore,
    state: JobState,
    older_than_ms: Option<u64>,
    now: Millis,
) -> Result<u64, StoreError> {
    let cutoff = match older_than_ms {
        Some(ms) => now.saturating_sub(ms),
        None => {
            let cfg = store.config()?;
            let retention = match state {
                JobState::Dead => cfg.retention_dead,
                _ => cfg.retention_completed,
            };
            retention_cutoff(retention, now).unwrap_or(Millis::MAX)
        }
    };
    let mut removed = 0;
    let mut after: Option<String> = None;
    loop {
        let step = store.purge(state, cutoff, after.as_deref(), PURGE_STEP)?;
        removed += step.removed;
        match step.next {
            Some(next) => after = Some(next),
            None => return Ok(removed),
        }
    }
}

/// Writes one job to a bulk file (the client's side of [`Request::EnqueueBulk`]).
pub fn write_bulk_job(out: &mut impl std::io::Write, job: &NewJob) -> Result<(), CodecError> {
    rmp_serde::encode::write(out, job).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Stages the jobs of bulk file `batch` chunk by chunk, then publishes them as one step; any
/// refusal discards what was staged. A batch already applied is not applied again.
fn enqueue_bulk(store: &dyn JobStore, spool: &Spool, batch: &str, now: Millis) -> Reply {
    enqueue_bulk_unless(store, spool, batch, now, &|| false).unwrap_or(Reply::Error {
        kind: ErrorKind::Internal,
        message: "the bulk enqueue was stopped".into(),
    })
}

/// [`Request::EnqueueBulk`] for an owner that may have to let go meanwhile (a supervisor
/// storing it beside its event loop): `stop` is asked before each chunk, and once it says so,
/// what was staged is discarded and `None` returned, leaving the request unanswered for the
/// next owner. Once published, the batch is finished whatever `stop` says.
pub fn enqueue_bulk_unless(
    store: &dyn JobStore,
    spool: &Spool,
    batch: &str,
    now: Millis,
    stop: &dyn Fn() -> bool,
) -> Option<Reply> {
    let stored = || -> Result<Result<bool, String>, StoreError> {
        if store.is_applied(batch)? {
            return Ok(Ok(true));
        }
        let file = match spool.open_bulk(batch) {
            Ok(file) => file,
            Err(e) => return Ok(Err(format!("cannot read the jobs: {e}"))),
        };
        // Leftovers of an earlier attempt at this very request (its owner died).
        store.discard(batch)?;
        let config = store.config()?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut chunk = Vec::with_capacity(BULK_CHUNK);
        loop {
            let end = match reader.fill_buf() {
                Ok(buf) => buf.is_empty(),
                Err(e) => return Ok(Err(format!("cannot read the jobs: {e}"))),
            };
            if !end {
                match rmp_serde::decode::from_read::<_, NewJob>(&mut reader) {
                    Ok(job) => chunk.push(job),
                    Err(e) => return Ok(Err(format!("corrupt bulk file: {e}"))),
                }
            }
            if chunk.len() == BULK_CHUNK || (end && !chunk.is_empty()) {
                if stop() {
                    return Ok(Ok(false));
                }
                store.stage(batch, &chunk, &config, now)?;
                chunk.clear();
            }
            if end {
                break;
            }
        }
        store.publish(batch, now)?;
        Ok(Ok(true))
    };
    match stored() {
        Ok(Ok(true)) => Some(Reply::Done),
        Ok(Ok(false)) => {
            discard_quietly(store, batch);
            None
        }
        Ok(Err(message)) => {
            discard_quietly(store, batch);
            Some(Reply::Error {
                kind: ErrorKind::Internal,
                message,
            })
        }
        Err(e) => {
            discard_quietly(store, batch);
            Some(Reply::from_store_error(e))
        }
    }
}

fn discard_quietly(store: &dyn JobStore, batch: &str) {
    if let Err(e) = store.discard(batch) {
        tracing::warn!("could not drop the jobs staged by request {batch}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let reqs = [
            Request::Enqueue { jobs: vec![] },
            Request::List {
                state: Some(JobState::Dead),
                offset: 3,
                limit: usize::MAX,
            },
            Request::Logs {
                id: "x".into(),
                run: Some(2),
            },
        ];
        for r in reqs {
            let back: Request = decode(&encode(&r).unwrap()).unwrap();
            assert_eq!(back, r);
        }
        let rep = Reply::Error {
            kind: ErrorKind::Invalid,
            message: "no".into(),
        };
        assert_eq!(decode::<Reply>(&encode(&rep).unwrap()).unwrap(), rep);
        assert!(decode::<Request>(b"\xc1garbage").is_err());
        // What an unsynced request file may hold after a machine crash never decodes.
        let whole = encode(&reqs_for_crash()).unwrap();
        for cut in 0..whole.len() {
            assert!(decode::<Request>(&whole[..cut]).is_err(), "cut at {cut}");
        }
        for len in [0, 1, 113, 4096] {
            assert!(
                decode::<Request>(&vec![0u8; len]).is_err(),
                "{len} zero bytes"
            );
        }
    }

    fn reqs_for_crash() -> Request {
        Request::Enqueue {
            jobs: vec![
                NewJob::from_json(r#"{"id":"a","command":"true"}"#, 0, String::new).unwrap(),
            ],
        }
    }

    #[test]
    fn apply_answers_like_the_store() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::store::sled::SledStore::open(&dir.path().join("db")).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let job = NewJob::from_json(r#"{"id":"a","command":"true"}"#, 0, String::new).unwrap();
        let enq = Request::Enqueue { jobs: vec![job] };
        assert_eq!(
            apply(&store, &spool, &enq, OwnerInfo::default(), 0, None),
            Reply::Done
        );
        let again = apply(&store, &spool, &enq, OwnerInfo::default(), 0, None);
        assert!(
            matches!(
                again,
                Reply::Error {
                    kind: ErrorKind::Invalid,
                    ..
                }
            ),
            "{again:?}"
        );
        let set = Request::ConfigSet {
            key: "backoff_base".into(),
            value: 0,
        };
        assert!(matches!(
            apply(&store, &spool, &set, OwnerInfo::default(), 0, None),
            Reply::Error {
                kind: ErrorKind::Invalid,
                ..
            }
        ));
        let logs = Request::Logs {
            id: "a".into(),
            run: None,
        };
        assert!(matches!(
            apply(&store, &spool, &logs, OwnerInfo::default(), 0, None),
            Reply::Error {
                kind: ErrorKind::Invalid,
                ..
            }
        ));
        match apply(
            &store,
            &spool,
            &Request::Status,
            OwnerInfo::default(),
            0,
            None,
        ) {
            Reply::Status(s) => assert_eq!(
                (s.counts.pending, s.owner.workers, s.owner.supervisor_pid),
                (1, 0, None)
            ),
            other => panic!("{other:?}"),
        }
    }

    /// `dlq retry --all` applied again (a crash before its reply) retries no job twice, not
    /// even one that died again in between.
    #[test]
    fn retry_all_applied_again_retries_nothing_twice() {
        use crate::store::{JobStore, RunEnd};
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::store::sled::SledStore::open(&dir.path().join("db")).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let jobs = ["a", "b"]
            .map(|id| {
                NewJob::from_json(
                    &format!(r#"{{"id":"{id}","command":"false","max_retries":1}}"#),
                    0,
                    String::new,
                )
                .unwrap()
            })
            .to_vec();
        let info = OwnerInfo::default();
        apply(&store, &spool, &Request::Enqueue { jobs }, info, 0, None);
        let fail = |id: &str| {
            let end = RunEnd::Failed {
                error: "exit code 1",
                backoff_base: 2,
            };
            store.reserve_id(id, "w", 1).unwrap().unwrap();
            store.finish(id, &end, 1).unwrap();
        };
        fail("a");
        fail("b");
        let retry = |req: &str| apply(&store, &spool, &Request::DlqRetryAll, info, 2, Some(req));
        retry("R1");
        assert_eq!(store.counts().unwrap().pending, 2);
        // `a` runs and dies again; then the same request comes again.
        fail("a");
        retry("R1");
        assert_eq!(store.get("a").unwrap().unwrap().state, JobState::Dead);
        // A new request retries it.
        retry("R2");
        assert_eq!(store.get("a").unwrap().unwrap().state, JobState::Pending);
    }

    /// Hex of `bytes`, two lower-case digits a byte.
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The exact bytes of request and reply files, pinned: requests left in a spool by one
    /// version are read by the next, so the format changes only on purpose.
    #[test]
    fn golden_requests_and_replies() {
        let job = NewJob {
            id: "j1".into(),
            command: "echo hi".into(),
            max_retries: Some(2),
            priority: -1,
            run_at: Some(1_700_000_000_000),
            timeout_ms: None,
            cwd: Some("/tmp".into()),
            env: vec![("A".into(), "1".into())],
        };
        let requests = [
            (Request::Status, "a6537461747573"),
            (
                Request::ConfigSet {
                    key: "max_retries".into(),
                    value: 5,
                },
                concat!(
                    "81a9436f6e66696753657482a36b6579ab6d61785f72657472696573a576616c",
                    "756505",
                ),
            ),
            (
                Request::Enqueue { jobs: vec![job] },
                concat!(
                    "81a7456e717565756581a46a6f62739188a26964a26a31a7636f6d6d616e64a7",
                    "6563686f206869ab6d61785f7265747269657302a87072696f72697479ffa672",
                    "756e5f6174cf0000018bcfe56800aa74696d656f75745f6d73c0a3637764a42f",
                    "746d70a3656e769192a141a131",
                ),
            ),
        ];
        for (req, golden) in &requests {
            assert_eq!(hex(&encode(req).unwrap()), *golden);
            assert_eq!(&decode::<Request>(&unhex(golden)).unwrap(), req);
        }
        let replies = [
            (Reply::Done, "a4446f6e65"),
            (
                Reply::Error {
                    kind: ErrorKind::Invalid,
                    message: "no".into(),
                },
                "81a54572726f7282a46b696e64a7496e76616c6964a76d657373616765a26e6f",
            ),
        ];
        for (rep, golden) in &replies {
            assert_eq!(hex(&encode(rep).unwrap()), *golden);
            assert_eq!(&decode::<Reply>(&unhex(golden)).unwrap(), rep);
        }
    }
}
