//! Owning the store: what every process does when it takes the data directory's lock, whether
//! it is a supervisor or a command working directly.
//!
//! Taking ownership, in order: the exclusive lock; logging to `worker.log`; open the store; wait
//! until the previous supervisor's workers are gone (`workers.lock`); kill the process group of
//! every run left in `processing` and count those runs as failed (the retry rule); drain the
//! request spool.
//! Only then does the owner do its own work. So a request written while a supervisor was
//! stopping, or after it was killed, is applied by whoever owns the store next.

use std::time::Duration;

use crate::datadir::{DataDir, DataDirError, StoreLock};
use crate::logging::log_failure;
use crate::model::{now_ms, Outcome};
use crate::spool::request::{self, ErrorKind, OwnerInfo, Reply, Request};
use crate::spool::{PendingRequest, Spool, SpoolError};
use std::sync::Arc;

use crate::store::postgres::PgStore;
use crate::store::sled::SledStore;
use crate::store::{lease_ms, JobStore, StoreError};

/// How long a new owner waits for the previous supervisor's workers to exit.
const OLD_WORKERS_GRACE: Duration = Duration::from_secs(10);

/// Spool files of a client that is gone are removed once they are this old (a client that
/// is still there keeps its files whatever their age).
const STALE_SPOOL_FILES: Duration = Duration::from_secs(60);

/// Errors of taking and using ownership.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot reopen the store while it is in use")]
    StoreInUse,
}

/// The process that holds the lock, with the store open.
pub struct Owner {
    pub dir: DataDir,
    pub store: Arc<dyn JobStore>,
    /// The same store when it is shared with other hosts (PostgreSQL): leases, heartbeat.
    pub shared: Option<Arc<PgStore>>,
    pub spool: Spool,
    lock: StoreLock,
}

/// What a drain's hook did with a request.
pub enum Handled {
    /// Apply it as any owner would.
    Apply,
    /// This is the answer.
    Reply(Box<Reply>),
    /// Leave it unanswered in the spool; it is answered later (or by the next owner).
    Defer,
}

/// What a drain of the spool did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub requests: usize,
    pub writes: usize,
    /// The disk is full: the writes were answered with that error.
    pub no_space: bool,
}

impl Owner {
    /// Takes ownership if nobody holds the store; `None` if someone does.
    pub fn try_acquire(dir: &DataDir) -> Result<Option<Owner>, OwnerError> {
        let Some(lock) = dir.try_lock()? else {
            return Ok(None);
        };
        // What recovery and the spool find is logged like the supervisor's work (a supervisor
        // has installed its own logger already).
        crate::logging::init_file_only(&dir.log_path());
        // What only an owner reads (the store's files, the attempt records) is checked now.
        dir.secure_store()?;
        // Before anything else: no attempt of a previous owner may still run (its reservation
        // may not even have reached the store). Its workers kill their own job when their
        // supervisor's pipe closes; once they are gone (so none can start another), the
        // recorded attempts that still run are orphans of a killed worker: kill them.
        if !dir.wait_for_old_workers(OLD_WORKERS_GRACE)? {
            tracing::warn!(
                "workers of a previous supervisor are still running; taking over anyway"
            );
        }
        for rec in crate::worker::attempt::kill_recorded(&dir.attempts_path()) {
            tracing::warn!(
                "killed process group {} of job {}, left running by a previous owner",
                rec.pgid,
                rec.job_id
            );
        }
        let (store, shared): (Arc<dyn JobStore>, _) = match dir.database_url() {
            Some(url) => {
                let pg = PgStore::open(url, &dir.host_key())?;
                let lease = lease_ms(&pg.config()?);
                let pg = Arc::new(pg.with_lease(lease));
                (pg.clone(), Some(pg))
            }
            None => (Arc::new(SledStore::open(&dir.store_path())?), None),
        };
        let spool = Spool::open(dir.root())?;
        let owner = Owner {
            dir: dir.clone(),
            store,
            shared,
            spool,
            lock,
        };
        // Space in reserve for a full disk (given back by a client that cannot submit).
        dir.ensure_ballast();
        // What killed clients left: half-written requests and doorbells nobody listens on.
        match owner.spool.remove_stale_replies(STALE_SPOOL_FILES) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} files left in the spool by killed commands"),
            Err(e) => tracing::warn!("could not clean the spool: {e}"),
        }
        owner.recover()?;
        let dropped = owner.store.discard_unpublished()?;
        if dropped > 0 {
            tracing::warn!("dropped {dropped} jobs of a bulk enqueue that was interrupted before it was stored");
        }
        owner.drain(OwnerInfo::default())?;
        owner.store.forget_applied()?;
        Ok(Some(owner))
    }

    /// The held lock (a supervisor writes its pid into it).
    pub fn lock(&self) -> &StoreLock {
        &self.lock
    }

    /// Counts every attempt left in `processing` as failed.
    fn recover(&self) -> Result<(), OwnerError> {
        // A shared store's other processing jobs are other hosts': only ours were interrupted.
        let interrupted = match &self.shared {
            Some(pg) => pg.own_running()?,
            None => self
                .store
                .list(Some(crate::model::JobState::Processing), 0, usize::MAX)?,
        };
        // Nothing of them runs any more: `try_acquire` killed every recorded attempt (by
        // group and start time, never by a bare pid that may have been reused).
        if interrupted.is_empty() {
            return Ok(());
        }
        let cfg = self.store.config()?;
        let results = self.store.recover_interrupted(
            &Outcome::Interrupted.describe(),
            cfg.backoff_base,
            now_ms(),
        )?;
        self.store.flush()?;
        for r in results {
            log_failure(
                &r.job,
                r.decision,
                "was interrupted by a stopped supervisor",
            );
        }
        Ok(())
    }

    /// Applies every request in the spool, oldest first: a refused file is set aside and
    /// answered with an error; writes are flushed once before any reply goes out.
    pub fn drain(&self, info: OwnerInfo) -> Result<Drained, OwnerError> {
        self.drain_with(info, &mut |_, _| Handled::Apply)
    }

    /// [`Owner::drain`], letting `hook` answer a request itself (a supervisor's own business:
    /// cancelling a running job, a wait) or keep it unanswered in the spool for now.
    pub fn drain_with(
        &self,
        info: OwnerInfo,
        hook: &mut dyn FnMut(&PendingRequest, &Request) -> Handled,
    ) -> Result<Drained, OwnerError> {
        let pending = self.spool.pending()?;
        if pending.is_empty() {
            return Ok(Drained::default());
        }
        let mut done = Drained::default();
        // Each request with its reply and whether it writes.
        let mut answers = Vec::with_capacity(pending.len());
        for req in pending {
            let mut writes = false;
            let reply = match self.spool.read(&req) {
                Err(e) if e.is_not_found() => continue, // answered meanwhile
                Err(e) => Err(e.to_string()),
                Ok(body) => match request::decode::<Request>(&body) {
                    Err(e) => Err(format!("corrupt request: {e}")),
                    Ok(r) => {
                        writes = r.is_write();
                        done.writes += usize::from(writes);
                        match hook(&req, &r) {
                            Handled::Defer => continue,
                            Handled::Reply(reply) => Ok(*reply),
                            Handled::Apply => {
                                let reply = request::apply(
                                    &*self.store,
                                    &self.spool,
                                    &r,
                                    info,
                                    now_ms(),
                                    Some(&req.id),
                                );
                                crate::crashpoint::hit("mid-apply");
                                Ok(reply)
                            }
                        }
                    }
                },
            };
            let reply = reply.unwrap_or_else(|reason| {
                tracing::warn!("request {} set aside: {reason}", req.id);
                if let Err(e) = self.spool.reject(&req, &reason) {
                    tracing::error!("could not set request {} aside: {e}", req.id);
                }
                Reply::Error {
                    kind: ErrorKind::Invalid,
                    message: format!("the request was refused: {reason}"),
                }
            });
            done.requests += 1;
            answers.push((req, reply, writes));
        }
        if done.writes > 0 {
            // On a full disk the reads are still answered; the writes are refused.
            match self.store.flush() {
                Ok(()) => {}
                Err(StoreError::NoSpace) => done.no_space = true,
                Err(e) => return Err(e.into()),
            }
        }
        for (req, mut reply, writes) in answers {
            if done.no_space && writes {
                reply = Reply::Error {
                    kind: ErrorKind::Internal,
                    message: format!("the change was not stored: {}", StoreError::NoSpace),
                };
            }
            request::answer(&self.spool, &req, &reply);
        }
        if done.writes > 0 {
            tracing::debug!(
                "answered {} requests ({} changes) with one flush of the store",
                done.requests,
                done.writes
            );
        }
        Ok(done)
    }

    /// Closes the store and opens it again: once a write failed on a full disk, the embedded
    /// store fails every later write until it is reopened. What was not flushed before is
    /// lost or not (the caller checks). The caller holds no other handle on the store; until
    /// the store opens again (an error here), every operation fails with
    /// [`StoreError::NoSpace`]. A shared store (PostgreSQL) is left as it is.
    pub fn reopen_store(&mut self) -> Result<(), OwnerError> {
        if self.shared.is_some() {
            return Ok(());
        }
        if Arc::strong_count(&self.store) > 1 {
            return Err(OwnerError::StoreInUse);
        }
        // Closed first: sled's own lock allows one open handle.
        self.store = Arc::new(crate::store::closed::Closed);
        self.store = Arc::new(SledStore::open(&self.dir.store_path())?);
        Ok(())
    }

    /// Runs one request of this process's own, after the spool (flushing a write before
    /// returning its reply).
    pub fn run(&self, req: &Request) -> Result<Reply, OwnerError> {
        let reply = request::apply(
            &*self.store,
            &self.spool,
            req,
            OwnerInfo::default(),
            now_ms(),
            None,
        );
        if req.is_write() {
            self.store.flush()?;
        }
        Ok(reply)
    }
}
