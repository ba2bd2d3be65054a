//! How a command reaches the store: directly when nobody owns it, else as a request through
//! the spool to the supervisor, waiting for its reply.
//!
//! While it waits, the command keeps trying the lock: if the supervisor has gone away (stopped,
//! or killed), the command takes the store over itself and drains the spool, its own request
//! included. A request is therefore answered by whoever owns the store next, never lost.
//!
//! The request file is not fsynced while the command waits: the reply is sent only after the
//! owner flushed the effect, so a crash before it loses nothing that was promised. Only when
//! the command gives up waiting and reports the request as queued is the file made durable.

use std::time::{Duration, Instant};

use crate::datadir::{DataDir, Holder};
use crate::model::now_ms;
use crate::owner::{Owner, OwnerError};
use crate::spool::request::{self, CodecError, OwnerInfo, Reply, Request};
use crate::spool::{Spool, SpoolError};
use crate::store::postgres::PgStore;
use crate::store::StoreError;

/// How long to wait for each look at the reply before trying the lock again.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Errors of reaching the store.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the supervisor did not answer within {waited_secs}s; request {request_id} is queued and will be applied when it does (or by the next command once it stops)")]
    Queued {
        request_id: String,
        waited_secs: u64,
    },
    #[error("the supervisor did not answer within {waited_secs}s")]
    NoAnswer { waited_secs: u64 },
    #[error("another queuectl command (not a supervisor) held the store for {waited_secs}s; request {request_id} is queued and will be applied when it lets go")]
    QueuedBusy {
        request_id: String,
        waited_secs: u64,
    },
    #[error(
        "another queuectl command (not a supervisor) held the store for {waited_secs}s; try again"
    )]
    Busy { waited_secs: u64 },
}

/// Runs `req` against the store, wherever it is, and returns the reply.
pub fn call(dir: &DataDir, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    call_as(dir, &Spool::new_request_id(), req, timeout)
}

/// [`call`] with a request id chosen by the caller (a bulk enqueue names its file with it).
pub fn call_as(
    dir: &DataDir,
    id: &str,
    req: &Request,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    call_answered(dir, id, req, timeout).map(|a| a.reply)
}

/// A reply and who gave it.
#[derive(Debug)]
pub struct Answer {
    pub reply: Reply,
    /// A running supervisor applied the request (rather than this command, directly, or a
    /// shared database).
    pub by_supervisor: bool,
}

/// [`call_as`], saying whether a supervisor answered: a command that finds one running needs
/// no second look at the lock to know it.
pub fn call_answered(
    dir: &DataDir,
    id: &str,
    req: &Request,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let direct = |reply| Answer {
        reply,
        by_supervisor: false,
    };
    if let Some(url) = dir.database_url() {
        // Pausing and scaling are this host's supervisor's business: through the spool.
        if !matches!(req, Request::Pause { .. } | Request::Scale { .. }) {
            return shared(dir, url, req).map(direct);
        }
    }
    if let Some(owner) = Owner::try_acquire(dir)? {
        return Ok(direct(owner.run(req)?));
    }
    let spool = Spool::open(dir.root())?;
    let id = id.to_string();
    let waiter = spool.reply_waiter(&id)?;
    // Not fsynced: we wait for the reply, which comes only after the owner flushed the effect.
    let body = request::encode(req)?;
    match spool.submit_awaited(&id, &body) {
        // A full disk: give up the space kept for this moment and try once more, so that
        // `status` and `worker stop` still reach the supervisor.
        Err(e) if e.is_disk_full() && dir.release_ballast() => {
            tracing::warn!("the disk is full: released the reserved space to reach the supervisor");
            spool.submit_awaited(&id, &body)?;
        }
        other => other?,
    }
    // A timeout too large for the clock means no deadline.
    let deadline = Instant::now().checked_add(timeout);
    let mut took_over = false;
    loop {
        if let Some(body) = waiter.wait(WAIT_SLICE)? {
            return Ok(Answer {
                reply: request::decode(&body)?,
                by_supervisor: !took_over,
            });
        }
        // Nobody answering: if the owner is gone, take over (which answers our request).
        if let Some(owner) = Owner::try_acquire(dir)? {
            drop(owner);
            took_over = true;
            continue;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let waited_secs = timeout.as_secs();
            // Saying "queued" is a promise: make the write durable first. (If it is gone, it
            // was applied and flushed, or set aside, meanwhile: nothing left to keep.)
            if req.is_write() {
                spool.make_durable(&id)?;
            }
            // Name who kept us waiting: a supervisor names itself in the lock, a command
            // working directly does not.
            let supervisor = !matches!(dir.holder(), Ok(Holder::Busy));
            return Err(match (req.is_write(), supervisor) {
                (true, true) => ClientError::Queued {
                    request_id: id,
                    waited_secs,
                },
                (true, false) => ClientError::QueuedBusy {
                    request_id: id,
                    waited_secs,
                },
                (false, true) => ClientError::NoAnswer { waited_secs },
                (false, false) => ClientError::Busy { waited_secs },
            });
        }
    }
}

/// A command that asks the store several things in a row (the pages of `list`): it keeps
/// what it reached the store through, so that working directly it opens the store once.
pub enum Session {
    /// Nobody else owned the store: this command does, until the session ends. (It holds the
    /// lock meanwhile; a supervisor starting then waits for it.)
    Direct(Box<Owner>),
    /// A shared queue (PostgreSQL): the connection is kept.
    Shared { store: Box<PgStore>, spool: Spool },
    /// A supervisor owns the store: each call is a request through the spool.
    Spool(DataDir),
}

impl Session {
    /// Reaches the store as [`call`] would, for several calls.
    pub fn open(dir: &DataDir) -> Result<Session, ClientError> {
        if let Some(url) = dir.database_url() {
            let key = format!("command:{}:{}", dir.host_key(), std::process::id());
            let store = PgStore::open(url, &key).map_err(OwnerError::from)?;
            return Ok(Session::Shared {
                store: Box::new(store),
                spool: Spool::open(dir.root())?,
            });
        }
        match Owner::try_acquire(dir)? {
            Some(owner) => Ok(Session::Direct(Box::new(owner))),
            None => Ok(Session::Spool(dir.clone())),
        }
    }

    /// Runs a read-only `req` and returns the reply.
    pub fn call(&mut self, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
        match self {
            Session::Direct(owner) => Ok(owner.run(req)?),
            Session::Shared { store, spool } => Ok(request::apply(
                &**store,
                spool,
                req,
                OwnerInfo::default(),
                now_ms(),
                None,
            )),
            Session::Spool(dir) => call(dir, req, timeout),
        }
    }
}

/// With a shared queue (PostgreSQL) every command talks to the database itself: no lock, no
/// spool request (the database orders concurrent writers).
fn shared(dir: &DataDir, url: &str, req: &Request) -> Result<Reply, ClientError> {
    let key = format!("command:{}:{}", dir.host_key(), std::process::id());
    let store = PgStore::open(url, &key).map_err(OwnerError::from)?;
    let hosts = store.supervisors().map_err(OwnerError::from)?;
    let info = OwnerInfo {
        workers: hosts.iter().map(|h| h.workers).sum(),
        busy_workers: hosts.iter().map(|h| h.busy).sum(),
        supervisor_pid: None,
        ..OwnerInfo::default()
    };
    let spool = Spool::open(dir.root())?;
    if let Request::Cancel { ids } = req {
        // A running job is stopped by the supervisor running it, on whichever host.
        let results = ids
            .iter()
            .map(|id| {
                (
                    id.clone(),
                    cancel_shared(&store, id).map_err(|e| e.to_string()),
                )
            })
            .collect();
        return Ok(Reply::Each(results));
    }
    let mut reply = request::apply(&store, &spool, req, info, now_ms(), None);
    if let Reply::Status(s) = &mut reply {
        s.hosts = hosts;
    }
    Ok(reply)
}

/// Cancels job `id` of a shared queue: at once when it waits; when it runs, its supervisor is
/// asked to stop it and the job is returned still running (the caller waits for its end).
fn cancel_shared(store: &PgStore, id: &str) -> Result<crate::model::Job, StoreError> {
    loop {
        match request::cancel_one(store, id, now_ms()) {
            Err(StoreError::Running(_)) => {
                if let Some(job) = store.request_cancel(id)? {
                    return Ok(job);
                }
                // It ended meanwhile: cancel (or report) it as it is now.
            }
            other => return other,
        }
    }
}
